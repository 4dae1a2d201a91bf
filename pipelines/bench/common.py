"""What every bench section shares: a section's table of figures and repeated timings."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

REDIS_URL = "127.0.0.1:6379,db=9"


@dataclass(frozen=True)
class Scale:
    """How big a section's simulated world is. `full` is the Handbook's; `small` a quick look;
    `smoke` the least that still runs every step of a section from an empty state, which is what
    tests/test_bench.py runs in `make test` (its figures mean nothing)."""

    customers: int
    terminals: int
    days: int


SCALES = {"full": Scale(5_000, 10_000, 183), "small": Scale(1_000, 2_000, 60), "smoke": Scale(300, 600, 50)}


@dataclass
class Section:
    """A section's table: one row a figure, with the unit it is in and a note for the reader. Every
    number a page may quote is a value here (`also` for a row's second figure, such as its p99), so
    that it reaches the results file and the docs render it from there (pipelines/docs.py)."""

    name: str
    rows: list[tuple[str, float, str, str]] = field(default_factory=list)  # figure, value, unit, note
    extra: dict[str, float | str] = field(default_factory=dict)  # "figure [name]" -> value, beside its row

    def add(self, figure: str, value: float, unit: str, note: str = "", **also: float | str) -> None:
        """A row, and beside it in the results file what else the pages quote of it: more figures,
        or a verdict against its target (`met` / `missed`), so no page types one."""
        self.rows.append((figure, value, unit, note))
        self.extra.update({f"{figure} [{name}]": v if isinstance(v, str) else float(v) for name, v in also.items()})

    def figures(self) -> dict[str, float | str]:
        """What the results file keeps of this section: every row's value and every `also`."""
        return {**{figure: value for figure, value, _, _ in self.rows}, **self.extra}


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
