"""Online/offline parity end to end: a simulated day replayed through the running API (`fraudops
serve`, two workers), its labels arriving at their delay, and every feature vector the API logged
compared with the training row of the same transaction. On the embedded SQLite state, on the
real Redis and on a local Redis Cluster of three shards (both mandatory when CI=true).

Retries and lateness are part of the day: the first transactions are sent again at the end, after
everything later than them, and must be logged with the same features (the state counts a
transaction id once and windows by event time, not by arrival)."""

from __future__ import annotations

import pandas as pd
import pytest

from core import predictions
from core.settings import Settings
from features.compute import FEATURES_FILE
from features.live import LIVE_FEATURES
from features.offline import transactions_between
from features.store import materialize
from pipelines.demo import running_api
from pipelines.replay import label_feed, replay
from tests.conftest import free_port, mismatches
from training.windows import Windows

RETRIED = 20


def replay_day_through_the_api(settings: Settings) -> tuple[pd.DataFrame, pd.DataFrame]:
    start = Windows.from_settings(settings).test_end
    end = start + pd.Timedelta(days=1)
    materialize(settings, start.to_pydatetime())
    day = transactions_between(settings.transactions_dir, start, end)
    sent = pd.concat([day, day.iloc[:RETRIED]], ignore_index=True)
    with running_api(settings):
        # one at a time: two charges of one card in flight together may be scored in either order,
        # and the one scored first cannot count the other (tests/test_features.py: late transactions)
        stats = replay(settings.api_url, sent, concurrency=1, feed=label_feed(settings, start, end))
    assert stats.statuses == {200: len(sent)}, stats.statuses
    return day, predictions.read(settings, since=start.to_pydatetime(), until=end.to_pydatetime())


@pytest.mark.parametrize("online", ["sqlite", pytest.param("redis", marks=pytest.mark.integration),
                                    pytest.param("redis-cluster", marks=pytest.mark.integration)])
def test_every_logged_feature_vector_equals_its_training_row(registry_copy: Settings, online: str, request: pytest.FixtureRequest) -> None:
    settings = registry_copy.replace(api_port=free_port(), api_workers=2)
    if online == "redis":
        settings = settings.replace(feast_redis_url=request.getfixturevalue("redis_db"))
    elif online == "redis-cluster":
        settings = settings.replace(feast_redis_url=request.getfixturevalue("redis_cluster").url, feast_redis_cluster=True)
    else:  # other tests scored made-up cards into the shared state: start from the backfill alone
        (settings.feast_dir / "live_state.db").unlink(missing_ok=True)
    day, logged = replay_day_through_the_api(settings)

    assert len(day) > 100 and logged["transaction_id"].value_counts().max() == 2
    assert len(logged) == len(day) + RETRIED and not logged["degraded"].any()
    offline = pd.read_parquet(settings.features_dir / FEATURES_FILE).set_index("transaction_id")
    got = {f"{tid}#{i}": dict(zip(LIVE_FEATURES, values)) for i, (tid, *values) in
           enumerate(logged[["transaction_id", *LIVE_FEATURES]].itertuples(index=False))}
    keyed = offline.loc[[key.split("#")[0] for key in got]].set_axis(list(got))
    wrong = mismatches(got, keyed, LIVE_FEATURES)
    assert not wrong, wrong[:5]
    # the day's labels moved terminal risk while it was replayed, as production would see them
    assert logged["terminal_risk_1d"].nunique() > 1
