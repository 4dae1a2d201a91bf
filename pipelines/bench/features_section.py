"""Simulation, the event-time feature job, Feast's join, the live state's backfill and its step."""

from __future__ import annotations

import multiprocessing
import shutil
import sqlite3
import statistics
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd

from core.runtime import service_available
from core.settings import Settings
from features.simulator import SimulationConfig
from features.state import SqliteState, Tx, features, open_state
from pipelines.bench.common import REDIS_URL, SCALES, Section, latency_ms, timed
from pipelines.bench.openloop import schedule


def features_section(settings: Settings, scale: str, repeat: int) -> Section:
    """Simulation, the event-time feature job, Feast's join into a training set, the backfill of the
    live state, and the state step a scored transaction pays (update, read, windows)."""
    section = Section(f"features ({scale} scale)")
    cfg, entity, end = offline_side(settings, scale, repeat, section)
    labels_side(settings, entity, repeat, section)
    arrivals = new_transactions(entity, end)
    live_side(settings, end, arrivals, section, STEPS[scale])
    two_writers_side(settings, entity, end, scale, repeat, section)
    dormant_side(settings, end, section, *CHURN[scale])
    if service_available("127.0.0.1", 6379):
        redis_side(settings, cfg, end, arrivals, section, STEPS[scale])
    else:
        section.add("state step, Redis", float("nan"), "ms", "Redis not reachable on 127.0.0.1:6379: skipped")
    cluster_side(settings, cfg, end, arrivals, section, STEPS[scale])
    return section


def offline_side(settings: Settings, scale: str, repeat: int, section: Section) -> tuple[SimulationConfig, pd.DataFrame, datetime]:
    """Simulate, compute the event-time features, join them through Feast: the training set's cost."""
    from features.compute import FRAUDS_FILE, compute_features
    from features.labels import clear, write_frauds
    from features.offline import read_transactions
    from features.simulator import SimulationConfig, deliver_chargebacks, write_simulation
    from features.store import apply, historical_features, open_store

    customers, terminals, days = (SCALES[scale].customers, SCALES[scale].terminals, SCALES[scale].days)
    cfg = SimulationConfig.from_settings(settings.simulation, customers=customers, terminals=terminals, days=days)
    rows = 0

    def simulate() -> None:
        nonlocal rows
        rows = write_simulation(cfg, settings.transactions_dir, replace=True)

    runs = timed(simulate, repeat)
    section.add("simulate", statistics.median(runs), "s", f"{rows:,} transactions, median of {repeat}")
    clear(settings)
    deliver_chargebacks(settings)
    frauds = write_frauds(settings, settings.features_dir / FRAUDS_FILE)
    compute = timed(lambda: compute_features(settings.transactions_dir, settings.features_dir, frauds, settings.features.label_delay_days), repeat)
    section.add("event-time features (DuckDB window functions)", statistics.median(compute), "s",
                f"{rows:,} rows, one per transaction; {rows / statistics.median(compute) / 1e6:.2f} M rows/s; median of {repeat}")

    apply(settings)
    store = open_store(settings)
    entity = read_transactions(settings.transactions_dir)
    joined = timed(lambda: historical_features(store, settings.features.feature_service, entity), 1 if scale == "full" else repeat)
    section.add("Feast point-in-time join into the training set", min(joined), "s", f"{len(entity):,} entity rows, DuckDB offline store")
    section.add("training set from raw transactions (features + join)", statistics.median(compute) + min(joined), "s", "target < 60 s at full scale")
    return cfg, entity, datetime.combine(cfg.start_date, datetime.min.time()) + timedelta(days=cfg.days)


