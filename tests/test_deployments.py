"""The scheduled deployments on a Kubernetes work pool, as infra/k8s sets them up: the pool made
with the base job template the manifests carry, the deployments registered on it by `fraudops
deploy --work-pool`, and each entrypoint importable from the installed package, as the run's pod
will import it."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from prefect.flows import load_flow_from_entrypoint

from pipelines.deployments import register
from tests.conftest import tiny_settings

ROOT = Path(__file__).resolve().parent.parent
IMAGE = "ghcr.io/fraudops/fraudops:0.1.0"


def work_pool_template() -> dict:
    docs = yaml.safe_load_all((ROOT / "infra" / "k8s" / "base" / "prefect.yaml").read_text())
    config_map = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "prefect-work-pool")
    return json.loads(config_map["data"]["base-job-template.json"])


def test_the_deployments_on_the_kubernetes_work_pool_run_the_package_s_flows(tmp_path) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL, temporary_settings

    server = SubprocessASGIServer()
    server.start()
    try:
        with temporary_settings({PREFECT_API_URL: server.api_url}), get_client(sync_client=True) as client:
            client.create_work_pool(WorkPoolCreate(name="fraudops-k8s", type="kubernetes", base_job_template=work_pool_template()))
            ids = register(tiny_settings(tmp_path), "fraudops-k8s", IMAGE)
            deployments = {d.name: d for d in (client.read_deployment(i) for i in ids)}
    finally:
        server.stop()
    assert set(deployments) == {"daily-retrain", "hourly-monitor", "nightly-score"}
    for deployment in deployments.values():
        assert deployment.work_pool_name == "fraudops-k8s" and deployment.job_variables["image"] == IMAGE
        entrypoint = deployment.entrypoint or ""
        assert entrypoint.startswith("pipelines.flows.")  # a module path, not a file beside the caller
        assert load_flow_from_entrypoint(entrypoint).name in ("train", "monitor", "score")
    assert [getattr(s.schedule, "cron", None) for s in deployments["daily-retrain"].schedules] == ["0 3 * * *"]
