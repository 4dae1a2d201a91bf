"""Event-time features: point-in-time correctness offline, exact window edges, and online/offline
parity of the live state, on a hand-built history."""

from __future__ import annotations

import logging
import math
import multiprocessing
import sqlite3
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.compute import FEATURES_FILE
from features.live import DAY_US, LIVE_FEATURES, customer_features, terminal_features
from features.offline import write_part
import features.state as state_module
from features.state import RedisState, SqliteState, Tx, features
from features.store import apply, historical_features, materialize, open_store
from features.simulator import deliver_chargebacks
from tests.conftest import features_from_truth, mismatches, replay_live, tiny_settings

START = pd.Timestamp("2025-03-01")
DELAY = 7


def history() -> pd.DataFrame:
    """Two customers and two terminals over 40 days, with frauds at known times and a pair of
    transactions of one card at the same instant."""
    rng = np.random.default_rng(0)
    n = 600
    ts = START + pd.to_timedelta(np.sort(rng.integers(0, 40 * 86_400, n)), unit="s")
    frame = pd.DataFrame(
        {
            "transaction_id": [f"t{i:03d}" for i in range(n)],
            "timestamp": ts,
            "customer_id": rng.choice(["c1", "c2"], n),
            "terminal_id": rng.choice(["k1", "k2"], n),
            "amount": rng.uniform(1, 200, n).round(2),
            "is_fraud": (rng.uniform(size=n) < 0.15).astype(int),
        }
    )
    frame.loc[301, ["timestamp", "customer_id"]] = frame.loc[300, ["timestamp", "customer_id"]].to_numpy()
    return frame


def brute_force(tx: pd.DataFrame, row: pd.Series) -> dict[str, float]:
    """Each feature from scratch with pandas: the transaction itself plus every strictly earlier one
    of its card (terminal) in (t - w, t]; risk over (t - delay - w, t - delay]."""
    t = row["timestamp"]
    out: dict[str, float] = {}
    mine = tx[(tx["customer_id"] == row["customer_id"]) & (tx["timestamp"] < t)]
    for name, width in (("1h", pd.Timedelta(hours=1)), ("1d", pd.Timedelta(days=1)), ("7d", pd.Timedelta(days=7)), ("30d", pd.Timedelta(days=30))):
        window = mine[mine["timestamp"] > t - width]
        out[f"customer_tx_count_{name}"] = len(window) + 1
        out[f"customer_amount_sum_{name}"] = window["amount"].sum() + row["amount"]
        if name != "1h":
            out[f"customer_mean_amount_{name}"] = out[f"customer_amount_sum_{name}"] / out[f"customer_tx_count_{name}"]
    recent = mine[mine["timestamp"] > t - pd.Timedelta(days=30)]
    out["customer_seconds_since_previous"] = (t - recent["timestamp"].max()).total_seconds() if len(recent) else math.nan
    mean = out["customer_mean_amount_30d"]
    out["amount_to_customer_mean_30d"] = row["amount"] / mean if mean > 0 else math.nan
    term = tx[(tx["terminal_id"] == row["terminal_id"]) & (tx["timestamp"] < t)]
    cut = t - pd.Timedelta(days=DELAY)  # labels are only known after the delay
    for w in (1, 7, 30):
        out[f"terminal_tx_count_{w}d"] = int((term["timestamp"] > t - pd.Timedelta(days=w)).sum()) + 1
        known = term[(term["timestamp"] <= cut) & (term["timestamp"] > cut - pd.Timedelta(days=w))]
        out[f"terminal_risk_{w}d"] = known["is_fraud"].mean() if len(known) else 0.0
    return out


def same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


@pytest.fixture(scope="module")
def store_settings(tmp_path_factory):
    settings = tiny_settings(tmp_path_factory.mktemp("pit"), start_date="2025-03-01", days=40, label_delay_days=DELAY)
    tx = history()
    write_part(tx, settings.transactions_dir, "hand-built")
    features_from_truth(settings)
    apply(settings)
    return settings, tx


def test_offline_features_match_a_count_from_scratch(store_settings) -> None:
    settings, tx = store_settings
    table = pd.read_parquet(settings.features_dir / FEATURES_FILE).set_index("transaction_id")
    assert len(table) == len(tx)  # one row per transaction
    for _, row in pd.concat([tx.sample(80, random_state=1), tx.loc[[300, 301]]]).iterrows():
        expected = brute_force(tx, row)
        for name, value in expected.items():
            assert same(float(table.loc[row["transaction_id"], name]), value), (name, row["transaction_id"])
    # two charges of one card at the same instant do not see each other
    assert table.loc["t300", "customer_tx_count_1h"] == table.loc["t301", "customer_tx_count_1h"]


