"""Concept drift, measured: what the monitor says when fraud changes its look, against the same
world without the change.

The simulator's `mimicry` scenario makes leaked cards spend like their owners from a given day:
P(fraud | features) changes and the inputs barely do. Two worlds from the same seed, one with the
change after the test window and one without, each trained the same way; the week after the change
is scored through the batch path (the API's features, `tests/test_batch.py`) into the prediction log
the API writes, and the monitor flow runs as deployed: once when the first two days are in, before
any of their labels can have arrived, and once a label delay after the week. Retraining is off, so
that the second run judges the same model."""

from __future__ import annotations

from datetime import timedelta

import pandas as pd

from core.settings import Settings
from pipelines.bench.common import SCALES, Section

WORLDS = {"no change": (), "mimicry": ("mimicry",)}
SEEN_DAYS = 2  # the first monitor run: the demo's period length


def log_scored(settings: Settings, start: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame:
    """The champion's answers for [start, end), written to the prediction log through the API's sink
    (decisions and exploration as the API takes them); returns them with the simulator's truth."""
    from features.offline import transactions_between
    from model.decisions import explore
    from model.loaded import fetch
    from pipelines.batch import ROW, score_rows
    from serving.predlog import sink_for

    truth = transactions_between(settings.transactions_dir, start, end)
    model = fetch(settings, "champion")
    if model is None:
        raise RuntimeError(f"no champion of {settings.stores.model_name} to score with: the world's training did not register one")
    scored = score_rows(settings, model, truth.drop(columns=["is_fraud", "fraud_scenario"]), with_features=True)
    taken = [explore(d, t, settings.costs.exploration_share) for d, t in zip(scored["decision"], scored["transaction_id"])]
    log = scored.drop(columns=[ROW, "threshold"]).assign(
        decision=[d for d, _ in taken], propensity=[p for _, p in taken], variant="champion", shadow=False,
        features_missing=0, degraded=False, latency_ms=0.0)
    sink_for(settings)(log.to_dict("records"))
    return scored.merge(truth[["transaction_id", "is_fraud", "fraud_scenario"]], on="transaction_id")


def world(settings: Settings, drift: tuple[str, ...]) -> dict[str, float]:
    """One world: simulate, features, a champion, a week after the change logged, the monitor twice."""
    from features.labels import clear
    from features.simulator import SimulationConfig, deliver_chargebacks, write_simulation
    from pipelines.flows import features_flow, monitor_flow, train_flow
    from training.fit import ModelConfig
    from training.windows import Windows

    windows = Windows.from_settings(settings)
    change_day = (windows.test_end - pd.Timestamp(settings.simulation.start_date)).days  # the day after the test window
    write_simulation(SimulationConfig.from_settings(settings.simulation, drift=drift, drift_start_day=change_day), settings.transactions_dir, replace=True)
    clear(settings)
    delay = timedelta(days=settings.features.label_delay_days)
    deliver_chargebacks(settings, windows.test_end + delay)
    features_flow(settings)
    train_flow(settings, ModelConfig())
    start = windows.test_end
    scored = log_scored(settings, start, start + timedelta(days=7))
    at_once = monitor_flow(settings, "at-once", start, start + timedelta(days=SEEN_DAYS))
    deliver_chargebacks(settings, start + timedelta(days=7) + delay)
    later = monitor_flow(settings, "a-label-delay-later", start + timedelta(days=7), start + timedelta(days=7) + delay)
    quality = later.quality.get("champion")  # absent below min_labelled_frauds
    nan = float("nan")
    leaked = scored[scored["fraud_scenario"] == 3]
    # quality by segment: each band of the champion's labelled week against the same band of its reference
    segments = {f"{g.segment} {g.band}: {figure}": value for g in later.segments for figure, value in (
        ("labelled frauds", float(g.frauds)), ("live AP", g.average_precision), ("live AP upper bound", g.average_precision_high),
        ("reference AP", g.reference_average_precision), ("segment alarm (1 = yes)", float(g.alarm)))}
    return {
        "feature drift share, first 2 days": at_once.drift.drifted_share,
        "score drift, first 2 days (1 = yes)": float(at_once.drift.prediction["champion"].drifted),
        "flag-rate drift, first 2 days (1 = yes)": float(at_once.drift.decision_rate["champion"].drifted),
        "verdict is drift, first 2 days (1 = yes)": float(at_once.drift.verdict == "drift"),
        "label drift, a label delay later (1 = yes)": float(later.label_drift is not None and later.label_drift.drifted),
        "live AP, a label delay later": quality.average_precision if quality else nan,
        "shipped AP (test window)": quality.shipped_average_precision if quality else nan,
        "reference AP, cut at the live decline share (the baseline)": quality.reference_average_precision if quality else nan,
        "live recall, a label delay later": quality.recall if quality else nan,
        "quality drop flagged, a label delay later (1 = yes)": float(quality.dropped) if quality else nan,
        "leaked-card frauds in the week": float(leaked["is_fraud"].sum()),
        "leaked-card frauds flagged (truth; no monitor sees it)": float(leaked[leaked["is_fraud"] == 1]["is_fraud_predicted"].mean()),
        "estimated AP, first 2 days (from scores, before any label)": at_once.estimate.live.average_precision if at_once.estimate else nan,
        "estimated AP of the labelled week (from its scores)": later.estimate.matured.average_precision if later.estimate else nan,
        "realized AP of the labelled week (its labels)": later.estimate.realized_average_precision if later.estimate else nan,
        "segment alarms, a label delay later": float(sum(g.alarm for g in later.segments)),
        **segments,
    }


def concept_section(settings: Settings, scale: str, repeat: int) -> Section:
    customers, terminals = SCALES[scale].customers, SCALES[scale].terminals
    section = Section(f"concept drift (mimicry from the day after the test window; {customers:,} cards; one run per world)")
    for name, drift in WORLDS.items():
        s = settings.replace(state_dir=settings.state_dir / f"concept-{name.replace(' ', '-')}", customers=customers,
                             terminals=terminals, days=100, retrain_on_drift=False)
        for figure, value in world(s, drift).items():
            section.add(f"{name}: {figure}", value, "")
    return section
