"""Is the challenger better? The canary's labelled traffic, compared with statistics before anyone promotes.

Routing is sticky per customer (serving/router.py), so a variant's transactions are not independent:
one compromised card contributes a run of frauds to one side. The unit of the experiment is the
customer, so the confidence intervals come from a bootstrap over customers (each customer's rows
resampled together, with Poisson weights), not over rows, which would make them too narrow. The
figures are the challenger minus the champion: average precision (ranking) and the cost per 1,000
transactions of the decisions each made (missed fraud amounts plus the review fee of every flag, the
costs the threshold was chosen by).

How long to wait: the difference's standard error shrinks with the square root of the customers
seen, so the days of traffic a difference needs at the current share, fraud rate and label delay
follow from what was seen so far, for 80% power at the 95% level; the label delay comes on top.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import numpy as np
import pandas as pd
from scipy.stats import norm
from sklearn.metrics import average_precision_score

from core import predictions, registry
from core.settings import Settings
from monitoring.quality import with_labels

VARIANTS = ("champion", "challenger")
POWER = 0.8
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Estimate:
    value: float
    low: float
    high: float
    standard_error: float

    def __str__(self) -> str:
        return f"{self.value:+.4g} [{self.low:+.4g}, {self.high:+.4g}]"


@dataclass(frozen=True)
class Variant:
    name: str
    versions: tuple[str, ...]
    customers: int
    transactions: int
    frauds: int
    average_precision: float
    cost_per_1000: float


@dataclass(frozen=True)
class Comparison:
    champion: Variant
    challenger: Variant
    average_precision: Estimate  # challenger - champion
    cost_per_1000: Estimate  # challenger - champion; negative is cheaper
    days: float  # of labelled traffic compared
    challenger_cheaper: float  # the share of resamples in which the challenger cost less: a posterior probability
    failures: list[str] = field(default_factory=list)  # promotion criteria not met

    @property
    def promotable(self) -> bool:
        return not self.failures

    def days_needed(self, difference: float | None = None) -> float:
        """Days of traffic at this share for a cost difference (default: the one observed) to be
        found with 80% power at the 95% level; infinite when there is no difference to find."""
        difference = self.cost_per_1000.value if difference is None else difference
        if difference == 0:
            return float("inf")
        z = norm.ppf(1 - (1 - CONFIDENCE) / 2) + norm.ppf(POWER)
        return self.days * (z * self.cost_per_1000.standard_error / abs(difference)) ** 2


def _row_costs(frame: pd.DataFrame, review_fee: float) -> np.ndarray:
    flagged = frame["is_fraud_predicted"].to_numpy(bool)
    missed = (frame["is_fraud"].to_numpy() == 1) & ~flagged
    return np.where(missed, frame["amount"].to_numpy(np.float64), 0.0) + review_fee * flagged


def _figures(labels: np.ndarray, scores: np.ndarray, costs: np.ndarray, weights: np.ndarray) -> tuple[float, float]:
    both = 0 < (weights * labels).sum() < weights.sum()
    ap = float(average_precision_score(labels, scores, sample_weight=weights)) if both else float("nan")
    return ap, float((weights * costs).sum() / weights.sum() * 1000)


def compare(labelled: pd.DataFrame, review_fee: float, min_frauds: int, max_ap_loss: float, resamples: int = 400,
            seed: int = 0) -> Comparison:
    """The challenger against the champion on answered, labelled predictions (`monitoring.quality.with_labels`),
    and the promotion criteria it fails: too few labelled frauds on either side to judge; a cost
    not lower with 95% confidence; an AP that may be more than `max_ap_loss` below the champion's."""
    rng = np.random.default_rng(seed)
    sides, draws = {}, {}
    for name in VARIANTS:
        rows = labelled[labelled["variant"] == name]
        customer = pd.factorize(rows["customer_id"])[0]
        labels, scores, costs = rows["is_fraud"].to_numpy(int), rows["score"].to_numpy(np.float64), _row_costs(rows, review_fee)
        observed = _figures(labels, scores, costs, np.ones(len(rows))) if len(rows) else (float("nan"), float("nan"))
        sides[name] = Variant(name, tuple(sorted(map(str, rows["model_version"].unique()))), int(customer.max() + 1) if len(rows) else 0,
                              len(rows), int(labels.sum()), *observed)
        if len(rows):
            draws[name] = np.array([_figures(labels, scores, costs, w) if (w := rng.poisson(1.0, customer.max() + 1)[customer].astype(np.float64)).sum()
                                    else (np.nan, np.nan) for _ in range(resamples)])
    days = float(labelled["timestamp"].dt.floor("D").nunique()) if len(labelled) else 0.0
    estimates = []
    for k, figure in enumerate(("average_precision", "cost_per_1000")):
        value = getattr(sides["challenger"], figure) - getattr(sides["champion"], figure)
        if len(draws) == 2:
            spread = draws["challenger"][:, k] - draws["champion"][:, k]
            low, high = np.nanquantile(spread, [(1 - CONFIDENCE) / 2, 1 - (1 - CONFIDENCE) / 2])
            estimates.append(Estimate(value, float(low), float(high), float(np.nanstd(spread))))
        else:
            estimates.append(Estimate(value, float("nan"), float("nan"), float("nan")))
    ap, cost = estimates
    cheaper = float(np.nanmean(draws["challenger"][:, 1] < draws["champion"][:, 1])) if len(draws) == 2 else float("nan")
    failures = [f"{side.name}: {side.frauds} labelled frauds, fewer than the {min_frauds} a comparison needs"
                for side in sides.values() if side.frauds < min_frauds]
    if not failures:
        if not cost.high < 0:
            failures.append(f"cost per 1,000 transactions {cost}: not lower than the champion's with {CONFIDENCE:.0%} confidence")
        if not ap.low > -max_ap_loss:
            failures.append(f"average precision {ap}: may be more than {max_ap_loss:g} below the champion's")
    return Comparison(sides["champion"], sides["challenger"], ap, cost, days, cheaper, failures)


