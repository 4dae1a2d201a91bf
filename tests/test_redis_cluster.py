"""The live state on a real Redis Cluster (three masters, three replicas, started by the test): a
master killed under traffic degrades the answers for about its failover, and the repair then
writes what was scored meanwhile, so no card's windows keep a hole. Parity on the cluster is in
tests/test_parity.py, one identity per event in tests/test_features.py."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from features.live import DAY_US
from features.state import Tx
from serving.online import OnlineFeatures
from tests.conftest import require_redis_cluster, tiny_settings

pytestmark = pytest.mark.integration
CARDS = 200
RETRY_SECONDS = 0.5


def test_a_killed_master_degrades_answers_for_its_failover_and_the_repair_closes_the_hole(tmp_path: Path) -> None:
    require_redis_cluster()
    from pipelines.bench.local_redis import local_cluster

    with local_cluster(tmp_path / "cluster") as cluster:
        settings = tiny_settings(tmp_path, feast_redis_url=cluster.url, feast_redis_cluster=True, online_timeout_ms=200.0,
                                 online_retry_seconds=RETRY_SECONDS)
        online = OnlineFeatures(settings)
        sent: dict[str, int] = {}
        degraded_at: list[float] = []

        def score(n: int) -> bool:
            card = f"card-{n % CARDS}"
            sent[card] = sent.get(card, 0) + 1
            return online.lookup(Tx(f"tx-{n}", card, f"term-{n % 50}", 1.0, 100 * DAY_US + n * 1_000_000)).degraded

        n = 0
        for n in range(400):  # healthy: nothing degraded
            assert not score(n)
        victim = cluster.masters()[0]
        promoted: list[float] = []

        def failover() -> None:  # the cluster's own time to promote the victim's replica
            while victim in cluster.masters():
                time.sleep(0.02)
            cluster.wait_ok()
            promoted.append(time.monotonic() - killed)

        killed = time.monotonic()
        cluster.kill(victim)
        watcher = threading.Thread(target=failover)
        watcher.start()
        healthy_since = None
        while time.monotonic() - killed < 30:
            n += 1
            if score(n):
                degraded_at.append(time.monotonic() - killed)
                healthy_since = None
            elif degraded_at and healthy_since is None:
                healthy_since = time.monotonic()
            if healthy_since and time.monotonic() - healthy_since > 2 * RETRY_SECONDS:
                break
            time.sleep(0.002)
        watcher.join(timeout=30)
        assert promoted and degraded_at, "the kill must show, and a replica take over"
        # degraded from the kill until the promotion, then at most one retry period and one timeout
        assert max(degraded_at) <= promoted[0] + RETRY_SECONDS + 0.2 + 0.1, (promoted, degraded_at[0], degraded_at[-1])
        deadline = time.monotonic() + 10
        while (online.missed or online._repairing.locked()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not online.missed, f"{len(online.missed)} transactions never repaired"
        probe_us = 100 * DAY_US + (n + 1) * 1_000_000
        counts = {card: online.lookup(Tx(f"probe-{card}", card, "term-probe", 1.0, probe_us)).values["customer_tx_count_30d"] - 1
                  for card in sent}
        assert counts == {card: float(count) for card, count in sent.items()}
