"""The prediction log: every answer and every shadow score, written off the request path.

Requests put a record in a bounded buffer and return; a background thread writes batches to the sink:
Parquet parts in the state folder by default, a PostgreSQL table when `prediction_log_url` is set. A
full buffer drops the record and counts it rather than slowing authorisations down. `read` gives the
monitoring jobs the same frame from either sink.

Parquet parts go to a folder per day of writing (`date=YYYY-MM-DD`, Hive-style, as query engines
expect), and `compact` merges each finished day into one file: a worker writes a part every second
when traffic is light, 170,000 files a day for two workers, which every monitoring read would open.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
import uuid
from collections import deque
from collections.abc import Callable
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from features.offline import select
from pipelines.runtime import write_atomically
from pipelines.settings import Settings

log = logging.getLogger("fraudops.predlog")

Record = dict[str, Any]
Sink = Callable[[list[Record]], None]

# Every record has these; the rest of its keys are the model's features, whatever they are.
COLUMNS = {
    "transaction_id": "text", "customer_id": "text", "terminal_id": "text", "timestamp": "timestamp",
    "score": "double precision", "is_fraud_predicted": "boolean", "variant": "text", "shadow": "boolean",
    "model_version": "text", "features_missing": "integer", "degraded": "boolean", "latency_ms": "double precision",
}
TABLE = "prediction_log"


# Arrow's types of the fixed columns; every other key of a record is a feature, a float.
ARROW_TYPES = {"text": pa.string(), "timestamp": pa.timestamp("us"), "double precision": pa.float64(), "boolean": pa.bool_(), "integer": pa.int64()}
TEXT_COLUMNS = [name for name, kind in COLUMNS.items() if kind == "text"]


class ParquetSink:
    """A part per batch. The records go to Arrow in one call against a schema built from the batch's
    keys (a struct array) instead of a list per column in Python and Arrow's type inference; only the
    text columns, whose values repeat, are dictionary-encoded. 8.1 against 6.5 us of CPU a record in
    parts of 4,096 (docs/06, "The prediction log"): the writer shares the worker's cores with requests."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    def __call__(self, batch: list[Record]) -> None:
        now = datetime.now(timezone.utc)
        partition = day_folder(self.directory, now.date())
        partition.mkdir(exist_ok=True)
        name = f"part-{now:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}.parquet"
        partial = partition / f".{name}.tmp"  # not `*.parquet`: readers glob for those
        # Columns from every record, not the first only (as `Table.from_pylist` takes them): a batch can
        # mix a champion and a challenger whose feature sets differ; a feature one model lacks is null.
        columns = dict.fromkeys(key for keys in dict.fromkeys(tuple(record) for record in batch) for key in keys)
        schema = pa.struct([(column, ARROW_TYPES[COLUMNS[column]] if column in COLUMNS else pa.float64()) for column in columns])
        try:
            pq.write_table(pa.Table.from_struct_array(pa.array(batch, type=schema)), partial, use_dictionary=TEXT_COLUMNS)
            os.replace(partial, partition / name)  # readers never see half a part
        finally:
            partial.unlink(missing_ok=True)


class PostgresSink:
    """One row per record: the fixed columns, and the features as JSONB, so a new feature set needs no
    migration. Written with COPY, one transaction per batch: a batch lands whole or not at all."""

    def __init__(self, url: str) -> None:
        import psycopg

        self.url = url
        self._connect = psycopg.connect
        self._conn: Any = None
        columns = ", ".join(f"{name} {kind}" for name, kind in COLUMNS.items())
        with psycopg.connect(url) as conn, conn.transaction():
            # Every worker runs this at start-up, and `IF NOT EXISTS` alone races in the catalog: the
            # lock, released at commit, lets one worker create the table while the others wait.
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [TABLE])
            conn.execute(f"CREATE TABLE IF NOT EXISTS {TABLE} ({columns}, features jsonb NOT NULL, logged_at timestamptz NOT NULL DEFAULT now())")
            conn.execute(f"CREATE INDEX IF NOT EXISTS {TABLE}_timestamp ON {TABLE} (timestamp)")

    def __call__(self, batch: list[Record]) -> None:
        if self._conn is None or self._conn.closed:
            self._conn = self._connect(self.url)
        try:
            with self._conn.transaction(), self._conn.cursor() as cursor:
                with cursor.copy(f"COPY {TABLE} ({', '.join(COLUMNS)}, features) FROM STDIN") as copy:
                    for record in batch:
                        features = {k: v for k, v in record.items() if k not in COLUMNS}
                        copy.write_row([*(record.get(name) for name in COLUMNS), orjson.dumps(features).decode()])
        except Exception:
            self._conn.close()  # reconnect for the next batch
            raise


