"""The offline transaction store: immutable Parquet parts that the simulator and ingest append to.

Each part is validated, written to a temporary name and renamed into place, so a reader never sees a
half-written file and a failed batch leaves nothing behind.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from core.query import select, select_joined
from core.runtime import atomic_path
from features.schema import validate_transactions


def write_part(frame: pd.DataFrame, directory: Path, name: str) -> Path:
    batch = validate_transactions(frame, source=name)
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"{name}.parquet"
    with atomic_path(final) as partial:
        batch.to_parquet(partial, index=False)
    return final


def parts_glob(directory: Path) -> str:
    return str(directory / "*.parquet")


def transactions_between(directory: Path, start: object, end: object | None = None, where: str = "TRUE") -> pd.DataFrame:
    """Transactions with `start` <= timestamp < `end` (no end: all after `start`) that also match
    `where`, in time order: the one window query over the offline store."""
    until = "" if end is None else f" AND timestamp < TIMESTAMP '{end}'"
    return read_transactions(directory, f"({where}) AND timestamp >= TIMESTAMP '{start}'{until}")


def read_transactions(directory: Path, where: str = "TRUE") -> pd.DataFrame:
    """Transactions matching a SQL predicate, in time order."""
    query = f"SELECT * FROM read_parquet('{parts_glob(directory)}') WHERE {where} ORDER BY timestamp, transaction_id"
    return select(query).df()


def with_ids(directory: Path, ids: list[str]) -> pd.DataFrame:
    """The stored transactions among these ids: transaction_id, terminal_id, timestamp."""
    if not any(directory.glob("*.parquet")):
        return pd.DataFrame(columns=["transaction_id", "terminal_id", "timestamp"])
    return select_joined(f"SELECT transaction_id, terminal_id, timestamp FROM read_parquet('{parts_glob(directory)}') "
                         "WHERE transaction_id IN (SELECT transaction_id FROM asked)", asked=pd.DataFrame({"transaction_id": ids}))