def test_feasts_join_gives_each_transaction_its_own_row(store_settings) -> None:
    settings, tx = store_settings
    store = open_store(settings)
    joined = historical_features(store, settings.features.feature_service, tx.iloc[100:160]).set_index("transaction_id")
    table = pd.read_parquet(settings.features_dir / FEATURES_FILE).set_index("transaction_id")
    for tx_id, row in joined.iterrows():
        for name in LIVE_FEATURES:
            assert same(float(row[name]), float(table.loc[tx_id, name])), (name, tx_id)
    assert {"is_weekend", "is_night"} <= set(joined.columns)


def test_a_burst_shows_at_once_and_its_labels_only_after_the_delay(store_settings, tmp_path) -> None:
    """Twenty frauds at k1 late on day 35: the card's short window sees them at the next charge; the
    terminal's risk does not move until their labels are `delay` days old."""
    settings, tx = store_settings
    burst = pd.DataFrame({"transaction_id": [f"burst{i:02d}" for i in range(20)],
                          "timestamp": [START + pd.Timedelta(days=35, hours=23, seconds=i) for i in range(20)],
                          "customer_id": "c1", "terminal_id": "k1", "amount": 2.0, "is_fraud": 1})
    probes = pd.DataFrame({"transaction_id": ["p1", "p2"], "customer_id": "c1", "terminal_id": "k1", "amount": 10.0, "is_fraud": 0,
                           "timestamp": [START + pd.Timedelta(days=35, hours=23, minutes=30), START + pd.Timedelta(days=39, hours=12)]})
    tables = {}
    for name, frames in (("base", [tx, probes]), ("burst", [tx, burst, probes])):
        s = settings.replace(state_dir=tmp_path / name)
        write_part(pd.concat(frames, ignore_index=True), s.transactions_dir, name)
        features_from_truth(s)
        tables[name] = pd.read_parquet(s.features_dir / FEATURES_FILE).set_index("transaction_id")
    base, seen = tables["base"], tables["burst"]
    assert seen.loc["p1", "customer_tx_count_1h"] == base.loc["p1", "customer_tx_count_1h"] + 20
    assert seen.loc["p1", "terminal_tx_count_1d"] == base.loc["p1", "terminal_tx_count_1d"] + 20
    assert seen.loc["p2", "terminal_risk_30d"] == base.loc["p2", "terminal_risk_30d"]  # labels 3.5 days old: not known


def test_window_edges_are_exact_to_the_microsecond() -> None:
    t = 1_000 * DAY_US
    edge = [(t - 30 * DAY_US, "out", 5.0), (t - 30 * DAY_US + 1, "in", 7.0), (t, "same-instant", 100.0)]
    got = customer_features(edge, t, "now", 1.0)
    assert got["customer_tx_count_30d"] == 2 and got["customer_amount_sum_30d"] == 8.0  # itself and the 30 days - 1 us one
    assert got["customer_tx_count_1h"] == 1
    assert got["customer_seconds_since_previous"] == pytest.approx(30 * 86_400 - 1e-6)
    lag = DELAY * DAY_US
    risk = terminal_features([(t - lag, "a"), (t - lag - DAY_US, "b"), (t - lag + 1, "c")], [(t - lag, "a"), (t - lag - DAY_US, "b")], t, "now", DELAY)
    assert risk["terminal_risk_1d"] == 1.0  # (t - delay - 1d, t - delay]: "a" in, "b" out, "c" not yet labelled
    assert risk["terminal_tx_count_1d"] == 1 and risk["terminal_tx_count_7d"] == 2


def test_the_live_state_gives_the_offline_features(store_settings, tmp_path) -> None:
    """Backfill to day 20, then score days 20 to 40 through the state: every feature of every
    transaction equals its offline row (counts exactly, sums within 1e-9 relative)."""
    settings, tx = store_settings
    copy = settings.replace(state_dir=tmp_path)
    write_part(tx, copy.transactions_dir, "hand-built")
    deliver_chargebacks(copy)  # the backfill reads the frauds known by the cut from the label store
    cut = START + pd.Timedelta(days=20)
    materialize(copy, cut.to_pydatetime())
    state = SqliteState(copy.feast_dir / "live_state.db", DELAY)
    got = replay_live(lambda live: features(live, state.update([live])[0], DELAY), state.add_frauds, tx[tx["timestamp"] >= cut],
                      tx[(tx["is_fraud"] == 1) & (tx["timestamp"] >= cut - pd.Timedelta(days=DELAY))], DELAY)
    wrong = mismatches(got, pd.read_parquet(settings.features_dir / FEATURES_FILE).set_index("transaction_id"), LIVE_FEATURES)
    assert not wrong, wrong[:5]


