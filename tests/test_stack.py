"""The compose stack, checked without a Docker engine: schema-valid, and every FRAUDOPS_* variable it
sets is a real setting (a typo there would silently fall back to the embedded default)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from core.settings import REPO_ROOT, Settings

COMPOSE = REPO_ROOT / "docker-compose.yml"


def test_compose_file_matches_the_compose_specification() -> None:
    checker = Path(sys.executable).parent / "check-jsonschema"
    result = subprocess.run([str(checker), "--builtin-schema", "vendor.compose-spec", str(COMPOSE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_fraudops_variable_in_compose_is_a_setting() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    fields = Settings.names()
    seen = set()
    for name, service in compose["services"].items():
        for key in (service.get("environment") or {}):
            if key.startswith("FRAUDOPS_"):
                seen.add(key)
                assert key.removeprefix("FRAUDOPS_").lower() in fields, f"{name}: {key} is not a setting"
    assert {"FRAUDOPS_MLFLOW_TRACKING_URI", "FRAUDOPS_FEAST_REDIS_URL", "FRAUDOPS_FEAST_REGISTRY_URL"} <= seen


def test_init_script_creates_a_database_per_service() -> None:
    sql = (REPO_ROOT / "infra" / "postgres" / "init.sql").read_text()
    for database in ("mlflow", "prefect", "feast", "predictions"):
        assert f"CREATE DATABASE {database};" in sql


def test_mlflow_server_refuses_the_default_admin_password(tmp_path) -> None:
    """The compose command of the MLflow service, run by sh as compose would (after interpolation),
    with a stand-in `mlflow` that records how it was called."""
    service = yaml.safe_load(COMPOSE.read_text())["services"]["mlflow"]
    script = service["command"][2].replace("$$", "$")
    fake = tmp_path / "mlflow"
    fake.write_text('#!/bin/sh\necho "$@" > "$CALLED"\n')
    fake.chmod(0o755)
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin", "POSTGRES_PASSWORD": "pg", "CALLED": str(tmp_path / "called")}
    refused = subprocess.run(["sh", "-c", script], env={**env, "MLFLOW_ADMIN_PASSWORD": "password1234"}, capture_output=True, text=True)
    assert refused.returncode == 1 and "default admin password" in refused.stderr
    assert not (tmp_path / "called").exists()
    started = subprocess.run(["sh", "-c", script.replace("/tmp/basic_auth.ini", str(tmp_path / "auth.ini"))],
                             env={**env, "MLFLOW_ADMIN_PASSWORD": "s3cret"}, capture_output=True, text=True)
    assert started.returncode == 0, started.stderr
    assert "--app-name basic-auth" in (tmp_path / "called").read_text()
    auth = (tmp_path / "auth.ini").read_text()
    assert "admin_password = s3cret" in auth and "mlflow_auth" in auth


def test_github_workflow_matches_the_workflow_schema() -> None:
    workflow = REPO_ROOT / ".github" / "workflows" / "ci.yml"
    checker = Path(sys.executable).parent / "check-jsonschema"
    result = subprocess.run([str(checker), "--builtin-schema", "vendor.github-workflows", str(workflow)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    jobs = yaml.safe_load(workflow.read_text())["jobs"]
    steps = [step.get("run", "") for step in jobs["test"]["steps"]]
    assert "make test" in steps and set(jobs["test"]["services"]) == {"postgres", "redis"}
