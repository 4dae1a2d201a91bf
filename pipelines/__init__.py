"""Prefect flows, the `fraudops` CLI and the one settings object. Importing the package imports
nothing heavy: Prefect loads only where a flow runs."""
