"""The Feast feature repository: definitions and the store configuration template."""
