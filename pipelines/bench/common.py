"""What every bench section shares: a section's table of figures and repeated timings."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

REDIS_URL = "127.0.0.1:6379,db=9"


@dataclass
class Section:
    name: str
    rows: list[tuple[str, float, str, str]] = field(default_factory=list)  # figure, value, unit, note

    def add(self, figure: str, value: float, unit: str, note: str = "") -> None:
        self.rows.append((figure, value, unit, note))


def timed(fn: Callable[[], object], repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        out.append(time.perf_counter() - started)
    return out


def latency_ms(fn: Callable[[], object], n: int) -> tuple[float, float]:
    samples = np.array(timed(fn, n)) * 1000
    return float(np.median(samples)), float(np.quantile(samples, 0.99))
