"""The registration gate and the model's identity: what a candidate must show before it reaches the
registry, and the fingerprint that makes a re-run on the same inputs a no-op."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict

import mlflow
import pandas as pd
from sklearn.metrics import average_precision_score

from core import registry
from core.settings import Settings
from model.decisions import Costs
from training.fit import ModelConfig, TrainResult
from training.windows import Windows, window


def data_problems(frame: pd.DataFrame, features: list[str], windows: Windows, settings: Settings) -> list[str]:
    """Data checks before any fit: a model trained on broken data must not reach the registry."""
    problems = []
    train_frauds = int(window(frame, windows.train_start, windows.train_end)["is_fraud"].sum())
    if train_frauds < settings.training.min_train_frauds:
        problems.append(f"{train_frauds} frauds in the train window, fewer than min_train_frauds={settings.training.min_train_frauds}")
    empty = [f for f in features if frame[f].isna().all()]
    if empty:
        problems.append(f"features entirely missing: {', '.join(empty)}")
    return problems


def gate_failures(metrics: dict[str, float], champion_ap: float | None, min_ap: float) -> list[str]:
    """Why a candidate may not be registered, on its own test window: below the floor, no better than
    the linear baseline on the same features (then the trees earn nothing for their cost), or, as a
    challenger, below the champion on the same window (the canary would spend live traffic on a
    model already known to be worse)."""
    ap = metrics["test_average_precision"]
    baseline = metrics["baseline_logistic_regression_average_precision"]
    failures = []
    if ap < min_ap:
        failures.append(f"test AP {ap:.3f} < min_average_precision {min_ap}")
    if ap <= baseline:
        failures.append(f"test AP {ap:.3f} <= the logistic-regression baseline's {baseline:.3f} on the same window")
    if champion_ap is not None and ap < champion_ap:
        failures.append(f"test AP {ap:.3f} < the champion's {champion_ap:.3f} on the same window")
    return failures


def champion_on(result: TrainResult, settings: Settings) -> float | None:
    """The serving champion's AP on the candidate's test rows; None without a champion, or when it
    reads features this training set does not have."""
    client = registry.connect(settings)
    if registry.aliased_version(client, settings.stores.model_name, registry.CHAMPION) is None:
        return None
    run = registry.logged_run(client, client.get_model_version_by_alias(settings.stores.model_name, registry.CHAMPION))
    features = json.loads(run.data.tags["features"])
    if not set(features) <= set(result.test.columns):
        return None
    booster = mlflow.lightgbm.load_model(f"models:/{settings.stores.model_name}@{registry.CHAMPION}")
    scores = booster.predict(result.test[features].astype("float64").to_numpy())
    return float(average_precision_score(result.test["is_fraud"], scores))


def fingerprint_of(frame: pd.DataFrame, features: list[str], windows: Windows, config: ModelConfig, settings: Settings) -> str:
    """Same data, same features, same windows, same config, same costs, same code: same model. Every
    cost and the review capacity are in it, since they cut the decision bands the version carries."""
    columns = ["transaction_id", *features, "is_fraud", *(["weight"] if "weight" in frame else [])]
    data = hashlib.sha256(pd.util.hash_pandas_object(frame[columns], index=False).values).hexdigest()
    return hashlib.sha256(
        json.dumps([data, features, str(windows), asdict(config), asdict(Costs.from_settings(settings.costs)), registry.git_commit()]).encode()
    ).hexdigest()

