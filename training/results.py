"""A training run's test figures per model, typed, and the one table the CLI and the demo print.

The train flow returns flat MLflow-style metrics (`test_roc_auc`, `baseline_amount_rule_...`); the
names of two of them follow the settings (`top_k`, `max_false_positive_rate`), so they are read here
by the names `model.evaluation` gives them and nowhere spelled out by hand.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

from rich.table import Table

from core.settings import Settings
from model.evaluation import card_precision_key, recall_key

# the model's name in reports, and the prefix of its metrics in a training result
MODELS = {"lightgbm": "test", "logistic_regression": "baseline_logistic_regression", "amount_rule": "baseline_amount_rule"}


@dataclass(frozen=True)
class ModelScores:
    model: str
    roc_auc: float | None
    average_precision: float | None
    card_precision_at_k: float | None
    recall_at_fpr: float | None
    expected_cost: float | None

    def as_json(self, settings: Settings) -> dict[str, object]:
        """Keyed as `model.evaluation.evaluate` names the metrics, for this installation's settings."""
        out = asdict(self)
        out[card_precision_key(settings.costs.top_k)] = out.pop("card_precision_at_k")
        out[recall_key(settings.training.max_false_positive_rate)] = out.pop("recall_at_fpr")
        del out["model"]
        return out


def model_scores(result: Mapping[str, object], settings: Settings, lightgbm: str = "lightgbm") -> list[ModelScores]:
    """The test window's figures of the trained model (named `lightgbm`) and of its two baselines."""

    def metric(prefix: str, name: str) -> float | None:
        value = result.get(f"{prefix}_{name}")
        return float(value) if isinstance(value, (int, float)) else None

    return [ModelScores(lightgbm if model == "lightgbm" else model, metric(prefix, "roc_auc"), metric(prefix, "average_precision"),
                        metric(prefix, card_precision_key(settings.costs.top_k)), metric(prefix, recall_key(settings.training.max_false_positive_rate)),
                        metric(prefix, "expected_cost"))
            for model, prefix in MODELS.items()]


def scores_table(rows: list[ModelScores], settings: Settings, title: str) -> Table:
    table = Table(title=title)
    for column in ("model", "ROC AUC", "average precision", f"CP@{settings.costs.top_k}",
                   f"recall @ {settings.training.max_false_positive_rate:.0%} FPR", "expected cost"):
        table.add_column(column)
    for row in rows:
        figures = (row.roc_auc, row.average_precision, row.card_precision_at_k, row.recall_at_fpr)
        table.add_row(row.model, *(f"{v:.3f}" if v is not None else "-" for v in figures),
                      f"{row.expected_cost:,.0f}" if row.expected_cost is not None else "-")
    return table
