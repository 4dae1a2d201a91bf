"""The monitor flow: drift of live traffic against each model's reference, quality where labels have
arrived, and a retrain through the train flow when either calls for one."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import mlflow
import pandas as pd
from prefect import flow, get_run_logger, task

from core import predictions, registry
from core.monitor_metrics import LATEST
from core.runtime import write_atomically
from core.settings import Settings
from features.state import open_state
from monitoring import workspace
from monitoring.canary import compare, of_current_versions, thompson_share
from monitoring.drift import ColumnDrift, DriftLimits, DriftSummary, Reference, drift_report, rate_drift
from monitoring.estimate import Estimates, judge_estimate
from monitoring.quality import Quality, comparable_reference, judge, reference_ap, with_labels
from monitoring.rules import RuleFigures, rule_figures
from monitoring.segments import SegmentQuality, segment_quality
from pipelines.flows.featurize import features_flow
from pipelines.flows.train import REFERENCE_FILE, training_flow
from training.fit import ModelConfig


@dataclass
class References:
    """What each aliased model was validated on: its reference traffic and scores, its test AP."""

    frames: dict[str, Reference]
    features: list[str]  # the champion's
    shipped_ap: dict[str, tuple[str, float]]  # alias -> (version, test average precision)


@task
def load_references(settings: Settings) -> References:
    client = registry.connect(settings)
    frames: dict[str, Reference] = {}
    features: list[str] = []
    shipped: dict[str, tuple[str, float]] = {}
    for alias in (registry.CHAMPION, registry.CHALLENGER):
        if registry.aliased_version(client, settings.stores.model_name, alias) is None:
            continue
        version = client.get_model_version_by_alias(settings.stores.model_name, alias)
        run = registry.logged_run(client, version)
        path = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path=f"reference/{REFERENCE_FILE}")
        frames[alias] = Reference(str(version.version), pd.read_parquet(path), float(run.data.params["threshold"]))
        shipped[alias] = (str(version.version), float(run.data.metrics["test_average_precision"]))
        if alias == registry.CHAMPION:
            features = json.loads(run.data.tags["features"])
    if registry.CHAMPION not in frames:
        raise ValueError(f"model {settings.stores.model_name!r} has no champion to monitor")
    return References(frames, features, shipped)


@dataclass
class Monitoring:
    """One monitor run: drift of the window, quality where labels have arrived, and what it did."""

    drift: DriftSummary
    quality: dict[str, Quality]
    label_drift: ColumnDrift | None  # the fraud rate of labelled traffic against the reference
    reasons: list[str]  # why a retrain is called for; empty when none is
    retrain: dict[str, object] | None  # the triggered train flow's outcome
    bandit_share: float | None = None  # in routing mode bandit: the challenger's share this run set
    segments: list[SegmentQuality] = field(default_factory=list)  # the champion's quality by segment (monitoring/segments.py)
    estimate: Estimates | None = None  # the champion's AP estimated from its scores, before the labels (monitoring/estimate.py)
    rules: list[RuleFigures] = field(default_factory=list)  # each rule's hit rate and precision (monitoring/rules.py)

    @property
    def verdict(self) -> str:
        return self.drift.verdict


@task
def steer_bandit(settings: Settings, labelled: pd.DataFrame) -> float | None:
    """In routing mode `bandit`, set the challenger's share for every worker from its labelled
    results this run judged (`thompson_share`); nothing in the other modes, or without a challenger."""
    aliases, routing = registry.serving_state(settings)
    if routing is None or routing.mode != "bandit" or "challenger" not in aliases:
        return None
    current = routing.share_for(aliases["challenger"], settings.canary.challenger_share)
    comparison = compare(of_current_versions(settings, labelled), settings.costs.review_fee, settings.canary.promote_min_frauds, settings.canary.promote_max_ap_loss)
    share = thompson_share(comparison, current, settings.canary.bandit_min_share, settings.canary.bandit_max_share)
    if share != current:
        try:  # only over the record read above: a guardrail's rollback made meanwhile stands
            registry.set_routing(settings, registry.Routing(share, "bandit", aliases["challenger"]), expected=routing)
        except registry.RoutingChanged as changed:
            get_run_logger().warning("bandit: share left as it is: %s", changed)
            return None
        get_run_logger().warning("bandit: challenger share %.3f -> %.3f (P(challenger cheaper) %.2f)", current, share, comparison.challenger_cheaper)
    return share


def judge_champion(settings: Settings, references: References, judged: bool, labelled: pd.DataFrame, logged: pd.DataFrame,
                   current: pd.DataFrame, matured_until: datetime, out_dir: Path) -> tuple[list[SegmentQuality], Estimates]:
    """The champion's quality by segment (when it was judged at all) on its matured predictions, and
    its AP estimated from the scores of those and of the live window's that have no labels yet, all
    of the champion's current version."""
    version = references.shipped_ap["champion"][0]
    reference = references.frames["champion"].frame
    matured = labelled[(labelled["variant"] == "champion") & (labelled["model_version"] == version)] if len(labelled) else labelled
    own = comparable_reference(reference, logged[logged["variant"] == "champion"] if len(logged) else logged)  # cut at its own decline share
    segments = segment_quality(matured, own, settings.monitoring.min_labelled_frauds, settings.monitoring.max_quality_drop) if judged else []
    declined = current["decision"].eq("decline") if "decision" in current else False  # as `with_labels` leaves them out
    live = current[current["variant"].eq("champion") & current["model_version"].eq(version) & ~current["shadow"].astype(bool)
                   & ~declined & (current["timestamp"] >= matured_until)] if {"variant", "model_version"} <= set(current.columns) else current
    return segments, judge_estimate(matured, live, reference, str(out_dir / "estimate.png"))


