"""DuckDB queries over the project's Parquet files."""

from __future__ import annotations

import duckdb


def select(query: str) -> duckdb.DuckDBPyRelation:
    """The result of a SELECT on DuckDB's default connection. `duckdb.sql` may return None, for
    statements that have no result; a SELECT always has one."""
    relation = duckdb.sql(query)
    if relation is None:
        raise ValueError(f"not a query with a result: {query}")
    return relation
