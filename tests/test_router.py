import pytest

from model.buckets import bucket
from serving.router import Router


def test_share_is_respected() -> None:
    router = Router(0.2)
    routed = [router.route(str(i), challenger_available=True) for i in range(20_000)]
    assert abs(routed.count("challenger") / len(routed) - 0.2) < 0.015


def test_sticky_per_customer() -> None:
    router = Router(0.5)
    assert len({router.route("customer-7", True) for _ in range(100)}) == 1
    assert bucket("customer-7") == bucket("customer-7")


def test_raising_the_share_only_moves_customers_to_the_challenger() -> None:
    router = Router(0.1)
    before = {i: router.route(str(i), True) for i in range(5_000)}
    router.set_share(0.3)
    after = {i: router.route(str(i), True) for i in range(5_000)}
    assert all(after[i] == "challenger" for i, v in before.items() if v == "challenger")
    assert sum(v == "challenger" for v in after.values()) > sum(v == "challenger" for v in before.values())


def test_no_challenger_means_champion_and_bad_share_refused() -> None:
    assert Router(1.0).route("x", challenger_available=False) == "champion"
    assert Router(1.0).route("x", challenger_available=True) == "challenger"
    with pytest.raises(ValueError, match="within"):
        Router(1.5)


def test_bandit_mode_routes_as_a_canary_at_the_share_the_monitor_set() -> None:
    customers = [str(i) for i in range(2_000)]
    canary, bandit = Router(0.3, "canary"), Router(0.3, "bandit")
    assert [bandit.route(c, True) for c in customers] == [canary.route(c, True) for c in customers]
    assert not any(Router(0.3, "shadow").route(c, True) == "challenger" for c in customers)
