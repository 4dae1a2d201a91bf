"""The compose stack as native processes: each service's command and environment are read from
docker-compose.yml, with the compose hosts mapped to this machine and a fresh database per
`CREATE DATABASE` of infra/postgres/init.sql. Then bootstrap, a second training, promote, serve,
monitor and the worker (its scheduled deployments registered, one run on demand) run across the
MLflow server (basic auth, PostgreSQL), the Prefect server (PostgreSQL), the Feast registry
(PostgreSQL) and online store (Redis), and the prediction log (PostgreSQL), and each store is
checked. What compose would run is what runs here, so the two cannot silently diverge."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar, cast

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from core.settings import REPO_ROOT
from core.runtime import exited, poll_until, wait_until_up
from tests.conftest import TINY, free_port, require_service
from tests.prefect_checks import run_deployment, wait_for_deployments

pytestmark = pytest.mark.integration
BIN = Path(sys.executable).parent
T = TypeVar("T")
SECRETS = {"POSTGRES_PASSWORD": "unused-with-trust-auth", "FRAUDOPS_ADMIN_TOKEN": "admin-token", "FRAUDOPS_LABELS_TOKEN": "labels-token",
           "MLFLOW_ADMIN_PASSWORD": "not-the-default", "MLFLOW_SECRET_KEY": "k", "GRAFANA_ADMIN_PASSWORD": "g"}


class Stack:
    """Compose's names mapped to this machine: databases with a suffix, hosts to 127.0.0.1, ports free."""

    def __init__(self, tmp: Path) -> None:
        self.compose = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
        self.tmp = tmp
        self.suffix = uuid.uuid4().hex[:8]
        self.databases = re.findall(r"CREATE DATABASE (\w+);", (REPO_ROOT / "infra" / "postgres" / "init.sql").read_text())
        self.ports = {"mlflow": free_port(), "prefect-server": free_port(), "api": free_port()}
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self, service: str, port_flag: str | None, extra_env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """The service's compose command (on its own port, if it has one), logging to `<service>.log`."""
        with open(self.log(service), "wb") as log:
            process = subprocess.Popen(self.command(service, port_flag), env={**self.env(service), **(extra_env or {})},
                                       stdout=log, stderr=subprocess.STDOUT)
        self.processes.append(process)
        return process

    def log(self, service: str) -> Path:
        return self.tmp / f"{service}.log"

    def localize(self, text: str) -> str:
        text = re.sub(r"\$\{(\w+)(:\?[^}]*)?\}", lambda m: SECRETS[m.group(1)], str(text)).replace("$$", "$")
        for database in sorted(self.databases, key=len, reverse=True):
            text = re.sub(rf"@postgres:5432/{database}\b", f"@127.0.0.1:5432/{database}_{self.suffix}", text)
        text = text.replace("redis:6379", "127.0.0.1:6379,db=11").replace("/state", str(self.tmp / "state"))
        text = text.replace("/tmp/basic_auth.ini", str(self.tmp / "basic_auth.ini"))
        for service, port in self.ports.items():
            text = text.replace(f"http://{service}:", f"http://127.0.0.1:{port}#:")
        text = re.sub(r"#:\d+", "", text)
        return text.replace("0.0.0.0", "127.0.0.1")

    def env(self, service: str) -> dict[str, str]:
        variables = {k: self.localize(v) for k, v in (self.compose["services"][service].get("environment") or {}).items()}
        return {**os.environ, **variables, "PATH": f"{BIN}:{os.environ['PATH']}", "PREFECT_HOME": str(self.tmp / f"prefect-{service}")}

    def command(self, service: str, port_flag: str | None = None) -> list[str]:
        command = self.compose["services"][service]["command"]
        command = ["sh", "-c", command] if isinstance(command, str) else list(command)
        command = [self.localize(part) for part in command]
        if port_flag is not None:  # the service's own port, free on this machine
            port = str(self.ports[service])
            command = [re.sub(rf"{port_flag} \d+", f"{port_flag} {port}", part) for part in command]
            command = [port if prev == port_flag else part for prev, part in zip(["", *command], command)]
        return command


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    require_service("PostgreSQL", "127.0.0.1", 5432)
    require_service("Redis", "127.0.0.1", 6379)
    import psycopg
    import redis

    stack = Stack(tmp_path)
    (tmp_path / "state").mkdir()
    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
        for database in stack.databases:
            conn.execute(f'CREATE DATABASE "{database}_{stack.suffix}"')
    redis.Redis(host="127.0.0.1", port=6379, db=11).flushdb()
    try:
        yield stack
    finally:
        for process in reversed(stack.processes):  # as compose stops them: what depends on a server first
            process.terminate()
            process.wait(timeout=30)
        redis.Redis(host="127.0.0.1", port=6379, db=11).flushdb()
        with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
            for database in stack.databases:
                conn.execute(f'DROP DATABASE IF EXISTS "{database}_{stack.suffix}" WITH (FORCE)')