def test_a_retried_transaction_counts_once_and_gets_the_same_answer(tmp_path) -> None:
    state = SqliteState(tmp_path / "s.db", DELAY)
    first = Tx("a", "c", "k", 10.0, 100 * DAY_US)
    once = features(first, state.update([first])[0], DELAY)
    again = features(first, state.update([first])[0], DELAY)
    assert once == pytest.approx(again, nan_ok=True)
    nxt = Tx("b", "c", "k", 1.0, 100 * DAY_US + 1)
    assert features(nxt, state.update([nxt])[0], DELAY)["customer_tx_count_1h"] == 2


def a_state(store: str, tmp_path: Path, request: pytest.FixtureRequest) -> SqliteState | RedisState:
    if store == "sqlite":
        return SqliteState(tmp_path / "s.db", DELAY)
    if store == "redis":
        return RedisState(request.getfixturevalue("redis_db"), DELAY, "t")
    return RedisState(request.getfixturevalue("redis_cluster").url, DELAY, f"t-{uuid.uuid4().hex[:8]}", cluster=True)


STORES = ["sqlite", pytest.param("redis", marks=pytest.mark.integration), pytest.param("redis-cluster", marks=pytest.mark.integration)]


@pytest.mark.parametrize("store", STORES)
def test_a_retry_with_another_amount_or_time_counts_once_on_every_store_and_is_logged(store: str, tmp_path, request, caplog) -> None:
    """One event per transaction id, the same on SQLite, Redis and a Redis Cluster: the retry's
    amount or time does not add a second event (Redis once keyed a card's event by id and amount;
    on a cluster the card's and the terminal's updates run apart), the first stays, and the amount's
    conflict is logged."""
    state = a_state(store, tmp_path, request)
    first = Tx("a", "c", "k", 10.0, 100 * DAY_US)
    state.update([first])
    with caplog.at_level(logging.WARNING, logger="features.state"):
        retried = state.update([Tx("a", "c", "k", 10.000000001, 100 * DAY_US)])[0]
    assert [(tx_id, amount) for _, tx_id, amount in retried.customer] == [("a", 10.0)] and len(retried.terminal) == 1
    assert "another amount" in caplog.text and ": a" in caplog.text
    later = state.update([Tx("a", "c", "k", 10.0, 100 * DAY_US + 500)])[0]  # a resend stamped again
    assert [(us, tx_id) for us, tx_id, _ in later.customer] == [(100 * DAY_US, "a")] and later.terminal == [(100 * DAY_US, "a")]
    nxt = Tx("b", "c", "k", 1.0, 100 * DAY_US + 1)
    got = features(nxt, state.update([nxt])[0], DELAY)
    assert got["customer_tx_count_1h"] == 2 and got["customer_amount_sum_1h"] == 11.0


def test_dormant_cards_and_terminals_are_pruned_and_active_ones_kept(tmp_path) -> None:
    """The step prunes only what it touches; the periodic prune drops entities past their horizon of
    the newest event, whole, and leaves the active ones' history as it was."""
    state = SqliteState(tmp_path / "s.db", DELAY)
    state.update([Tx("old", "dormant-card", "dormant-terminal", 5.0, 100 * DAY_US)])
    state.add_frauds([("dormant-terminal", "old", 100 * DAY_US)])
    state.update([Tx(f"a{i}", "active-card", "active-terminal", 1.0, (140 + i) * DAY_US) for i in range(3)])
    assert state.prune_dormant(chunk=1) == 2  # the card, the terminal (with its frauds)
    con = sqlite3.connect(tmp_path / "s.db")
    held = {table: con.execute(f"SELECT count(*) FROM {table}").fetchone()[0] for table in ("customer_events", "terminal_events", "terminal_frauds")}
    assert held == {"customer_events": 3, "terminal_events": 3, "terminal_frauds": 0}
    assert state.prune_dormant() == 0


