"""The feedback-loop replay: what each arm lets the next fit see, and that the weeks replay."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from core.settings import Settings
from pipelines.bench.exploration_replay import ARMS, observed, replay


def test_each_arm_shows_the_fit_what_its_labels_would_say() -> None:
    n = 4_000
    week = pd.DataFrame({"transaction_id": [f"t{i}" for i in range(n)], "is_fraud": np.arange(n) % 2})
    scores = np.linspace(0, 1, n)
    declined = scores >= 0.9
    naive = observed(week, scores, 0.9, "naive", 0.2)
    assert len(naive) == n and naive["is_fraud"][declined].sum() == 0, "no chargeback: every decline looks legitimate"
    censored = observed(week, scores, 0.9, "censored", 0.2)
    assert len(censored) == n - declined.sum() and (censored["weight"] == 1.0).all()
    explored = observed(week, scores, 0.9, "explored", 0.2)
    reviewed = explored[explored["explored"]]
    assert abs(len(reviewed) / declined.sum() - 0.2) < 0.06 and np.allclose(reviewed["weight"], 5.0)
    assert reviewed["is_fraud"].sum() > 0, "an explored review is labelled with the truth"


def test_the_weeks_replay_for_every_arm(trained: Settings) -> None:
    from core.query import select
    from features.compute import FEATURES_FILE
    from features.live import LIVE_FEATURES
    from features.offline import parts_glob

    frame = select(f"""SELECT f.*, t.customer_id, t.amount, t.is_fraud FROM read_parquet('{trained.features_dir / FEATURES_FILE}') AS f
                       JOIN read_parquet('{parts_glob(trained.transactions_dir)}') AS t USING (transaction_id) ORDER BY f.event_timestamp""").df()
    start = pd.Timestamp(trained.simulation.start_date) + pd.Timedelta(days=28)
    # the third week's model is the first fitted on a replayed week (a label delay back)
    runs = {arm: replay(frame, ["amount", *LIVE_FEATURES], start, 3, arm, 0.5, decline_rate=0.05, train_weeks=2) for arm in ARMS}
    assert all(len(run.weekly_ap) == 3 and all(0 < ap <= 1 and not math.isnan(ap) for ap in run.weekly_ap) for run in runs.values())
    assert runs["explored"].trained_on_explored > 0 and runs["censored"].trained_on_explored == 0
    assert runs["naive"].weekly_ap[0] == runs["censored"].weekly_ap[0], "the first model, trained on full labels, is the same"
