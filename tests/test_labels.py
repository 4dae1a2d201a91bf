"""The label store and its one path in: verdicts recorded idempotently, the later one winning, both
kept; unknown ids reported; a bad batch records nothing; the API behind its own token; the bulk load."""

from __future__ import annotations

import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from core.settings import Settings
from features.labels import current, history, record
from features.labels import version as labels_version
from features.offline import read_transactions
from features.schema import SchemaError
from features.simulator import SimulationConfig, write_simulation
from tests.conftest import tiny_settings

DAY = pd.Timedelta(days=1)
N_RACED = 3_000


@pytest.fixture(scope="module")
def simulated(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    settings = tiny_settings(tmp_path_factory.mktemp("labels"), days=30, train_start_day=5, train_days=7, test_days=7)
    write_simulation(SimulationConfig.from_settings(settings.simulation), settings.transactions_dir)
    return settings


@pytest.fixture
def store(simulated: Settings, tmp_path: Path, request: pytest.FixtureRequest) -> Settings:
    """The simulated transactions with an empty label store of this test: SQLite, or PostgreSQL."""
    url = request.getfixturevalue("database") if getattr(request, "param", "sqlite") == "postgresql" else None
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "transactions").symlink_to(simulated.transactions_dir, target_is_directory=True)
    return simulated.replace(state_dir=tmp_path, labels_url=url)


def frauds(settings: Settings, n: int) -> pd.DataFrame:
    tx = read_transactions(settings.transactions_dir, "is_fraud = 1").head(n)
    return pd.DataFrame({"transaction_id": tx["transaction_id"], "is_fraud": 1, "reported_at": tx["timestamp"] + 7 * DAY,
                         "source": "chargeback"})


@pytest.mark.parametrize("store", ["sqlite", "postgresql"], indirect=True)
def test_verdicts_are_idempotent_the_later_wins_and_history_keeps_both(store: Settings) -> None:
    chargebacks = frauds(store, 6)
    assert record(store, chargebacks, "api").as_dict() | {"unknown": []} == \
        {"recorded": 6, "changed": 0, "unchanged": 0, "superseded": 0, "unknown_count": 0, "unknown": []}
    again = record(store, chargebacks, "api")
    assert (again.recorded, again.unchanged) == (0, 6), "the same feed twice changes nothing"

    overturned = chargebacks.head(2).assign(is_fraud=0, reported_at=chargebacks["reported_at"].head(2) + DAY, source="analyst")
    late_word = chargebacks.iloc[2:3].assign(is_fraud=0, reported_at=chargebacks["reported_at"].iloc[2] - 3 * DAY, source="analyst")
    receipt = record(store, pd.concat([overturned, late_word, pd.DataFrame({"transaction_id": ["never-seen"], "is_fraud": [1]})]), "api")
    assert (receipt.changed, receipt.superseded, receipt.unknown) == (2, 1, ["never-seen"])

    now = current(store).set_index("transaction_id")
    assert len(now) == 6 and "never-seen" not in now.index
    first = str(chargebacks["transaction_id"].iloc[0])
    assert now.loc[first, "is_fraud"] == 0 and now.loc[first, "source"] == "analyst"
    assert now.loc[str(chargebacks["transaction_id"].iloc[2]), "is_fraud"] == 1, "a verdict reported earlier does not win"
    assert history(store, first)["source"].tolist() == ["chargeback", "analyst"]
    before = current(store, as_of=chargebacks["reported_at"].iloc[0] + DAY / 2).set_index("transaction_id")
    assert before.loc[first, "is_fraud"] == 1, "as of a time, the verdict that stood then"


def _feed(settings: Settings, batch: pd.DataFrame, start: threading.Barrier) -> dict[str, int]:
    start.wait()
    return record(settings, batch, "chargeback").counts()


@pytest.mark.parametrize("store", ["sqlite", "postgresql"], indirect=True)
def test_four_feeders_sending_one_batch_at_once_leave_one_copy(store: Settings) -> None:
    """At the same moment, from four threads with connections of their own: one copy of each
    verdict event, and the receipts together say each was recorded once."""
    tx = read_transactions(store.transactions_dir).head(N_RACED)  # long enough a batch for the feeders to overlap
    batch = pd.DataFrame({"transaction_id": tx["transaction_id"], "is_fraud": tx["is_fraud"], "reported_at": tx["timestamp"] + 7 * DAY,
                          "source": "chargeback"})
    start = threading.Barrier(4)
    with ThreadPoolExecutor(4) as pool:
        receipts = list(pool.map(lambda _: _feed(store, batch, start), range(4)))
    assert len(current(store)) == N_RACED
    assert labels_version(store).split(":")[0] == str(N_RACED), "one stored event per verdict"
    # the feeders queue (PostgreSQL's advisory lock, SQLite's write lock taken as each begins), so the receipts are exact too
    assert sum(r["recorded"] for r in receipts) == N_RACED and sum(r["unchanged"] for r in receipts) == 3 * N_RACED, receipts


