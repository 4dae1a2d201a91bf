"""Card-transaction simulator after the Fraud Detection Handbook (Le Borgne et al., chapter 3).

Customers and terminals sit on a 100x100 grid; a customer pays only at terminals within `radius` of
home. Daily transaction counts are Poisson, amounts normal per customer, times of day normal around
noon. Three fraud scenarios label the data:

1. any amount above 220 is fraud (a rule a baseline can learn);
2. every day two terminals are compromised for 28 days: all their transactions are fraud
   (the model needs terminal risk features, computed with the label delay);
3. every day three customers' credentials leak for 14 days: a third of their transactions become
   fraud with five times the amount (the model needs customer spending features).

A fourth scenario is this project's, on unless the Handbook is reproduced alone (`card_testing`):

4. card testing: every day a few cards are tested by a fraudster, 5 to 10 charges of a few units
   within ten minutes, then 1 to 3 charges of several times the card's usual amount within the next
   half hour, at terminals in the card's reach. Nothing in a daily snapshot sees it in time; a
   one-hour window that includes the transaction does (docs/03-features.md).

Drift scenarios change the production period for the monitoring demo; they are off by default.

Everything is vectorized over days-chunks of transactions, so the handbook's full scale (1.75 million
transactions) takes seconds, and memory is bounded by the chunk size.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

from core.settings import Settings, SimulationSettings
from features.offline import write_part

SECONDS_PER_DAY = 86_400


class Drift(str, Enum):
    """Named changes to the period from `drift_start_day` on, for exercising the monitor."""

    amount_inflation = "amount_inflation"  # every amount grows by 60%: data drift on spend features
    terminal_wave = "terminal_wave"  # ten times more compromised terminals: prediction and label drift
    # Concept drift: fraud on leaked cards stops spending five times the owner's amounts and spends
    # like the owner. The inputs and the fraud rate stay put; P(fraud | features) is what changes.
    mimicry = "mimicry"
    # Card testing starts: scenario 4 from `drift_start_day` on, in a world simulated without it
    # (`card_testing` off), so that a model trained before has never seen it (the rules bench).
    card_testing = "card_testing"


# The settings' defaults, not the environment's values (`model_construct` reads no variables): a config
# built directly is the same wherever it runs, and a default is written once, in core/settings.py.
_DEFAULT = SimulationSettings.model_construct()


@dataclass(frozen=True)
class SimulationConfig:
    customers: int = _DEFAULT.customers
    terminals: int = _DEFAULT.terminals
    days: int = _DEFAULT.days
    start_date: date = date.fromisoformat(_DEFAULT.start_date)
    seed: int = _DEFAULT.seed
    radius: float = 5.0
    drift: tuple[Drift, ...] = ()
    drift_start_day: int | None = None
    chunk_days: int = 16
    # The handbook compromises 2 of 10,000 terminals and 3 of 5,000 customers a day; scaled to the
    # population so a small demo keeps the handbook's fraud share instead of multiplying it.
    compromised_terminals_per_day: float = 2 / 10_000
    compromised_customers_per_day: float = 3 / 5_000
    terminal_compromise_days: int = 28
    customer_compromise_days: int = 14
    inflation: float = field(default=1.6)
    card_testing: bool = _DEFAULT.card_testing
    card_tests_per_day: float = 3 / 5_000

    @classmethod
    def from_settings(cls, simulation: SimulationSettings, **overrides: Any) -> SimulationConfig:
        """The simulation the settings describe: one place that turns settings into a config."""
        values: dict[str, Any] = {**simulation.model_dump(), "start_date": date.fromisoformat(simulation.start_date)}
        return cls(**{**values, **overrides})


@dataclass(frozen=True)
class Profiles:
    customer_xy: np.ndarray
    mean_amount: np.ndarray
    std_amount: np.ndarray
    tx_per_day: np.ndarray
    terminal_xy: np.ndarray
    # CSR layout of each customer's reachable terminals: customer c uses reach[offsets[c]:offsets[c+1]].
    reach: np.ndarray
    offsets: np.ndarray


def make_profiles(cfg: SimulationConfig) -> Profiles:
    rng = np.random.default_rng([cfg.seed, 0])
    customer_xy = rng.uniform(0, 100, size=(cfg.customers, 2))
    mean_amount = rng.uniform(5, 100, size=cfg.customers)
    tx_per_day = rng.uniform(0, 4, size=cfg.customers)
    terminal_xy = rng.uniform(0, 100, size=(cfg.terminals, 2))
    neighbours = cKDTree(terminal_xy).query_ball_point(customer_xy, r=cfg.radius)
    counts = np.fromiter((len(n) for n in neighbours), dtype=np.int64, count=cfg.customers)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    reach = np.fromiter((t for n in neighbours for t in sorted(n)), dtype=np.int64, count=int(offsets[-1]))
    return Profiles(customer_xy, mean_amount, mean_amount / 2, tx_per_day, terminal_xy, reach, offsets)


def _compromise_calendar(
    rng: np.random.Generator, population: int, days: int, rate: np.ndarray, duration: int
) -> np.ndarray:
    """Boolean [entity, day] matrix: True while the entity is compromised; `rate` is per entity per day."""
    calendar = np.zeros((population, days), dtype=bool)
    for day in range(days):  # one loop step per day, not per transaction
        chosen = rng.choice(population, size=min(rng.poisson(rate[day] * population), population), replace=False)
        calendar[chosen, day : day + duration] = True
    return calendar


def _calendars(cfg: SimulationConfig, drift_from: int) -> tuple[np.ndarray, np.ndarray]:
    """Which terminals and which cards are compromised on which day: [terminal, day] and [card, day]."""
    fraud_rng = np.random.default_rng([cfg.seed, 1])
    day_index = np.arange(cfg.days)
    terminals_per_day = np.where(
        (day_index >= drift_from) & (Drift.terminal_wave in cfg.drift),
        cfg.compromised_terminals_per_day * 10,
        cfg.compromised_terminals_per_day,
    )
    terminal_calendar = _compromise_calendar(
        fraud_rng, cfg.terminals, cfg.days, terminals_per_day, cfg.terminal_compromise_days
    )
    customer_calendar = _compromise_calendar(
        fraud_rng, cfg.customers, cfg.days, np.full(cfg.days, cfg.compromised_customers_per_day), cfg.customer_compromise_days
    )
    return terminal_calendar, customer_calendar


def _chunk(cfg: SimulationConfig, p: Profiles, rng: np.random.Generator, days: np.ndarray, drift_from: int,
           calendars: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, ...]:
    """One chunk of days' transactions, unordered: (customer, day, seconds, amount, terminal, scenario)."""
    terminal_calendar, customer_calendar = calendars
    reachable = np.diff(p.offsets)
    counts = rng.poisson(np.outer(p.tx_per_day, np.ones(len(days))))  # [customer, day]
    counts[reachable == 0] = 0  # a customer with no terminal in reach cannot pay anywhere
    customer = np.repeat(np.repeat(np.arange(cfg.customers), len(days)), counts.ravel())
    day = np.repeat(np.tile(days, cfg.customers), counts.ravel())
    seconds = rng.normal(SECONDS_PER_DAY / 2, 20_000, size=customer.size).astype(np.int64)
    keep = (seconds > 0) & (seconds < SECONDS_PER_DAY)
    customer, day, seconds = customer[keep], day[keep], seconds[keep]

    amount = rng.normal(p.mean_amount[customer], p.std_amount[customer])
    negative = amount < 0
    amount[negative] = rng.uniform(0, 2 * p.mean_amount[customer[negative]])
    if Drift.amount_inflation in cfg.drift:
        amount = np.where(day >= drift_from, amount * cfg.inflation, amount)
    amount = np.round(amount, 2)
    pick = (rng.uniform(size=customer.size) * reachable[customer]).astype(np.int64)
    terminal = p.reach[p.offsets[customer] + pick]

    scenario = np.zeros(customer.size, dtype=np.int8)
    scenario[amount > 220] = 1
    scenario[terminal_calendar[terminal, day]] = 2
    leaked = customer_calendar[customer, day] & (rng.uniform(size=customer.size) < 1 / 3)
    inflated = leaked & ~((Drift.mimicry in cfg.drift) & (day >= drift_from))
    amount[inflated] = np.round(amount[inflated] * 5, 2)
    scenario[leaked] = 3

    tested_days = days if cfg.card_testing else days[days >= drift_from] if Drift.card_testing in cfg.drift else days[:0]
    if tested_days.size:
        burst = _card_tests(cfg, p, rng, tested_days, reachable)
        return tuple(np.concatenate([base, extra]) for base, extra in zip((customer, day, seconds, amount, terminal, scenario), burst))
    return customer, day, seconds, amount, terminal, scenario


