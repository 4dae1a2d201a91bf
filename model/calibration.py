"""The served score as a probability: Platt scaling of the booster's log-odds, fitted on validation.

Training weights the frauds up (`scale_pos_weight`), which moves the booster's outputs away from
fraud rates: a raw 0.3 is not a 30% chance. The decision bands, the review desk and the estimate of
quality before the labels (monitoring/estimate.py) all read the score as a probability, so the score
that leaves the model is mapped back: fraud rate = expit(slope * logit(raw) + intercept), two numbers
fitted by logistic regression on the validation window, stored with the model. A map with a positive
slope keeps the order, so AUC, AP and card precision are those of the raw scores; an isotonic map
would fit more closely but is a step function, which ties scores the booster told apart and would
change the ranking figures. The MLflow pyfunc flavour of a logged model still returns the raw score.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.special import expit, logit

EPSILON = 1e-12  # raw scores are clipped into (EPSILON, 1 - EPSILON) before the logit


@dataclass(frozen=True)
class Calibration:
    slope: float = 1.0
    intercept: float = 0.0  # slope 1, intercept 0: the identity, as for a model logged before calibration

    @classmethod
    def fit(cls, raw: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None) -> Calibration:
        """Fraud rate against the raw score's log-odds on held-out rows (weighted where the labels came
        from a logged policy). Unpenalised: two parameters on thousands of rows need no shrinkage."""
        from sklearn.linear_model import LogisticRegression

        labels = np.asarray(labels)
        if not 0 < labels.sum() < labels.size:
            raise ValueError("calibration needs both frauds and legitimate transactions in its rows")
        fitted = LogisticRegression(C=1e6, max_iter=1_000).fit(_log_odds(raw).reshape(-1, 1), labels, sample_weight=weights)
        slope, intercept = float(fitted.coef_[0, 0]), float(fitted.intercept_[0])
        if not slope > 0:
            raise ValueError(f"calibration slope {slope:.3g} is not positive: the scores do not rank on these rows")
        return cls(slope, intercept)

    def apply(self, raw: np.ndarray) -> np.ndarray:
        if self == IDENTITY:
            return np.asarray(raw, dtype=np.float64)
        return np.asarray(expit(self.slope * _log_odds(raw) + self.intercept))

    def one(self, raw: float) -> float:
        """`apply` for one score, in plain floats: the request path's."""
        if self == IDENTITY:
            return raw
        raw = min(max(raw, EPSILON), 1.0 - EPSILON)
        z = self.slope * math.log(raw / (1.0 - raw)) + self.intercept
        return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))

    def params(self) -> list[float]:
        return [self.slope, self.intercept]


IDENTITY = Calibration()


def _log_odds(raw: np.ndarray) -> np.ndarray:
    return np.asarray(logit(np.clip(np.asarray(raw, dtype=np.float64), EPSILON, 1.0 - EPSILON)))


def expected_calibration_error(labels: np.ndarray, probabilities: np.ndarray, bins: int = 10) -> float:
    """The mean gap between predicted and observed fraud rate over `bins` equal-count bins, weighted
    by their rows. Equal-count, not equal-width: with fraud near 1%, equal-width bins put almost every
    row in the first and say nothing about the rest."""
    labels, probabilities = np.asarray(labels, dtype=np.float64), np.asarray(probabilities, dtype=np.float64)
    if labels.size == 0:
        return float("nan")
    order = np.argsort(probabilities, kind="stable")
    gaps = [abs(probabilities[part].mean() - labels[part].mean()) * part.size for part in np.array_split(order, bins) if part.size]
    return float(sum(gaps) / labels.size)