@pytest.mark.parametrize("store", ["sqlite", "postgresql"], indirect=True)
def test_a_store_from_before_the_unique_index_keeps_one_copy_and_gets_it(store: Settings) -> None:
    """A store written before `label_events_once` existed may hold copies, on which creating the
    unique index fails: the first use drops every copy but the first, then creates it."""
    from sqlalchemy import create_engine

    from features.labels import EVENTS, METADATA, _engine

    url = store.label_store_url
    old = create_engine(url)
    with old.begin() as con:
        METADATA.create_all(con)
        next(i for i in EVENTS.indexes if i.name == "label_events_once").drop(con)
        rows = [{"transaction_id": tid, "is_fraud": 1, "source": "chargeback", "reported_at": pd.Timestamp("2018-09-01").to_pydatetime(),
                 "recorded_at": pd.Timestamp("2018-09-02").to_pydatetime()} for tid in ("a", "a", "a", "b")]
        con.execute(EVENTS.insert(), rows)
    old.dispose()
    _engine.cache_clear()
    assert labels_version(store).split(":")[0] == "2", "one copy of each event stays"
    with pytest.raises(Exception, match="(?i)unique"):
        with _engine(url).begin() as con:
            con.execute(EVENTS.insert(), rows[:1])


def test_a_bad_batch_records_nothing_and_says_why(store: Settings) -> None:
    good = frauds(store, 3)
    bad = pd.concat([good, good.head(1).assign(is_fraud=2)], ignore_index=True)
    with pytest.raises(SchemaError, match=r"transaction_id: duplicate id.*is_fraud: must be one of \[0, 1\] at rows 3"):
        record(store, bad, "api")
    with pytest.raises(SchemaError, match="reported_at: before its transaction at rows 1"):
        record(store, good.assign(reported_at=[good["reported_at"].iloc[0], pd.Timestamp("2001-01-01"), good["reported_at"].iloc[2]]), "api")
    with pytest.raises(SchemaError, match="reported_at: after now"):
        record(store, good.assign(reported_at=pd.Timestamp("2099-01-01")), "api")
    with pytest.raises(SchemaError, match="missing column"):
        record(store, good.drop(columns="is_fraud"), "api")
    assert current(store).empty


def test_a_fraud_verdict_reaches_the_terminals_live_risk(store: Settings) -> None:
    from features.live import DAY_US
    from features.schema import micros
    from features.state import Tx, open_state

    chargeback = frauds(store, 1)
    tx = read_transactions(store.transactions_dir, f"transaction_id = '{chargeback['transaction_id'].iloc[0]}'")
    later = Tx("probe", "probe-card", str(tx["terminal_id"].iloc[0]), 10.0, micros(tx)[0] + (store.features.label_delay_days + 1) * DAY_US)
    assert open_state(store).update([later])[0].frauds == []
    record(store, chargeback, "api")
    assert [tid for _, tid in open_state(store).update([later])[0].frauds] == [str(tx["transaction_id"].iloc[0])]


def test_tokens_must_differ() -> None:
    with pytest.raises(ValueError, match="labels_token must differ from admin_token"):
        Settings(admin_token="same", labels_token="same")


def labels_total(client: TestClient) -> dict[str, float]:
    families = text_string_to_metric_families(client.get("/metrics").text)
    return {s.labels["outcome"]: s.value for f in families if f.name == "fraudops_labels" for s in f.samples if s.name.endswith("_total")}


