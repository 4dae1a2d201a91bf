"""Training set, time-based split, and the LightGBM fit: plain functions the Prefect flow composes."""

from __future__ import annotations

from dataclasses import dataclass

import lightgbm as lgb
import numpy as np
import pandas as pd

from pipelines.evaluation import cost_optimal_threshold, evaluate
from pipelines.settings import Settings


@dataclass(frozen=True)
class Windows:
    """Handbook protocol: train, then a delay while labels mature, then test. Never a random split:
    fraud patterns move in time, and a random split leaks tomorrow's compromised terminals into training."""

    train_start: pd.Timestamp
    train_end: pd.Timestamp
    test_start: pd.Timestamp
    test_end: pd.Timestamp

    @classmethod
    def from_settings(cls, settings: Settings) -> Windows:
        start = pd.Timestamp(settings.start_date) + pd.Timedelta(days=settings.train_start_day)
        train_end = start + pd.Timedelta(days=settings.train_days)
        test_start = train_end + pd.Timedelta(days=settings.label_delay_days)
        return cls(start, train_end, test_start, test_start + pd.Timedelta(days=settings.test_days))


@dataclass(frozen=True)
class ModelConfig:
    """What distinguishes one candidate from another; logged as run parameters."""

    num_leaves: int = 31
    learning_rate: float = 0.05
    num_boost_round: int = 200
    # Class imbalance: weight frauds up instead of resampling, so the data keeps its real time order.
    scale_pos_weight: float = 1.0
    min_child_samples: int = 20

    def params(self) -> dict[str, float | int | str]:
        return {
            "objective": "binary",
            "num_leaves": self.num_leaves,
            "learning_rate": self.learning_rate,
            "scale_pos_weight": self.scale_pos_weight,
            "min_child_samples": self.min_child_samples,
            "verbosity": -1,
            "num_threads": 2,
            "seed": 7,
        }


@dataclass
class TrainResult:
    booster: lgb.Booster
    features: list[str]
    threshold: float
    metrics: dict[str, float]
    train_rows: int
    reference: pd.DataFrame  # the test window with this model's scores: what monitoring compares against


def split(frame: pd.DataFrame, windows: Windows) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Fit, validation (the last third of the train window, for early stopping and the threshold), test."""
    ts = frame["event_timestamp"]
    validation_start = windows.train_end - (windows.train_end - windows.train_start) / 3
    fit = frame[(ts >= windows.train_start) & (ts < validation_start)]
    validation = frame[(ts >= validation_start) & (ts < windows.train_end)]
    test = frame[(ts >= windows.test_start) & (ts < windows.test_end)]
    for name, part in (("fit", fit), ("validation", validation), ("test", test)):
        if part["is_fraud"].sum() == 0:
            raise ValueError(f"the {name} window holds no fraud: widen the windows or simulate more data")
    return fit, validation, test


def fit(frame: pd.DataFrame, features: list[str], windows: Windows, config: ModelConfig, settings: Settings) -> TrainResult:
    train, validation, test = split(frame, windows)
    booster = lgb.train(
        config.params(),
        lgb.Dataset(train[features].to_numpy(np.float64), label=train["is_fraud"], feature_name=features),
        num_boost_round=config.num_boost_round,
        valid_sets=[lgb.Dataset(validation[features].to_numpy(np.float64), label=validation["is_fraud"])],
        callbacks=[lgb.early_stopping(30, verbose=False)],
    )
    validation_scores = booster.predict(validation[features].to_numpy(np.float64))
    threshold, _ = cost_optimal_threshold(
        validation["is_fraud"].to_numpy(), validation["amount"].to_numpy(), validation_scores, settings.review_fee
    )
    test_scores = booster.predict(test[features].to_numpy(np.float64))
    metrics = {f"test_{k}": v for k, v in evaluate(test, test_scores, threshold, settings.review_fee, settings.top_k).items()}
    metrics["best_iteration"] = float(booster.best_iteration)
    reference = test[["event_timestamp", *features, "is_fraud"]].assign(score=test_scores)
    return TrainResult(booster, features, threshold, metrics, len(train), reference)
