"""Training set windows, model selection, the LightGBM fit and its baselines: plain functions that the
Prefect flow composes."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import lightgbm as lgb
import numpy as np
import pandas as pd
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from core.decisions import DECISIONS, Bands, Costs, choose_bands, cost, days_in
from core.evaluation import cost_optimal_threshold, evaluate, ips_weights
from core.settings import Settings

if TYPE_CHECKING:
    from distributed import Client


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
        if settings.train_start is not None:
            start = pd.Timestamp(settings.train_start)
        else:
            start = pd.Timestamp(settings.start_date) + pd.Timedelta(days=settings.train_start_day)
        train_end = start + pd.Timedelta(days=settings.train_days)
        test_start = train_end + pd.Timedelta(days=settings.label_delay_days)
        return cls(start, train_end, test_start, test_start + pd.Timedelta(days=settings.test_days))

    @classmethod
    def latest(cls, as_of: pd.Timestamp, settings: Settings) -> Windows:
        """The most recent protocol whose test labels have all arrived by `as_of`: what a retrain
        triggered now can honestly use. The label delay bounds how fast a retrain can learn a change."""
        test_end = pd.Timestamp(as_of).floor("D") - pd.Timedelta(days=settings.label_delay_days)
        test_start = test_end - pd.Timedelta(days=settings.test_days)
        train_end = test_start - pd.Timedelta(days=settings.label_delay_days)
        return cls(train_end - pd.Timedelta(days=settings.train_days), train_end, test_start, test_end)

    def shifted(self, days: int) -> Windows:
        delta = pd.Timedelta(days=days)
        return Windows(self.train_start - delta, self.train_end - delta, self.test_start - delta, self.test_end - delta)

    def prequential(self, folds: int, step_days: int) -> list[Windows]:
        """Validation folds for model selection: the whole protocol shifted back so that every
        validation window ends before the test window starts (the test set is never used to choose)."""
        test_days = (self.test_end - self.test_start).days
        return [self.shifted(test_days + k * step_days) for k in range(folds)]


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
    threshold: float
    bands: Bands  # approve / step-up / review / decline cuts, chosen on validation within the review capacity
    metrics: dict[str, float]
    selection: dict[str, float]  # mean validation AP per imbalance choice
    train_rows: int
    test: pd.DataFrame  # the evaluated test rows with the model's scores: plots
    reference: pd.DataFrame  # the whole test window's traffic with the model's scores: monitoring
    baseline_scores: dict[str, np.ndarray]
    capacity_costs: dict[str, dict[float, float]]  # actions -> daily review capacity -> the test cost, cut for that capacity


CAPACITIES = (0.0, 10.0, 25.0, 50.0, 100.0, 200.0, 400.0, 800.0)  # reviews a day, for the cost-against-capacity figure


def decision_bands(validation: pd.DataFrame, validation_scores: np.ndarray, test: pd.DataFrame, test_scores: np.ndarray,
                   settings: Settings) -> tuple[Bands, dict[str, float], dict[str, dict[float, float]]]:
    """The bands for the settings' capacity, their test figures, and the test cost at other
    capacities, with all four actions and with reviews alone."""
    costs = Costs.from_settings(settings)
    labels, amounts = test["is_fraud"].to_numpy(), test["amount"].to_numpy()
    chosen = {actions: choose_bands(validation["is_fraud"].to_numpy(), validation["amount"].to_numpy(), validation_scores,
                                    days_in(validation), costs, CAPACITIES, review_only=actions == "review only")
              for actions in ("four bands", "review only")}
    bands = chosen["four bands"][0]
    decisions = bands.decide(test_scores)
    metrics = {"decision_cost": cost(labels, amounts, decisions, costs), "reviews_per_day": float((decisions == 2).sum()) / days_in(test),
               **{f"{name}_share": float((decisions == i).mean()) for i, name in enumerate(DECISIONS)}}
    return bands, metrics, {actions: {c: cost(labels, amounts, b.decide(test_scores), costs) for c, b in zip(CAPACITIES, cuts[1:])}
                            for actions, cuts in chosen.items()}


def window(frame: pd.DataFrame, start: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame:
    ts = frame["event_timestamp"]
    return frame[(ts >= start) & (ts < end)]


def known_compromised(frame: pd.DataFrame, test: pd.DataFrame, windows: Windows) -> pd.Series:
    """The test rows of cards already known to be compromised on their day, which a bank blocks, so
    scoring them would flatter the model. The Handbook's protocol (its `get_test_set`): on the k-th
    day of the test window a card is known once it had a fraud before the train window's end plus k
    days, the frauds whose labels have arrived by then; the known set grows day by day."""
    frauds = frame[(frame["is_fraud"] == 1) & (frame["event_timestamp"] >= windows.train_start)]
    first = test["customer_id"].map(frauds.groupby("customer_id")["event_timestamp"].min())
    day = (test["event_timestamp"] - windows.test_start).dt.days
    return first < windows.train_end + pd.to_timedelta(day, unit="D")


def censor_by_policy(frame: pd.DataFrame, answers: pd.DataFrame) -> pd.DataFrame:
    """The training set as the serving policy let its labels come back, as a `weight` per row. A
    transaction the API declined never gets a chargeback, so its missing verdict says nothing: it
    weighs 0, out of every fit and test (counting it legitimate teaches the model that what it was
    surest of is fine: docs step 7's replay). An explored review (`core.decisions.explore`) weighs
    1 / its propensity and stands for the declines like it. Rows the API never answered (the
    simulated past, a backfill) weigh 1. `answers`: transaction_id, decision, propensity, from the
    prediction log (`core.predictions.logged`)."""
    policy = frame[["transaction_id"]].astype(str).merge(answers.astype({"transaction_id": str}), on="transaction_id", how="left")
    return frame.assign(weight=ips_weights(policy["decision"].fillna(""), policy["propensity"].astype("float64")))


def split(frame: pd.DataFrame, windows: Windows) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Fit, validation (the last third of the train window, for early stopping and the threshold), test;
    rows the policy censored (`censor_by_policy`, weight 0) in none of them. The test figures count
    each remaining row once: an explored review's weight corrects the fit, not the test metrics."""
    if "weight" in frame:
        frame = frame[frame["weight"] > 0]
    validation_start = windows.train_end - (windows.train_end - windows.train_start) / 3
    test = window(frame, windows.test_start, windows.test_end)
    parts = (
        window(frame, windows.train_start, validation_start),
        window(frame, validation_start, windows.train_end),
        test[~known_compromised(frame, test, windows)],
    )
    for name, part in zip(("fit", "validation", "test"), parts):
        if part["is_fraud"].sum() == 0:
            raise ValueError(f"the {name} window {windows} holds no fraud: widen the windows or use more data")
    return parts


def _matrix(frame: pd.DataFrame, features: list[str]) -> np.ndarray:
    return frame[features].to_numpy(np.float64)


def fit_booster(fit: pd.DataFrame, validation: pd.DataFrame, features: list[str], config: ModelConfig,
                client: Client | None = None) -> lgb.Booster:
    if client is not None:
        return fit_on_dask(fit, features, config, client)
    weight = fit.get("weight")  # inverse propensities, where the labels came from a logged policy (pipelines/exploration.py)
    return lgb.train(
        config.params(),
        lgb.Dataset(_matrix(fit, features), label=fit["is_fraud"], weight=weight, feature_name=features, free_raw_data=True),
        num_boost_round=config.num_boost_round,
        valid_sets=[lgb.Dataset(_matrix(validation, features), label=validation["is_fraud"], weight=validation.get("weight"))],
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
    folds = windows.prequential(settings.prequential_folds, settings.prequential_step_days)
    scores: dict[str, float] = {}
    for weight in IMBALANCE_CHOICES:
        candidate = replace(config, scale_pos_weight=weight)
        aps = []
        for fold in folds:
            fit, validation, held_out = split(frame, fold)
            booster = fit_booster(fit, validation, features, candidate, client)
            aps.append(evaluate(held_out, np.asarray(booster.predict(_matrix(held_out, features))), 0.5, settings.review_fee, settings.top_k)["average_precision"])
        scores[f"prequential_ap_weight_{weight:g}"] = float(np.mean(aps))
    best = max(IMBALANCE_CHOICES, key=lambda w: scores[f"prequential_ap_weight_{w:g}"])
    return replace(config, scale_pos_weight=best), scores


def baselines(fit: pd.DataFrame, validation: pd.DataFrame, test: pd.DataFrame, features: list[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """What the model must beat: a linear model on the same features, and the rule "large amounts"."""
    logreg = make_pipeline(SimpleImputer(), StandardScaler(), LogisticRegression(class_weight="balanced", max_iter=500))
    logreg.fit(_matrix(fit, features), fit["is_fraud"])
    return {
        "logistic_regression": (logreg.predict_proba(_matrix(validation, features))[:, 1], logreg.predict_proba(_matrix(test, features))[:, 1]),
        # a rule's score is the amount itself; its cut is chosen on validation like the model's threshold
        "amount_rule": (validation["amount"].to_numpy(), test["amount"].to_numpy()),
    }


def train(frame: pd.DataFrame, features: list[str], windows: Windows, config: ModelConfig, settings: Settings,
          client: Client | None = None) -> TrainResult:
    """Select the class weight, fit, choose the threshold, test beside the baselines. With a Dask client
    the LightGBM fits run across the cluster; the rest is small and stays here."""
    config, selection = select_imbalance(frame, features, windows, config, settings, client)
    fit, validation, test = split(frame, windows)
    booster = fit_booster(fit, validation, features, config, client)

    def judged(validation_scores: np.ndarray, test_scores: np.ndarray) -> tuple[float, dict[str, float]]:
        threshold, _ = cost_optimal_threshold(validation["is_fraud"].to_numpy(), validation["amount"].to_numpy(), validation_scores, settings.review_fee)
        return threshold, evaluate(test, test_scores, threshold, settings.review_fee, settings.top_k, settings.max_false_positive_rate)

    test_scores = np.asarray(booster.predict(_matrix(test, features)))
    validation_scores = np.asarray(booster.predict(_matrix(validation, features)))
    threshold, model_metrics = judged(validation_scores, test_scores)
    bands, band_metrics, capacity_costs = decision_bands(validation, validation_scores, test, test_scores, settings)
    metrics = {f"test_{k}": v for k, v in {**model_metrics, **band_metrics}.items()}
    # The monitoring reference is all of the test window's traffic, known-compromised cards included:
    # live traffic includes them too, and a reference without them would raise false drift alarms.
    everything = window(frame, windows.test_start, windows.test_end)
    # The customer of each row: the monitor's rate tests count customers, not rows, as independent.
    reference = everything[["event_timestamp", "customer_id", *features, "is_fraud"]].assign(score=booster.predict(_matrix(everything, features)))
    baseline_scores = {}
    for name, (validation_scores, baseline_test) in baselines(fit, validation, test, features).items():
        _, baseline_metrics = judged(validation_scores, baseline_test)
        metrics.update({f"baseline_{name}_{k}": v for k, v in baseline_metrics.items() if k not in ("rows", "frauds")})
        baseline_scores[name] = baseline_test
    metrics["best_iteration"] = float(booster.best_iteration or booster.current_iteration())
    scored = test[["event_timestamp", "customer_id", *features, "is_fraud"]].assign(score=test_scores)
    return TrainResult(booster, config, features, threshold, bands, metrics, selection, len(fit), scored, reference, baseline_scores,
                       capacity_costs)