def simulate_chunks(
    cfg: SimulationConfig, on_chunk: Callable[[int], None] | None = None
) -> Iterator[pd.DataFrame]:
    """Yield the transactions chunk by chunk of days, in time order, each a frame in the raw schema."""
    p = make_profiles(cfg)
    drift_from = cfg.drift_start_day if cfg.drift_start_day is not None else cfg.days
    calendars = _calendars(cfg, drift_from)
    start = pd.Timestamp(cfg.start_date)
    next_id = 0
    for chunk, first in enumerate(range(0, cfg.days, cfg.chunk_days)):
        days = np.arange(first, min(first + cfg.chunk_days, cfg.days))
        customer, day, seconds, amount, terminal, scenario = _chunk(cfg, p, np.random.default_rng([cfg.seed, 2, chunk]), days,
                                                                   drift_from, calendars)
        order = np.lexsort((seconds, day))
        n = order.size
        frame = pd.DataFrame(
            {
                "transaction_id": np.arange(next_id, next_id + n).astype(str),
                "timestamp": start + pd.to_timedelta(day[order] * SECONDS_PER_DAY + seconds[order], unit="s"),
                "customer_id": customer[order].astype(str),
                "terminal_id": terminal[order].astype(str),
                "amount": amount[order],
                "is_fraud": (scenario[order] > 0).astype(np.int8),
                "fraud_scenario": scenario[order],
            }
        )
        next_id += n
        if on_chunk is not None:
            on_chunk(len(days))
        yield frame


