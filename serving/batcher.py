"""Requests that arrive while the worker is scoring are scored together, next.

One thread per worker does the scoring work. A request puts its transactions on a queue and awaits a
future; the thread takes everything waiting (up to `scoring_batch_max` transactions), reads the
online store once for all of it, scores and logs each transaction, and hands the answers back to the
event loop in one call. At low load a batch is one request and waits for nothing, since no timer
holds it back; under load the read, the statement and the two thread hops are shared by the whole
batch instead of paid per request. Measured in `make bench` (serving section) and docs/06.

The time limit stays with the request: its future fails with TimeoutError at its deadline (one timer on
the event loop, cancelled when the answer comes first), the request answers 503, and the thread neither
scores nor logs a transaction whose deadline passed during the read.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import cast

from serving import logs
from serving.schemas import Score, Transaction

log = logging.getLogger("fraudops.batcher")

# transactions, their deadlines, their requests' ids, the times they were handed over (all `perf_counter`),
# whether each answer carries its reason codes
ScoreMany = Callable[[Sequence[Transaction], Sequence[float], Sequence[str | None], Sequence[float], Sequence[bool]], list[Score | Exception]]


@dataclass
class _Job:
    transactions: Sequence[Transaction]
    deadline: float  # perf_counter time
    request_id: str | None
    queued: float  # perf_counter time of `submit`: a transaction's latency counts its wait for the thread
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[list[Score]]
    timer: asyncio.TimerHandle  # fails the future at the deadline; cancelled when the answers come first
    explained: bool  # the request asked for reason codes (?explain=true)


class Batcher:
    def __init__(self, score_many: ScoreMany, max_transactions: int) -> None:
        self.score_many, self.max_transactions = score_many, max_transactions
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._held: _Job | None = None  # taken from the queue, but it would have overfilled the last batch
        self._thread = threading.Thread(target=self._run, name="scoring", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Score what is queued, then end the thread."""
        self._queue.put(None)
        self._thread.join()

    def submit(self, transactions: Sequence[Transaction], deadline: float, explained: bool = False) -> asyncio.Future[list[Score]]:
        """A future of the answers, in order, or of the first transaction's error, or TimeoutError once
        `deadline` (a `perf_counter` time) passes; the work then finishes unseen. A timer on the future
        itself, where `asyncio.wait_for` added a second future and two callbacks to every request."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Score]] = loop.create_future()
        now = time.perf_counter()
        timer = loop.call_later(deadline - now, _expire, future)
        job = _Job(transactions, deadline, logs.request_id.get(), now, loop, future, timer, explained)
        self._queue.put(job)
        return job.future

    def _next_batch(self) -> list[_Job] | None:
        first = self._held or self._queue.get()
        self._held = None
        if first is None:
            return None
        batch, size = [first], len(first.transactions)
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                return batch
            if job is None:  # stopping: this batch still gets its answers
                self._queue.put(None)
                return batch
            if size + len(job.transactions) > self.max_transactions:
                self._held = job
                return batch
            batch.append(job)
            size += len(job.transactions)

    def _run(self) -> None:
        while (batch := self._next_batch()) is not None:
            transactions = [tx for job in batch for tx in job.transactions]
            deadlines = [job.deadline for job in batch for _ in job.transactions]
            request_ids = [job.request_id for job in batch for _ in job.transactions]
            queued = [job.queued for job in batch for _ in job.transactions]
            explained = [job.explained for job in batch for _ in job.transactions]
            try:
                answers = self.score_many(transactions, deadlines, request_ids, queued, explained)
            except Exception as exc:  # a bug in the path itself: every request of the batch gets it
                log.exception("scoring a batch of %d transactions failed", len(transactions))
                answers = [exc] * len(transactions)
            settled: dict[asyncio.AbstractEventLoop, list[tuple[_Job, list[Score | Exception]]]] = {}
            start = 0
            for job in batch:
                end = start + len(job.transactions)
                settled.setdefault(job.loop, []).append((job, answers[start:end]))
                start = end
            for loop, results in settled.items():
                try:
                    loop.call_soon_threadsafe(_settle, results)
                except RuntimeError:  # that loop has closed: nobody is waiting
                    pass


def _settle(results: list[tuple[_Job, list[Score | Exception]]]) -> None:
    """On the event loop: each request gets its answers, unless its time limit already answered it."""
    for job, answers in results:
        job.timer.cancel()
        if job.future.done():
            continue
        error = next((a for a in answers if isinstance(a, Exception)), None)
        if error is not None:
            job.future.set_exception(error)
        else:
            job.future.set_result(cast(list[Score], answers))


def _expire(future: asyncio.Future[list[Score]]) -> None:
    if not future.done():
        future.set_exception(TimeoutError())