def test_the_api_records_verdicts_behind_its_own_token(registry_copy: Settings) -> None:
    from features.offline import read_transactions as stored
    from serving.app import create_app

    fraud = stored(registry_copy.transactions_dir, "is_fraud = 1").iloc[-1]  # the newest: its chargeback is not in yet
    before = current(registry_copy)
    assert str(fraud["transaction_id"]) not in set(before["transaction_id"])
    body = {"labels": [{"transaction_id": str(fraud["transaction_id"]), "is_fraud": True, "source": "chargeback",
                        "reported_at": (fraud["timestamp"] + 7 * DAY).isoformat() + "Z"},
                       {"transaction_id": "never-seen", "is_fraud": 0}]}
    with TestClient(create_app(registry_copy)) as off:
        assert off.post("/labels", json=body).status_code == 404
    settings = registry_copy.replace(labels_token="feed", admin_token="admin")
    with TestClient(create_app(settings)) as c:
        assert c.post("/labels", json=body).status_code == 401
        assert c.post("/labels", json=body, headers={"Authorization": "Bearer admin"}).status_code == 401, "the admin token is not the feed's"
        auth = {"Authorization": "Bearer feed"}
        first = c.post("/labels", json=body, headers=auth)
        assert first.status_code == 200, first.text
        assert first.json() == {"recorded": 1, "changed": 0, "unchanged": 0, "superseded": 0, "unknown_count": 1, "unknown": ["never-seen"]}
        assert c.post("/labels", json=body, headers=auth).json()["unchanged"] == 1
        for bad, words in [({"labels": []}, "at least 1"), ({"labels": [{"transaction_id": "x", "is_fraud": "yes"}]}, "is_fraud"),
                           ({"labels": [body["labels"][0], body["labels"][0]]}, "duplicate id"),
                           ({"labels": [{**body["labels"][0], "reported_at": "2099-01-01T00:00:00Z"}]}, "after now"),
                           ({"labels": [{**body["labels"][0], "source": "Not A Source"}]}, "source")]:
            answer = c.post("/labels", json=bad, headers=auth)
            assert answer.status_code == 422 and words in answer.text, (bad, answer.text)
        assert labels_total(c) == {"recorded": 1.0, "unchanged": 1.0, "unknown": 2.0}
        assert "/labels" in c.get("/openapi.json").json()["paths"]
    after = current(settings)
    assert set(after["transaction_id"]) - set(before["transaction_id"]) == {str(fraud["transaction_id"])}


