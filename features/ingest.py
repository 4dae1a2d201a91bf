"""Bring your own transactions: Parquet or CSV files into the same offline store the simulator fills.

Each file is read alone (memory stays bounded by the largest file), renamed to the raw schema,
validated whole, and written as one immutable part named by the file's content hash. Only days the
store does not hold yet are added, so re-ingesting a file adds nothing and a later export adds only
its new days; the next `features materialize` then loads only what is new.

Only Parquet and CSV are read: nothing that can execute code (pickle, joblib) is ever loaded.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow.parquet as pq

from core.query import select
from features.offline import parts_glob, write_part
from features.schema import SchemaError, validate_transactions

READABLE = (".parquet", ".csv")
PRESETS: dict[str, dict[str, str]] = {
    # The Fraud Detection Handbook's published simulated dataset, column names as they are.
    "handbook": {
        "TRANSACTION_ID": "transaction_id",
        "TX_DATETIME": "timestamp",
        "CUSTOMER_ID": "customer_id",
        "TERMINAL_ID": "terminal_id",
        "TX_AMOUNT": "amount",
        "TX_FRAUD": "is_fraud",
        "TX_FRAUD_SCENARIO": "fraud_scenario",
    },
}


@dataclass
class FileResult:
    path: Path
    rows_read: int
    rows_added: int
    note: str


@dataclass
class IngestReport:
    files: list[FileResult] = field(default_factory=list)

    @property
    def rows_added(self) -> int:
        return sum(f.rows_added for f in self.files)


def parse_columns(spec: str | None) -> dict[str, str]:
    """`--columns` as 'theirs=ours,theirs=ours', or the name of a preset."""
    if not spec:
        return {}
    if spec in PRESETS:
        return PRESETS[spec]
    mapping = {}
    for pair in spec.split(","):
        theirs, sep, ours = pair.partition("=")
        if not sep or not theirs.strip() or not ours.strip():
            raise ValueError(f"--columns: expected 'theirs=ours' pairs or a preset ({', '.join(PRESETS)}), got {pair!r}")
        mapping[theirs.strip()] = ours.strip()
    return mapping


def discover(paths: list[Path]) -> list[Path]:
    """Files to ingest, in name order; anything that is not Parquet or CSV is refused by name."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in READABLE))
        elif not path.exists():
            raise FileNotFoundError(f"{path}: no such file or folder")
        elif path.suffix.lower() not in READABLE:
            raise SchemaError(f"{path}: not a Parquet or CSV file; only those are read (never pickles)")
        else:
            files.append(path)
    return files


def read_file(path: Path, mapping: dict[str, str]) -> pd.DataFrame:
    # CSV columns are read as text: ids keep their format, and the schema does every conversion.
    frame = pq.read_table(path).to_pandas() if path.suffix.lower() == ".parquet" else pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    return frame.rename(columns=mapping)


def _digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _stored_days(directory: Path) -> set:
    if not any(directory.glob("*.parquet")):
        return set()
    query = f"SELECT DISTINCT CAST(timestamp AS DATE) FROM read_parquet('{parts_glob(directory)}')"
    return {row[0] for row in select(query).fetchall()}


def _clashing_ids(directory: Path, batch: pd.DataFrame) -> list[str]:
    """Ids of the batch that the store already holds (on other days): a sign of two feeds mixed up."""
    if not any(directory.glob("*.parquet")):
        return []
    con = duckdb.connect()
    con.register("batch", batch[["transaction_id"]])
    query = f"SELECT b.transaction_id FROM batch b JOIN read_parquet('{parts_glob(directory)}') s USING (transaction_id) LIMIT 5"
    return sorted(row[0] for row in con.execute(query).fetchall())


def ingest(paths: list[Path], directory: Path, mapping: dict[str, str], on_file: Callable[[FileResult], None] | None = None) -> IngestReport:
    report = IngestReport()
    for path in discover(paths):
        name = f"ingest-{_digest(path)[:20]}"
        if (directory / f"{name}.parquet").exists():
            result = FileResult(path, 0, 0, "already ingested: nothing added")
        else:
            batch = validate_transactions(read_file(path, mapping), source=str(path))
            directory.mkdir(parents=True, exist_ok=True)
            days = _stored_days(directory)
            new = batch[~batch["timestamp"].dt.date.isin(days)] if days else batch
            clashes = _clashing_ids(directory, new)
            if clashes:
                raise SchemaError(f"{path}: rejected, nothing written: column transaction_id: ids already in the store, e.g. {', '.join(sorted(clashes))}")
            if new.empty:
                result = FileResult(path, len(batch), 0, "every day already in the store: nothing added")
            else:
                write_part(new, directory, name)
                skipped = len(batch) - len(new)
                result = FileResult(path, len(batch), len(new), f"skipped {skipped:,} rows of days already stored" if skipped else "added")
        report.files.append(result)
        if on_file is not None:
            on_file(result)
    return report