def labels_side(settings: Settings, entity: pd.DataFrame, repeat: int, section: Section, batch: int = 100) -> None:
    """The label path (`features.labels.record`, what POST /labels runs): the index of seen
    transactions built from the offline store once, then verdicts recorded in batches of `batch`,
    each a keyed lookup of its transactions and one write."""
    from features import labels

    with labels.engine(settings.label_store_url).begin() as con:
        con.execute(labels.SEEN.delete())
        con.execute(labels.SEEN_PARTS.delete())
    started = time.perf_counter()
    labels.known_transactions(settings, [str(entity["transaction_id"].iloc[0])])
    seconds = time.perf_counter() - started
    section.add("index the offline store for the label path", len(entity) / seconds, "rows/s",
                f"{len(entity):,} transactions in {seconds:.1f}s: once after a simulation or an ingest, each part read once")
    rng = np.random.default_rng(3)
    rounds = max(20, 10 * repeat)
    picked = entity.iloc[rng.choice(len(entity), batch * rounds, replace=False)]
    verdicts = pd.DataFrame({"transaction_id": picked["transaction_id"].astype(str), "is_fraud": 0, "source": "analyst",
                             "reported_at": picked["timestamp"] + pd.Timedelta(days=1)})
    runs = []
    for k in range(rounds):
        started = time.perf_counter()
        labels.record(settings, verdicts.iloc[k * batch:(k + 1) * batch], "analyst")
        runs.append(time.perf_counter() - started)
    section.add("label path: verdicts recorded a second", batch / statistics.median(runs), "labels/s",
                f"batches of {batch} new verdicts, median of {rounds}; p99 of a batch {np.quantile(runs, 0.99) * 1000:.0f} ms",
                p99_ms=float(np.quantile(runs, 0.99) * 1000))


