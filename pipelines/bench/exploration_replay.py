"""The feedback loop's bias, replayed: how a model retrained on its own censored labels drifts.

Week after week, the current model scores the week's transactions and declines the top
`decline_rate` of them; a declined transaction never gets a label. The next model is retrained on
what was observed over the last `train_weeks` weeks, a label delay before the week ends, and judged
on the next week's true labels, which the simulator knows. Three ways to treat the declined:

- `naive`: no chargeback came, so they count as legitimate: the model learns that what it declined
  was fine;
- `censored`: left out, the model learns from what it let through;
- `explored`: a share of the would-be declines went to review (`model.decisions.explore`) and was
  labelled; they weigh 1 / propensity in the fit and the rest of the declines are left out.

The feature table is the one the feature job computed with all labels known: only the training
target is censored here, so the drift measured is that of the labels alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score

from core.settings import FeatureSettings
from model.decisions import explore
from training.fit import ModelConfig, fit_booster

ARMS = ("naive", "censored", "explored")
WEEK = pd.Timedelta(days=7)


@dataclass(frozen=True)
class Run:
    arm: str
    weekly_ap: list[float]  # each week's model on that week's true labels, all transactions
    trained_on_explored: int  # explored reviews the fits saw, in all


def observed(week: pd.DataFrame, scores: np.ndarray, cut: float, arm: str, share: float) -> pd.DataFrame:
    """The week's rows as the labels would come back under `arm`, with a `weight` for the fit."""
    declined = scores >= cut
    if arm == "naive":
        return week.assign(is_fraud=np.where(declined, 0, week["is_fraud"]), weight=1.0, explored=False)
    taken = [explore("decline" if d else "approve", t, share if arm == "explored" else 0.0)
             for d, t in zip(declined, week["transaction_id"].astype(str))]
    decisions = np.array([d for d, _ in taken])
    propensity = np.array([p for _, p in taken])
    kept = decisions != "decline"
    return week[kept].assign(weight=1.0 / propensity[kept], explored=declined[kept])


def replay(frame: pd.DataFrame, features: list[str], start: pd.Timestamp, weeks: int, arm: str, share: float,
           decline_rate: float = 0.01, train_weeks: int = 3,
           delay_days: int = FeatureSettings.model_construct().label_delay_days, config: ModelConfig | None = None) -> Run:
    """`frame`: the feature table with the true `is_fraud`, `transaction_id` and `event_timestamp`.
    The first model is trained on the `train_weeks` before `start` with every label; each later one
    on what `arm` observed."""
    config = config or ModelConfig(num_boost_round=200)
    delay = pd.Timedelta(days=delay_days)
    history = frame[frame["event_timestamp"] < start].assign(weight=1.0, explored=False)
    seen = [history]
    weekly_ap, explored = [], 0
    for k in range(weeks):
        week_start = start + k * WEEK
        labelled = pd.concat(seen, ignore_index=True)
        known = labelled[(labelled["event_timestamp"] >= week_start - delay - train_weeks * WEEK)
                         & (labelled["event_timestamp"] < week_start - delay)]
        third = known["event_timestamp"].min() + (known["event_timestamp"].max() - known["event_timestamp"].min()) * 2 / 3
        fit, validation = known[known["event_timestamp"] < third], known[known["event_timestamp"] >= third]
        explored += int(fit["explored"].sum() + validation["explored"].sum())
        booster = fit_booster(fit, validation, features, config)
        week = frame[(frame["event_timestamp"] >= week_start) & (frame["event_timestamp"] < week_start + WEEK)]
        scores = np.asarray(booster.predict(week[features].to_numpy(np.float64)))
        weekly_ap.append(float(average_precision_score(week["is_fraud"], scores)))
        cut = float(np.quantile(booster.predict(validation[features].to_numpy(np.float64)), 1 - decline_rate))
        seen.append(observed(week, scores, cut, arm, share))
    return Run(arm, weekly_ap, explored)
