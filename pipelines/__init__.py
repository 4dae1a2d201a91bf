"""The top floor: Prefect flows as thin wrappers over the packages below, batch scoring, traffic
replay, the `fraudops` CLI, the demo and the benchmarks. Importing the package imports nothing
heavy: Prefect loads only where a flow runs."""
