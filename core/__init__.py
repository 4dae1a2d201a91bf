"""The ground floor: settings, the registry client, runtime helpers and the rule for private-API
doors, and the contracts (prediction log, monitor report) that the packages above share. Imports
nothing of fraudops."""
