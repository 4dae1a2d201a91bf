"""Point-in-time correctness and online/offline parity, on a hand-built history."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.compute import compute_features
from features.logic import request_features
from features.offline import write_part
from features.store import apply, historical_features, materialize, model_features
from tests.conftest import assert_online_matches_offline, tiny_settings

START = pd.Timestamp("2025-03-01")


def history() -> pd.DataFrame:
    """Two customers and two terminals over 40 days, with frauds at known times."""
    rng = np.random.default_rng(0)
    n = 600
    ts = START + pd.to_timedelta(np.sort(rng.integers(0, 40 * 86_400, n)), unit="s")
    return pd.DataFrame(
        {
            "transaction_id": [f"t{i}" for i in range(n)],
            "timestamp": ts,
            "customer_id": rng.choice(["c1", "c2"], n),
            "terminal_id": rng.choice(["k1", "k2"], n),
            "amount": rng.uniform(1, 200, n).round(2),
            "is_fraud": (rng.uniform(size=n) < 0.15).astype(int),
        }
    )


def brute_force(tx: pd.DataFrame, row: pd.Series, delay_days: int) -> dict[str, float]:
    """Each feature from scratch, from events strictly before the row's snapshot (its day's start)."""
    cut = row["event_timestamp"].floor("D")
    out: dict[str, float] = {}
    mine = tx[(tx["customer_id"] == row["customer_id"]) & (tx["timestamp"] < cut)]
    for w in (1, 7, 30):
        window = mine[mine["timestamp"] >= cut - pd.Timedelta(days=w)]
        out[f"customer_tx_count_{w}d"] = len(window)
        out[f"customer_mean_amount_{w}d"] = window["amount"].mean() if len(window) else 0.0
    labelled_cut = cut - pd.Timedelta(days=delay_days)  # labels are only known after the delay
    term = tx[(tx["terminal_id"] == row["terminal_id"]) & (tx["timestamp"] < labelled_cut)]
    for w in (1, 7, 30):
        window = term[term["timestamp"] >= labelled_cut - pd.Timedelta(days=w)]
        out[f"terminal_tx_count_{w}d"] = len(window)
        out[f"terminal_risk_{w}d"] = window["is_fraud"].mean() if len(window) else 0.0
    return out


@pytest.fixture(scope="module")
def store_settings(tmp_path_factory):
    settings = tiny_settings(tmp_path_factory.mktemp("pit"), start_date="2025-03-01", days=40)
    tx = history()
    write_part(tx, settings.transactions_dir, "hand-built")
    compute_features(settings.transactions_dir, settings.features_dir, settings.label_delay_days)
    apply(settings)
    return settings, tx


def test_point_in_time_join_uses_only_the_past(store_settings) -> None:
    settings, tx = store_settings
    from features.store import open_store

    store = open_store(settings)
    later = tx[tx["timestamp"] >= START + pd.Timedelta(days=2)].copy()
    joined = historical_features(store, settings.feature_service, later)
    assert len(joined) == len(later)
    for _, row in joined.sample(60, random_state=1).iterrows():
        expected = brute_force(tx, row, settings.label_delay_days)
        for name, value in expected.items():
            assert row[name] == pytest.approx(value, rel=1e-9, abs=1e-9), (name, row["transaction_id"])
        # the request-time feature is the shared function applied to this transaction
        ratio = request_features([row["amount"]], [row["tx_unix_seconds"]], [row["customer_mean_amount_30d"]])
        assert row["amount_to_customer_mean_30d"] == pytest.approx(ratio["amount_to_customer_mean_30d"][0], nan_ok=True)


def test_a_transaction_never_sees_its_own_label_or_later_events(store_settings) -> None:
    settings, tx = store_settings
    from features.store import open_store

    # A burst of frauds at k1 late on day 35 must not reach features until 7 days after that day.
    burst = pd.DataFrame(
        {
            "transaction_id": [f"burst{i}" for i in range(20)],
            "timestamp": [START + pd.Timedelta(days=35, hours=23)] * 20,
            "customer_id": "c1",
            "terminal_id": "k1",
            "amount": 50.0,
            "is_fraud": 1,
        }
    )
    full = pd.concat([tx, burst], ignore_index=True)
    settings2 = settings.model_copy(update={"state_dir": settings.state_dir.parent / "burst"})
    write_part(full, settings2.transactions_dir, "with-burst")
    compute_features(settings2.transactions_dir, settings2.features_dir, settings2.label_delay_days)
    apply(settings2)
    probe = pd.DataFrame(
        {
            "transaction_id": ["p1", "p2"],
            "timestamp": [START + pd.Timedelta(days=35, hours=23, minutes=30), START + pd.Timedelta(days=39, hours=12)],
            "customer_id": ["c1", "c1"],
            "terminal_id": ["k1", "k1"],
            "amount": [10.0, 10.0],
            "is_fraud": [0, 0],
        }
    )
    joined = historical_features(open_store(settings2), settings2.feature_service, probe)
    base = historical_features(open_store(settings), settings.feature_service, probe)
    # same day: nothing of the burst, not even the counts; four days later: counts yes, labels not yet
    assert joined.loc[0, "customer_tx_count_1d"] == base.loc[0, "customer_tx_count_1d"]
    assert joined.loc[1, "customer_tx_count_7d"] == base.loc[1, "customer_tx_count_7d"] + 20
    assert joined.loc[1, "terminal_risk_30d"] == base.loc[1, "terminal_risk_30d"]


def test_online_equals_offline_after_materialization(store_settings) -> None:
    settings, tx = store_settings
    from features.store import open_store
    from serving.online import OnlineFeatures

    end = datetime(2025, 4, 10)  # the snapshot stamped 04-10 00:00 covers days up to 04-09
    materialize(settings, end)
    online = OnlineFeatures(settings)
    probe = pd.DataFrame(
        {
            "transaction_id": ["o1", "o2", "o3"],
            "timestamp": [pd.Timestamp(end) + pd.Timedelta(hours=h) for h in (1, 5, 9)],
            "customer_id": ["c1", "c2", "c1"],
            "terminal_id": ["k1", "k2", "k2"],
            "amount": [12.0, 250.0, 0.5],
            "is_fraud": [0, 0, 0],
        }
    )
    offline = historical_features(open_store(settings), settings.feature_service, probe)
    names = model_features(open_store(settings), settings.feature_service)
    assert_online_matches_offline(online, offline, names)  # c1 twice in one batch


def test_unknown_entities_get_documented_defaults(store_settings) -> None:
    settings, _ = store_settings
    from serving.online import OnlineFeatures

    materialize(settings, datetime(2025, 4, 10))
    got = OnlineFeatures(settings).lookup("never-seen", "k1", 10.0, 1_744_000_000)
    assert "customer_tx_count_7d" in got.missing and "terminal_risk_7d" not in got.missing
    assert got.values["customer_tx_count_7d"] == 0.0
    assert np.isnan(got.values["amount_to_customer_mean_30d"])  # no history: missing, not a made-up ratio
    # read together with known customers, the unknown one alone gets the defaults
    known, unknown = OnlineFeatures(settings).lookup_many(["c1", "never-seen"], ["k1", "k1"], [10.0, 10.0], [1_744_000_000] * 2)
    assert not known.missing and known.values["customer_tx_count_7d"] > 0
    assert unknown.missing == got.missing and unknown.values == pytest.approx(got.values, nan_ok=True)


def test_the_one_step_sqlite_read_answers_as_feasts_own(store_settings) -> None:
    """`serving.sqlite_read` reads Feast's tables itself; Feast's online_read is the reference."""
    settings, _ = store_settings
    from serving.online import OnlineFeatures
    from serving.sqlite_read import SqliteRead

    materialize(settings, datetime(2025, 4, 10))
    online = OnlineFeatures(settings)
    assert isinstance(online._read, SqliteRead)  # the default store takes the one-step read
    keys = {"customer_id": ["c1", "c2", "never-seen", "c1"], "terminal_id": ["k2", "nowhere", "k1", "k2"]}
    ours, feasts = online._read(keys), online._provider_read(keys)
    assert ours == feasts
    assert ours[0] == ours[3] and all(v is not None for v in ours[0].values())
    assert ours[1]["customer_tx_count_30d"] is not None and ours[1]["terminal_risk_30d"] is None
    assert list(ours[0]) == online.names
    tiny_memo = SqliteRead(online.store, online.reads, memo_size=2)  # forgets values on the way
    assert tiny_memo(keys) == tiny_memo(keys) == feasts
    # a service that takes some of a view's features: the table's other rows are passed over
    fewer = SqliteRead(online.store, [(view, join_key, names[1:]) for view, join_key, names in online.reads])
    assert fewer(keys) == [{k: v for k, v in answer.items() if k in fewer.names} for answer in feasts]
    assert len(fewer.names) == len(online.names) - len(online.reads)
    # a batch longer than SQLite's 500-term limit on a compound SELECT, as /predict/batch may send
    many = {name: ids * 200 for name, ids in keys.items()}
    assert online._read(many) == feasts * 200


def test_a_relative_state_folder_is_taken_from_the_working_directory(tmp_path, monkeypatch) -> None:
    """Feast reads the paths in feature_store.yaml relative to the folder that file is in: a relative
    FRAUDOPS_STATE_DIR put the online store at state/feast/state/feast/online.db."""
    from features.store import open_store
    from serving.online import OnlineFeatures

    monkeypatch.chdir(tmp_path)
    settings = tiny_settings(Path("state"))
    assert settings.state_dir == tmp_path / "state"
    apply(settings)
    OnlineFeatures(settings)  # opens the SQLite online store where the settings say
    assert (tmp_path / "state" / "feast" / "online.db").exists() and not (tmp_path / "state" / "feast" / "state").exists()
    assert open_store(settings).list_feature_services()