def test_the_bulk_load_takes_a_file_and_refuses_a_bad_one(store: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipelines.cli import app

    monkeypatch.setenv("FRAUDOPS_STATE_DIR", str(store.state_dir))
    for name, value in {"CUSTOMERS": "300", "TERMINALS": "600", "DAYS": "30", "TRAIN_START_DAY": "5", "TRAIN_DAYS": "7", "TEST_DAYS": "7"}.items():
        monkeypatch.setenv(f"FRAUDOPS_{name}", value)
    feed = tmp_path / "chargebacks.csv"
    frauds(store, 4).drop(columns="source").to_csv(feed, index=False)
    result = CliRunner().invoke(app, ["labels", str(feed), "--source", "chargeback"])
    assert result.exit_code == 0, result.output
    assert "4 recorded" in result.output
    assert set(current(store)["source"]) == {"chargeback"}
    broken = tmp_path / "broken.csv"
    broken.write_text("transaction_id,is_fraud\n1,maybe\n")
    result = CliRunner().invoke(app, ["labels", str(broken)])
    assert result.exit_code == 2 and "must be one of [0, 1] at rows 0" in result.output


def test_the_replays_feed_sends_no_chargeback_for_a_declined_transaction() -> None:
    """A declined transaction never happened: no chargeback comes, whatever the truth was."""
    from pipelines.replay import LabelFeed

    got: list[list[tuple[str, str, int]]] = []
    feed = LabelFeed([(10, ("m1", "a", 1)), (20, ("m1", "b", 2)), (30, ("m2", "c", 3))], got.append)
    feed.declined.add("b")
    feed.until(25)
    feed.until(40)
    assert got == [[("m1", "a", 1)], [("m2", "c", 3)]] and feed.censored == 1 and feed.next_arrival() is None


def test_quality_reads_the_store_as_of_its_time_and_leaves_the_declined_out(store: Settings) -> None:
    from monitoring.quality import with_labels

    chargebacks = frauds(store, 3)
    record(store, chargebacks, "api")
    tx = read_transactions(store.transactions_dir, "transaction_id IN ('{}')".format("', '".join(chargebacks["transaction_id"])))
    logged = pd.DataFrame({"transaction_id": tx["transaction_id"], "timestamp": tx["timestamp"], "shadow": False,
                           "decision": ["approve", "review", "decline"], "propensity": [1.0, 0.005, 0.995]})
    late = tx["timestamp"].max() + 30 * DAY
    labelled = with_labels(logged, store, late).set_index("transaction_id")
    assert labelled["is_fraud"].tolist() == [1, 1], "the declined one is out: no label can come for it"
    first = str(tx["transaction_id"].iloc[0])
    record(store, pd.DataFrame({"transaction_id": [first], "is_fraud": [0], "reported_at": [late - DAY], "source": ["analyst"]}), "api")
    assert with_labels(logged, store, late).set_index("transaction_id").loc[first, "is_fraud"] == 0, "the later verdict"
    assert with_labels(logged, store, late - 2 * DAY).set_index("transaction_id").loc[first, "is_fraud"] == 1, "as the store stood then"


JUST_ANSWERED = """
import json, sys
from fastapi.testclient import TestClient
from core.settings import Settings
from serving import predlog, service
from serving.app import create_app


class HourlyLog(predlog.PredictionLog):
    # The prediction log writes at a tick every second from start-up, so on a loaded machine the tick
    # could fall between the answer and the verdict, and the log, not the index, could have found
    # it: the log's period becomes an hour, the label index's own (50 ms) stays.
    def __init__(self, *args, flush_seconds=1.0, **kwargs):
        super().__init__(*args, flush_seconds=3600.0 if flush_seconds == 1.0 else flush_seconds, **kwargs)


service.PredictionLog = HourlyLog
settings = Settings()
tx = {"transaction_id": "just-answered", "customer_id": "1", "terminal_id": "7", "amount": 10.0, "timestamp": "2025-05-09T10:00:00Z"}
verdict = {"labels": [{"transaction_id": "just-answered", "is_fraud": True, "reported_at": "2025-05-16T10:00:00Z"}]}
with TestClient(create_app(settings)) as c:
    assert c.post("/predict", json=tx).status_code == 200
    receipt = c.post("/labels", json=verdict, headers={"Authorization": "Bearer feed"}).json()
    logged = any(settings.predictions_dir.glob("**/*.parquet"))
print(json.dumps({"receipt": receipt, "logged": logged, "duckdb": "duckdb" in sys.modules}))
"""


def test_a_verdict_sent_right_after_its_answer_is_recorded_by_a_keyed_lookup(registry_copy: Settings) -> None:
    """The label path finds a transaction the API answered a moment ago, before the prediction log
    holds it, and without a query engine: the worker answers and records without loading DuckDB,
    and the offline store is moved away, so no scan of it could have found the transaction."""
    import json
    import subprocess
    import sys

    from pipelines.demo import settings_env

    settings = registry_copy.replace(labels_token="feed", admin_token="admin")
    shutil.rmtree(settings.predictions_dir, ignore_errors=True)
    settings.transactions_dir.rename(settings.transactions_dir.with_name("moved-away"))
    try:
        run = subprocess.run([sys.executable, "-c", JUST_ANSWERED], env=settings_env(settings), capture_output=True, text=True, timeout=180)
    finally:
        settings.transactions_dir.with_name("moved-away").rename(settings.transactions_dir)
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert got["receipt"]["recorded"] == 1 and got["receipt"]["unknown_count"] == 0, got
    assert not got["logged"], "the prediction log was written already: the test no longer shows the index found it"
    assert not got["duckdb"], "the label path loaded DuckDB"
    assert current(settings).set_index("transaction_id").loc["just-answered", "is_fraud"] == 1


@pytest.mark.parametrize("store", ["sqlite", "postgresql"], indirect=True)
def test_list_entries_are_their_latest_event_and_history_is_kept(store: Settings) -> None:
    from sqlalchemy import select

    from features import lists
    from features.labels import engine

    assert lists.read(store).empty and lists.entries(store) == []
    lists.put(store, "card", "c1", "block", "analyst-1", "stolen")
    lists.put(store, "terminal", "t1", "allow", "ops", "test terminal")
    lists.put(store, "card", "c2", "allow", "ops", "VIP")
    lists.put(store, "card", "c2", "block", "analyst-2", "account takeover")  # the latest wins
    lists.put(store, "card", "c1", None, "analyst-1", "reissued")  # off its list
    current = lists.read(store)
    assert (current.block, current.allow) == ({"card": frozenset({"c2"}), "terminal": frozenset()},
                                              {"card": frozenset(), "terminal": frozenset({"t1"})})
    assert current.actions("c2", "t1") == [("block-list:card", "decline"), ("allow-list:terminal", "allow")]
    assert current.actions("c1", "t9") == []
    assert {(e["kind"], e["entity_id"], e["list"], e["who"]) for e in lists.entries(store)} == {
        ("terminal", "t1", "allow", "ops"), ("card", "c2", "block", "analyst-2")}
    with engine(store.label_store_url).connect() as con:
        assert len(con.execute(select(lists.LIST_EVENTS)).all()) == 5  # every change is kept