JUDGED = ["variant", "customer_id", "score", "is_fraud", "is_fraud_predicted", "amount", "timestamp", "model_version"]


def of_current_versions(settings: Settings, labelled: pd.DataFrame) -> pd.DataFrame:
    """The labelled answers (`monitoring.quality.with_labels`) of the versions behind the champion
    and challenger aliases now: what a promotion, or the bandit's next share, is judged on."""
    if labelled.empty:
        return pd.DataFrame(columns=JUDGED)
    client = registry.connect(settings)
    versions = {alias: registry.aliased_version(client, settings.stores.model_name, alias) for alias in VARIANTS}
    return labelled[labelled["model_version"].astype(str) == labelled["variant"].map(lambda v: str(versions.get(v)))]


def labelled_canary(settings: Settings, until: datetime | None = None) -> pd.DataFrame:
    """`of_current_versions` over the monitor's quality window, with the labels arrived by `until`
    (default: the newest logged time): what `fraudops canary` and `fraudops promote` read."""
    everything = predictions.read(settings) if until is None else None
    latest = until if everything is None else (everything["timestamp"].max() if len(everything) else None)
    if latest is None:  # nothing logged yet
        return pd.DataFrame(columns=JUDGED)
    matured = latest - timedelta(days=settings.features.label_delay_days)
    logged = predictions.read(settings, matured - timedelta(days=settings.monitoring.quality_days), matured)
    labelled = with_labels(logged, settings, latest) if len(logged) else logged
    return of_current_versions(settings, labelled)


def thompson_share(comparison: Comparison, current: float, min_share: float, max_share: float) -> float:
    """Routing mode `bandit` (Thompson sampling over the two arms, per customer): the challenger's
    next share is the posterior probability that it costs less, `challenger_cheaper`, within
    [min_share, max_share] so that its estimate keeps learning and a promotion stays a decision;
    the current share while there is nothing labelled to judge by; 0 stays 0, since a guardrail
    trip or an operator's stop pauses the bandit until someone sets a share again."""
    if current == 0.0:
        return 0.0
    p = comparison.challenger_cheaper
    return current if not math.isfinite(p) else min(max(p, min_share), max_share)
