"""`docker compose up`, for real: the project's image built from infra/Dockerfile, the stack started
from docker-compose.yml in its `depends_on` order with each service's own healthcheck, driven end to
end through its published ports, then through faults, then torn down with its volumes. Run by
`make compose-test` (and `.ci/run` after `make test`); engine.py says what stands in for Docker here.

The tests run in order on one stack: each one's subject is the stack the ones before it left."""

from __future__ import annotations

import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import httpx
import pytest
import yaml

from core.runtime import service_available
from core.settings import REPO_ROOT
from tests.compose.engine import PROJECT, EngineMissing, Stack, build_stand_ins, ensure_engine, environment, podman
from tests.conftest import TINY
from tests.prefect_checks import run_deployment, wait_for_deployments

if TYPE_CHECKING:
    from mlflow import MlflowClient

API, MLFLOW, PREFECT, PROMETHEUS, EVIDENTLY = (f"http://127.0.0.1:{port}" for port in (8000, 5000, 4200, 9090, 8001))
# Grafana has no Debian package to stand in for it: its provisioning and dashboards are checked as
# JSON and YAML by tests/test_observability.py instead.
SERVICES = ("postgres", "redis", "mlflow", "prefect-server", "bootstrap", "api", "worker", "prometheus", "evidently-ui")
REPLAY_DAY = "2025-05-19"  # the last full day of TINY's 50 from 2025-04-01


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Built and created (nothing started), removed afterwards with every volume."""
    try:
        ensure_engine()
    except EngineMissing as missing:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{missing}, and CI=true makes the compose check mandatory")
        pytest.skip(f"{missing}: the compose check needs podman")
    tmp = tmp_path_factory.mktemp("compose")
    # the small world the other tests use, for the services that simulate, train and monitor
    tiny = {f"FRAUDOPS_{key.upper()}": str(value) for key, value in TINY.items()}
    override = {"services": {"bootstrap": {"environment": tiny}, "api": {"environment": {**tiny, "FRAUDOPS_MODEL_POLL_SECONDS": "2"}},
                             "worker": {"environment": {**tiny, "FRAUDOPS_RETRAIN_ON_DRIFT": "false"}}}}
    (tmp / "override.yml").write_text(yaml.safe_dump(override))
    stack = Stack(tmp / "override.yml", SERVICES, tmp / "logs")
    stack.compose("down", "--volumes", "--timeout", "5")  # what an interrupted run left behind
    taken = [url for url in (API, MLFLOW, PREFECT, PROMETHEUS, EVIDENTLY) if service_available("127.0.0.1", int(url.rsplit(":", 1)[1]))]
    assert not taken, f"the stack publishes on ports another program holds here: {taken}"
    build_stand_ins()
    stack.build()
    stack.create()
    try:
        yield stack
    finally:
        stack.down()
        left = podman("volume", "ls", "-q", "--filter", f"label=io.podman.compose.project={PROJECT}").stdout.split()
        assert not left, f"volumes left behind: {left}"


def test_a_bootstrap_killed_half_way_finishes_when_started_again_and_the_stack_comes_up_healthy(stack: Stack) -> None:
    stack.up("bootstrap")  # postgres and redis healthy, then mlflow and prefect-server healthy, then the job
    container = stack.container("bootstrap")
    deadline = time.monotonic() + 600
    while "training" not in stack.log("bootstrap").lower():  # half way: data and features done, the model in flight
        assert stack.state("bootstrap")["Status"] == "running", f"bootstrap stopped before training:\n{stack.log('bootstrap')}"
        assert time.monotonic() < deadline, f"bootstrap never reached training:\n{stack.log('bootstrap')}"
        time.sleep(1.0)
    time.sleep(3.0)
    podman("kill", container)
    podman("wait", container)
    assert stack.state("bootstrap")["Status"] == "exited" and stack.state("bootstrap")["ExitCode"] != 0, stack.state("bootstrap")
    stack.start("bootstrap")
    stack.up()  # the API, the worker and the UIs start once the job has exited 0 the second time

    client = mlflow_client()
    model = client.get_registered_model("fraud-detector")
    versions = [v.version for v in client.search_model_versions("name='fraud-detector'")]
    assert model.aliases == {"champion": "1"} and versions == ["1"], (model.aliases, versions)  # nothing half-written stayed
    for service in SERVICES:  # each by its own healthcheck: compose's, or for the API the image's HEALTHCHECK
        if service != "bootstrap":
            stack.wait(service, "service_healthy")
    ready = httpx.get(f"{API}/readyz", timeout=5.0)
    assert ready.status_code == 200 and ready.json()["models"]["champion"]["version"] == "1", ready.text


def test_a_replayed_day_and_its_verdicts_go_through_the_stack(stack: Stack) -> None:
    worker = stack.container("worker")
    replayed = podman("exec", worker, "fraudops", "replay", "--start", REPLAY_DAY, "--days", "1", "--url", "http://api:8000", "--no-labels")
    counted = re.search(r"sent ([\d,]+)", replayed.stdout)
    assert counted, replayed.stdout
    sent = int(counted.group(1).replace(",", ""))
    assert sent > 100 and re.search(r"statuses \{200: " + f"{sent:,}".replace(",", ",?"), replayed.stdout), replayed.stdout
    logged = wait_for_rows(stack, "predictions", f"SELECT transaction_id FROM prediction_log WHERE timestamp::date = '{REPLAY_DAY}'", sent)

    # five transactions without a verdict yet: the bootstrap delivered the simulated chargebacks, and a
    # verdict on one of those frauds would count as changed, not recorded (one run in about twenty)
    labelled = set(psql(stack, "labels", "SELECT DISTINCT transaction_id FROM label_events WHERE transaction_id IN ("
                        + ", ".join(f"'{tx}'" for tx in logged) + ")"))
    fresh = [tx for tx in logged if tx not in labelled][:5]
    verdicts = {"labels": [{"transaction_id": tx, "is_fraud": i == 0, "source": "analyst"} for i, tx in enumerate(fresh)]}
    assert httpx.post(f"{API}/labels", json=verdicts, headers={"Authorization": "Bearer wrong"}).status_code in (401, 403)
    secrets = environment()
    receipt = httpx.post(f"{API}/labels", json=verdicts, headers={"Authorization": f"Bearer {secrets['FRAUDOPS_LABELS_TOKEN']}"}, timeout=10.0)
    assert receipt.status_code == 200 and receipt.json()["recorded"] == 5, receipt.text
    ids = ", ".join(f"'{tx}'" for tx in fresh)
    assert len(psql(stack, "labels", f"SELECT transaction_id FROM label_events WHERE source = 'analyst' AND transaction_id IN ({ids})")) == 5

    # the worker registered the scheduled deployments on the Prefect server and runs the monitor when asked
    deployments = wait_for_deployments(f"{PREFECT}/api", lambda: exited(stack, "worker"))
    assert run_deployment(f"{PREFECT}/api", deployments["hourly-monitor"], lambda: exited(stack, "worker")) == "COMPLETED", stack.log("worker")

    # MLflow holds the champion behind basic auth
    assert httpx.get(f"{MLFLOW}/api/2.0/mlflow/registered-models/get", params={"name": "fraud-detector"}).status_code == 401
    assert mlflow_client().get_registered_model("fraud-detector").aliases["champion"] == "1"

    # Prometheus scrapes the API and loaded the alert rules; the Evidently UI serves the monitor's snapshots
    def scraped() -> bool:
        targets = httpx.get(f"{PROMETHEUS}/api/v1/targets").json()["data"]["activeTargets"]
        return any(t["labels"]["job"] == "fraudops-api" and t["health"] == "up" for t in targets)

    poll(scraped, 90, "Prometheus never scraped the API")
    groups = {g["name"] for g in httpx.get(f"{PROMETHEUS}/api/v1/rules").json()["data"]["groups"]}
    assert groups == {g["name"] for g in yaml.safe_load((REPO_ROOT / "infra" / "prometheus" / "alerts.yml").read_text())["groups"]}
    projects = httpx.get(f"{EVIDENTLY}/api/projects", timeout=10.0).json()
    assert projects, "the Evidently UI lists no project"
    snapshots = httpx.get(f"{EVIDENTLY}/api/projects/{projects[0]['id']}/snapshots", timeout=10.0).json()
    assert snapshots, "the Evidently UI serves no snapshot of the monitor run"


def test_with_redis_stopped_answers_degrade_never_fail_and_recover_when_it_returns(stack: Stack) -> None:
    with Traffic("redis") as traffic:
        traffic.wait_for(20)
        podman("stop", "--time", "5", stack.container("redis"))
        traffic.wait_for(len(traffic.answers) + 40)
        assert any(degraded for _, _, degraded in traffic.answers[-20:]), "answers did not degrade with Redis stopped"
        stack.start("redis")
        stack.wait("redis", "service_healthy")
        poll(lambda: traffic.answers[-1][2] is False or None, 120, "the API did not recover after Redis came back")
    assert {status for _, status, _ in traffic.answers} == {200} and traffic.refused == 0, traffic.statuses()


def test_an_api_container_restarted_under_traffic_loses_no_prediction_it_answered(stack: Stack) -> None:
    with Traffic("restart") as traffic:
        traffic.wait_for(20)
        podman("restart", "--time", "20", stack.container("api"))
        stack.wait("api", "service_healthy")
        traffic.wait_for(len(traffic.answers) + 20)
    answered = {tx for tx, status, _ in traffic.answers if status == 200}
    assert len(answered) >= 40 and traffic.refused, traffic.statuses()  # the restart was under traffic
    wait_for_rows(stack, "predictions", f"SELECT transaction_id FROM prediction_log WHERE transaction_id LIKE '{traffic.prefix}%'", len(answered))
    logged = set(psql(stack, "predictions", f"SELECT transaction_id FROM prediction_log WHERE transaction_id LIKE '{traffic.prefix}%'"))
    assert answered <= logged, f"{len(answered - logged)} answered predictions are not in the log"


class Traffic:
    """Distinct transactions sent to the API one after another from a thread, every answer kept:
    (transaction id, status or None when refused, degraded)."""

    def __init__(self, name: str) -> None:
        self.prefix = f"{name}-{uuid.uuid4().hex[:6]}-"
        self.answers: list[tuple[str, int | None, bool | None]] = []
        self.refused = 0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.send, daemon=True)

    def __enter__(self) -> Traffic:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.thread.join(timeout=30)

    def send(self) -> None:
        with httpx.Client(timeout=5.0) as client:
            i = 0
            while not self.stopping.is_set():
                tx_id = f"{self.prefix}{i}"
                tx = {"transaction_id": tx_id, "customer_id": str(i % 300), "terminal_id": str(i % 600),
                      "amount": 10.0 + i % 90, "timestamp": f"{REPLAY_DAY}T12:{i // 60 % 60:02d}:{i % 60:02d}Z"}
                i += 1
                try:
                    answer = client.post(f"{API}/predict", json=tx)
                except httpx.TransportError:  # the container is down: no answer, so nothing to lose
                    self.refused += 1
                    time.sleep(0.2)
                    continue
                self.answers.append((tx_id, answer.status_code, answer.json().get("degraded") if answer.status_code == 200 else None))
                time.sleep(0.02)

    def wait_for(self, n: int, timeout: float = 120.0) -> None:
        poll(lambda: len(self.answers) >= n or None, timeout, f"fewer than {n} answers ({self.statuses()})")

    def statuses(self) -> dict[int | None, int]:
        counts: dict[int | None, int] = {}
        for _, status, _ in self.answers:
            counts[status] = counts.get(status, 0) + 1
        return {**counts, None: self.refused}


def poll(check: Callable[[], object], timeout: float, failure: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, failure
        time.sleep(1.0)


def exited(stack: Stack, service: str) -> str | None:
    state = stack.state(service)
    return None if state["Status"] == "running" else f"{service} is {state['Status']}:\n{stack.log(service)}"


def psql(stack: Stack, database: str, query: str) -> list[str]:
    """The rows of `query` in compose's PostgreSQL, asked from inside its container."""
    done = podman("exec", stack.container("postgres"), "psql", "-U", "postgres", "-d", database, "-tAc", query)
    return done.stdout.split()


def wait_for_rows(stack: Stack, database: str, query: str, n: int, timeout: float = 60.0) -> list[str]:
    """The rows of `query` once there are at least `n` (the prediction log's writer flushes every second)."""
    rows: list[str] = []

    def enough() -> bool:
        nonlocal rows
        rows = psql(stack, database, query)
        return len(rows) >= n

    poll(enough, timeout, f"{query}: fewer than {n} rows")
    return rows


def mlflow_client() -> MlflowClient:
    """The MLflow client on the published port, as the admin compose started the server with."""
    secrets = environment()
    os.environ["MLFLOW_TRACKING_USERNAME"] = "admin"
    os.environ["MLFLOW_TRACKING_PASSWORD"] = secrets["MLFLOW_ADMIN_PASSWORD"]
    from mlflow import MlflowClient

    return MlflowClient(MLFLOW)
