"""The API's routes by what they serve: scoring, operations (health, readiness, metrics), admin."""