@flow(name="monitor")
def monitor_flow(settings: Settings | None = None, label: str = "latest", since: datetime | None = None,
                 until: datetime | None = None) -> Monitoring:
    """Drift of [since, until) against each model's reference; quality of the predictions whose labels
    have arrived by `until`; on drift or a quality drop, a retrain on the latest labelled windows."""
    settings = settings or Settings()
    references = load_references(settings)  # what each model was validated on
    out_dir = settings.reports_dir / label
    merged = predictions.compact(settings)  # one file a finished day to read, not one a second per worker
    if merged:
        get_run_logger().info("prediction log: %d parts of finished days merged", merged)
    try:
        dormant = open_state(settings).prune_dormant()  # on SQLite; Redis keys expire on their own
    except sqlite3.OperationalError as exc:  # housekeeping: the next run tries again, the report goes on
        get_run_logger().warning("live state: dormant cards not pruned this run: %s", exc)
    else:
        if dormant:
            get_run_logger().info("live state: %d dormant cards and terminals pruned", dormant)
    current = predictions.read(settings, since, until)  # live traffic
    if current.empty:
        current = references.frames["champion"].frame.iloc[0:0]
    drift, snapshots = drift_report(references.frames, current, references.features, out_dir, DriftLimits.from_settings(settings.monitoring))
    as_of = until or (current["timestamp"].max() if len(current) else datetime.now(timezone.utc).replace(tzinfo=None))
    matured_until = as_of - timedelta(days=settings.features.label_delay_days)
    logged = predictions.read(settings, matured_until - timedelta(days=settings.monitoring.quality_days), matured_until)
    labelled = with_labels(logged, settings, as_of) if len(logged) else logged
    # each variant against its own reference traffic, cut at the decline share its live traffic had
    baselines = {alias: (version, ap, reference_ap(references.frames[alias].frame, logged[logged["variant"] == alias] if len(logged) else logged))
                 for alias, (version, ap) in references.shipped_ap.items()}
    quality, quality_snapshots = judge(labelled, baselines, out_dir, settings.costs.review_fee, settings.costs.top_k,
                                       settings.monitoring.max_quality_drop, settings.monitoring.min_labelled_frauds) if len(labelled) else ({}, [])
    # A fraud wave is mostly a change in the labels: the features and scores barely move until the
    # terminals' risk catches up, so the fraud rate of the labelled traffic is tested on its own.
    champion_frame = comparable_reference(references.frames["champion"].frame, logged)
    labels = (rate_drift(labelled["is_fraud"], champion_frame["is_fraud"], "is_fraud", settings.monitoring.rate_drift_p_value,
                         labelled.get("customer_id"), champion_frame.get("customer_id"))
              if len(labelled) >= settings.monitoring.min_rows else None)
    reasons = [f"drift verdict on {drift.current_rows:,} predictions ({drift.drifted_share:.0%} of features drifted)"] if drift.verdict == "drift" else []
    if labels is not None and labels.drifted:
        reasons.append(f"fraud rate of labelled traffic {labelled['is_fraud'].mean():.2%} against "
                       f"{champion_frame['is_fraud'].mean():.2%} in the reference (z-test p={labels.value:.1g})")
    reasons += [f"{q.variant} v{q.version}: live AP {q.average_precision:.3f} vs {q.reference_average_precision:.3f} on its reference traffic"
                for q in quality.values() if q.dropped]
    segments, estimates = judge_champion(settings, references, "champion" in quality, labelled, logged, current, matured_until, out_dir)
    reasons += [f"champion, {g.segment} {g.band}: live AP {g.average_precision:.3f} (at most {g.average_precision_high:.3f}) "
                f"vs {g.reference_average_precision:.3f} in the same band of its reference traffic" for g in segments if g.alarm]
    retrain = None
    if reasons and settings.monitoring.retrain_on_drift:
        get_run_logger().warning("retraining: %s", "; ".join(reasons))
        features_flow(settings)  # the newest transactions into the offline features first
        retrain = training_flow(settings)(settings, ModelConfig(), as_of=as_of, trigger="monitor: " + "; ".join(reasons))
    outcome = Monitoring(drift, quality, labels, reasons, retrain, steer_bandit(settings, labelled), segments, estimates,
                         rule_figures(current, labelled))
    workspace.record(settings.evidently_dir, label, snapshots + quality_snapshots)  # history for the Evidently UI
    text = json.dumps(asdict(outcome), indent=2, default=str)
    (out_dir / "monitor.json").write_text(text)
    write_atomically(settings.reports_dir / LATEST, text)  # what /metrics exports: the newest run, whole
    get_run_logger().info("drift verdict %s over %d predictions; retrain: %s", drift.verdict, drift.current_rows, retrain)
    return outcome
