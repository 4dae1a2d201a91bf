"""The decision bands: the cheapest cuts within the review capacity, and one rule on every path."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from core.decisions import DECISIONS, EMPTY, Bands, Costs, choose_bands, cost, decide_one

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
