"""`fraudops bench`: measured performance, each figure beside a peer measured in the same run.

Timings are repeated and reported as medians (and p99 for latencies), never a single run; the
machine's own noise is part of what a reader should see.
"""

from __future__ import annotations

import json
import shutil
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from pipelines.runtime import quiet_stdout, service_available
from pipelines.settings import Settings

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


def features_section(settings: Settings, scale: str, repeat: int) -> Section:
    """Simulation, feature computation, materialization, the historical join, online lookups."""
    from features.compute import compute_features
    from features.offline import read_transactions
    from features.simulator import SimulationConfig, write_simulation
    from features.store import apply, historical_features, materialize, open_store
    from serving.online import OnlineFeatures

    section = Section(f"features ({scale} scale)")
    size = dict(customers=5_000, terminals=10_000, days=183) if scale == "full" else dict(customers=1_000, terminals=2_000, days=60)
    cfg = SimulationConfig(**size, start_date=date.fromisoformat(settings.start_date))
    rows = 0

    def simulate() -> None:
        nonlocal rows
        rows = write_simulation(cfg, settings.transactions_dir, replace=True)

    runs = timed(simulate, repeat)
    section.add("simulate", statistics.median(runs), "s", f"{rows:,} transactions, median of {repeat}")
    runs = timed(lambda: compute_features(settings.transactions_dir, settings.features_dir, settings.label_delay_days), repeat)
    section.add("compute feature snapshots (DuckDB)", statistics.median(runs), "s", f"median of {repeat}")

    apply(settings)
    store = open_store(settings)
    entity = read_transactions(settings.transactions_dir).tail(1_000_000)
    runs = timed(lambda: historical_features(store, settings.feature_service, entity), 1 if scale == "full" else repeat)
    section.add("get_historical_features", min(runs), "s", f"{len(entity):,} entity rows, DuckDB offline store")

    end = datetime.combine(cfg.start_date, datetime.min.time()) + timedelta(days=cfg.days)
    snapshot_rows = cfg.customers + cfg.terminals
    started = time.perf_counter()
    with quiet_stdout():
        materialize(settings, end)
    seconds = time.perf_counter() - started
    section.add("materialize (SQLite)", snapshot_rows / seconds, "rows/s", f"{snapshot_rows:,} latest snapshots in {seconds:.1f}s")

    customers = entity["customer_id"].to_numpy()
    terminals = entity["terminal_id"].to_numpy()
    rng = np.random.default_rng(0)

    def one_lookup(online: OnlineFeatures) -> Callable[[], object]:
        def call() -> object:
            i = int(rng.integers(len(customers)))
            return online.lookup(customers[i], terminals[i], 10.0, 1_750_000_000)
        return call

    fs = store.get_feature_service(settings.feature_service)

    def feast_service() -> object:
        i = int(rng.integers(len(customers)))
        row = {"customer_id": customers[i], "terminal_id": terminals[i], "amount": 10.0, "tx_unix_seconds": 1_750_000_000}
        return store.get_online_features(features=fs, entity_rows=[row]).to_dict()

    p50, p99 = latency_ms(one_lookup(OnlineFeatures(settings)), 2_000)
    section.add("online lookup, SQLite, p50", p50, "ms", "views + shared request-time logic")
    section.add("online lookup, SQLite, p99", p99, "ms")
    peer50, peer99 = latency_ms(feast_service, 2_000)
    section.add("peer: Feast feature service, SQLite, p50", peer50, "ms", "get_online_features with the on-demand view")
    section.add("peer: Feast feature service, SQLite, p99", peer99, "ms", f"ours is {peer99 / p99:.1f}x faster at p99")

    if service_available("127.0.0.1", 6379):
        import redis

        redis.Redis(host="127.0.0.1", port=6379, db=9).flushdb()
        on_redis = settings.model_copy(update={"feast_redis_url": REDIS_URL, "state_dir": settings.state_dir / "redis"})
        on_redis.feast_dir.mkdir(parents=True, exist_ok=True)
        shutil.copytree(settings.features_dir, on_redis.features_dir, dirs_exist_ok=True)
        apply(on_redis)
        started = time.perf_counter()
        with quiet_stdout():
            materialize(on_redis, end)
        seconds = time.perf_counter() - started
        section.add("materialize (Redis)", snapshot_rows / seconds, "rows/s", f"{snapshot_rows:,} latest snapshots")
        p50, p99 = latency_ms(one_lookup(OnlineFeatures(on_redis)), 2_000)
        section.add("online lookup, Redis, p50", p50, "ms")
        section.add("online lookup, Redis, p99", p99, "ms")
        redis.Redis(host="127.0.0.1", port=6379, db=9).flushdb()
    else:
        section.add("online lookup, Redis", float("nan"), "ms", "Redis not reachable on 127.0.0.1:6379: skipped")
    return section


SECTIONS = {"features": features_section}


def run(settings: Settings, sections: list[str], scale: str, repeat: int, json_path: Path | None, console: Console) -> dict[str, dict[str, float]]:
    results: dict[str, dict[str, float]] = {}
    for name in sections:
        with console.status(f"benchmarking {name}"):
            section = SECTIONS[name](settings, scale, repeat)
        table = Table(title=section.name)
        for column in ("figure", "value", "unit", "note"):
            table.add_column(column, justify="right" if column == "value" else "left")
        for figure, value, unit, note in section.rows:
            table.add_row(figure, f"{value:,.3f}" if value < 100 else f"{value:,.0f}", unit, note)
        console.print(table)
        results[name] = {figure: value for figure, value, _, _ in section.rows}
    if json_path:
        json_path.write_text(json.dumps(results, indent=2))
    return results
