"""Data drift and prediction drift of the live traffic against the model's training reference.

The reference is what the model saw when it was judged: its test-window features and its own scores,
logged with the model version. Comparing against it answers the question that matters for a fraud
model: is today's traffic still the traffic this model was validated on?
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

import pandas as pd
from evidently import Report
from scipy.stats import norm

from core.settings import MonitoringSettings
from evidently.core.report import Snapshot
from evidently.metrics import ValueDrift
from evidently.presets import DataDriftPreset

from features.logic import CLOCK_FEATURES

SMALL_SAMPLE = 1_000
Verdict = Literal["ok", "warn", "drift", "insufficient_data"]


@dataclass(frozen=True)
class Reference:
    """A model version's reference: its test window's traffic with its own scores."""

    version: str
    frame: pd.DataFrame
    threshold: float = 0.5  # the model's decision threshold: its reference decision rate


@dataclass
class ColumnDrift:
    column: str
    method: str
    value: float
    threshold: float
    drifted: bool


@dataclass
class DriftSummary:
    verdict: Verdict
    current_rows: int
    reference_rows: int
    drifted_share: float = 0.0
    prediction: dict[str, ColumnDrift] = field(default_factory=dict)  # score drift per variant
    decision_rate: dict[str, ColumnDrift] = field(default_factory=dict)  # share flagged, per variant
    missing_share: float = 0.0  # answers with at least one defaulted feature
    out_of_range: dict[str, float] = field(default_factory=dict)  # share outside the reference's range, per feature
    new_values: dict[str, list[float]] = field(default_factory=dict)  # values other than 0/1 in a flag
    columns: list[ColumnDrift] = field(default_factory=list)
    excluded: dict[str, str] = field(default_factory=dict)
    html: str | None = None
    created_at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))


# Evidently's statistical tests report a p-value (drift when it is small); other methods a distance.
P_VALUE_METHODS = frozenset({"ks", "chisquare", "z", "t_test", "mannw", "fisher_exact", "g_test", "anderson", "cramer_von_mises", "epps_singleton"})


def _drifted(method: str, value: float, threshold: float) -> bool:
    is_test = "p_value" in method or method in P_VALUE_METHODS
    return value < threshold if is_test else value >= threshold


def _usable(reference: pd.DataFrame, current: pd.DataFrame, columns: list[str]) -> tuple[list[str], dict[str, str]]:
    """Drop columns a drift test cannot judge, and say why: clock features, all-null, or constant."""
    keep, excluded = [], {}
    for column in columns:
        if column in CLOCK_FEATURES:
            excluded[column] = "clock feature: its distribution depends on the window's hours and days"
        elif current[column].isna().all():
            excluded[column] = "all values missing in current data"
        elif pd.concat([reference[column], current[column]]).nunique(dropna=True) <= 1:
            excluded[column] = "constant"
        else:
            keep.append(column)
    return keep, excluded


def _parse(snapshot_dict: dict) -> tuple[float, list[ColumnDrift]]:
    drifted_share, results = 0.0, []
    for metric in snapshot_dict["metrics"]:
        config = metric["config"]
        if config["type"].endswith("DriftedColumnsCount"):
            drifted_share = float(metric["value"]["share"])
        elif config["type"].endswith("ValueDrift"):
            value, threshold = float(metric["value"]), float(config["threshold"])
            results.append(ColumnDrift(config["column"], config["method"], value, threshold, _drifted(config["method"], value, threshold)))
    return drifted_share, results


def value_checks(reference: pd.DataFrame, current: pd.DataFrame, columns: list[str]) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Data quality that drift tests do not see: values outside anything the model was validated on
    (a distance can stay small while 1% of amounts are ten times the reference maximum), and new
    values of the 0/1 flags (a flag that now says 2). The features here have no other categories:
    a sparse ratio such as a 1-day terminal risk takes few values and is still numeric."""
    out_of_range: dict[str, float] = {}
    new_values: dict[str, list[float]] = {}
    for column in columns:
        seen = reference[column].dropna()
        live = current[column].dropna()
        if seen.empty or live.empty:
            continue
        if set(seen.unique()) <= {0, 1}:
            unseen = sorted(set(live.unique()) - {0, 1})
            if unseen:
                new_values[column] = [float(v) for v in unseen[:10]]
            continue
        share = float(((live < seen.min()) | (live > seen.max())).mean())
        if share > 0:
            out_of_range[column] = share
    return out_of_range, new_values


def rate_drift(current: pd.Series, reference: pd.Series, column: str, p_value: float,
               current_customers: pd.Series | None = None, reference_customers: pd.Series | None = None) -> ColumnDrift:
    """Drift of a rare 0/1 rate (decisions, frauds): a two-proportion z-test. Evidently's default for a
    binary column at this size is a Jensen-Shannon distance with a 0.1 cut, blind to 1.1% -> 3.0%.

    With the customers of each row, the test counts customers, not rows, as the independent units: a
    card under card testing gives ten flagged transactions in an hour, and a canary's sticky 10% of
    customers holds a few such cards or none. Counted as independent rows, one such card made a calm
    day's challenger "drift" at p = 2e-8 (20 of 372 flagged, 10 of them one card's)."""
    if current_customers is None or reference_customers is None:
        snapshot = Report([ValueDrift(column=column, method="z", threshold=p_value)]).run(
            current_data=pd.DataFrame({column: current.astype(int).to_numpy()}),
            reference_data=pd.DataFrame({column: reference.astype(int).to_numpy()}),
        )
        return _parse(snapshot.dict())[1][0]
    (rate, variance), (reference_rate, reference_variance) = (
        _clustered_rate(current, current_customers), _clustered_rate(reference, reference_customers))
    spread = math.sqrt(variance + reference_variance)
    value = float(2 * norm.sf(abs(rate - reference_rate) / spread)) if spread > 0 else float(rate == reference_rate)
    return ColumnDrift(column, "z, customers as clusters", value, p_value, value < p_value)


