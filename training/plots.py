"""The figures an ML lead asks for before signing off a fraud model, saved as MLflow artifacts."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
import numpy as np
from sklearn.calibration import calibration_curve
from sklearn.metrics import precision_recall_curve, roc_curve

from core.settings import Settings
from model.decisions import Costs, cost
from model.evaluation import expected_cost
from training.fit import TrainResult


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _curves(result: TrainResult) -> dict[str, np.ndarray]:
    return {"LightGBM": result.test["score"].to_numpy(), **{k.replace("_", " "): v for k, v in result.baseline_scores.items()}}


def pr_roc(result: TrainResult, settings: Settings, out: Path) -> Path:
    labels = result.test["is_fraud"].to_numpy()
    fig, (pr, roc) = plt.subplots(1, 2, figsize=(11, 4.5))
    for name, scores in _curves(result).items():
        precision, recall, _ = precision_recall_curve(labels, scores)
        pr.plot(recall, precision, label=name)
        fpr, tpr, _ = roc_curve(labels, scores)
        roc.plot(fpr, tpr, label=name)
    pr.axhline(labels.mean(), color="grey", ls=":", label=f"base rate {labels.mean():.2%}")
    pr.set(xlabel="recall", ylabel="precision", title="Precision-recall, test window")
    roc.plot([0, 1], [0, 1], color="grey", ls=":")
    roc.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC, test window")
    pr.legend(), roc.legend()
    return _save(fig, out / "pr_roc.png")


def calibration(result: TrainResult, settings: Settings, out: Path) -> Path:
    """The reliability curve on the test window of the served score, beside the booster's raw one."""
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    labels = result.test["is_fraud"].to_numpy()
    for column, name, error in (("raw_score", "raw booster score", "test_calibration_error_raw"),
                                ("score", "served score (calibrated on validation)", "test_calibration_error")):
        observed, predicted = calibration_curve(labels, result.test[column].to_numpy(), n_bins=10, strategy="quantile")
        ax.plot(predicted, observed, marker="o", label=f"{name}, ECE {result.metrics[error]:.4f}")
    ax.plot([0, 1], [0, 1], color="grey", ls=":", label="perfectly calibrated")
    ax.set(xscale="log", yscale="log", xlabel="mean predicted probability", ylabel="observed fraud rate", title="Calibration on test (quantile bins)")
    ax.legend()
    return _save(fig, out / "calibration.png")


def cost_by_threshold(result: TrainResult, settings: Settings, out: Path) -> Path:
    labels, amounts, scores = (result.test[c].to_numpy() for c in ("is_fraud", "amount", "score"))
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    thresholds = np.unique(np.quantile(scores, np.linspace(0.5, 1.0, 200)))
    ax.plot(thresholds, [expected_cost(labels, amounts, scores >= t, settings.costs.review_fee) for t in thresholds])
    ax.axvline(result.threshold, color="red", ls="--", label=f"chosen on validation: {result.threshold:.3f}")
    ax.set(xscale="log", xlabel="decision threshold", ylabel="expected cost on test", title=f"Cost by threshold (review fee {settings.costs.review_fee:g})")
    ax.legend()
    return _save(fig, out / "cost_by_threshold.png")


def cost_by_capacity(result: TrainResult, settings: Settings, out: Path) -> Path:
    labels, amounts, scores = (result.test[c].to_numpy() for c in ("is_fraud", "amount", "score"))
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for actions, curve in result.capacity_costs.items():
        capacities = sorted(curve)
        ax.plot(capacities, [curve[c] for c in capacities], marker="o", label=f"{actions}, cut for each capacity")
    flagged = np.where(scores >= result.threshold, 2, 0)  # one threshold: every flag reviewed, however many a day
    ax.axhline(cost(labels, amounts, flagged, Costs.from_settings(settings.costs)), color="grey", ls="--", label="one threshold, reviews unbounded")
    ax.axvline(settings.costs.top_k, color="red", ls="--", label=f"this team: {settings.costs.top_k} reviews a day")
    ax.set_xscale("symlog", linthresh=10)
    ax.set(xlim=(0, None), xlabel="review capacity (transactions a day)", ylabel="cost on test",
           title=f"Cost against review capacity (no model: {amounts[labels == 1].sum():,.0f})")
    ax.legend(fontsize=8)
    return _save(fig, out / "cost_by_capacity.png")


def importance(result: TrainResult, settings: Settings, out: Path) -> Path:
    fig, (gain, shap) = plt.subplots(1, 2, figsize=(12, 5))
    by_gain = result.booster.feature_importance("gain")
    order = np.argsort(by_gain)
    gain.barh(np.array(result.features)[order], by_gain[order])
    gain.set(title="Feature importance (gain)", xlabel="total gain")
    # LightGBM computes exact TreeSHAP itself: pred_contrib gives one SHAP value per feature per row.
    sample = result.test[result.features].to_numpy(np.float64)[:5_000]
    contributions = np.asarray(result.booster.predict(sample, pred_contrib=True))[:, :-1]
    mean_abs = np.abs(contributions).mean(axis=0)
    order = np.argsort(mean_abs)
    shap.barh(np.array(result.features)[order], mean_abs[order])
    shap.set(title="SHAP summary (mean |SHAP value|, log-odds)", xlabel="mean |SHAP|")
    return _save(fig, out / "importance_gain_shap.png")


PLOTS = (pr_roc, calibration, cost_by_threshold, cost_by_capacity, importance)


def write_plots(result: TrainResult, settings: Settings, out: Path) -> list[Path]:
    """Every figure of `PLOTS` for this run, as PNG files under `out`."""
    out.mkdir(parents=True, exist_ok=True)
    return [plot(result, settings, out) for plot in PLOTS]
