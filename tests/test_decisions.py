"""The decision bands: the cheapest cuts within the review capacity, and one rule on every path."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score

from model.decisions import DECISIONS, EMPTY, Bands, Costs, choose_bands, cost, decide_one, explore
from model.evaluation import ips_average_precision, ips_weights

COSTS = Costs(review_fee=5.0, step_up_fee=1.0, step_up_catch=0.8, decline_fee=20.0, reviews_per_day=3.0)


def sample(seed: int, n: int = 60) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.2).astype(int)
    scores = np.clip(rng.normal(0.3 + 0.4 * labels, 0.2), 0.001, 0.999)
    return labels, rng.gamma(2.0, 40.0, n), scores


@pytest.mark.parametrize("seed", range(5))
def test_the_chosen_bands_cost_what_the_cheapest_cuts_cost(seed: int) -> None:
    """Against every cut of every band, priced with `cost` itself: no cheaper decision rule within
    the capacity exists on these rows."""
    labels, amounts, scores = sample(seed)
    days = 4.0
    [bands] = choose_bands(labels, amounts, scores, days, COSTS)
    chosen = bands.decide(scores)
    assert (chosen == DECISIONS.index("review")).sum() <= COSTS.reviews_per_day * days
    ranked = np.sort(scores)[::-1]
    cut = [EMPTY, *ranked[: len(scores) // 2]]  # a cut per count of top scores, as the grid counts them
    best = min(cost(labels, amounts, d, COSTS) for n3, n2, n1 in itertools.combinations_with_replacement(range(len(cut)), 3)
               if ((d := Bands(cut[n1], cut[n2], cut[n3]).decide(scores)) == 2).sum() <= COSTS.reviews_per_day * days)
    assert cost(labels, amounts, chosen, COSTS) == pytest.approx(best)


def test_more_review_capacity_never_costs_more_and_none_means_no_reviews() -> None:
    labels, amounts, scores = sample(7, n=400)
    capacities = [0.0, 1.0, 5.0, 20.0, 1000.0]
    _, *curve = choose_bands(labels, amounts, scores, 10.0, COSTS, capacities)
    costs = [cost(labels, amounts, b.decide(scores), COSTS) for b in curve]
    assert all(later <= earlier + 1e-9 for earlier, later in zip(costs, costs[1:]))
    assert not (curve[0].decide(scores) == 2).any()
    assert costs[-1] < costs[0]  # reviews are worth something on these rows


def test_one_score_decides_as_the_batch_does_at_and_between_the_cuts() -> None:
    bands = Bands(0.2, 0.5, 0.9)
    scores = np.array([0.0, 0.1999, 0.2, 0.3, 0.5, 0.89, 0.9, 1.0])
    assert [decide_one(bands, s) for s in scores] == [DECISIONS[i] for i in bands.decide(scores)]
    assert [decide_one(bands, s) for s in scores] == ["approve", "approve", "step_up", "step_up", "review", "review", "decline", "decline"]
    old = Bands.from_threshold(0.4)  # a model from before the bands: flagged means review
    assert [decide_one(old, s) for s in (0.39, 0.4, 1.0)] == ["approve", "review", "review"]


def test_reviews_alone_use_only_the_review_band_and_never_cost_less_than_four_bands() -> None:
    labels, amounts, scores = sample(8, n=400)
    [alone], [four] = (choose_bands(labels, amounts, scores, 10.0, COSTS, review_only=flag) for flag in (True, False))
    decisions = alone.decide(scores)
    assert not np.isin(decisions, [1, 3]).any() and (decisions == 2).any()
    assert cost(labels, amounts, four.decide(scores), COSTS) <= cost(labels, amounts, decisions, COSTS)


def test_exploration_reviews_a_share_of_declines_and_logs_its_propensity() -> None:
    ids = [f"tx-{i}" for i in range(20_000)]
    taken = [explore("decline", i, 0.05) for i in ids]
    reviewed = [p for d, p in taken if d == "review"]
    assert abs(len(reviewed) / len(ids) - 0.05) < 4 * (0.05 * 0.95 / len(ids)) ** 0.5
    assert set(reviewed) == {0.05} and {p for d, p in taken if d == "decline"} == {0.95}
    assert [explore("decline", i, 0.05) for i in ids[:100]] == taken[:100], "the same transaction, the same draw"
    assert {explore(d, "tx-1", 0.05) for d in ("approve", "step_up", "review")} == {("approve", 1.0), ("step_up", 1.0), ("review", 1.0)}
    assert all(explore("decline", i, 0.0) == ("decline", 1.0) for i in ids[:1000])


def test_inverse_propensity_weights_recover_the_ap_the_censoring_hides() -> None:
    """Declines (the top scores) never get labels; a 20% exploration share of them does. On the
    labelled rows alone AP is biased (the best-ranked frauds are missing); weighted by 1 / propensity
    it comes back to the AP over all traffic."""
    rng = np.random.default_rng(7)
    n = 200_000
    labels = (rng.random(n) < 0.01).astype(int)
    scores = 1 / (1 + np.exp(-(rng.normal(0, 1, n) + 2.5 * labels - 4)))
    decided = np.where(scores >= np.quantile(scores, 0.99), "decline", "approve")
    taken = [explore(d, f"t{i}", 0.2) for i, d in enumerate(decided)]
    decisions = pd.Series([d for d, _ in taken])
    weights = ips_weights(decisions, pd.Series([p for _, p in taken]))
    truth = average_precision_score(labels, scores)
    kept = decisions.ne("decline").to_numpy()
    naive = average_precision_score(labels[kept], scores[kept])
    ips = ips_average_precision(labels, scores, weights)
    assert abs(ips - truth) < abs(naive - truth) / 3, (truth, naive, ips)


def test_an_explored_review_never_stands_for_more_than_the_clip() -> None:
    from model.evaluation import MAX_IPS_WEIGHT

    weights = ips_weights(pd.Series(["review", "review", "decline", "approve"]), pd.Series([0.005, 0.2, 0.995, None]))
    assert weights.tolist() == [MAX_IPS_WEIGHT, 5.0, 0.0, 1.0]
