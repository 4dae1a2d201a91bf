"""Scheduled deployments: retrain daily, monitor hourly. `fraudops deploy` serves them from this
process (the compose `worker` service); `make demo` never needs them and stays in ephemeral mode."""

from __future__ import annotations

from typing import cast

from prefect.deployments.runner import RunnerDeployment

from pipelines.flows import monitor_flow, training_flow
from core.settings import Settings


def deployments(settings: Settings) -> list[RunnerDeployment]:
    # `to_deployment` is typed for async callers too; called outside an event loop it returns the deployment
    return [
        cast(RunnerDeployment, training_flow(settings).to_deployment(name="daily-retrain", cron=settings.retrain_cron, tags=["fraudops", "training"])),
        cast(RunnerDeployment, monitor_flow.to_deployment(name="hourly-monitor", cron=settings.monitor_cron, tags=["fraudops", "monitoring"])),
    ]


def serve(settings: Settings) -> None:
    from prefect import serve as prefect_serve

    prefect_serve(*deployments(settings))
