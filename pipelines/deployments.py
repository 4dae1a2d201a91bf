"""Scheduled deployments: retrain daily, monitor hourly, score the day's transactions nightly. Two ways to run them:

- `fraudops deploy` serves them from this process (the compose `worker` service): simple, one box.
- `fraudops deploy --work-pool fraudops-k8s` registers them on a work pool instead, and a Prefect
  worker turns each run into that pool's job (infra/k8s: a Kubernetes Job per run), so a training
  run gets a pod, resources and a node of its own.

Entrypoints are module paths (`pipelines.flows.train:train_flow`): the flows are imported from the
installed package wherever they run, never loaded from a file beside the caller's working folder.
`make demo` needs neither and stays in Prefect's ephemeral mode.
"""

from __future__ import annotations

from typing import cast
from uuid import UUID

from prefect import Flow
from prefect.deployments.runner import EntrypointType, RunnerDeployment

from core.settings import Settings
from pipelines.flows import monitor_flow, score_flow, train_flow, training_flow


def schedules(settings: Settings) -> list[tuple[Flow, str, str, list[str]]]:
    """(flow, deployment name, cron, tags) for each scheduled run."""
    return [
        (training_flow(settings), "daily-retrain", settings.schedules.retrain_cron, ["fraudops", "training"]),
        (monitor_flow, "hourly-monitor", settings.schedules.monitor_cron, ["fraudops", "monitoring"]),
        (score_flow, "nightly-score", settings.schedules.score_cron, ["fraudops", "batch-scoring"]),
    ]


def deployments(settings: Settings) -> list[RunnerDeployment]:
    # `to_deployment` is typed for async callers too; called outside an event loop it returns the deployment
    return [cast(RunnerDeployment, flow.to_deployment(name=name, cron=cron, tags=tags, entrypoint_type=EntrypointType.MODULE_PATH))
            for flow, name, cron, tags in schedules(settings)]


def serve(settings: Settings) -> None:
    from prefect import serve as prefect_serve

    prefect_serve(*deployments(settings))


def register(settings: Settings, work_pool: str, image: str) -> list[UUID]:
    """The deployments on `work_pool`, each run in `image` (which holds the code: nothing is built or
    pushed). The train flow runs with its in-process task runner there: the run's Job is its machine."""
    flows = {"daily-retrain": train_flow}  # the module attribute, importable by the run's pod
    return [cast(UUID, flows.get(name, flow).deploy(name=name, work_pool_name=work_pool, image=image, build=False, push=False,
                                                    cron=cron, tags=tags, entrypoint_type=EntrypointType.MODULE_PATH,
                                                    print_next_steps=False))
            for flow, name, cron, tags in schedules(settings)]