def test_compose_services_run_natively_end_to_end(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    servers = {"mlflow": "/health", "prefect-server": "/api/health"}
    started = {service: stack.start(service, "--port") for service in servers}  # both boot at once
    for service, health in servers.items():
        wait_until_up(f"http://127.0.0.1:{stack.ports[service]}{health}", started[service], log=stack.log(service))

    tiny = {f"FRAUDOPS_{k.upper()}": str(v) for k, v in TINY.items()}
    env = {**stack.env("bootstrap"), **tiny}

    def run(command: list[str] | str, **extra: str) -> str:
        shell = ["sh", "-c", command] if isinstance(command, str) else command
        done = subprocess.run(shell, env={**env, **extra}, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{command}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        return done.stdout

    run(stack.command("bootstrap"))  # simulate, feast apply, materialize, train: the first champion
    run(["fraudops", "train", "--num-leaves", "7"])  # a challenger: another config than the default
    # no labelled canary traffic yet: the criteria refuse, with the figures; --force is the operator's override
    refused = subprocess.run(["fraudops", "promote", "--reason", "native stack test"], env=env, capture_output=True, text=True, timeout=600)
    assert refused.returncode == 2 and "refused" in refused.stdout, refused.stdout + refused.stderr
    run(["fraudops", "promote", "--reason", "native stack test", "--force"])

    scored = drive_the_api(stack, tiny)
    # judged only: the retrain it could trigger is the end-to-end test's subject, and a third training
    # here cost a minute of the suite's 15 on a slow machine
    monitored = run(["fraudops", "monitor", "--label", "native"], FRAUDOPS_RETRAIN_ON_DRIFT="false")
    assert "drift verdict" in monitored
    prefect = f"http://127.0.0.1:{stack.ports['prefect-server']}/api"
    drive_the_worker(stack, tiny, prefect)
    for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.setenv(key, env[key])
    check_every_store(stack, env, prefect, scored)


def drive_the_api(stack: Stack, tiny: dict[str, str]) -> int:
    """The API on the promoted champion: a replay through /predict counted on /metrics, then a verdict
    through POST /labels into compose's PostgreSQL label store. Returns how many it scored."""
    api = stack.start("api", "--port", {**tiny, "FRAUDOPS_MODEL_POLL_SECONDS": "1"})
    try:
        base = f"http://127.0.0.1:{stack.ports['api']}"
        wait_until_up(f"{base}/readyz", api, log=stack.log("api"))
        assert httpx.get(f"{base}/readyz").json()["models"]["champion"] == {"version": "2", "source": "registry"}
        n = 250
        for i in range(n):
            tx = {"transaction_id": f"n{i}", "customer_id": str(i % 300), "terminal_id": str(i % 600), "amount": 20.0 + i % 50,
                  "timestamp": "2025-05-09T10:00:00Z"}
            try:
                answer = httpx.post(f"{base}/predict", json=tx, timeout=10.0)
            except httpx.HTTPError as error:  # a worker died: its log says why
                raise AssertionError(stack.log("api").read_text(errors="replace")[-3000:]) from error
            assert answer.status_code == 200, answer.text
        assert not answer.json()["degraded"]  # features came from Redis
        time.sleep(2.5)  # each worker counts what it scored every second (on its prediction log's writer)
        for _ in range(6):  # each scrape reaches one of the two workers: every one must count all n
            families = text_string_to_metric_families(httpx.get(f"{base}/metrics").text)
            assert sum(s.value for f in families for s in f.samples if s.name == "fraudops_predictions_total") == n
        # a chargeback on a transaction only the prediction log knows yet, into compose's PostgreSQL label store
        verdicts = {"labels": [{"transaction_id": "n0", "is_fraud": True, "source": "chargeback"}, {"transaction_id": "not-scored", "is_fraud": 1}]}
        receipt = httpx.post(f"{base}/labels", json=verdicts, headers={"Authorization": "Bearer labels-token"}, timeout=10.0)
        assert receipt.status_code == 200, receipt.text
        assert (receipt.json()["recorded"], receipt.json()["unknown"]) == (1, ["not-scored"])
        import psycopg

        with psycopg.connect(f"postgresql://postgres@127.0.0.1:5432/labels_{stack.suffix}") as conn:
            assert conn.execute("SELECT is_fraud, source FROM label_events WHERE transaction_id = 'n0'").fetchall() == [(1, "chargeback")]
            # bootstrap's simulation delivered its chargebacks there too, and training read them from there
            (chargebacks,), = conn.execute("SELECT COUNT(*) FROM label_events WHERE source = 'chargeback'").fetchall()
            assert chargebacks > 20
    finally:
        api.terminate()
        api.wait(timeout=30)  # the prediction log flushes on the way out
    return n


def drive_the_worker(stack: Stack, tiny: dict[str, str], prefect: str) -> None:
    """The worker registers the scheduled deployments with the Prefect server and runs what it is given."""
    worker = stack.start("worker", None, {**tiny, "FRAUDOPS_RETRAIN_ON_DRIFT": "false"})
    log = stack.log("worker")
    try:
        deployments = wait_for_deployments(prefect, exited(worker))
        final = run_deployment(prefect, deployments["hourly-monitor"], exited(worker))
    except (RuntimeError, TimeoutError) as exc:
        raise AssertionError(f"the worker ({exc}); see {log}:\n{log.read_text(errors='replace')[-3000:]}") from None
    assert final == "COMPLETED", log.read_text(errors="replace")[-3000:]


def check_every_store(stack: Stack, env: dict[str, str], prefect: str, scored: int) -> None:
    """Every store holds what the run put there."""
    import psycopg
    import redis
    from mlflow import MlflowClient

    client = MlflowClient(env["FRAUDOPS_MLFLOW_TRACKING_URI"])
    model = client.get_registered_model("fraud-detector")
    assert model.aliases["champion"] == "2" and "challenger" not in model.aliases  # promoted, nothing retrained
    assert client.get_model_version("fraud-detector", "2").tags["promoted_reason"].startswith("native stack test (forced: ")  # the override is on record
    with pytest.raises(Exception):  # basic auth is on: no credentials, no registry
        httpx.get(f"{env['FRAUDOPS_MLFLOW_TRACKING_URI']}/api/2.0/mlflow/registered-models/get", params={"name": "fraud-detector"}).raise_for_status()
    with psycopg.connect(f"postgresql://postgres@127.0.0.1:5432/predictions_{stack.suffix}") as conn:
        assert conn.execute("SELECT count(*) FROM prediction_log").fetchone() == (scored,)
    with psycopg.connect(f"postgresql://postgres@127.0.0.1:5432/feast_{stack.suffix}") as conn:
        views = conn.execute("SELECT count(*) FROM feature_views").fetchone()
        assert views is not None and views[0] >= 2
    assert cast(int, redis.Redis(host="127.0.0.1", port=6379, db=11).dbsize()) > 0  # the synchronous client: an int
    flows = {f["id"]: f["name"] for f in httpx.post(f"{prefect}/flows/filter", json={}).json()}
    runs = httpx.post(f"{prefect}/flow_runs/filter", json={}).json()
    completed = {flows[r["flow_id"]] for r in runs if r["state_type"] == "COMPLETED"}
    assert {"features", "train", "monitor"} <= completed  # the flows ran against the Prefect server
