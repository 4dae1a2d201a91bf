"""The prediction log: every answer and every shadow score, written off the request path.

Requests put a record on a bounded queue and return; a background thread writes batches as Parquet
parts. A full queue drops the record and counts it rather than slowing authorisations down.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

log = logging.getLogger("fraudops.predlog")


class PredictionLog:
    def __init__(self, directory: Path, batch_size: int, max_queue: int, flush_seconds: float = 1.0) -> None:
        self.directory = directory
        self.batch_size = batch_size
        self.flush_seconds = flush_seconds
        self.queue: queue.Queue[dict[str, Any] | None] = queue.Queue(maxsize=max_queue)
        self.dropped = 0
        self.written = 0
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._thread.start()

    def put(self, record: dict[str, Any]) -> bool:
        try:
            self.queue.put_nowait(record)
            return True
        except queue.Full:
            self.dropped += 1
            return False

    def close(self) -> None:
        """Flush everything queued, then stop the writer."""
        self.queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        batch: list[dict[str, Any]] = []
        deadline = time.monotonic() + self.flush_seconds
        while True:
            try:
                item = self.queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                item = ...
            if item is None:
                self._write(batch)
                return
            if item is not ...:
                batch.append(item)
            if len(batch) >= self.batch_size or (batch and time.monotonic() >= deadline):
                self._write(batch)
                batch = []
            if time.monotonic() >= deadline:
                deadline = time.monotonic() + self.flush_seconds

    def _write(self, batch: list[dict[str, Any]]) -> None:
        if not batch:
            return
        name = f"part-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}.parquet"
        partial = self.directory / f".{name}.tmp"
        try:
            pq.write_table(pa.Table.from_pylist(batch), partial)
            os.replace(partial, self.directory / name)
            self.written += len(batch)
        except Exception:  # the writer must survive a bad batch; the count shows the loss
            log.exception("writing %d prediction records failed", len(batch))
            self.dropped += len(batch)
            partial.unlink(missing_ok=True)
