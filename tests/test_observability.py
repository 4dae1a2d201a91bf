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


def test_a_batch_observed_at_once_reads_as_observed_one_by_one() -> None:
    """`observe_many` writes into prometheus_client's own histogram values; this holds it to `observe`,
    values on the bucket bounds, past the last bound and NaN included."""
    from prometheus_client import CollectorRegistry, Histogram, generate_latest

    from serving.metrics import observe_many

    values = [0.0, 0.01, 0.0100001, 0.05, 0.2, 0.21, 0.95, 0.99, 3.0, float("nan"), 0.01]
    one_by_one, at_once = CollectorRegistry(), CollectorRegistry()
    for registry, observe in ((one_by_one, lambda h: [h.observe(v) for v in values]), (at_once, lambda h: observe_many(h, values))):
        observe(Histogram("scores", "s", ["variant"], registry=registry, buckets=(0.01, 0.05, 0.2, 0.95)).labels("champion"))
    expected = [line for line in generate_latest(one_by_one).decode().splitlines() if "_created" not in line]
    assert [line for line in generate_latest(at_once).decode().splitlines() if "_created" not in line] == expected
    assert 'scores_bucket{le="0.01",variant="champion"} 3.0' in expected  # the bounds are inclusive, as observe has them
