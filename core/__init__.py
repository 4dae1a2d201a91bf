"""The ground floor: settings, the registry client, evaluation metrics, runtime helpers and the
contracts (prediction log, monitor report) that the packages above share. Imports nothing of fraudops."""
