"""Model quality once the labels arrive: the feedback step of the loop.

Fraud labels mature days after the transaction (chargebacks, investigations), so quality is judged
only on the part of the prediction log older than the label delay at `as_of`, with the verdicts the
label store (`features.labels`) held at `as_of`: a matured transaction without a fraud verdict was
legitimate, as a card issuer reads "no chargeback within the window". Each variant is judged
with the same metric code as at training time, against its reference traffic (the test window's
every transaction, scored when it shipped) seen as the live traffic is seen: without the top share
of scores that live traffic declined, since no label comes for a declined transaction
(`comparable_reference`). Against its test AP instead, a model that declines its surest 1% reads
as a collapse: the frauds it catches best are exactly the ones missing from the labelled sample.
Evidently renders the classification report for people.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import pandas as pd
from evidently import BinaryClassification, DataDefinition, Dataset, Report
from evidently.core.report import Snapshot
from evidently.presets import ClassificationPreset
from sklearn.metrics import average_precision_score

from core.settings import Settings
from features.labels import current
from model.evaluation import evaluate, expected_cost, ips_average_precision, ips_weights


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
    shipped_average_precision: float  # the model's test-window AP when it was registered (for the record)
    reference_average_precision: float  # its reference traffic's AP as live traffic is seen: the drop is judged against this
    ips_average_precision: float  # AP with each row weighted by 1 / its decision's propensity: explored reviews stand for the declines
    dropped: bool
    html: str


def with_labels(predictions: pd.DataFrame, settings: Settings, as_of: datetime) -> pd.DataFrame:
    """Answered predictions (shadow scores are not decisions) whose labels have matured by `as_of`,
    each with its verdict as the label store held it then. Declined transactions are left out: no
    label ever comes for them, and "no chargeback" would call every declined fraud legitimate."""
    cutoff = as_of - timedelta(days=settings.features.label_delay_days)
    declined = predictions["decision"].eq("decline") if "decision" in predictions else False
    answered = predictions[~predictions["shadow"].astype(bool) & (predictions["timestamp"] < cutoff) & ~declined]
    if answered.empty:
        return answered.assign(is_fraud=pd.Series(dtype="int64"))
    verdicts = current(settings, as_of, reported_since=answered["timestamp"].min())[["transaction_id", "is_fraud"]]
    labelled = answered.assign(transaction_id=answered["transaction_id"].astype(str)).merge(verdicts, on="transaction_id", how="left")
    return labelled.assign(is_fraud=labelled["is_fraud"].fillna(0).astype("int64"))


def comparable_reference(reference: pd.DataFrame, logged: pd.DataFrame) -> pd.DataFrame:
    """The reference as the labelled traffic is seen: the labelled traffic lacks its declines (no
    label comes for them, `with_labels`), the fraud-richest rows, so the reference drops the same top
    share of its scores. Without it, declining alone would read as a fall in the fraud rate and in AP."""
    answered = logged[~logged["shadow"].astype(bool)] if len(logged) else logged
    share = float(answered["decision"].eq("decline").mean()) if "decision" in answered and len(answered) else 0.0
    return reference if share == 0.0 else reference[reference["score"] < reference["score"].quantile(1 - share)]


def reference_ap(reference: pd.DataFrame, logged: pd.DataFrame) -> float:
    """AP of the reference's shipped scores, cut as `comparable_reference` cuts it."""
    seen = comparable_reference(reference, logged)
    return float(average_precision_score(seen["is_fraud"], seen["score"])) if 0 < seen["is_fraud"].sum() < len(seen) else float("nan")


def _ips_ap(frame: pd.DataFrame) -> float:
    propensities = frame["propensity"] if "propensity" in frame else pd.Series(1.0, index=frame.index)
    weights = ips_weights(pd.Series("", index=frame.index), propensities.astype("float64"))  # the declined are out already
    return ips_average_precision(frame["is_fraud"].to_numpy(), frame["score"].to_numpy(), weights)


def judge(labelled: pd.DataFrame, baselines: dict[str, tuple[str, float, float]], out_dir: Path, review_fee: float, top_k: int,
          max_drop: float, min_frauds: int) -> tuple[dict[str, Quality], list[Snapshot]]:
    """Per variant with at least `min_frauds` labelled frauds: its live metrics against its baseline,
    `baselines[variant]` = (version, test AP when shipped, `reference_ap`); `dropped` when live AP fell
    by more than `max_drop` of the reference AP. Also returns the Evidently snapshots, for the
    workspace's history across runs."""
    results: dict[str, Quality] = {}
    snapshots: list[Snapshot] = []
    for variant, (version, shipped_ap, comparable_ap) in baselines.items():
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
            metrics["cost_of_no_model"], shipped_ap, comparable_ap, _ips_ap(frame),
            live_ap < comparable_ap * (1 - max_drop), str(html),
        )
    return results, snapshots
