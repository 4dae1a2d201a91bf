"""Model quality once the labels arrive: the feedback step of the loop.

Fraud labels mature days after the transaction (chargebacks, investigations), so quality is judged
only on the part of the prediction log older than the label delay at `as_of`, with the verdicts the
label store (`features.labels`) held at `as_of`: a matured transaction without a fraud verdict was
legitimate, as a card issuer reads "no chargeback within the window". Each variant is judged
with the same metric code as its test window at training time, so "worse than when we shipped it" is
a like-for-like comparison; Evidently renders the classification report for people.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import pandas as pd
from evidently import BinaryClassification, DataDefinition, Dataset, Report
from evidently.core.report import Snapshot
from evidently.presets import ClassificationPreset

from core.evaluation import evaluate, expected_cost, ips_average_precision, ips_weights
from core.settings import Settings
from features.labels import current


@dataclass
class Quality:
    variant: str
    version: str
    labelled_rows: int
    frauds: int
    precision: float
    recall: float
    average_precision: float
    expected_cost: float
    cost_of_no_model: float
    shipped_average_precision: float  # the model's test-window AP when it was registered
    ips_average_precision: float  # AP with each row weighted by 1 / its decision's propensity: explored reviews stand for the declines
    dropped: bool
    html: str


def with_labels(predictions: pd.DataFrame, settings: Settings, as_of: datetime) -> pd.DataFrame:
    """Answered predictions (shadow scores are not decisions) whose labels have matured by `as_of`,
    each with its verdict as the label store held it then. Declined transactions are left out: no
    label ever comes for them, and "no chargeback" would call every declined fraud legitimate."""
    cutoff = as_of - timedelta(days=settings.label_delay_days)
    declined = predictions["decision"].eq("decline") if "decision" in predictions else False
    answered = predictions[~predictions["shadow"].astype(bool) & (predictions["timestamp"] < cutoff) & ~declined]
    if answered.empty:
        return answered.assign(is_fraud=pd.Series(dtype="int64"))
    verdicts = current(settings, as_of, reported_since=answered["timestamp"].min())[["transaction_id", "is_fraud"]]
    labelled = answered.assign(transaction_id=answered["transaction_id"].astype(str)).merge(verdicts, on="transaction_id", how="left")
    return labelled.assign(is_fraud=labelled["is_fraud"].fillna(0).astype("int64"))


def _ips_ap(frame: pd.DataFrame) -> float:
    propensities = frame["propensity"] if "propensity" in frame else pd.Series(1.0, index=frame.index)
    weights = ips_weights(pd.Series("", index=frame.index), propensities.astype("float64"))  # the declined are out already
    return ips_average_precision(frame["is_fraud"].to_numpy(), frame["score"].to_numpy(), weights)


def judge(labelled: pd.DataFrame, shipped: dict[str, tuple[str, float]], out_dir: Path, review_fee: float, top_k: int,
          max_drop: float, min_frauds: int) -> tuple[dict[str, Quality], list[Snapshot]]:
    """Per variant with at least `min_frauds` labelled frauds: its live metrics against the AP it
    shipped with; `dropped` when live AP fell by more than `max_drop` of that. Also returns the
    Evidently snapshots, for the workspace's history across runs."""
    results: dict[str, Quality] = {}
    snapshots: list[Snapshot] = []
    for variant, (version, shipped_ap) in shipped.items():
        rows = labelled[(labelled["variant"] == variant) & (labelled["model_version"] == version)]
        if int(rows["is_fraud"].sum()) < min_frauds:
            continue
        frame = rows.assign(event_timestamp=rows["timestamp"])
        flagged = frame["is_fraud_predicted"].astype(bool).to_numpy()
        metrics = evaluate(frame, frame["score"].to_numpy(), 0.5, review_fee, top_k)  # its ranking metrics and the no-model cost
        definition = DataDefinition(classification=[BinaryClassification(
            target="is_fraud", prediction_labels="flagged", prediction_probas="score", pos_label=1)], numerical_columns=["score"])
        data = frame[["is_fraud", "score"]].assign(flagged=flagged.astype(int))
        snapshot = Report([ClassificationPreset()]).run(current_data=Dataset.from_pandas(data, data_definition=definition))
        html = out_dir / f"quality_{variant}.html"
        snapshot.save_html(str(html))
        snapshots.append(snapshot)
        values = {m["config"]["type"].rsplit(":", 1)[-1]: m["value"] for m in snapshot.dict()["metrics"]}
        live_ap = metrics["average_precision"]
        results[variant] = Quality(
            variant, version, len(frame), int(frame["is_fraud"].sum()), float(values["Precision"]), float(values["Recall"]),
            # the cost of the decisions actually returned, each at its model's own threshold
            live_ap, expected_cost(frame["is_fraud"].to_numpy(), frame["amount"].to_numpy(), flagged, review_fee),
            metrics["cost_of_no_model"], shipped_ap, _ips_ap(frame),
            live_ap < shipped_ap * (1 - max_drop), str(html),
        )
    return results, snapshots
