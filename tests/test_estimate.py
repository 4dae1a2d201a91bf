"""The AP estimated before the labels (monitoring/estimate.py): on a stationary world it lands inside
the realized figure's interval, under concept drift it stays put while the realized figure falls
(what it cannot see), and its fast AP is scikit-learn's."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score

from monitoring.estimate import average_precisions, estimate, estimated_average_precision
from monitoring.segments import ap_interval


def world(n: int, seed: int, concept_drift: bool = False) -> pd.DataFrame:
    """Scores that rank by the true fraud probability but are not calibrated (its square root);
    under concept drift, fraud depends half as much on what the score sees."""
    rng = np.random.default_rng(seed)
    p = rng.beta(0.3, 6.0, n)
    truth = 0.5 * p + 0.5 * p.mean() if concept_drift else p
    return pd.DataFrame({"score": np.sqrt(p), "is_fraud": (rng.random(n) < truth).astype("int64")})


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_on_a_stationary_world_the_estimate_falls_inside_the_realized_figures_interval(seed: int) -> None:
    reference, live = world(20_000, seed=100 + seed), world(5_000, seed=seed)
    low, high = ap_interval(live["is_fraud"].to_numpy(), live["score"].to_numpy(), resample_seed=seed)
    guess = estimate(live, reference)
    assert low <= guess.average_precision <= high, (guess, low, high)
    assert guess.low < guess.average_precision < guess.high


def test_under_concept_drift_the_estimate_stays_put_while_the_realized_ap_falls() -> None:
    reference = world(20_000, seed=10)
    calm, drifted = world(5_000, seed=11), world(5_000, seed=11, concept_drift=True)
    before, after = estimate(calm, reference), estimate(drifted, reference)
    assert abs(before.average_precision - after.average_precision) < 0.01  # the same scores: the same promise
    realized = average_precision_score(drifted["is_fraud"], drifted["score"])
    assert realized < after.low  # the labels tell what the scores could not


def test_the_draws_ap_is_scikit_learns_with_ties() -> None:
    rng = np.random.default_rng(0)
    scores = np.round(rng.random(3_000), 2)  # many ties
    labels = rng.random((6, 3_000)) < scores * 0.1
    assert np.allclose(average_precisions(labels, scores), [average_precision_score(row, scores) for row in labels])


def test_without_the_calibration_the_scores_would_promise_too_much() -> None:
    """The served scores are not probabilities: taken as they are, the estimate leaves the realized
    figure's interval, which is why the map is fitted first."""
    live = world(5_000, seed=1)
    low, high = ap_interval(live["is_fraud"].to_numpy(), live["score"].to_numpy(), resample_seed=1)
    raw = estimated_average_precision(live["score"].to_numpy(), live["score"].to_numpy())
    assert raw.average_precision > high
