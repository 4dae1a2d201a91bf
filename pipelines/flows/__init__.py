"""Prefect flows, one module each: features, train, monitor, score. Each body reads as the DAG, each step a
task over the plain functions beside it.

Run in Prefect's local ephemeral mode unless PREFECT_API_URL points at a server (docker-compose).
"""

from pipelines.flows.featurize import features_flow
from pipelines.flows.monitor import Monitoring, monitor_flow
from pipelines.flows.score import score_flow
from pipelines.flows.train import train_flow, training_flow

__all__ = ["Monitoring", "features_flow", "monitor_flow", "score_flow", "train_flow", "training_flow"]
