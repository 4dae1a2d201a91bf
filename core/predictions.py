"""The prediction log's contract: its columns, its layout on disk and its reader.

The API writes the log (`serving.predlog`) and the monitoring jobs read it; both import this module
and neither imports the other. Parquet parts go to a folder per day of writing (`date=YYYY-MM-DD`,
Hive-style, as query engines expect), and `compact` merges each finished day into one file: a worker
writes a part every second when traffic is light, 170,000 files a day for two workers, which every
monitoring read would open. With `prediction_log_url` set, the log is one PostgreSQL table instead.
"""

from __future__ import annotations

import json
import os
import uuid
from datetime import date, datetime, timezone
from pathlib import Path

import orjson
import pandas as pd

from core.runtime import exclusive, write_atomically
from core.settings import Settings

# Every record has these; the rest of its keys are the model's features, whatever they are.
COLUMNS = {
    "transaction_id": "text", "customer_id": "text", "terminal_id": "text", "timestamp": "timestamp",
    "score": "double precision", "is_fraud_predicted": "boolean", "decision": "text", "rules": "text", "rules_shadow": "text", "propensity": "double precision",
    "variant": "text", "shadow": "boolean",
    "model_version": "text", "features_missing": "integer", "degraded": "boolean", "latency_ms": "double precision",
}
TABLE = "prediction_log"


def read(settings: Settings, since: datetime | None = None, until: datetime | None = None) -> pd.DataFrame:
    """Logged predictions by transaction time, one column per feature, from whichever sink is set."""
    clauses = ["TRUE"]
    if since is not None:
        clauses.append(f"timestamp >= TIMESTAMP '{since.isoformat(sep=' ')}'")
    if until is not None:
        clauses.append(f"timestamp < TIMESTAMP '{until.isoformat(sep=' ')}'")
    where = " AND ".join(clauses)
    if settings.stores.prediction_log_url:
        import psycopg

        with psycopg.connect(settings.stores.prediction_log_url) as conn, conn.cursor() as cursor:
            try:
                cursor.execute(f"SELECT {', '.join(COLUMNS)}, features::text FROM {TABLE} WHERE {where} ORDER BY timestamp")
            except psycopg.errors.UndefinedTable:  # the API creates it with its first write: nothing logged yet
                return pd.DataFrame()
            rows = cursor.fetchall()
        frame = pd.DataFrame([row[:-1] for row in rows], columns=list(COLUMNS))
        features = pd.DataFrame([orjson.loads(row[-1]) for row in rows], index=frame.index, dtype="float64")
        return pd.concat([frame, features], axis=1)
    directory = settings.predictions_dir
    if next(directory.glob("**/*.parquet"), None) is None:
        return pd.DataFrame()
    # DuckDB reads only the rows asked for; the day folders are the writer's, not a column of the log
    from core.query import select  # here: the API writes the log and never loads DuckDB

    return select(f"SELECT * FROM read_parquet('{directory}/**/*.parquet', union_by_name=true, hive_partitioning=false) WHERE {where}").df()


def logged(settings: Settings, ids: list[str], columns: tuple[str, ...] = ("transaction_id", "terminal_id", "timestamp")) -> pd.DataFrame:
    """The answered (not shadow) predictions of these transaction ids, one row each, with `columns`
    (among COLUMNS; transaction_id first)."""
    wanted = ", ".join(columns)
    if settings.stores.prediction_log_url:
        import psycopg

        with psycopg.connect(settings.stores.prediction_log_url) as conn, conn.cursor() as cursor:
            try:
                cursor.execute(f"SELECT DISTINCT ON (transaction_id) {wanted} FROM {TABLE} WHERE NOT shadow AND transaction_id = ANY(%s)", (ids,))
            except psycopg.errors.UndefinedTable:
                return pd.DataFrame(columns=list(columns))
            return pd.DataFrame(cursor.fetchall(), columns=list(columns))
    if next(settings.predictions_dir.glob("**/*.parquet"), None) is None:
        return pd.DataFrame(columns=list(columns))
    from core.query import select_joined

    return select_joined(f"SELECT DISTINCT ON (transaction_id) {wanted} FROM read_parquet('{settings.predictions_dir}/**/*.parquet', "
                         "union_by_name=true, hive_partitioning=false) WHERE NOT shadow AND transaction_id IN (SELECT transaction_id FROM asked)",
                         asked=pd.DataFrame({"transaction_id": ids}))


DAY = "date="  # a day folder's name before its ISO date: the Hive layout's `column=value`


def day_folder(directory: Path, day: date) -> Path:
    return directory / f"{DAY}{day.isoformat()}"


def compact(settings: Settings, before: date | None = None) -> int:
    """Merge the Parquet parts of every day before `before` (default: today, UTC) into one file a day;
    the number of parts merged. A PostgreSQL log is one table already: nothing to do.

    A reader never sees a record twice: the merged file stays hidden until the parts it replaces are
    gone. The list of those parts, written once the merged file is complete, is the commit point:
    a merge that stops before it leaves its parts as they were; one that stops after it is finished
    by the next call. Today's folder, which the API's writers still fill, is left alone."""
    if settings.stores.prediction_log_url or not settings.predictions_dir.exists():
        return 0
    before = before or datetime.now(timezone.utc).date()
    # One merge at a time (two monitor runs, a run and an operator): another's `_finish` would take
    # this merge's file, not yet listed, for one left behind, and delete it before its parts.
    with exclusive(settings.predictions_dir / ".compact.lock"):
        return sum(_compact_day(partition, before) for partition in sorted(settings.predictions_dir.glob(f"{DAY}*")))


def _compact_day(partition: Path, before: date) -> int:
    _finish(partition)
    try:
        day = date.fromisoformat(partition.name.removeprefix(DAY))
    except ValueError:
        return 0
    if day >= before:
        return 0
    for unfinished in partition.glob(".part-*.tmp"):  # a writer killed mid-part; that day is over
        unfinished.unlink()
    parts = sorted(partition.glob("[!.]*.parquet"))
    if len(parts) < 2:
        return 0
    token = uuid.uuid4().hex[:8]
    files = ", ".join(f"'{part}'" for part in parts)
    # in transaction-time order, so a window of the monitoring jobs reads only its row groups
    from core.query import select

    select(f"SELECT * FROM read_parquet([{files}], union_by_name=true, hive_partitioning=false) ORDER BY timestamp") \
        .write_parquet(str(partition / f".compacting-{token}.tmp"))
    write_atomically(partition / f".compacting-{token}.json", json.dumps([part.name for part in parts]))
    _finish(partition)
    return len(parts)


def _finish(partition: Path) -> None:
    """Complete the merges whose list of parts was written; drop a merged file that has none."""
    for manifest in partition.glob(".compacting-*.json"):
        token = manifest.name.removeprefix(".compacting-").removesuffix(".json")
        for name in json.loads(manifest.read_text()):
            (partition / name).unlink(missing_ok=True)
        merged = partition / f".compacting-{token}.tmp"
        if merged.exists():
            os.replace(merged, partition / f"part-compacted-{token}.parquet")
        manifest.unlink()
    for unfinished in partition.glob(".compacting-*.tmp"):
        unfinished.unlink()
