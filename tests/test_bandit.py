"""Bandit routing: a share that follows the posterior, bounded, paused by a trip, set by the monitor."""

from __future__ import annotations

import numpy as np
import pytest

from monitoring.canary import compare, thompson_share
from pipelines.bench.bandit_replay import replay, traffic
from tests.test_canary import canary, log_canary_traffic


def test_the_share_is_the_posterior_within_its_bounds_and_a_trip_pauses_it() -> None:
    better = compare(canary(0, challenger_gain=1.5), 5.0, 30, 0.02)
    same = compare(canary(1), 5.0, 30, 0.02)
    assert better.challenger_cheaper > 0.99 and thompson_share(better, 0.1, 0.02, 0.5) == 0.5
    assert 0.01 < same.challenger_cheaper < 0.99  # two equal models: not decided either way
    assert thompson_share(same, 0.1, 0.02, 0.5) == min(max(same.challenger_cheaper, 0.02), 0.5)
    nothing = compare(canary(2).iloc[0:0], 5.0, 30, 0.02)
    assert thompson_share(nothing, 0.1, 0.02, 0.5) == 0.1  # no labels yet: no change
    assert thompson_share(better, 0.0, 0.02, 0.5) == 0.0  # a guardrail trip or an operator's stop holds


@pytest.mark.parametrize("gain", [0.8, -0.5], ids=["better challenger", "worse challenger"])
def test_against_a_fixed_canary_the_bandit_costs_less_either_way(gain) -> None:
    frame = traffic(42, 1_000, gain, seed=0)  # on a few hundred cards a worse challenger's posterior is too wide to gain by it
    fixed, bandit = (replay(frame, policy, label_delay=7, resamples=40) for policy in ("canary", "bandit"))
    assert fixed.shares == [0.1] * 42 and bandit.shares[:8] == [0.1] * 8  # nothing labelled in the first week
    assert bandit.regret[-1] < fixed.regret[-1]
    judged = np.mean(bandit.shares[8:])  # once labels arrive, the share follows the evidence
    assert judged > 0.3 if gain > 0 else judged < 0.1


def test_the_monitor_sets_the_share_in_bandit_mode_only(registry_copy, tmp_path) -> None:
    from core import registry
    from pipelines.flows import monitor_flow

    _, until = log_canary_traffic(registry_copy, tmp_path)
    settings = registry_copy.replace(retrain_on_drift=False)
    assert monitor_flow(settings, "canary-mode", until=until.to_pydatetime()).bandit_share is None
    registry.set_routing(settings, registry.Routing(0.1, "bandit", None))
    share = monitor_flow(settings, "bandit-mode", until=until.to_pydatetime()).bandit_share
    assert share is not None and settings.canary.bandit_min_share <= share <= settings.canary.bandit_max_share
    aliases, routing = registry.serving_state(settings)
    assert routing == registry.Routing(share, "bandit", aliases["challenger"])


def test_a_routing_write_over_a_stale_read_is_refused_and_a_new_challenger_starts_afresh(registry_copy) -> None:
    """The bandit writes only over the record it read: a guardrail's rollback to 0 made while it
    bootstrapped stands. A share set for one challenger version does not carry to the next."""
    from core import registry

    read = registry.Routing(0.4, "bandit", "2")
    registry.set_routing(registry_copy, read)
    registry.set_routing(registry_copy, registry.Routing(0.0, "bandit", "2"))  # the guardrail, meanwhile
    with pytest.raises(registry.RoutingChanged):
        registry.set_routing(registry_copy, registry.Routing(0.5, "bandit", "2"), expected=read)
    assert registry.serving_state(registry_copy)[1] == registry.Routing(0.0, "bandit", "2")
    assert read.share_for("2", 0.1) == 0.4 and read.share_for("3", 0.1) == 0.1


def test_a_rollback_that_comes_while_the_bandit_checks_still_wins(registry_copy, monkeypatch) -> None:
    """The interleaving a read-then-write check cannot stop: the bandit has read the record and
    found it unchanged, and before it writes, the guardrail rolls back. The rollback must be what
    stands (it waits on the routing lock, then writes over the bandit's share)."""
    import threading
    import time

    from core import registry

    read = registry.Routing(0.4, "bandit", "2")
    registry.set_routing(registry_copy, read)
    real = registry.serving_state
    checked = threading.Event()

    def slow_check(settings):  # the bandit's check, then a pause before its write
        got = real(settings)
        checked.set()
        time.sleep(0.5)
        return got

    monkeypatch.setattr(registry, "serving_state", slow_check)
    bandit = threading.Thread(target=registry.set_routing, args=(registry_copy, registry.Routing(0.5, "bandit", "2")), kwargs={"expected": read})
    bandit.start()
    assert checked.wait(10)
    registry.set_routing(registry_copy, registry.Routing(0.0, "bandit", "2"))  # the guardrail, during the bandit's check
    bandit.join()
    monkeypatch.setattr(registry, "serving_state", real)
    assert registry.serving_state(registry_copy)[1] == registry.Routing(0.0, "bandit", "2")
