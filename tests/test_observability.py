"""Prometheus and Grafana, checked without running them: promtool loads the config and rules and runs
the alert unit tests (infra/prometheus/alerts.test.yml), and every metric an alert or a dashboard
panel reads is one the code exports, so a rename cannot silently disarm an alert or blank a panel."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from core.settings import REPO_ROOT

PROMETHEUS = REPO_ROOT / "infra" / "prometheus"


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        message = "promtool is not installed (Debian package prometheus; .ci/run installs it)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{message}, and CI=true makes it mandatory")
        pytest.skip(message)
    return path


def test_alert_rules_pass_their_unit_tests() -> None:
    tool = promtool()
    checked = subprocess.run([tool, "check", "rules", "alerts.yml"], cwd=PROMETHEUS, capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = subprocess.run([tool, "test", "rules", "alerts.test.yml"], cwd=PROMETHEUS, capture_output=True, text=True)
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_prometheus_config_loads_with_its_rules(tmp_path) -> None:
    tool = promtool()
    config = (PROMETHEUS / "prometheus.yml").read_text().replace("/etc/prometheus/alerts.yml", str(PROMETHEUS / "alerts.yml"))
    (tmp_path / "prometheus.yml").write_text(config)
    checked = subprocess.run([tool, "check", "config", str(tmp_path / "prometheus.yml")], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.mark.parametrize("path", [PROMETHEUS / "alerts.yml", REPO_ROOT / "infra" / "grafana" / "dashboards" / "fraudops.json"], ids=lambda p: p.name)
def test_every_metric_read_is_exported(path) -> None:
    sources = "".join(p.read_text() for folder in ("core", "serving", "monitoring") for p in (REPO_ROOT / folder).glob("*.py"))
    names = set(re.findall(r"fraudops_[a-z0-9_]+", path.read_text()))
    assert len(names) >= 5
    for name in names:
        base = re.sub(r"_(bucket|count|sum)$", "", name)  # a histogram's series
        assert f'"{base}"' in sources, f"{path.name} reads {name}, which no code exports"


def test_grafana_provisioning_points_at_what_compose_mounts() -> None:
    import json

    import yaml

    compose = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
    mounts = {v.split(":")[1]: v.split(":")[0] for v in compose["services"]["grafana"]["volumes"] if v.startswith("./")}
    provider = yaml.safe_load((REPO_ROOT / "infra" / "grafana" / "provisioning" / "dashboards" / "fraudops.yml").read_text())
    dashboards = mounts[provider["providers"][0]["options"]["path"]]
    dashboard = json.loads((REPO_ROOT / dashboards / "fraudops.json").read_text())
    source = yaml.safe_load((REPO_ROOT / "infra" / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    assert {p["datasource"]["uid"] for p in dashboard["panels"]} == {source["datasources"][0]["uid"]}
    assert source["datasources"][0]["url"] == "http://prometheus:9090" and "prometheus" in compose["services"]


def test_importing_feast_leaves_prometheus_in_memory_and_the_environment_as_it_was() -> None:
    """In a fresh interpreter, as the CLI and the demo start: after the Feast store module is loaded,
    metrics are kept in memory and no child process inherits Feast's metrics folder."""
    import subprocess
    import sys

    code = ("import os, features.store, prometheus_client.values as v; "
            "print(v.ValueClass.__name__, os.environ.get('PROMETHEUS_MULTIPROC_DIR'))")
    env = {k: v for k, v in __import__("os").environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.split() == ["MutexValue", "None"], done.stdout + done.stderr
