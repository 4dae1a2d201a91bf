"""Replaying recorded transactions through a running API, as production traffic would arrive, with
their fraud labels arriving `label_delay_days` later as chargebacks, never earlier, through the one
label path (`features.labels.record`: the label store and the live state's terminal risk)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import httpx
import pandas as pd

from core.settings import Settings
from features.live import DAY_US
from features.offline import transactions_between
from features.schema import micros

Fraud = tuple[str, str, int]  # (terminal_id, transaction_id, transaction time in microseconds)


@dataclass
class LabelFeed:
    """Fraud labels in order of arrival, handed to `deliver` once the replay's clock reaches them. A
    transaction the API declined never gets one: it never happened, so no chargeback comes back
    (the censoring that exploration answers, `model.decisions.explore`)."""

    arrivals: list[tuple[int, Fraud]]  # (arrival time in microseconds, the fraud)
    deliver: Callable[[list[Fraud]], None]
    delivered: int = 0
    declined: set[str] = field(default_factory=set)  # transaction ids the replay's answers declined
    censored: int = 0

    def until(self, us: int) -> None:
        """Deliver every label that has arrived by `us`, but those of declined transactions."""
        due = 0
        while self.delivered + due < len(self.arrivals) and self.arrivals[self.delivered + due][0] <= us:
            due += 1
        if due:
            frauds = [fraud for _, fraud in self.arrivals[self.delivered:self.delivered + due]]
            kept = [fraud for fraud in frauds if fraud[1] not in self.declined]
            self.censored += len(frauds) - len(kept)
            if kept:
                self.deliver(kept)
            self.delivered += due

    def next_arrival(self) -> int | None:
        return self.arrivals[self.delivered][0] if self.delivered < len(self.arrivals) else None


def label_feed(settings: Settings, start: pd.Timestamp, end: pd.Timestamp) -> LabelFeed:
    """The simulator's chargebacks that arrive while [start, end) is replayed, each `label_delay_days`
    after its transaction: the world's ground truth (the offline store's `is_fraud`, which only the
    simulated feeds read), recorded as a card issuer's chargeback feed would send it."""
    from features.labels import record

    delay = settings.features.label_delay_days * DAY_US
    frauds = transactions_between(settings.transactions_dir, start - pd.Timedelta(microseconds=delay), end, where="is_fraud = 1")
    us = micros(frauds)
    arrivals = sorted((u + delay, (str(m), str(t), u)) for m, t, u in zip(frauds["terminal_id"], frauds["transaction_id"], us))

    def deliver(due: list[Fraud]) -> None:
        record(settings, pd.DataFrame({"transaction_id": [t for _, t, _ in due], "is_fraud": 1,
                                       "reported_at": pd.to_datetime([u + delay for _, _, u in due], unit="us")}), "chargeback", "replay")

    return LabelFeed(arrivals, deliver)


@dataclass
class ReplayStats:
    sent: int
    statuses: dict[int, int]
    seconds: float
    flagged: int
    by_variant: dict[str, int]

    @property
    def rate(self) -> float:
        return self.sent / self.seconds if self.seconds else 0.0


def segments(times: list[int], feed: LabelFeed | None) -> list[tuple[int, int]]:
    """Runs of transactions that no label arrives in the middle of, as [first, last) positions: each
    is sent concurrently after the labels due at its first transaction were delivered."""
    if feed is None:
        return [(0, len(times))]
    bounds = [0]
    arrivals = iter(sorted(arrival for arrival, _ in feed.arrivals))
    arrival = next(arrivals, None)
    for i, at in enumerate(times):
        if arrival is not None and at >= arrival:
            if bounds[-1] != i:
                bounds.append(i)
            while arrival is not None and arrival <= at:
                arrival = next(arrivals, None)
    return list(zip(bounds, [*bounds[1:], len(times)]))


def payloads(transactions: pd.DataFrame) -> list[dict[str, object]]:
    return [
        {
            "transaction_id": str(r.transaction_id),
            "customer_id": str(r.customer_id),
            "terminal_id": str(r.terminal_id),
            "amount": float(r.amount),
            "timestamp": r.timestamp.isoformat() + "Z",
        }
        for r in transactions.itertuples(index=False)
    ]


async def _replay(url: str, bodies: list[dict[str, object]], times: list[int], concurrency: int,
                  on_done: Callable[[int], None] | None, feed: LabelFeed | None) -> ReplayStats:
    statuses: Counter[int] = Counter()
    variants: Counter[str] = Counter()
    flagged = 0
    started = time.perf_counter()

    async def worker(client: httpx.AsyncClient, cursor: Iterator[dict[str, object]]) -> None:
        nonlocal flagged
        for body in cursor:  # workers share one iterator: each body is sent exactly once
            try:
                response = await client.post("/predict", json=body)
            except httpx.TransportError:
                statuses[0] += 1  # no HTTP answer at all: counted under status 0
                continue
            statuses[response.status_code] += 1
            if response.status_code == 200:
                answer = response.json()
                variants[answer["variant"]] += 1
                flagged += answer["is_fraud"]
                if feed is not None and answer["decision"] == "decline":
                    feed.declined.add(answer["transaction_id"])
            if on_done is not None:
                on_done(1)

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=10.0) as client:
        for first, last in segments(times, feed):
            if feed is not None:
                feed.until(times[first])
            cursor = iter(bodies[first:last])
            await asyncio.gather(*(worker(client, cursor) for _ in range(concurrency)))
    return ReplayStats(len(bodies), dict(statuses), time.perf_counter() - started, flagged, dict(variants))


def replay(url: str, transactions: pd.DataFrame, concurrency: int = 8, on_done: Callable[[int], None] | None = None,
           feed: LabelFeed | None = None) -> ReplayStats:
    """Send `transactions` in time order, `concurrency` at a time; with a `feed`, each label is
    delivered before the first transaction at or after its arrival is sent."""
    times = micros(transactions)
    return asyncio.run(_replay(url, payloads(transactions), times, concurrency, on_done, feed))