def _card_tests(cfg: SimulationConfig, p: Profiles, rng: np.random.Generator, days: np.ndarray,
                reachable: np.ndarray) -> tuple[np.ndarray, ...]:
    """Scenario 4's transactions for `days`: (customer, day, seconds, amount, terminal, scenario)."""
    able = np.flatnonzero(reachable > 0)
    tested = [(c, d) for d in days for c in rng.choice(able, size=min(rng.poisson(cfg.card_tests_per_day * cfg.customers), able.size), replace=False)]
    columns: list[list[np.ndarray]] = [[] for _ in range(6)]
    for c, d in tested:
        small, large = int(rng.integers(5, 11)), int(rng.integers(1, 4))
        start = int(rng.integers(0, SECONDS_PER_DAY - 3_000))
        at = np.concatenate([start + np.sort(rng.integers(0, 600, small)), start + 600 + np.sort(rng.integers(0, 1_800, large))])
        amount = np.concatenate([rng.uniform(0.5, 5, small), p.mean_amount[c] * rng.uniform(3, 6, large)]).round(2)
        terminal = p.reach[p.offsets[c] + rng.integers(0, reachable[c], small + large)]
        n = small + large
        for column, values in zip(columns, (np.full(n, c), np.full(n, d), at, amount, terminal, np.full(n, 4, dtype=np.int8))):
            column.append(values)
    empty = (np.int64, np.int64, np.int64, np.float64, np.int64, np.int8)
    return tuple(np.concatenate(column) if column else np.zeros(0, dtype=kind) for column, kind in zip(columns, empty))


def write_simulation(cfg: SimulationConfig, directory: Path, replace: bool = False, on_chunk: Callable[[int], None] | None = None) -> int:
    """Simulate into the offline store; returns the number of transactions written.

    Refuses a store that already holds transactions unless `replace`, since two simulations in one
    store would collide on transaction ids.
    """
    existing = sorted(directory.glob("*.parquet")) if directory.exists() else []
    if existing and not replace:
        raise FileExistsError(f"{directory} already holds {len(existing)} part(s); pass replace=True (--replace) to start over")
    for part in existing:
        part.unlink()
    total = 0
    for chunk, frame in enumerate(simulate_chunks(cfg, on_chunk)):
        write_part(frame, directory, f"sim-{chunk:04d}")
        total += len(frame)
    return total


def deliver_chargebacks(settings: Settings, until: datetime | None = None) -> int:
    """The simulated world's chargeback feed up to `until` (default: all of it): every simulated
    fraud whose chargeback, `label_delay_days` after the transaction, was reported by then, recorded
    through the one label path (`features.labels.record`). The offline store's `is_fraud` is the
    simulator's ground truth, and only its feeds read it: this one, for the past, and the replay's
    (`pipelines.replay.label_feed`), as traffic goes on. The number of chargebacks delivered (those
    already in the store change nothing)."""
    from features.labels import record
    from features.offline import read_transactions

    frauds = read_transactions(settings.transactions_dir, "is_fraud = 1")
    reported = frauds["timestamp"] + pd.Timedelta(days=settings.features.label_delay_days)
    feed = pd.DataFrame({"transaction_id": frauds["transaction_id"], "is_fraud": 1, "reported_at": reported})
    if until is not None:
        feed = feed[feed["reported_at"] <= pd.Timestamp(until)]
    record(settings, feed, "chargeback", "simulator")
    return len(feed)
