"""The train flow at three sizes, the fit beside scikit-learn's, and what the short windows buy."""

from __future__ import annotations

import statistics
import time
from typing import TYPE_CHECKING

import numpy as np

from core.runtime import quiet_stdout
from core.settings import Settings
from pipelines.bench.common import SCALES, Section, timed

if TYPE_CHECKING:
    import pandas as pd

    from training.windows import Windows


def training_section(settings: Settings, scale: str, repeat: int) -> Section:
    """The train flow end to end at three data sizes, and the LightGBM fit beside scikit-learn's
    histogram gradient boosting on the same matrix."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    from features.labels import clear
    from features.offline import transactions_between
    from features.simulator import SimulationConfig, deliver_chargebacks, write_simulation
    from features.store import historical_features, model_features, open_store
    from pipelines.flows import features_flow, training_flow
    from training.fit import ModelConfig, fit_booster
    from training.results import model_scores
    from training.windows import Windows, split

    section = Section("training (train flow end to end; fit beside a peer)")
    sizes = {"full": (1_000, 2_500, 5_000), "small": (500, 1_000, 2_000), "smoke": (SCALES["smoke"].customers,)}[scale]
    for customers in sizes:
        s = settings.replace(state_dir=settings.state_dir / f"training-{customers}", customers=customers, terminals=2 * customers)
        cfg = SimulationConfig.from_settings(s.simulation)
        rows = write_simulation(cfg, s.transactions_dir, replace=True)
        clear(s)  # training reads labels from the label store alone: the history's chargebacks go there first
        deliver_chargebacks(s)
        with quiet_stdout():
            features_flow(s)
        started = time.perf_counter()
        result = training_flow(s)(s, ModelConfig())  # prequential selection included
        seconds = time.perf_counter() - started
        scores = ", ".join(f"{'LightGBM' if m.model == 'lightgbm' else m.model.replace('_', ' ')} {m.average_precision:.3f} / "
                           f"{m.card_precision_at_k:.3f}" for m in model_scores(result, s))
        section.add(f"train flow, {customers:,} customers", seconds, "s",
                    f"{rows:,} transactions simulated; test AP / CP@{s.costs.top_k}: {scores}", transactions=rows,
                    **{f"{m.model} test AP": m.average_precision for m in model_scores(result, s) if m.average_precision is not None})
    windows = Windows.from_settings(s)
    store = open_store(s)
    tx = transactions_between(s.transactions_dir, windows.train_start, windows.test_end)
    frame = historical_features(store, s.features.feature_service, tx)
    features = model_features(store, s.features.feature_service)
    fit, validation, _ = split(frame, windows)
    lgb_runs = timed(lambda: fit_booster(fit, validation, features, ModelConfig(num_boost_round=200, scale_pos_weight=1.0)), repeat)
    section.add("LightGBM fit (early stopping on validation)", statistics.median(lgb_runs), "s", f"{len(fit):,} rows, median of {repeat}")
    X, y = fit[features].to_numpy(np.float64), fit["is_fraud"].to_numpy()
    peer = timed(lambda: HistGradientBoostingClassifier(max_iter=200, early_stopping=True, random_state=7).fit(X, y), repeat)
    section.add("peer: scikit-learn HistGradientBoosting fit", statistics.median(peer), "s", f"LightGBM time / peer time = {statistics.median(lgb_runs) / statistics.median(peer):.1f}")
    for row in freshness(frame, features, windows):
        section.add(*row)
    return section


SHORT_WINDOWS = ("customer_tx_count_1h", "customer_amount_sum_1h", "customer_seconds_since_previous")


def freshness(frame: pd.DataFrame, features: list[str], windows: Windows) -> list[tuple[str, float, str, str]]:
    """What the short windows buy on card testing: the same fit with and without them, judged on the
    test window's card-testing frauds against its legitimate traffic."""
    from sklearn.metrics import average_precision_score

    from model.evaluation import recall_at_fpr
    from training.fit import ModelConfig, fit_booster
    from training.windows import split

    fit, validation, test = split(frame, windows)
    tested = test[test["fraud_scenario"].isin([0, 4])]
    rows = []
    for label, used in (("with", features), ("without", [f for f in features if f not in SHORT_WINDOWS])):
        booster = fit_booster(fit, validation, used, ModelConfig(scale_pos_weight=1.0))
        scores = np.asarray(booster.predict(tested[used].to_numpy(np.float64)))
        labels = np.asarray(tested["is_fraud"].to_numpy())
        rows.append((f"card testing, {label} the short windows: AP", float(average_precision_score(labels, scores)), "",
                     f"recall at 1% FPR {recall_at_fpr(labels, scores, 0.01):.3f}; {int(labels.sum()):,} card-testing frauds "
                     f"among {len(tested):,} test rows; AP on all the test window {average_precision_score(test['is_fraud'], booster.predict(test[used].to_numpy(np.float64))):.3f}"))
    return rows
