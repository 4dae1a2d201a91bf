"""The Kubernetes manifests, checked without a cluster: every overlay renders with kustomize (kubectl's
built-in), every object validates against the Kubernetes OpenAPI schemas of a pinned version, and
the policies a production cluster would enforce hold. The Prefect work pool's job template is
checked as the Job it becomes."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "infra" / "k8s"
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir())
KUBERNETES = "1.32.0"  # the schemas' version: kubectl's here, and a supported release
WORKLOADS = {"Deployment", "StatefulSet", "Job"}
SECRET_NAMES = re.compile(r"PASSWORD|TOKEN|SECRET|_KEY$")
PRIVATE_PATHS = ("/admin", "/labels", "/metrics")


def kubectl() -> str:
    found = shutil.which("kubectl")
    if found:
        return found
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail("kubectl is not installed, and CI=true makes the manifest checks mandatory")
    pytest.skip("kubectl is not installed: the manifests cannot be rendered here")


def rendered(overlay: str) -> list[dict[str, Any]]:
    out = subprocess.run([kubectl(), "kustomize", str(K8S / "overlays" / overlay)], capture_output=True, text=True, timeout=60, check=True).stdout
    docs = [d for d in yaml.safe_load_all(out) if d]
    return docs + [job_of_the_work_pool(d) for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "prefect-work-pool"]


def job_of_the_work_pool(config_map: dict[str, Any]) -> dict[str, Any]:
    """The Job a flow run becomes: the template's job manifest with its variables' defaults filled in."""
    template = json.loads(config_map["data"]["base-job-template.json"])
    defaults = {name: v.get("default") for name, v in template["variables"]["properties"].items()}
    values = {**defaults, "command": ["prefect", "flow-run", "execute"], "env": []}

    def fill(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: fill(v) for k, v in node.items()}
        if isinstance(node, list):
            return [fill(v) for v in node]
        if isinstance(node, str) and (m := re.fullmatch(r"\{\{ (\w+) \}\}", node)):
            return values[m.group(1)]
        if isinstance(node, str):
            return re.sub(r"\{\{ (\w+) \}\}", lambda m: str(values[m.group(1)]), node)
        return node

    return fill(template["job_configuration"]["job_manifest"])


def pod_spec(doc: dict[str, Any]) -> dict[str, Any] | None:
    return doc["spec"]["template"]["spec"] if doc["kind"] in WORKLOADS else None


def policy_violations(docs: list[dict[str, Any]]) -> list[str]:
    """What a production cluster's admission policies would refuse, one line each."""
    wrong = []
    for doc in docs:
        name = f"{doc['kind']}/{doc['metadata'].get('name') or doc['metadata'].get('generateName')}"
        if doc["kind"] == "Secret":
            wrong.append(f"{name}: secrets are created outside the manifests, never committed")
        spec = pod_spec(doc)
        if spec is None:
            continue
        pod_nonroot = spec.get("securityContext", {}).get("runAsNonRoot") is True
        for c in spec.get("initContainers", []) + spec["containers"]:
            where = f"{name} container {c['name']}"
            image = c["image"]
            tag = image.rsplit(":", 1)[1] if ":" in image.rsplit("/", 1)[-1] else None
            if "@sha256:" not in image and tag in (None, "latest"):
                wrong.append(f"{where}: image {image} is not pinned to a tag")
            requests, limits = c.get("resources", {}).get("requests", {}), c.get("resources", {}).get("limits", {})
            if not {"cpu", "memory"} <= set(requests) or "memory" not in limits:
                wrong.append(f"{where}: needs cpu and memory requests and a memory limit")
            security = c.get("securityContext", {})
            if not (pod_nonroot or security.get("runAsNonRoot") is True):
                wrong.append(f"{where}: must run as non-root")
            if security.get("allowPrivilegeEscalation") is not False or security.get("readOnlyRootFilesystem") is not True:
                wrong.append(f"{where}: needs allowPrivilegeEscalation false and a read-only root filesystem")
            if doc["kind"] != "Job" and not ("readinessProbe" in c and "livenessProbe" in c):
                wrong.append(f"{where}: a long-running container needs readiness and liveness probes")
            for env in c.get("env", []):
                if SECRET_NAMES.search(env["name"]) and "value" in env:
                    wrong.append(f"{where}: {env['name']} is written into the manifest; take it from a Secret")
    for doc in docs:
        if doc["kind"] == "Ingress":
            for rule in doc["spec"]["rules"]:
                for path in rule["http"]["paths"]:
                    if any(private.startswith(path["path"].rstrip("/") or "/") for private in PRIVATE_PATHS):
                        wrong.append(f"Ingress/{doc['metadata']['name']}: path {path['path']} exposes {', '.join(PRIVATE_PATHS)}")
    return wrong


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_is_valid_kubernetes(overlay: str) -> None:
    import kubernetes_validate

    docs = rendered(overlay)
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy", "Ingress", "Job"} <= {d["kind"] for d in docs}
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)  # raises, naming the field


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_keeps_the_cluster_policies(overlay: str) -> None:
    assert policy_violations(rendered(overlay)) == []


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_api_is_probed_autoscaled_and_closed_to_the_public_but_for_scoring(overlay: str) -> None:
    docs = {(d["kind"], d["metadata"]["name"]): d for d in rendered(overlay) if "name" in d["metadata"]}
    api = docs["Deployment", "api"]["spec"]["template"]["spec"]["containers"][0]
    assert api["readinessProbe"]["httpGet"]["path"] == "/readyz" and api["livenessProbe"]["httpGet"]["path"] == "/healthz"
    hpa = docs["HorizontalPodAutoscaler", "api"]["spec"]
    assert hpa["scaleTargetRef"]["name"] == "api" and {m["type"] for m in hpa["metrics"]} == {"Resource", "Pods"}
    assert docs["PodDisruptionBudget", "api"]["spec"]["selector"] == docs["Deployment", "api"]["spec"]["selector"]
    policy = docs["NetworkPolicy", "api"]["spec"]
    assert policy["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "api"} and policy["policyTypes"] == ["Ingress"]
    assert {e["name"] for e in api["env"]} >= {"FRAUDOPS_ADMIN_TOKEN", "POSTGRES_PASSWORD"}
    assert all("valueFrom" in e for e in api["env"])


def _memory_mb(quantity: str) -> float:
    """A Kubernetes memory quantity in Mi or Gi, in MiB."""
    return float(quantity[:-2]) * {"Mi": 1, "Gi": 1024}[quantity[-2:]]


def test_the_live_state_persists_and_fails_loudly_at_its_memory_cap() -> None:
    """Redis keeps its history through a restart (append-only), and at its cap refuses writes instead
    of evicting cards, the cap under the container's limit with room for the rewrite's fork; compose too."""
    redis = next(d for d in rendered("local") if d["kind"] == "Deployment" and d["metadata"]["name"] == "redis")
    container = redis["spec"]["template"]["spec"]["containers"][0]
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["redis"]["command"]
    for args in (container["args"], compose):
        options = dict(zip(args[1::2], args[2::2]))
        assert options["--appendonly"] == "yes" and options["--maxmemory-policy"] == "noeviction", args
    cap = dict(zip(container["args"][1::2], container["args"][2::2]))["--maxmemory"]
    assert cap.endswith("mb") and float(cap[:-2]) <= 0.8 * _memory_mb(container["resources"]["limits"]["memory"])


@pytest.mark.parametrize("broken, words", [
    (lambda d: d["spec"]["template"]["spec"]["containers"][0].update(image="redis:latest"), "not pinned"),
    (lambda d: d["spec"]["template"]["spec"]["containers"][0].update(image="redis"), "not pinned"),
    (lambda d: d["spec"]["template"]["spec"]["containers"][0].pop("resources"), "requests"),
    (lambda d: d["spec"]["template"]["spec"]["containers"][0].pop("readinessProbe"), "probes"),
    (lambda d: d["spec"]["template"]["spec"]["securityContext"].pop("runAsNonRoot"), "non-root"),
    (lambda d: d["spec"]["template"]["spec"]["containers"][0]["securityContext"].update(readOnlyRootFilesystem=False), "read-only"),
    (lambda d: d["spec"]["template"]["spec"]["containers"][0].setdefault("env", []).append({"name": "REDIS_PASSWORD", "value": "x"}), "Secret"),
])
def test_a_manifest_that_breaks_a_policy_is_named(broken, words) -> None:
    redis = next(d for d in rendered("local") if d["kind"] == "Deployment" and d["metadata"]["name"] == "redis")
    broken(redis)
    wrong = policy_violations([redis])
    assert len(wrong) == 1 and words in wrong[0], wrong


def test_an_ingress_path_that_reaches_admin_is_named() -> None:
    ingress = {"kind": "Ingress", "metadata": {"name": "api"}, "spec": {"rules": [{"http": {"paths": [{"path": "/", "pathType": "Prefix"}]}}]}}
    assert "exposes /admin" in policy_violations([ingress])[0]


def test_the_local_database_is_created_as_compose_creates_it() -> None:
    local = yaml.safe_load_all((K8S / "overlays" / "local" / "postgres.yaml").read_text())
    init = next(d for d in local if d["kind"] == "ConfigMap")["data"]["init.sql"]
    assert init == (ROOT / "infra" / "postgres" / "init.sql").read_text()