def new_transactions(entity: pd.DataFrame, end: datetime) -> Callable[[], Tx]:
    """Distinct transactions of the simulated cards at their terminals, a minute of event time apart
    from `end` on: the cards' histories stay their real size."""
    customer_ids = entity["customer_id"].to_numpy()
    terminal_ids = entity["terminal_id"].to_numpy()
    rng = np.random.default_rng(0)
    clock = [int(pd.Timestamp(end).value // 1000)]

    def next_tx() -> Tx:
        i = int(rng.integers(len(customer_ids)))
        clock[0] += 60_000_000
        return Tx(f"bench-{clock[0]}", str(customer_ids[i]), str(terminal_ids[i]), 10.0, clock[0])

    return next_tx


def state_step(settings: Settings, state: object, arrivals: Callable[[], Tx]) -> Callable[[], object]:
    """One scored transaction's state step: update the card's and terminal's events, read, windows."""
    def call() -> object:
        tx = arrivals()
        return features(tx, state.update([tx])[0], settings.features.label_delay_days)  # type: ignore[attr-defined]
    return call


def timed_backfill(settings: Settings, end: datetime, section: Section, figure: str) -> None:
    """`fraudops features materialize` into the state `settings` name, in rows a second."""
    from features.store import materialize

    started = time.perf_counter()
    loaded = materialize(settings, end)
    seconds = time.perf_counter() - started
    section.add(figure, loaded / seconds, "rows/s", f"{loaded:,} transactions in {seconds:.1f}s")


def live_side(settings: Settings, end: datetime, arrivals: Callable[[], Tx], section: Section, steps: int) -> None:
    timed_backfill(settings, end, section, "backfill the live state (SQLite)")
    history = open_state(settings).update([arrivals()])[0]
    sample = arrivals()
    p50, p99 = latency_ms(lambda: features(sample, history, settings.features.label_delay_days), steps)
    section.add("windows alone (features.live on a card's history), p50 / p99", p50, "ms", f"p99 {p99:.3f} ms; no store", p99=p99)
    p50, p99 = latency_ms(state_step(settings, open_state(settings), arrivals), steps)
    section.add("state step, SQLite (insert, prune, read, windows), p50 / p99", p50, "ms", f"p99 {p99:.3f} ms; one transaction at a time", p99=p99)


# days of event time, and cards that start paying each day (for 3 days, then stop)
CHURN = {"full": (120, 500), "small": (120, 500), "smoke": (40, 50)}
STEPS = {"full": 2_000, "small": 2_000, "smoke": 200}  # state steps timed one at a time, per store


def dormant_side(settings: Settings, end: datetime, section: Section, days: int, cards: int) -> None:
    """The SQLite state under a steady stream of new cards that pay for a few days and stop, with the
    monitor's daily `prune_dormant`: its size must stop growing once the first cards pass their
    horizon (30 days plus the late margin), however many cards have come and gone."""
    state = SqliteState(settings.state_dir / "churn" / "live_state.db", settings.features.label_delay_days)
    start_us = int(pd.Timestamp(end).value // 1000)
    held: dict[int, int] = {}
    for day in range(days):
        state.load([Tx(f"churn-{day}-{card}-{k}", f"churn-{day}-{card}", f"churn-t{card % 50}", 10.0,
                       start_us + (day + k) * 86_400_000_000 + card * 1_000_000) for card in range(cards) for k in range(3)])
        state.prune_dormant()
        held[day] = sqlite3.connect(state.path).execute("SELECT count(*) FROM customer_events").fetchone()[0]
    mid, last = held[days // 2], held[days - 1]
    section.add("live state (SQLite) under a stream of new cards: card events held at the end", float(last), "events",
                f"{cards} new cards a day for {days} days ({cards * days:,} in all), each paying 3 days; "
                f"halfway {mid:,}; the monitor's daily prune", half=float(mid))


WRITER_RATE = 250  # transactions a second per process: the serving section's 500 req/s on its 2 workers
WRITER_SECONDS = {"full": 20.0, "small": 10.0, "smoke": 2.0}


def two_writers_side(settings: Settings, entity: pd.DataFrame, end: datetime, scale: str, repeat: int, section: Section) -> None:
    """The SQLite state as two API workers use it: two processes stepping one file at a constant
    rate, open loop, with SQLite's own checkpoints (each run inside the commit that crosses a
    thousand pages of log) beside serving's background ones, in alternating rounds."""
    sample = entity.sample(min(len(entity), 20_000), random_state=0)  # cards at terminals they use
    pairs = list(zip(sample["customer_id"].astype(str), sample["terminal_id"].astype(str)))
    start_us = int(pd.Timestamp(end).value // 1000) + 3_600_000_000  # after the single-step rows' transactions
    source = settings.feast_dir / "live_state.db"
    runs: dict[bool, list[list[float]]] = {False: [], True: []}
    for round_ in range(repeat):
        for background in (False, True):
            copy = settings.feast_dir / f"two-writers-{int(background)}.db"
            with sqlite3.connect(source) as src, sqlite3.connect(copy) as dst:
                src.backup(dst)  # both variants start from the same history
            context = multiprocessing.get_context("spawn")
            out = context.Queue()
            writers = [context.Process(target=_writer, args=(str(copy), settings.features.label_delay_days, background, pairs,
                                                             start_us + round_ * 86_400_000_000, worker, WRITER_SECONDS[scale], out))
                       for worker in (0, 1)]
            for process in writers:
                process.start()
            try:  # a writer that died would leave its answer missing: fail the row, never hang the bench
                waits = out.get(timeout=WRITER_SECONDS[scale] * 10 + 60) + out.get(timeout=60)
            finally:
                for process in writers:
                    process.join(timeout=60)
                    if process.is_alive():
                        process.kill()
            runs[background].append(waits)
            for leftover in copy.parent.glob(f"{copy.name}*"):
                leftover.unlink()
    for background, label in ((False, "SQLite's own checkpoints"), (True, "background checkpoints (serving's)")):
        p50, p99, p999 = (statistics.median(float(np.percentile(waits, q)) * 1000 for waits in runs[background]) for q in (50, 99, 99.9))
        section.add(f"state step, SQLite, two writers at {WRITER_RATE * 2} a second, open loop: {label}, p99", p99, "ms",
                    f"p50 {p50:.2f}, p99.9 {p999:.1f} ms; each latency from its scheduled time; median of {repeat}", p50=p50, p999=p999)


def _writer(path: str, delay_days: int, background: bool, pairs: list[tuple[str, str]], start_us: int, worker: int,
            seconds: float, out: Any) -> None:
    """One worker's state steps at `WRITER_RATE`, each timed from when it was due (a spawned process)."""
    state = SqliteState(Path(path), delay_days, checkpoint_in_background=background)
    rng = np.random.default_rng(worker)
    waits = []
    began = time.perf_counter()
    for n, offset in enumerate(schedule(WRITER_RATE, seconds)):
        due = began + offset
        if (ahead := due - time.perf_counter()) > 0:
            time.sleep(ahead)
        customer, terminal = pairs[int(rng.integers(len(pairs)))]
        tx = Tx(f"writer{worker}-{start_us}-{n}", customer, terminal, 10.0, start_us + (2 * n + worker) * 2_000_000)
        features(tx, state.update([tx])[0], delay_days)
        waits.append(time.perf_counter() - due)
    out.put(waits)


def redis_side(settings: Settings, cfg: SimulationConfig, end: datetime, arrivals: Callable[[], Tx], section: Section, steps: int) -> None:
    """The same backfill and step on Redis, with what the state costs in Redis memory and server time."""
    import redis

    client = redis.Redis(host="127.0.0.1", port=6379, db=9)

    def info(section: str) -> dict[str, Any]:
        return cast(dict[str, Any], client.info(section))  # the synchronous client's answer

    client.flushdb()
    before = info("memory")["used_memory"]
    on_redis = settings.replace(feast_redis_url=REDIS_URL, state_dir=settings.state_dir / "redis")
    shutil.copytree(settings.transactions_dir, on_redis.transactions_dir, dirs_exist_ok=True)
    timed_backfill(on_redis, end, section, "backfill the live state (Redis)")
    # what a card and a terminal cost in memory with their real history (the capacity model's input)
    held = info("memory")["used_memory"] - before
    entities = cfg.customers + cfg.terminals
    section.add("Redis memory of the live state, per card or terminal", held / entities, "bytes",
                f"{held / 2**20:,.0f} MB for {cfg.customers:,} cards and {cfg.terminals:,} terminals after the backfill")
    client.config_resetstat()
    p50, p99 = latency_ms(state_step(settings, open_state(on_redis), arrivals), steps)
    section.add("state step, Redis (one Lua script), p50 / p99", p50, "ms", f"p99 {p99:.3f} ms; one transaction at a time", p99=p99)
    scripts = info("commandstats").get("cmdstat_evalsha", {})
    section.add("state step, Redis server time per script call", float(scripts.get("usec_per_call", float("nan"))), "us",
                f"{scripts.get('calls', 0):,} calls: what one Redis core spends per scored transaction")
    client.flushdb()


def cluster_side(settings: Settings, cfg: SimulationConfig, end: datetime, arrivals: Callable[[], Tx], section: Section, steps: int) -> None:
    """The same backfill and step on a local Redis Cluster of three masters (and their replicas): the
    distributed engine the capacity model names (docs/10-scaling.md), beside one Redis above."""
    import redis

    from pipelines.bench.local_redis import available, local_cluster

    reason = available()
    if reason:
        section.add("state step, Redis Cluster", float("nan"), "ms", f"{reason}: skipped")
        return
    on_cluster = settings.replace(state_dir=settings.state_dir / "redis-cluster", feast_redis_cluster=True)
    shutil.copytree(settings.transactions_dir, on_cluster.transactions_dir, dirs_exist_ok=True)
    with local_cluster(settings.state_dir / "redis-cluster-nodes") as cluster:
        on_cluster = on_cluster.replace(feast_redis_url=cluster.url)
        masters = [redis.Redis(host="127.0.0.1", port=port) for port in cluster.masters()]
        before = sum(cast(dict[str, Any], m.info("memory"))["used_memory"] for m in masters)
        timed_backfill(on_cluster, end, section, "backfill the live state (Redis Cluster, 3 shards)")
        held = sum(cast(dict[str, Any], m.info("memory"))["used_memory"] for m in masters) - before
        section.add("Redis Cluster memory of the live state, per card or terminal", held / (cfg.customers + cfg.terminals), "bytes",
                    f"{held / 2**20:,.0f} MB over its 3 masters, replicas not counted")
        p50, p99 = latency_ms(state_step(settings, open_state(on_cluster), arrivals), steps)
        section.add("state step, Redis Cluster (a script per slot), p50 / p99", p50, "ms",
                    f"p99 {p99:.3f} ms; one transaction at a time: its card's and its terminal's shard", p99=p99)