def _clustered_rate(flags: pd.Series, customers: pd.Series) -> tuple[float, float]:
    """The share of rows flagged and its variance with customers as clusters (the ratio estimator's
    cluster-robust variance); with one customer, the plain binomial variance."""
    per = pd.DataFrame({"flag": flags.astype(float).to_numpy(), "customer": customers.to_numpy()}).groupby("customer")["flag"].agg(["sum", "count"])
    rows = float(per["count"].sum())
    rate = float(per["sum"].sum()) / rows
    clusters = len(per)
    if clusters < 2:
        return rate, rate * (1 - rate) / rows
    return rate, clusters / (clusters - 1) * float(((per["sum"] - rate * per["count"]) ** 2).sum()) / rows**2


@dataclass(frozen=True)
class DriftLimits:
    """What the monitor calls drift or a warning; set in `Settings` (their descriptions say why)."""

    drift_share: float
    min_rows: int
    max_missing_share: float
    rate_p_value: float
    max_out_of_range_share: float

    @classmethod
    def from_settings(cls, monitoring: MonitoringSettings) -> DriftLimits:
        return cls(monitoring.drift_share, monitoring.min_rows, monitoring.max_missing_share, monitoring.rate_drift_p_value,
                   monitoring.max_out_of_range_share)


def drift_report(
    references: dict[str, Reference], current: pd.DataFrame, features: list[str], out_dir: Path, limits: DriftLimits,
) -> tuple[DriftSummary, list[Snapshot]]:
    """Data drift of all traffic against the champion's reference, prediction drift of each variant's
    scores against its own model's reference; HTML reports and a JSON summary in `out_dir`. Also
    returns the Evidently snapshots, for the workspace's history across runs."""
    out_dir.mkdir(parents=True, exist_ok=True)
    champion = references["champion"].frame
    if len(current) < limits.min_rows:
        summary = DriftSummary("insufficient_data", len(current), len(champion))
        (out_dir / "summary.json").write_text(json.dumps(asdict(summary), indent=2))
        return summary, []
    # Drift tests drop nulls, so the share of answers with defaulted features is checked on its own.
    missing_share = float((current["features_missing"] > 0).mean()) if "features_missing" in current else 0.0
    columns, excluded = _usable(champion, current, features)
    out_of_range, new_values = value_checks(champion, current, [f for f in features if f in current])
    snapshot = Report([DataDriftPreset(columns=columns, drift_share=limits.drift_share)]).run(current_data=current[columns], reference_data=champion[columns])
    html = out_dir / "report.html"
    snapshot.save_html(str(html))
    drifted_share, results = _parse(snapshot.dict())
    kept = [snapshot]

    prediction: dict[str, ColumnDrift] = {}
    decision_rate: dict[str, ColumnDrift] = {}
    for variant, reference in references.items():
        scored = current[(current["variant"] == variant) & (current["model_version"] == reference.version)]
        if len(scored) < limits.min_rows:
            excluded[f"score ({variant})"] = f"{len(scored)} predictions, fewer than min_rows={limits.min_rows}"
            continue
        # A distance on a few hundred scores is mostly noise; a test with a p-value accounts for the
        # sample size. Evidently's own default switches the same way for its feature drift. The test
        # runs at the level of the rate tests: a run makes four or more such tests, and at Evidently's
        # 0.05 a calm period of the demo raised a false alarm on a challenger's 105 scores (p = 0.012).
        small = len(scored) <= SMALL_SAMPLE
        test = ValueDrift(column="score", method="ks", threshold=limits.rate_p_value) if small else ValueDrift(column="score")
        variant_snapshot = Report([test]).run(current_data=scored[["score"]], reference_data=reference.frame[["score"]])
        variant_snapshot.save_html(str(out_dir / f"prediction_drift_{variant}.html"))
        kept.append(variant_snapshot)
        prediction[variant] = _parse(variant_snapshot.dict())[1][0]
        flagged = scored["is_fraud_predicted"] if "is_fraud_predicted" in scored else scored["score"] >= reference.threshold
        decision_rate[variant] = rate_drift(flagged, reference.frame["score"] >= reference.threshold, "flagged", limits.rate_p_value,
                                            scored.get("customer_id"), reference.frame.get("customer_id"))

    verdict: Verdict = "ok"
    if missing_share > limits.max_missing_share or new_values or any(v > limits.max_out_of_range_share for v in out_of_range.values()):
        verdict = "warn"
    if drifted_share >= limits.drift_share or any(c.drifted for c in [*prediction.values(), *decision_rate.values()]):
        verdict = "drift"
    summary = DriftSummary(verdict, len(current), len(champion), drifted_share, prediction, decision_rate, missing_share,
                           out_of_range, new_values, results, excluded, str(html))
    (out_dir / "summary.json").write_text(json.dumps(asdict(summary), indent=2))
    return summary, kept
