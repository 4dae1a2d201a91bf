"""Shared fixtures: tiny settings in a temporary state folder, the real local services, and one
trained pipeline reused by the tests that need models."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
import threading
import uuid
from collections.abc import Callable
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from core.runtime import prepare, service_available
from core.settings import Settings
from features.state import Tx

# Prefect reads its settings once, when it is first imported, and some test modules import it at
# collection: the process-wide set-up (its home, its 90 s start-up limit) has to come before that.
# Without it the ephemeral server got Prefect's default 20 s to start, too little on a slow machine.
prepare(Settings(state_dir=Path(tempfile.mkdtemp(prefix="fraudops-tests-"))))
# Prefect stops its temporary server at interpreter exit, after pytest closed the captured streams.
logging.raiseExceptions = False

TINY: dict[str, Any] = dict(customers=300, terminals=600, days=50, train_start_day=10, train_days=14, label_delay_days=7, test_days=7, min_rows=100,
            prequential_folds=1, min_average_precision=0.05, min_train_frauds=5, min_labelled_frauds=3)


def tiny_settings(state_dir: Path, **overrides: Any) -> Settings:
    return Settings(state_dir=state_dir, **{**TINY, **overrides})


def features_from_truth(settings: Settings, out: Path | None = None, buckets: int = 1, run: Any = None) -> dict[str, int]:
    """The feature job over the stored transactions with the simulated world's labels: their
    chargebacks into the label store (`deliver_chargebacks`), its frauds into the job, as the flow
    does (`pipelines.flows.featurize`). `out`: another folder for the table; `run`: e.g. on Dask."""
    from features.compute import FRAUDS_FILE, compute_features, in_process
    from features.labels import write_frauds
    from features.simulator import deliver_chargebacks

    deliver_chargebacks(settings)
    frauds = write_frauds(settings, settings.features_dir / FRAUDS_FILE)
    return compute_features(settings.transactions_dir, out or settings.features_dir, frauds, settings.features.label_delay_days, buckets, run or in_process)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def failures_when_run_together(calls: list[Callable[[], object]]) -> list[BaseException]:
    """Start every call on its own thread at the same moment, as workers booting together do, and
    return what they raised."""
    start = threading.Barrier(len(calls))
    failures: list[BaseException] = []

    def run(call: Callable[[], object]) -> None:
        start.wait()
        try:
            call()
        except BaseException as error:  # noqa: BLE001 - returned to the test
            failures.append(error)

    threads = [threading.Thread(target=run, args=(call,)) for call in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return failures


def replay_live(score: Callable[[Tx], dict[str, float]], add_frauds: Callable[[list[tuple[str, str, int]]], None],
                transactions: Any, frauds: Any, delay_days: int) -> dict[str, dict[str, float]]:
    """Score `transactions` one by one in time order with `score`, delivering each fraud label
    through `add_frauds` when it arrives (`delay_days` after its transaction); what each scored."""
    from features.live import DAY_US
    from features.schema import micros

    labels = sorted((u + delay_days * DAY_US, str(term), str(tid), u) for u, term, tid in
                    zip(micros(frauds), frauds["terminal_id"], frauds["transaction_id"]))
    got = {}
    for row, u in zip(transactions.itertuples(index=False), micros(transactions)):
        while labels and labels[0][0] <= u:
            _, term, tid, at = labels.pop(0)
            add_frauds([(term, tid, at)])
        got[str(row.transaction_id)] = score(Tx(str(row.transaction_id), str(row.customer_id), str(row.terminal_id), float(row.amount), u))
    return got


def mismatches(got: dict[str, dict[str, float]], offline: Any, names: list[str]) -> list[tuple[str, str, float, float]]:
    """Features that differ from the offline row of the same transaction: counts exactly, sums and
    means within 1e-9 relative, missing where offline is missing."""
    import math

    def same(a: float, b: float) -> bool:
        return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)

    return [(tid, name, values[name], float(offline.loc[tid, name])) for tid, values in got.items()
            for name in names if not same(values[name], float(offline.loc[tid, name]))]


def require_service(name: str, host: str, port: int) -> None:
    """Integration tests need the real service: mandatory in CI, skipped with a reason on a laptop."""
    if service_available(host, port):
        return
    message = f"{name} is not reachable on {host}:{port}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message}, and CI=true makes it mandatory")
    pytest.skip(f"{message}; start it to run this integration test")


PG = ("PostgreSQL", "127.0.0.1", 5432)
REDIS = ("Redis", "127.0.0.1", 6379)


@pytest.fixture
def database():
    """A throwaway PostgreSQL database, dropped afterwards."""
    require_service(*PG)
    import psycopg

    name = f"fraudops_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


# Redis databases the tests may flush, one per pytest-xdist worker: 8 and 9 are the bench's (its serving
# and features sections, run by tests/test_bench.py), 11 the native stack's (tests/test_native_stack.py).
TEST_REDIS_DBS = (7, 10, 12, 13, 14, 15)


@pytest.fixture
def redis_db():
    """A Redis database number of its own (its worker's), flushed before and after."""
    require_service(*REDIS)
    import redis

    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))
    if worker >= len(TEST_REDIS_DBS):
        pytest.fail(f"{len(TEST_REDIS_DBS)} Redis databases are set aside for tests: run at most that many workers")
    db = TEST_REDIS_DBS[worker]
    client = redis.Redis(host="127.0.0.1", port=6379, db=db)
    client.flushdb()
    yield f"127.0.0.1:6379,db={db}"
    client.flushdb()


