"""The whole demo on tiny data: simulate, features, train twice, serve as a process, replay, monitor."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from rich.console import Console

from pipelines.demo import run
from tests.conftest import free_port, tiny_settings


@pytest.mark.e2e
def test_demo_runs_end_to_end_and_catches_the_drift(tmp_path) -> None:
    settings = tiny_settings(tmp_path / "state", api_port=free_port())
    console = Console(record=True, width=140)
    summary: dict[str, Any] = run(settings, console)

    assert summary["transactions"] > 10_000
    assert summary["trained"]["champion"]["alias"] == "champion"
    assert summary["trained"]["challenger"]["alias"] == "challenger"
    champion = summary["trained"]["champion"]
    # tiny data makes a weak model, but it must still rank better than chance and save money
    assert champion["test_roc_auc"] > 0.5
    assert champion["test_expected_cost"] < champion["test_cost_of_no_model"]
    # the calm period is the training distribution; the last days have amounts inflated by 60%
    calm = json.loads((settings.reports_dir / "calm" / "summary.json").read_text())
    assert summary["verdicts"] == {"calm": "ok", "drifted": "drift"}, calm
    report = settings.reports_dir / "drifted"
    assert (report / "report.html").stat().st_size > 10_000
    drifted = {c["column"] for c in json.loads((report / "summary.json").read_text())["columns"] if c["drifted"]}
    assert "amount" in drifted
    assert any(settings.predictions_dir.glob("date=*/*.parquet"))
    # the loop closes: drift triggers a retrain on the latest labelled windows; the candidate enters
    # the canary only if it passed the gate (the baseline and the champion on the same window)
    assert "calm" not in summary["retrained"]
    retrained = summary["retrained"]["drifted"]
    if retrained["gate"] == "passed":
        assert retrained["alias"] == "challenger" and retrained["version"] == "3" and summary["canary"] == "3"
    else:
        assert retrained["version"] is None and "canary" not in summary
        assert "on the same window" in retrained["gate"]
    monitor = json.loads((report / "monitor.json").read_text())
    assert monitor["reasons"] and monitor["reasons"][0].startswith("drift verdict")
    # the newest run reaches Prometheus through the API's collector, and the Evidently UI's workspace
    from evidently.ui.workspace import Workspace
    from prometheus_client import CollectorRegistry, generate_latest

    from core.monitor_metrics import MonitoringCollector
    from monitoring.workspace import PROJECT

    registry = CollectorRegistry()
    registry.register(MonitoringCollector(settings.reports_dir))
    exported = generate_latest(registry).decode()
    assert 'fraudops_drift_verdict{verdict="drift"} 1.0' in exported and "fraudops_retrain_triggered 1.0" in exported
    workspace = Workspace(str(settings.evidently_dir))
    project = workspace.search_project(PROJECT)[0]
    assert len(workspace.list_runs(project.id)) >= 4  # both periods: the data drift report and a score drift report each
    with pytest.raises(httpx.TransportError):  # the demo stops the API it started
        httpx.get(f"{settings.api_url}/healthz", timeout=1.0)
    assert "demo finished" in console.export_text()
