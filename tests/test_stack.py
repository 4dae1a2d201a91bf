"""The compose stack, checked without a Docker engine: schema-valid, and every FRAUDOPS_* variable it
sets is a real setting (a typo there would silently fall back to the embedded default)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from pipelines.settings import REPO_ROOT, Settings

COMPOSE = REPO_ROOT / "docker-compose.yml"


def test_compose_file_matches_the_compose_specification() -> None:
    checker = Path(sys.executable).parent / "check-jsonschema"
    result = subprocess.run([str(checker), "--builtin-schema", "vendor.compose-spec", str(COMPOSE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_fraudops_variable_in_compose_is_a_setting() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    fields = set(Settings.model_fields)
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