def sink_for(settings: Settings) -> Sink:
    return PostgresSink(settings.prediction_log_url) if settings.prediction_log_url else ParquetSink(settings.predictions_dir)


def read(settings: Settings, since: datetime | None = None, until: datetime | None = None) -> pd.DataFrame:
    """Logged predictions by transaction time, one column per feature, from whichever sink is set."""
    clauses = ["TRUE"]
    if since is not None:
        clauses.append(f"timestamp >= TIMESTAMP '{since.isoformat(sep=' ')}'")
    if until is not None:
        clauses.append(f"timestamp < TIMESTAMP '{until.isoformat(sep=' ')}'")
    where = " AND ".join(clauses)
    if settings.prediction_log_url:
        import psycopg

        with psycopg.connect(settings.prediction_log_url) as conn, conn.cursor() as cursor:
            cursor.execute(f"SELECT {', '.join(COLUMNS)}, features::text FROM {TABLE} WHERE {where} ORDER BY timestamp")
            rows = cursor.fetchall()
        frame = pd.DataFrame([row[:-1] for row in rows], columns=list(COLUMNS))
        features = pd.DataFrame([orjson.loads(row[-1]) for row in rows], index=frame.index, dtype="float64")
        return pd.concat([frame, features], axis=1)
    directory = settings.predictions_dir
    if next(directory.glob("**/*.parquet"), None) is None:
        return pd.DataFrame()
    # DuckDB reads only the rows asked for; the day folders are the writer's, not a column of the log
    return select(f"SELECT * FROM read_parquet('{directory}/**/*.parquet', union_by_name=true, hive_partitioning=false) WHERE {where}").df()


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
    if settings.prediction_log_url or not settings.predictions_dir.exists():
        return 0
    before = before or datetime.now(timezone.utc).date()
    # One merge at a time (two monitor runs, a run and an operator): another's `_finish` would take
    # this merge's file, not yet listed, for one left behind, and delete it before its parts.
    with open(settings.predictions_dir / ".compact.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
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


class PredictionLog:
    """A bounded buffer that requests append to, and a writer thread that empties it in batches when a
    batch is full or `flush_seconds` have passed. The buffer is a deque, whose append needs neither a
    lock nor a wake-up: a `queue.Queue` took its lock and woke the writer for every record, a thread
    hand-over per transaction (py-spy: 5% of a busy worker's samples)."""

    def __init__(self, sink: Sink, batch_size: int, max_queue: int, flush_seconds: float = 1.0,
                 on_wake: Callable[[], None] = lambda: None) -> None:
        self.sink = sink
        self.on_wake = on_wake  # after every wake-up, the last at close: the service counts its metrics there
        self.batch_size = batch_size
        self.max_queue = max_queue
        self.flush_seconds = flush_seconds
        self.records: deque[Record] = deque()
        self.dropped = 0
        self.written = 0
        self._batch_ready = threading.Event()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)

    def __len__(self) -> int:
        """Records waiting for the writer."""
        return len(self.records)

    def start(self) -> None:
        self._thread.start()

    def put(self, record: Record) -> bool:
        """Queue one record, or drop and count it when `max_queue` are waiting (the sink is slow or down)."""
        if len(self.records) >= self.max_queue:
            self.dropped += 1
            return False
        self.records.append(record)
        # `>=`, not `==`: the scoring and shadow threads append at once, and the count can step past it
        if len(self.records) >= self.batch_size and not self._batch_ready.is_set():
            self._batch_ready.set()
        return True

    def close(self) -> None:
        """Write everything waiting, then stop the writer."""
        self._closing = True
        self._batch_ready.set()
        self._thread.join()

    def _run(self) -> None:
        while True:
            period_over = not self._batch_ready.wait(self.flush_seconds)
            self._batch_ready.clear()  # before taking records: one appended from here on sets it again
            closing = self._closing
            waiting = len(self.records)
            if not (period_over or closing):  # whole batches only, so parts are not written a few rows each
                waiting -= waiting % self.batch_size
            for start in range(0, waiting, self.batch_size):
                self._write([self.records.popleft() for _ in range(min(self.batch_size, waiting - start))])
            try:
                self.on_wake()
            except Exception:  # a failing hook must not stop the log
                log.exception("the prediction log's wake-up hook failed")
            if closing:
                return

    def _write(self, batch: list[Record]) -> None:
        try:
            self.sink(batch)
            self.written += len(batch)
        except Exception:  # the writer must survive a bad batch or a lost connection; the count shows the loss
            log.exception("writing %d prediction records failed", len(batch))
            self.dropped += len(batch)
