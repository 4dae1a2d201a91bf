"""DuckDB queries over the project's Parquet files."""

from __future__ import annotations

import duckdb
import pandas as pd


def select(query: str) -> duckdb.DuckDBPyRelation:
    """The result of a SELECT on DuckDB's default connection. `duckdb.sql` may return None, for
    statements that have no result; a SELECT always has one."""
    relation = duckdb.sql(query)
    if relation is None:
        raise ValueError(f"not a query with a result: {query}")
    return relation


def select_joined(query: str, **frames: pd.DataFrame) -> pd.DataFrame:
    """The result of a SELECT that also reads the given frames, each as a table of its keyword's
    name, on a connection of its own (the default one is shared by every caller)."""
    con = duckdb.connect()
    try:
        for name, frame in frames.items():
            con.register(name, frame)
        return con.execute(query).df()
    finally:
        con.close()
