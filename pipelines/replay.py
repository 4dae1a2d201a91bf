"""Replaying recorded transactions through a running API, as production traffic would arrive."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import httpx
import pandas as pd


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


async def _replay(url: str, bodies: list[dict[str, object]], concurrency: int, on_done: Callable[[int], None] | None) -> ReplayStats:
    statuses: Counter[int] = Counter()
    variants: Counter[str] = Counter()
    flagged = 0
    cursor = iter(bodies)
    started = time.perf_counter()

    async def worker(client: httpx.AsyncClient) -> None:
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
            if on_done is not None:
                on_done(1)

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=10.0) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    return ReplayStats(len(bodies), dict(statuses), time.perf_counter() - started, flagged, dict(variants))


def replay(url: str, transactions: pd.DataFrame, concurrency: int = 8, on_done: Callable[[int], None] | None = None) -> ReplayStats:
    return asyncio.run(_replay(url, payloads(transactions), concurrency, on_done))
