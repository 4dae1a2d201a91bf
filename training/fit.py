"""Model selection, the LightGBM fit (in process or across a Dask cluster) and its test beside the
baselines: plain functions that the train flow composes."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import lightgbm as lgb
import numpy as np
import pandas as pd

from core.settings import Settings
from model.calibration import Calibration, expected_calibration_error
from model.decisions import Bands, decision_bands
from model.evaluation import cost_optimal_threshold, evaluate
from training.baselines import baselines
from training.matrix import matrix
from training.windows import Windows, split, window

if TYPE_CHECKING:
    from distributed import Client


@dataclass(frozen=True)
class ModelConfig:
    """What distinguishes one candidate from another; logged as run parameters."""

    # Small trees, a slow rate, row and column subsampling: frauds are few (a few hundred in a week)
    # and a deep tree memorises them. On the Handbook's published data and protocol these took the
    # test AP from 0.650 (31 leaves, rate 0.05, no subsampling) to 0.667 (docs/04-model.md).
    num_leaves: int = 15
    learning_rate: float = 0.03
    num_boost_round: int = 600  # an upper bound: early stopping on the validation window decides
    # Class imbalance: weight frauds up rather than resample, so the data keeps its time order. None
    # lets prequential validation choose among IMBALANCE_CHOICES.
    scale_pos_weight: float | None = None
    min_child_samples: int = 50
    feature_fraction: float = 0.7
    bagging_fraction: float = 0.8

    def params(self) -> dict[str, float | int | str]:
        return {
            "objective": "binary",
            "num_leaves": self.num_leaves,
            "learning_rate": self.learning_rate,
            "scale_pos_weight": self.scale_pos_weight or 1.0,
            "min_child_samples": self.min_child_samples,
            "feature_fraction": self.feature_fraction,
            "bagging_fraction": self.bagging_fraction,
            "bagging_freq": 1 if self.bagging_fraction < 1 else 0,
            "verbosity": -1,
            "num_threads": 2,
            "seed": 7,
            "deterministic": True,
        }


IMBALANCE_CHOICES = (1.0, 5.0, 20.0)


@dataclass
class TrainResult:
    booster: lgb.Booster
    config: ModelConfig
    features: list[str]
    threshold: float  # on the calibrated score, as are the bands
    calibration: Calibration  # the booster's raw score to a fraud probability, fitted on validation
    bands: Bands  # approve / step-up / review / decline cuts, chosen on validation within the review capacity
    metrics: dict[str, float]
    selection: dict[str, float]  # mean validation AP per imbalance choice
    train_rows: int
    test: pd.DataFrame  # the evaluated test rows with the model's calibrated (score) and raw (raw_score) scores: plots
    reference: pd.DataFrame  # the whole test window's traffic with the model's scores: monitoring
    baseline_scores: dict[str, np.ndarray]
    capacity_costs: dict[str, dict[float, float]]  # actions -> daily review capacity -> the test cost, cut for that capacity


def fit_booster(fit: pd.DataFrame, validation: pd.DataFrame, features: list[str], config: ModelConfig,
                client: Client | None = None) -> lgb.Booster:
    if client is not None:
        return fit_on_dask(fit, features, config, client)
    weight = fit.get("weight")  # inverse propensities, where the labels came from a logged policy (pipelines/bench/exploration_replay.py)
    return lgb.train(
        config.params(),
        lgb.Dataset(matrix(fit, features), label=fit["is_fraud"], weight=weight, feature_name=features, free_raw_data=True),
        num_boost_round=config.num_boost_round,
        valid_sets=[lgb.Dataset(matrix(validation, features), label=validation["is_fraud"], weight=validation.get("weight"))],
        callbacks=[lgb.early_stopping(30, verbose=False)],
    )


def fit_on_dask(fit: pd.DataFrame, features: list[str], config: ModelConfig, client: Client) -> lgb.Booster:
    """One booster trained by every worker of the cluster over its share of the rows (lightgbm.dask).
    lightgbm.dask has no early stopping (workers would stop at different rounds), so it runs the
    configured number of rounds: on the same data it fits more trees than the in-process path."""
    import dask.dataframe as dd
    from lightgbm.dask import DaskLGBMClassifier

    partitions = max(1, len(client.scheduler_info()["workers"]))
    frame = fit[[*features, "is_fraud", *(["weight"] if "weight" in fit else [])]].astype({f: "float64" for f in features}).reset_index(drop=True)
    data = client.persist(dd.from_pandas(frame, npartitions=partitions))
    params: dict[str, Any] = {k: v for k, v in config.params().items() if k != "num_threads"}  # each worker uses its own threads
    model = DaskLGBMClassifier(client=client, n_estimators=config.num_boost_round, **params)
    model.fit(data[features], data["is_fraud"], sample_weight=data["weight"] if "weight" in fit else None)
    return model.to_local().booster_


def select_imbalance(frame: pd.DataFrame, features: list[str], windows: Windows, config: ModelConfig, settings: Settings,
                     client: Client | None = None) -> tuple[ModelConfig, dict[str, float]]:
    """Prequential validation: mean average precision of each class weight over shifted folds."""
    if config.scale_pos_weight is not None:
        return config, {}
    folds = windows.prequential(settings.training.prequential_folds, settings.training.prequential_step_days)
    scores: dict[str, float] = {}
    for weight in IMBALANCE_CHOICES:
        candidate = replace(config, scale_pos_weight=weight)
        aps = []
        for fold in folds:
            fit, validation, held_out = split(frame, fold)
            booster = fit_booster(fit, validation, features, candidate, client)
            aps.append(evaluate(held_out, np.asarray(booster.predict(matrix(held_out, features))), 0.5, settings.costs.review_fee, settings.costs.top_k)["average_precision"])
        scores[f"prequential_ap_weight_{weight:g}"] = float(np.mean(aps))
    best = max(IMBALANCE_CHOICES, key=lambda w: scores[f"prequential_ap_weight_{w:g}"])
    return replace(config, scale_pos_weight=best), scores


def train(frame: pd.DataFrame, features: list[str], windows: Windows, config: ModelConfig, settings: Settings,
          client: Client | None = None) -> TrainResult:
    """Select the class weight, fit, choose the threshold, test beside the baselines. With a Dask client
    the LightGBM fits run across the cluster; the rest is small and stays here."""
    config, selection = select_imbalance(frame, features, windows, config, settings, client)
    fit, validation, test = split(frame, windows)
    booster = fit_booster(fit, validation, features, config, client)

    def judged(validation_scores: np.ndarray, test_scores: np.ndarray) -> tuple[float, dict[str, float]]:
        threshold, _ = cost_optimal_threshold(validation["is_fraud"].to_numpy(), validation["amount"].to_numpy(), validation_scores, settings.costs.review_fee)
        return threshold, evaluate(test, test_scores, threshold, settings.costs.review_fee, settings.costs.top_k, settings.training.max_false_positive_rate)

    raw_test = np.asarray(booster.predict(matrix(test, features)))
    raw_validation = np.asarray(booster.predict(matrix(validation, features)))
    # Thresholds and bands are chosen on the score the service serves: the calibrated one.
    calibration = Calibration.fit(raw_validation, validation["is_fraud"].to_numpy(), validation.get("weight"))
    test_scores, validation_scores = calibration.apply(raw_test), calibration.apply(raw_validation)
    threshold, model_metrics = judged(validation_scores, test_scores)
    bands, band_metrics, capacity_costs = decision_bands(validation, validation_scores, test, test_scores, settings)
    metrics = {f"test_{k}": v for k, v in {**model_metrics, **band_metrics}.items()}
    test_labels = test["is_fraud"].to_numpy()
    metrics["test_calibration_error"] = expected_calibration_error(test_labels, test_scores)
    metrics["test_calibration_error_raw"] = expected_calibration_error(test_labels, raw_test)
    # The monitoring reference is all of the test window's traffic, known-compromised cards included:
    # live traffic includes them too, and a reference without them would raise false drift alarms.
    everything = window(frame, windows.test_start, windows.test_end)
    # The customer of each row: the monitor's rate tests count customers, not rows, as independent.
    reference = everything[["event_timestamp", "customer_id", *features, "is_fraud"]].assign(
        score=calibration.apply(np.asarray(booster.predict(matrix(everything, features)))))
    baseline_scores = {}
    for name, (validation_scores, baseline_test) in baselines(fit, validation, test, features).items():
        _, baseline_metrics = judged(validation_scores, baseline_test)
        metrics.update({f"baseline_{name}_{k}": v for k, v in baseline_metrics.items() if k not in ("rows", "frauds")})
        baseline_scores[name] = baseline_test
    metrics["best_iteration"] = float(booster.best_iteration or booster.current_iteration())
    scored = test[["event_timestamp", "customer_id", *features, "is_fraud"]].assign(score=test_scores, raw_score=raw_test)
    return TrainResult(booster, config, features, threshold, calibration, bands, metrics, selection, len(fit), scored, reference, baseline_scores,
                       capacity_costs)
