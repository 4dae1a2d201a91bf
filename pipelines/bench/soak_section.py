"""The soak: the API on a Redis live state for minutes at a constant 500 req/s of distinct
transactions, open loop, over returning and new cards, with Redis restarted in the middle. What a
short benchmark cannot show: memory that creeps (the workers' RSS, Redis's memory, the state's
keys, at the start and the end), a tail that worsens with time, and predictions lost on the way
(every answered request must be in the prediction log)."""

from __future__ import annotations

import shutil
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from core.settings import Settings
from pipelines.bench.common import Section
from pipelines.bench.local_redis import LocalRedis, available, cli, free_ports, local_redis
from pipelines.bench.serving_section import WORKERS, prepared

RATE = 500
SOAK_SECONDS = {"full": 600.0, "small": 600.0, "smoke": 6.0}
SEGMENTS = 10  # the run is cut into this many open-loop runs back to back: the tail over time
NEW_CARD_SHARE = 0.05  # requests from cards the backfill never saw
NEW_CARDS = 1_000  # how many: each returns, so the state grows by them once and then stays flat
REDIS_DOWN_SECONDS = 1.0


def soak_transactions(s: Settings, start: pd.Timestamp, total: int, run: str) -> Callable[[int], str]:
    """Request i: a new transaction, of one of the simulated cards or, for `NEW_CARD_SHARE` of them,
    of one of `NEW_CARDS` cards the state has never seen; event time moves on so that each card pays
    about twice a day, as simulated, and the windows turn over while the soak runs."""
    rng = np.random.default_rng(11)
    new = rng.random(total) < NEW_CARD_SHARE
    cards = rng.integers(0, s.simulation.customers, total)
    newcomers = rng.integers(0, NEW_CARDS, total)
    terminals = rng.integers(0, s.simulation.terminals, total)
    amounts = np.round(rng.gamma(2.0, 25.0, total), 2)
    step = 86_400 / (2 * s.simulation.customers)

    def body(i: int) -> str:
        card = f"{run}-card-{newcomers[i]}" if new[i] else str(cards[i])
        stamp = (start + pd.Timedelta(seconds=step * i)).strftime("%Y-%m-%dT%H:%M:%SZ")
        return (f'{{"transaction_id":"{run}-{i}","customer_id":"{card}","terminal_id":"{terminals[i]}",'
                f'"amount":{amounts[i]},"timestamp":"{stamp}"}}')

    return body


def shifted(body: Callable[[int], str], offset: int) -> Callable[[int], str]:
    """A segment's bodies: the open-loop run counts from 0, the soak's transactions go on."""
    return lambda i: body(offset + i)


def rss_mb(parent: int) -> float:
    """The resident memory of the API's worker processes (the children of `fraudops serve`), in MB."""
    children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    total = 0
    for pid in children:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total / 1024


def redis_size(server: LocalRedis) -> tuple[float, int]:
    """Redis's used memory in MB and its number of keys (each card and terminal holds two)."""
    memory = next(int(line.split(":")[1]) for line in cli(server.port, "info", "memory").splitlines() if line.startswith("used_memory:"))
    return memory / 2**20, int(cli(server.port, "dbsize").strip())


def soak_section(settings: Settings, scale: str, repeat: int) -> Section:
    """`repeat` does not apply: a soak is one long run, cut into `SEGMENTS` for the tail over time."""
    from core import predictions
    from features.store import materialize
    from pipelines.bench import openloop
    from pipelines.demo import running_api
    from training.windows import Windows

    seconds = SOAK_SECONDS[scale]
    section = Section(f"soak ({seconds:g} s at {RATE} req/s open loop, distinct transactions, {NEW_CARD_SHARE:.0%} from {NEW_CARDS:,} new cards, "
                      f"{WORKERS} workers on a Redis state restarted halfway)")
    reason = available()
    if reason:
        section.add("soak on a local Redis", float("nan"), "", f"{reason}: skipped")
        return section
    s, _ = prepared(settings)
    start = Windows.from_settings(s).test_end
    folder = s.state_dir / "soak"
    shutil.rmtree(folder, ignore_errors=True)
    segment = seconds / SEGMENTS
    per_segment = len(openloop.schedule(RATE, segment))
    ids = f"soak-{int(time.time())}"  # this run's transactions, apart from an earlier soak's in the same log
    body = soak_transactions(s, start, per_segment * SEGMENTS, ids)
    with local_redis(folder / "redis") as server:
        on = s.replace(feast_redis_url=server.url, api_port=free_ports(1)[0], api_workers=WORKERS)
        materialize(on, start.to_pydatetime())
        results = []
        with running_api(on) as api:
            time.sleep(2)
            rss_start, (memory_start, keys_start) = rss_mb(api.pid), redis_size(server)
            for k in range(SEGMENTS):
                restart = threading.Timer(segment / 3, server.restart, args=(REDIS_DOWN_SECONDS,)) if k == SEGMENTS // 2 else None
                if restart:
                    memory_half, keys_half = redis_size(server)  # every newcomer seen: from here on, flat
                    restart.start()
                results.append(openloop.run(f"{on.api_url}/predict", shifted(body, k * per_segment), RATE, segment))
                if restart:
                    restart.join()
            rss_end, (memory_end, keys_end) = rss_mb(api.pid), redis_size(server)
        # the API has stopped, so its prediction-log writers have flushed
        log = predictions.read(on, since=start.to_pydatetime())
    ours = log[log["transaction_id"].str.startswith(f"{ids}-") & ~log["shadow"].astype(bool)]
    answered = per_segment * SEGMENTS - sum(r.errors for r in results)
    lost = answered - ours["transaction_id"].nunique()
    before = statistics.median(r.p99_ms for r in results[1:SEGMENTS // 2])  # the first segment warms up
    after = statistics.median(r.p99_ms for r in results[SEGMENTS // 2 + 1:])
    section.add("soak: API workers' resident memory, end", rss_end, "MB", f"start {rss_start:,.0f} MB, {WORKERS} workers", start=rss_start)
    section.add("soak: Redis memory of the state, end", memory_end, "MB", f"start {memory_start:,.1f} MB, halfway {memory_half:,.1f} MB",
                start=memory_start, half=memory_half)
    section.add("soak: the state's keys, end", keys_end, "keys", f"start {keys_start:,}, halfway {keys_half:,}; a card or terminal is two",
                start=keys_start, half=keys_half)
    section.add("soak: p99 before the restart", before, "ms", f"median of {SEGMENTS // 2 - 1} segments of {segment:g} s after the first")
    section.add("soak: p99 after the restart", after, "ms", f"median of the last {SEGMENTS - SEGMENTS // 2 - 1} segments")
    section.add("soak: p99 of the segment with the restart", results[SEGMENTS // 2].p99_ms, "ms",
                f"Redis down {REDIS_DOWN_SECONDS:g} s in it; {int(ours['degraded'].sum()):,} answers degraded over the run")
    section.add("soak: predictions lost", float(lost), "predictions",
                f"{answered:,} answered, {ours['transaction_id'].nunique():,} in the prediction log; {sum(r.errors for r in results)} errors",
                errors=float(sum(r.errors for r in results)), degraded=float(ours["degraded"].sum()))
    return section
