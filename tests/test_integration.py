"""The same code against the real PostgreSQL and Redis of this machine, as docker-compose runs it:
Feast's SQL registry in Postgres, its online store in Redis, MLflow's backend store in Postgres."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import cast

import pytest

from features.state import Tx
from tests.conftest import failures_when_run_together, features_from_truth, mismatches, replay_live, tiny_settings

pytestmark = pytest.mark.integration


def test_feast_on_postgres_registry_and_the_live_state_on_redis(tmp_path, database, redis_db) -> None:
    """Backfill the state in Redis, score a simulated day through it with labels arriving at their
    delay: every feature equals the offline row that Feast joins from its Postgres registry."""
    import pandas as pd

    from features.live import LIVE_FEATURES
    from features.offline import read_transactions
    from features.simulator import SimulationConfig, write_simulation
    from features.store import apply, historical_features, materialize, open_store
    from serving.online import OnlineFeatures

    settings = tiny_settings(tmp_path, feast_registry_url=database, feast_redis_url=redis_db, days=40)
    write_simulation(SimulationConfig.from_settings(settings.simulation, customers=100, terminals=200), settings.transactions_dir)
    features_from_truth(settings)
    apply(settings)
    cut = datetime(2025, 5, 5)
    materialize(settings, cut)

    # the registry really lives in Postgres: a second store object on a fresh folder sees the definitions
    other = tiny_settings(tmp_path / "elsewhere", feast_registry_url=database, feast_redis_url=redis_db)
    assert "fraud_detection_v2" in [s.name for s in open_store(other).list_feature_services()]

    day = read_transactions(settings.transactions_dir, "timestamp >= TIMESTAMP '2025-05-05' AND timestamp < TIMESTAMP '2025-05-06'")
    frauds = read_transactions(settings.transactions_dir, "is_fraud = 1 AND timestamp >= TIMESTAMP '2025-04-28' AND timestamp < TIMESTAMP '2025-05-06'")
    online = OnlineFeatures(settings)
    got = replay_live(lambda live: online.lookup(live).values, online.state.add_frauds, day, frauds, settings.features.label_delay_days)
    offline = historical_features(open_store(settings), settings.features.feature_service, day).set_index("transaction_id")
    assert len(got) == len(day) > 100
    wrong = mismatches(got, offline, LIVE_FEATURES)
    assert not wrong, wrong[:5]
    # a retry changes nothing: the same answer, and the card's count moves by one for the next charge
    first = next(iter(day.itertuples(index=False)))
    retried = online.lookup(Tx(first.transaction_id, first.customer_id, first.terminal_id, float(first.amount),
                               int(pd.Timestamp(first.timestamp).value // 1000))).values
    assert not mismatches({first.transaction_id: retried}, offline, LIVE_FEATURES)


def test_concurrent_scores_of_one_card_on_redis_leave_exactly_n(redis_db) -> None:
    from features.live import DAY_US
    from features.state import RedisState, features

    states = [RedisState(redis_db, 7, "concurrency") for _ in range(4)]  # four workers, four connections
    def worker(w: int) -> Callable[[], None]:
        def call() -> None:
            for i in range(50):
                states[w].update([Tx(f"w{w}-{i}", "card", "k", 1.0, 100 * DAY_US + w * 1000 + i)])
        return call

    assert failures_when_run_together([worker(w) for w in range(4)]) == []
    probe = Tx("probe", "card", "k", 1.0, 100 * DAY_US + DAY_US // 2)
    assert features(probe, states[0].update([probe])[0], 7)["customer_tx_count_1d"] == 4 * 50 + 1


def test_every_live_state_key_on_redis_expires_after_its_horizon(redis_db) -> None:
    """Pruning reaches only the keys a batch touches; expiry bounds the rest: each key the step, the
    backfill and the label feed write carries a time to live of its horizon plus the late margin."""
    import redis

    from features.live import CUSTOMER_HORIZON_US, DAY_US, terminal_horizon_us
    from features.state import LATE_MARGIN_US, RedisState

    state = RedisState(redis_db, 7, "ttl")
    state.update([Tx("scored", "card-a", "term-a", 1.0, 100 * DAY_US)])
    state.load([Tx("loaded", "card-b", "term-b", 1.0, 99 * DAY_US)])
    state.add_frauds([("term-a", "scored", 100 * DAY_US)])
    client = redis.Redis(host="127.0.0.1", port=6379, db=int(redis_db.rsplit("=", 1)[1]))
    card_ttl, terminal_ttl = (CUSTOMER_HORIZON_US + LATE_MARGIN_US) // 1000, (terminal_horizon_us(7) + LATE_MARGIN_US) // 1000
    ttls = {key.decode(): cast(int, client.pttl(key)) for key in client.scan_iter("ttl:*")}  # the synchronous client's answer
    assert set(ttls) == {"ttl:{c:card-a}", "ttl:{c:card-a}:ids", "ttl:{t:term-a}", "ttl:{t:term-a}:f", "ttl:{c:card-b}", "ttl:{c:card-b}:ids", "ttl:{t:term-b}"}
    for key, ttl in ttls.items():
        horizon = card_ttl if "{c:" in key else terminal_ttl
        assert horizon - 60_000 < ttl <= horizon, (key, ttl, horizon)


def test_redis_outage_degrades_instead_of_failing(tmp_path, redis_db) -> None:
    from serving.online import OnlineFeatures

    broken = tiny_settings(tmp_path, feast_redis_url="127.0.0.1:1")  # nothing listens there
    got = OnlineFeatures(broken).lookup(Tx("t", "1", "1", 10.0, 1_746_000_000_000_000))
    assert got.degraded and got.values["customer_tx_count_7d"] == 1.0 and "customer_tx_count_7d" in got.missing


def test_a_repair_the_store_refuses_waits_a_retry_period_instead_of_restarting_with_every_batch(tmp_path) -> None:
    """A store that answers the state step but refuses the repair's writes (a full disk, a read-only
    replica) must not be sent a repair after every batch; once it takes writes, the repair completes."""
    import time

    from serving.online import OnlineFeatures

    online = OnlineFeatures(tiny_settings(tmp_path, online_retry_seconds=0.3))
    real_load, tries = online.state.load, []

    def refused(batch: Sequence[Tx]) -> None:
        tries.append(len(batch))
        raise OSError("disk full")

    online.state.load = refused  # type: ignore[method-assign]
    online.breaker.failed(OSError("store down"))  # an outage: the next answers are scored degraded
    assert online.lookup(Tx("during", "1", "1", 10.0, 1_746_000_000_000_000)).degraded
    time.sleep(0.35)

    def answer(n: int) -> None:
        for i in range(n):
            assert not online.lookup(Tx(f"after-{len(tries)}-{i}", "2", "2", 10.0, 1_746_000_100_000_000 + i)).degraded
            time.sleep(0.01)
        deadline = time.monotonic() + 5
        while online._repairing.locked() and time.monotonic() < deadline:
            time.sleep(0.01)

    answer(10)  # ten batches within the retry period: one repair, refused
    assert tries == [1] and list(online.missed) and online.missed[0].transaction_id == "during"
    time.sleep(0.35)
    online.state.load = real_load  # type: ignore[method-assign]
    answer(1)  # a retry period later the repair goes again, and the store takes it
    assert tries == [1] and not online.missed


@pytest.fixture
def hung_server() -> Iterator[tuple[int, list[bytes]]]:
    """A TCP server that takes connections and reads requests but never answers, as a hung Redis or a
    black-holed network does; yields its port and the requests it received."""
    received: list[bytes] = []
    server = socket.create_server(("127.0.0.1", 0))

    def drain(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(65536):
                received.append(data)

    def accept() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:  # closed: the test is over
                return
            threading.Thread(target=drain, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    yield server.getsockname()[1], received
    server.close()


def test_a_hung_redis_costs_one_read_timeout_then_is_skipped_until_the_retry(tmp_path, redis_db, hung_server) -> None:
    """The first lookup gives up at online_timeout_ms (redis-py alone would retry three times with
    backoff), the next ones skip the store without sending it anything, and after
    online_retry_seconds one lookup tries it again."""
    import time

    from serving.online import OnlineFeatures

    settings = tiny_settings(tmp_path, feast_redis_url=redis_db)
    port, received = hung_server
    online = OnlineFeatures(settings.replace(feast_redis_url=f"127.0.0.1:{port},db=7", online_timeout_ms=200.0,
                                             online_retry_seconds=1.0))

    def timed_lookup() -> tuple[bool, float]:
        started = time.perf_counter()
        got = online.lookup(Tx("t", "1", "1", 10.0, 1_746_000_000_000_000))
        return got.degraded, time.perf_counter() - started

    degraded, took = timed_lookup()
    assert degraded and 0.2 <= took < 1.0
    sent = len(received)
    assert sent >= 1  # the read reached the server
    degraded, took = timed_lookup()
    assert degraded and took < 0.1 and len(received) == sent  # skipped: nothing sent
    time.sleep(1.1)
    degraded, took = timed_lookup()
    assert degraded and took >= 0.2 and len(received) > sent  # the retry tried the store again


def test_training_flow_tracks_and_registers_in_postgres(registry_copy, tmp_path, database) -> None:
    from mlflow import MlflowClient

    from pipelines.flows import train_flow
    from training.fit import ModelConfig

    settings = registry_copy.replace(mlflow_tracking_uri=database.replace("+psycopg", ""))
    result = train_flow(settings, ModelConfig(num_boost_round=30))
    assert result["alias"] == "champion" and result["version"] == "1"
    client = MlflowClient(settings.tracking_uri)
    version = client.get_model_version_by_alias(settings.stores.model_name, "champion")
    assert version.run_id is not None
    run = client.get_run(version.run_id)
    assert run.data.tags["feature_service"] == "fraud_detection_v2"
    assert run.data.metrics["test_roc_auc"] == pytest.approx(result["test_roc_auc"])
    assert (tmp_path / "mlartifacts").is_dir()  # artifacts under the state folder, not in the cwd


def test_prediction_log_in_postgres_holds_every_answer(registry_copy, database) -> None:
    """With prediction_log_url set, the API logs to a PostgreSQL table and monitoring reads it back
    with one column per feature, as from the Parquet parts."""
    from fastapi.testclient import TestClient

    from core import predictions
    from serving.app import create_app

    url = database.replace("postgresql+psycopg://", "postgresql://")
    settings = registry_copy.replace(prediction_log_url=url, challenger_share=0.5)
    assert predictions.read(settings).empty  # before the API's first write made the table: nothing logged, no error
    n = 73
    with TestClient(create_app(settings)) as client:
        for i in range(n):
            tx = {"transaction_id": f"pg-{i}", "customer_id": str(i), "terminal_id": str(i), "amount": 10.0 + i,
                  "timestamp": "2025-05-09T10:00:00Z"}
            assert client.post("/predict", json=tx).status_code == 200
    logged = predictions.read(settings)  # the app has shut down: the writer flushed on the way out
    assert sorted(logged["transaction_id"]) == sorted(f"pg-{i}" for i in range(n))
    assert set(logged["variant"]) == {"champion", "challenger"}
    assert logged["customer_tx_count_7d"].dtype == "float64"
    sent = {f"pg-{i}": 10.0 + i for i in range(n)}
    assert all(sent[t] == a for t, a in zip(logged["transaction_id"], logged["amount"]))  # features, row by row
    assert not (settings.predictions_dir.exists() and any(settings.predictions_dir.glob("**/*.parquet")))  # nothing went to Parquet


def test_workers_starting_together_all_get_the_prediction_log_table(database) -> None:
    """Every API worker creates the table at start-up; `CREATE TABLE IF NOT EXISTS` alone races in
    PostgreSQL's catalog, and a worker that loses fails its start-up (uvicorn then stops them all)."""
    from serving.predlog import PostgresSink

    url = database.replace("postgresql+psycopg://", "postgresql://")
    assert failures_when_run_together([lambda: PostgresSink(url)] * 8) == []