def test_one_transaction_stamped_in_the_future_does_not_prune_everyone(tmp_path) -> None:
    """The newest event counts at most a day past the wall clock, so a clock far ahead on one
    terminal leaves today's cards alone."""
    now_us = int(time.time() * 1_000_000)
    state = SqliteState(tmp_path / "s.db", DELAY)
    state.update([Tx("today", "card", "terminal", 5.0, now_us)])
    state.update([Tx("ahead", "other-card", "other-terminal", 5.0, now_us + 3650 * DAY_US)])
    assert state.prune_dormant() == 0


def test_a_late_transaction_sees_only_what_came_before_it(tmp_path) -> None:
    """Out of order: a transaction stamped before others already scored counts the earlier ones
    only, and later transactions count it once it has arrived. The state is never corrupted."""
    state = SqliteState(tmp_path / "s.db", DELAY)
    t = 100 * DAY_US
    for i, at in enumerate((t, t + 10, t + 20)):
        tx = Tx(f"x{i}", "c", "k", 1.0, at)
        state.update([tx])
    late = Tx("late", "c", "k", 5.0, t + 15)
    got = features(late, state.update([late])[0], DELAY)
    assert got["customer_tx_count_1h"] == 3 and got["customer_amount_sum_1h"] == 7.0  # x0, x1, itself
    after = Tx("after", "c", "k", 1.0, t + 30)
    assert features(after, state.update([after])[0], DELAY)["customer_tx_count_1h"] == 5


def _hammer(path: str, worker: int, n: int, serving: bool) -> None:
    state = SqliteState(Path(path), DELAY, checkpoint_in_background=serving)
    for i in range(n):
        state.update([Tx(f"w{worker}-{i}", "card", f"k{i % 3}", 1.0, 100 * DAY_US + worker * 1000 + i)])


@pytest.mark.parametrize("serving", [False, True], ids=["sqlite-checkpoints", "background-checkpoints"])
def test_concurrent_updates_from_several_processes_lose_nothing(tmp_path, serving: bool) -> None:
    path = tmp_path / "s.db"
    SqliteState(path, DELAY)  # the schema, before the workers race to it
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_hammer, args=(str(path), w, 50, serving)) for w in range(4)]
    for process in workers:
        process.start()
    for process in workers:
        process.join(60)
        assert process.exitcode == 0
    probe = Tx("probe", "card", "k0", 1.0, 100 * DAY_US + DAY_US // 2)
    assert features(probe, SqliteState(path, DELAY).update([probe])[0], DELAY)["customer_tx_count_1d"] == 4 * 50 + 1


def _log_pages(path: Path) -> int:
    """The pages in the write-ahead log since it was last rewound."""
    con = sqlite3.connect(path, isolation_level=None)
    try:
        (_, pages, _), = con.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        return pages
    finally:
        con.close()


def test_serving_checkpoints_the_log_in_the_background_and_keeps_it_bounded(tmp_path, monkeypatch) -> None:
    """Serving's commits never checkpoint (each would pay the copy); a thread does, and rewinds the
    log past its page bound. Without it, these writes would leave well over a thousand pages."""
    monkeypatch.setattr(state_module, "CHECKPOINT_SECONDS", 0.02)
    monkeypatch.setattr(state_module, "CHECKPOINT_RESTART_PAGES", 50)
    path = tmp_path / "s.db"
    state = SqliteState(path, DELAY, checkpoint_in_background=True)
    for i in range(300):
        state.update([Tx(f"t{i}", f"c{i % 97}", f"k{i % 89}", 1.0, 100 * DAY_US + i)])
    time.sleep(0.3)
    probe = Tx("probe", "c0", "k0", 1.0, 100 * DAY_US + 400)
    assert features(probe, state.update([probe])[0], DELAY)["customer_tx_count_1d"] == 4 + 1  # 0, 97, 194, 291 and itself
    assert _log_pages(path) <= 50


def test_buckets_of_cards_and_terminals_give_the_table_of_one_pass(store_settings, tmp_path) -> None:
    """Cut into buckets, as on a Dask cluster: the same rows and values as the whole history at once."""
    settings, _ = store_settings
    whole = pd.read_parquet(settings.features_dir / FEATURES_FILE)
    features_from_truth(settings, tmp_path, buckets=3)
    cut = pd.read_parquet(tmp_path / FEATURES_FILE)
    pd.testing.assert_frame_equal(cut, whole)
    assert not list(tmp_path.glob(".parts-*"))  # the buckets' parts are gone once joined
