"""The scoring thread takes every request waiting for it together, and each request gets its own answers."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone

import pytest

from serving import logs
from serving.batcher import Batcher
from serving.schemas import Score, Transaction


def tx(i: int) -> Transaction:
    return Transaction(transaction_id=f"t{i}", customer_id="1", terminal_id="1", amount=float(i), timestamp=datetime(2025, 7, 1, tzinfo=timezone.utc))


class Scorer:
    """A stand-in for `ScoringService.score_many` that records each batch it is given and can be held
    at its first call, so that requests pile up behind it as they do behind a busy scoring thread."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.request_ids: list[list[str | None]] = []
        self.queued: list[list[float]] = []
        self.release, self.entered = threading.Event(), threading.Event()
        self.released_at = 0.0

    def __call__(self, transactions: Sequence[Transaction], deadlines: Sequence[float], request_ids: Sequence[str | None],
                 queued: Sequence[float], explained: Sequence[bool]) -> list[Score | Exception]:
        if not self.batches:
            self.entered.set()
            self.release.wait(5)
        self.batches.append([t.transaction_id for t in transactions])
        self.request_ids.append(list(request_ids))
        self.queued.append(list(queued))
        return [ValueError(f"{t.transaction_id} failed") if t.amount == 99 else
                Score(transaction_id=t.transaction_id, score=t.amount / 100, is_fraud=False, threshold=0.5, decision="approve", variant="champion",
                      model_version="1", features_missing=[], degraded=False) for t in transactions]


async def submit_all(batcher: Batcher, jobs: list[list[Transaction]], scorer: Scorer) -> list[list[Score] | BaseException]:
    first = asyncio.ensure_future(batcher.submit(jobs[0], time.perf_counter() + 5))
    while not scorer.entered.is_set():  # the thread is busy with the first request
        await asyncio.sleep(0.001)
    futures = []
    for i, job in enumerate(jobs[1:]):
        logs.request_id.set(f"r{i + 1}")
        futures.append(batcher.submit(job, time.perf_counter() + 5))
    await asyncio.sleep(0.02)  # they wait for the thread a while
    scorer.released_at = time.perf_counter()
    scorer.release.set()
    return await asyncio.gather(first, *futures, return_exceptions=True)


@pytest.fixture
def scorer() -> Scorer:
    return Scorer()


@contextmanager
def running(scorer: Scorer, cap: int = 64) -> Iterator[Batcher]:
    batcher = Batcher(scorer, cap)
    batcher.start()
    try:
        yield batcher
    finally:
        batcher.stop()


def run(scorer: Scorer, jobs: list[list[Transaction]], cap: int = 64) -> list[list[Score] | BaseException]:
    with running(scorer, cap) as batcher:
        return asyncio.run(submit_all(batcher, jobs, scorer))


def test_requests_that_waited_are_scored_together_each_with_its_own_answers(scorer) -> None:
    answers = run(scorer, [[tx(1)], [tx(2)], [tx(3), tx(4)], [tx(5)]])
    assert scorer.batches == [["t1"], ["t2", "t3", "t4", "t5"]]  # one read for everything that waited
    assert [[a.transaction_id for a in job] for job in answers] == [["t1"], ["t2"], ["t3", "t4"], ["t5"]]  # type: ignore[union-attr]
    assert scorer.request_ids[1] == ["r1", "r2", "r2", "r3"]  # each transaction logs under its request's id
    # each transaction's latency runs from its request's hand-over, the wait for the thread included
    queued = scorer.queued[1]
    assert queued == sorted(queued) and queued[1] == queued[2] and queued[-1] <= scorer.released_at - 0.02


def test_a_batch_holds_at_most_the_cap_and_never_splits_a_request(scorer) -> None:
    answers = run(scorer, [[tx(1)], [tx(2), tx(3)], [tx(4), tx(5)], [tx(6)], [tx(7), tx(8), tx(9), tx(10)]], cap=3)
    assert scorer.batches == [["t1"], ["t2", "t3"], ["t4", "t5", "t6"], ["t7", "t8", "t9", "t10"]]  # a request over the cap goes alone
    assert all(not isinstance(a, BaseException) for a in answers)


def test_one_failing_transaction_fails_its_request_only(scorer) -> None:
    answers = run(scorer, [[tx(1)], [tx(2)], [tx(3), tx(99)], [tx(4)]])
    assert isinstance(answers[2], ValueError) and "t99 failed" in str(answers[2])
    assert [a[0].transaction_id for a in (answers[1], answers[3])] == ["t2", "t4"]  # type: ignore[index]


def test_a_request_past_its_time_limit_is_left_and_the_rest_answered(scorer) -> None:
    async def main(batcher: Batcher) -> tuple[float, list[Score]]:
        held = asyncio.ensure_future(batcher.submit([tx(1)], time.perf_counter() + 5))
        started = time.perf_counter()
        late = batcher.submit([tx(2)], started + 0.05)
        with pytest.raises(TimeoutError):
            await late  # fails at its deadline on its own, while the thread is still busy
        waited = time.perf_counter() - started
        scorer.release.set()
        return waited, await held

    with running(scorer) as batcher:
        waited, answered = asyncio.run(main(batcher))
    assert 0.05 <= waited < 1.0 and [a.transaction_id for a in answered] == ["t1"]
