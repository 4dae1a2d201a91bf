"""The Handbook's protocol in time: a train window, a delay while labels mature, a test window, the
prequential folds before them, and the split into fit, validation and test.

Never a random split: fraud patterns move in time, and a random split leaks tomorrow's compromised
terminals into training.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from core.settings import Settings
from model.evaluation import ips_weights


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
        if settings.training.train_start is not None:
            start = pd.Timestamp(settings.training.train_start)
        else:
            start = pd.Timestamp(settings.simulation.start_date) + pd.Timedelta(days=settings.training.train_start_day)
        train_end = start + pd.Timedelta(days=settings.training.train_days)
        test_start = train_end + pd.Timedelta(days=settings.features.label_delay_days)
        return cls(start, train_end, test_start, test_start + pd.Timedelta(days=settings.training.test_days))

    @classmethod
    def latest(cls, as_of: pd.Timestamp, settings: Settings) -> Windows:
        """The most recent protocol whose test labels have all arrived by `as_of`: what a retrain
        triggered now can honestly use. The label delay bounds how fast a retrain can learn a change."""
        test_end = pd.Timestamp(as_of).floor("D") - pd.Timedelta(days=settings.features.label_delay_days)
        test_start = test_end - pd.Timedelta(days=settings.training.test_days)
        train_end = test_start - pd.Timedelta(days=settings.features.label_delay_days)
        return cls(train_end - pd.Timedelta(days=settings.training.train_days), train_end, test_start, test_end)

    def shifted(self, days: int) -> Windows:
        delta = pd.Timedelta(days=days)
        return Windows(self.train_start - delta, self.train_end - delta, self.test_start - delta, self.test_end - delta)

    def prequential(self, folds: int, step_days: int) -> list[Windows]:
        """Validation folds for model selection: the whole protocol shifted back so that every
        validation window ends before the test window starts (the test set is never used to choose)."""
        test_days = (self.test_end - self.test_start).days
        return [self.shifted(test_days + k * step_days) for k in range(folds)]


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
    surest of is fine: docs step 7's replay). An explored review (`model.decisions.explore`) weighs
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

