"""The prediction log: every answer and every shadow score, written off the request path.

Requests put a record in a bounded buffer and return; a background thread writes batches to the sink:
Parquet parts in the state folder by default, a PostgreSQL table when `prediction_log_url` is set. A
full buffer drops the record and counts it rather than slowing authorisations down. The columns, the
folder layout and the reader the monitoring jobs use are the log's contract, in `core.predictions`.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections import deque
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from core.predictions import COLUMNS, TABLE, day_folder
from core.runtime import atomic_path
from core.settings import Settings

log = logging.getLogger("fraudops.predlog")

Record = dict[str, Any]
Sink = Callable[[list[Record]], None]

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
        # Columns from every record, not the first only (as `Table.from_pylist` takes them): a batch can
        # mix a champion and a challenger whose feature sets differ; a feature one model lacks is null.
        columns = dict.fromkeys(key for keys in dict.fromkeys(tuple(record) for record in batch) for key in keys)
        schema = pa.struct([(column, ARROW_TYPES[COLUMNS[column]] if column in COLUMNS else pa.float64()) for column in columns])
        with atomic_path(partition / name) as partial:  # readers never see half a part
            pq.write_table(pa.Table.from_struct_array(pa.array(batch, type=schema)), partial, use_dictionary=TEXT_COLUMNS)


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
            for name, kind in COLUMNS.items():  # a log from an older release gains the columns added since
                conn.execute(f"ALTER TABLE {TABLE} ADD COLUMN IF NOT EXISTS {name} {kind}")

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
    return PostgresSink(settings.stores.prediction_log_url) if settings.stores.prediction_log_url else ParquetSink(settings.predictions_dir)


class PredictionLog:
    """A bounded buffer that requests append to, and a writer thread that empties it in batches when a
    batch is full or `flush_seconds` have passed. The buffer is a deque, whose append needs neither a
    lock nor a wake-up: a `queue.Queue` took its lock and woke the writer for every record, a thread
    hand-over per transaction (py-spy: 5% of a busy worker's samples)."""

    def __init__(self, sink: Sink, batch_size: int, max_queue: int, flush_seconds: float = 1.0,
                 on_wake: Callable[[], None] = lambda: None, what: str = "prediction records") -> None:
        self.sink = sink
        self.what = what  # what the records are, for the log line of a failed write
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
            log.exception("writing %d %s failed", len(batch), self.what)
            self.dropped += len(batch)