def require_redis_cluster() -> None:
    """A local Redis Cluster needs Debian's redis-server and redis-cli: mandatory in CI, like the services."""
    from pipelines.bench.local_redis import available

    reason = available()
    if reason is None:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"no local Redis Cluster: {reason}, and CI=true makes it mandatory")
    pytest.skip(f"no local Redis Cluster: {reason}")


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory):
    """Three masters and three replicas on 127.0.0.1, shared by the tests that only read and write
    (each under a key prefix of its own); a test that kills a node starts a cluster of its own."""
    require_redis_cluster()
    from pipelines.bench.local_redis import local_cluster

    with local_cluster(tmp_path_factory.mktemp("redis-cluster")) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Simulate, compute features, materialize and train a champion and a challenger, once per session."""

    from features.simulator import SimulationConfig, deliver_chargebacks, write_simulation

    settings = tiny_settings(tmp_path_factory.mktemp("state"))
    prepare(settings)
    from pipelines.flows import features_flow, train_flow
    from training.fit import ModelConfig
    from training.windows import Windows

    write_simulation(SimulationConfig.from_settings(settings.simulation), settings.transactions_dir)
    # the chargebacks of the windows trained and tested on; later ones arrive as a test replays traffic
    deliver_chargebacks(settings, Windows.from_settings(settings).test_end + timedelta(days=settings.features.label_delay_days))
    features_flow(settings, materialize_until=Windows.from_settings(settings).test_end.to_pydatetime())
    train_flow(settings, ModelConfig(num_boost_round=60))
    train_flow(settings, ModelConfig(num_boost_round=60, num_leaves=15, scale_pos_weight=3.0))
    return settings


@pytest.fixture
def registry_copy(trained: Settings, tmp_path: Path) -> Settings:
    """The trained state copied to a folder of this test, its own MLflow database included: alias
    changes, prediction logs, labels and data stay in this test."""
    for folder in ("data", "feast"):
        shutil.copytree(trained.state_dir / folder, tmp_path / folder)
    for database in ("mlflow.db", "labels.db"):
        shutil.copy(trained.state_dir / database, tmp_path / database)
    return trained.replace(state_dir=tmp_path)


def fail_first_call(monkeypatch, method: str) -> None:
    """The registry drops the first `method` call, as a lost connection would; the rest go through."""
    from mlflow import MlflowClient

    real = getattr(MlflowClient, method)
    calls: list[tuple] = []

    def flaky(self, *args, **kwargs):
        calls.append(args)
        if len(calls) == 1:
            raise ConnectionError(f"registry unreachable during {method}")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(MlflowClient, method, flaky)


def log_parts(settings: Settings, day: str, parts: list[list[dict[str, Any]]]) -> None:
    """Parts in a past day's folder, as the API's writers left them that day."""
    from serving.predlog import day_folder

    folder = day_folder(settings.predictions_dir, date.fromisoformat(day))
    folder.mkdir(parents=True, exist_ok=True)
    for i, records in enumerate(parts):
        pq.write_table(pa.Table.from_pylist(records), folder / f"part-{day}-{i}.parquet")


def log_records(prefix: str, n: int, **extra: float) -> list[dict[str, Any]]:
    return [{"transaction_id": f"{prefix}{i}", "customer_id": "1", "terminal_id": "2", "timestamp": datetime(2025, 7, 1, 12, i),
             "score": 0.1, "is_fraud_predicted": False, "variant": "champion", "shadow": False, "model_version": "1",
             "features_missing": 0, "degraded": False, "latency_ms": 0.5, "amount": float(i), **extra} for i in range(n)]

