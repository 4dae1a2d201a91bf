"""What the stack tests ask a Prefect server (natively or in compose): that the worker registered the
scheduled deployments, and that a run of one it was given finished."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from core.runtime import poll_until

DEPLOYMENTS = {"daily-retrain": ["0 3 * * *"], "hourly-monitor": ["0 * * * *"], "nightly-score": ["30 1 * * *"]}
FINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")


def wait_for_deployments(api: str, stopped: Callable[[], str | None], timeout: float = 180.0) -> dict[str, dict]:
    """The worker's deployments by name once all are registered, unpaused and on their schedules;
    `stopped()` says why waiting is pointless (the worker exited)."""

    def registered() -> dict[str, dict] | None:
        found = {d["name"]: d for d in httpx.post(f"{api}/deployments/filter", json={}).json()}
        return found if set(DEPLOYMENTS) <= set(found) else None  # the worker registers them one at a time

    deployments = poll_until(registered, timeout, 1.0, stopped)
    assert set(deployments) == set(DEPLOYMENTS) and not any(d["paused"] for d in deployments.values())
    assert {name: [s["schedule"]["cron"] for s in d["schedules"]] for name, d in deployments.items()} == DEPLOYMENTS
    return deployments


def run_deployment(api: str, deployment: dict, stopped: Callable[[], str | None], timeout: float = 600.0) -> str:
    """A run of `deployment` asked of the server, and the state the worker finished it in."""
    flow_run = httpx.post(f"{api}/deployments/{deployment['id']}/create_flow_run", json={}).json()

    def finished() -> str | None:
        state = httpx.get(f"{api}/flow_runs/{flow_run['id']}").json()["state_type"]
        return state if state in FINAL else None

    return poll_until(finished, timeout, 1.0, stopped)
