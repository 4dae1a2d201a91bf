"""Quality before the labels: the average precision the model's own scores promise.

Chargebacks take a label delay to arrive, and until then only drift speaks. But if the scores are
calibrated, a score of 0.3 is a 30% chance of fraud, and the AP a set of scored transactions will
turn out to have can be estimated at once: draw each transaction's label from its probability, score
the draw, repeat (the idea of NannyML's confidence-based performance estimation, CBPE, written here
in a few lines because NannyML cannot join this project's pins). The served score is calibrated on
the validation window (model/calibration.py); the probabilities here come from one more map, an
isotonic one of score to fraud rate fitted on the model's reference traffic (its test window, scored
when it shipped), the labelled window nearest the live one.

What this can and cannot see is the lesson: it follows a change in the traffic's mix (more
transactions in a score range), since the map still holds there; it is blind to concept drift, a
change of P(fraud | score) itself, because it assumes the map still holds. Under mimicry the
estimate stays where it was while realized AP, a label delay later, falls (docs/07-monitoring.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.isotonic import IsotonicRegression

from model.evaluation import average_precision
from monitoring.segments import CONFIDENCE, central_interval

DRAWS = 200
MAX_ROWS = 50_000  # a larger window is estimated on a sample of this many: the draws hold DRAWS x rows labels


@dataclass(frozen=True)
class Estimate:
    rows: int
    average_precision: float  # the mean over the draws
    low: float  # the draws' central CONFIDENCE interval
    high: float


def calibration(reference_scores: np.ndarray, reference_labels: np.ndarray) -> IsotonicRegression:
    """Score to fraud rate on the reference: monotone, clipped to the reference's score range."""
    return IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(reference_scores, reference_labels)


def average_precisions(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """AP of each row of `labels` (draws x transactions) against one `scores`, as scikit-learn
    computes it (ties share a threshold), all draws at once: one sort, cumulative sums."""
    order = np.argsort(-scores, kind="stable")
    ranked, hits = scores[order], labels[:, order].astype(np.int32)
    last = np.r_[np.flatnonzero(np.diff(ranked)), len(ranked) - 1]  # each distinct threshold's last row
    true_positives = np.cumsum(hits, axis=1)[:, last]
    precision = true_positives / (last + 1)
    frauds = true_positives[:, -1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        recall_steps = np.diff(np.c_[np.zeros(len(labels)), true_positives], axis=1) / frauds
        return np.where(frauds[:, 0] > 0, (recall_steps * precision).sum(axis=1), np.nan)


def estimated_average_precision(scores: np.ndarray, probabilities: np.ndarray, draw_seed: int = 0) -> Estimate:
    """AP of `scores` over DRAWS label draws, each transaction fraud with its probability."""
    if len(scores) == 0:
        return Estimate(0, float("nan"), float("nan"), float("nan"))
    rng, rows = np.random.default_rng(draw_seed), len(scores)
    if rows > MAX_ROWS:
        picked = rng.choice(rows, MAX_ROWS, replace=False)
        scores, probabilities = scores[picked], probabilities[picked]
    draws = rng.random((DRAWS, len(scores))) < probabilities
    values = average_precisions(draws, scores)
    low, high = central_interval(values)
    return Estimate(rows, float(np.nanmean(values)) if not np.isnan(values).all() else float("nan"), low, high)


def fitted_on(reference: pd.DataFrame) -> IsotonicRegression:
    """`calibration` of a reference frame's (score, is_fraud)."""
    return calibration(reference["score"].to_numpy(dtype="float64"), reference["is_fraud"].to_numpy(dtype="float64"))


def promised(scored: pd.DataFrame, mapping: IsotonicRegression) -> Estimate:
    """The AP `scored` (score) should turn out to have, by `mapping`."""
    scores = scored["score"].to_numpy(dtype="float64") if len(scored) else np.zeros(0)
    return estimated_average_precision(scores, mapping.predict(scores) if len(scores) else scores)


def estimate(scored: pd.DataFrame, reference: pd.DataFrame) -> Estimate:
    """The AP `scored` should turn out to have, by `reference`'s map of score to fraud rate."""
    return promised(scored, fitted_on(reference))


def by_day(matured: pd.DataFrame, live: pd.DataFrame, mapping: IsotonicRegression) -> pd.DataFrame:
    """Per day: the estimated AP with its interval, and the realized AP where labels have arrived
    (`matured` has is_fraud; `live` has not yet): day, rows, estimated, low, high, realized."""
    out = []
    for frame, labelled in ((matured, True), (live, False)):
        if frame.empty:
            continue
        for day, rows in frame.groupby(pd.to_datetime(frame["timestamp"]).dt.floor("D")):
            guess = promised(rows, mapping)
            realized = average_precision(rows["is_fraud"].to_numpy(dtype="int64"), rows["score"].to_numpy(dtype="float64")) if labelled else float("nan")
            out.append({"day": day, "rows": len(rows), "estimated": guess.average_precision, "low": guess.low, "high": guess.high, "realized": realized})
    return pd.DataFrame(out, columns=["day", "rows", "estimated", "low", "high", "realized"])


def plot(days: pd.DataFrame, path: str) -> None:
    """The estimate and the realized AP on one plot: where they part, P(fraud | score) has moved."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    ax.fill_between(days["day"], days["low"], days["high"], alpha=0.25, label=f"estimate, {CONFIDENCE:.0%} of draws")
    ax.plot(days["day"], days["estimated"], marker=".", label="estimated AP (calibrated scores, at once)")
    ax.plot(days["day"], days["realized"], marker="o", linestyle="none", label="realized AP (once the labels arrived)")
    ax.set_ylabel("average precision")
    ax.set_ylim(0, 1)
    ax.legend(loc="best")
    ax.set_title("champion: estimated before the labels, realized after")
    fig.autofmt_xdate()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


@dataclass(frozen=True)
class Estimates:
    """One monitor run's estimate: of the live window (no labels yet), and of the matured window
    beside what its labels then said."""

    live: Estimate
    matured: Estimate
    realized_average_precision: float  # the matured window's AP by its labels
    plot: str | None  # estimate.png in the run's report folder, when there was a day to plot


def judge_estimate(matured: pd.DataFrame, live: pd.DataFrame, reference: pd.DataFrame, out_path: str) -> Estimates:
    """The estimates of one run, and their plot by day."""
    mapping = fitted_on(reference)  # once for the run: both windows and every day go through the same map
    realized = average_precision(matured["is_fraud"].to_numpy(dtype="int64"), matured["score"].to_numpy(dtype="float64")) if len(matured) else float("nan")
    days = by_day(matured, live, mapping)
    if len(days):
        plot(days, out_path)
    return Estimates(promised(live, mapping), promised(matured, mapping), realized, out_path if len(days) else None)
