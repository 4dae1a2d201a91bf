"""Prefect flows: each body reads as the DAG, each step a task over the plain functions beside it.

Run in Prefect's local ephemeral mode unless PREFECT_API_URL points at a server (docker-compose).
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import asdict
from datetime import datetime
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.models import infer_signature
from prefect import flow, get_run_logger, task

from features.compute import compute_features
from monitoring.drift import DriftSummary, drift_report, read_prediction_log
from features.offline import read_transactions
from features.store import apply, historical_features, materialize, model_features, open_store
from pipelines import registry
from pipelines.settings import Settings
from pipelines.training import ModelConfig, TrainResult, Windows, fit

REFERENCE_FILE = "reference.parquet"


@task
def compute_feature_tables(settings: Settings) -> dict[str, int]:
    return compute_features(settings.transactions_dir, settings.features_dir, settings.label_delay_days)


@task
def apply_feature_repo(settings: Settings) -> None:
    apply(settings)


@task
def materialize_online(settings: Settings, end: datetime) -> None:
    materialize(settings, end)


@flow(name="features")
def features_flow(settings: Settings, materialize_until: datetime | None = None) -> dict[str, int]:
    rows = compute_feature_tables(settings)  # snapshots from the offline transactions
    apply_feature_repo(settings)  # register definitions in the Feast registry
    if materialize_until is not None:
        materialize_online(settings, materialize_until)  # push the latest snapshots online
    return rows


@task(retries=2, retry_delay_seconds=2, retry_condition_fn=lambda task, run, state: not isinstance(state.result(raise_on_failure=False), ValueError))
def build_training_set(settings: Settings, windows: Windows) -> tuple[pd.DataFrame, list[str]]:
    store = open_store(settings)
    transactions = read_transactions(
        settings.transactions_dir,
        where=f"timestamp >= TIMESTAMP '{windows.train_start}' AND timestamp < TIMESTAMP '{windows.test_end}'",
    )
    if transactions.empty:
        raise ValueError(f"no transactions between {windows.train_start} and {windows.test_end}")
    return historical_features(store, settings.feature_service, transactions), model_features(store, settings.feature_service)


@task
def train_model(frame: pd.DataFrame, features: list[str], windows: Windows, config: ModelConfig, settings: Settings) -> TrainResult:
    return fit(frame, features, windows, config, settings)


@task
def log_and_register(result: TrainResult, frame: pd.DataFrame, windows: Windows, config: ModelConfig, settings: Settings) -> dict[str, str | float]:
    """Log lineage and the model, register a version, then set the alias last: a failure before this
    point leaves every alias where it was."""
    client = registry.configure(settings)
    example = frame[result.features].head(5).astype("float64")  # counts may be missing online: doubles, not ints
    data_hash = hashlib.sha256(pd.util.hash_pandas_object(frame[result.features + ["is_fraud"]], index=False).values).hexdigest()
    with mlflow.start_run(run_name=f"lightgbm-{config.num_leaves}-leaves") as run:
        mlflow.log_params({**asdict(config), "threshold": result.threshold, "train_rows": result.train_rows})
        mlflow.log_metrics(result.metrics)
        mlflow.set_tags(
            {
                "git_commit": registry.git_commit(),
                "feature_service": settings.feature_service,
                "features": json.dumps(result.features),
                "train_window": f"{windows.train_start.date()}..{windows.train_end.date()}",
                "test_window": f"{windows.test_start.date()}..{windows.test_end.date()}",
                "training_set_sha256": data_hash,
            }
        )
        info = mlflow.lightgbm.log_model(
            result.booster,
            name="model",
            signature=infer_signature(example, result.booster.predict(example.to_numpy())),
            input_example=example,
            registered_model_name=settings.model_name,
            metadata={"threshold": result.threshold, "features": result.features, "feature_service": settings.feature_service},
        )
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / REFERENCE_FILE
            result.reference.to_parquet(path, index=False)
            mlflow.log_artifact(str(path), artifact_path="reference")
    version = str(info.registered_model_version)
    alias = registry.CHAMPION if registry.aliased_version(client, settings.model_name, registry.CHAMPION) is None else registry.CHALLENGER
    client.set_registered_model_alias(settings.model_name, alias, version)
    return {"run_id": run.info.run_id, "version": version, "alias": alias, **result.metrics}


@flow(name="train")
def train_flow(settings: Settings, config: ModelConfig = ModelConfig()) -> dict[str, str | float]:
    windows = Windows.from_settings(settings)
    frame, features = build_training_set(settings, windows)  # Feast point-in-time join
    result = train_model(frame, features, windows, config, settings)  # fit, threshold on validation, test
    return log_and_register(result, frame, windows, config, settings)  # MLflow lineage + registry alias


@task
def load_reference(settings: Settings) -> tuple[pd.DataFrame, list[str], str]:
    """The champion's reference data and feature list, from its MLflow run."""
    client = registry.connect(settings)
    version = client.get_model_version_by_alias(settings.model_name, registry.CHAMPION)
    path = mlflow.artifacts.download_artifacts(run_id=version.run_id, artifact_path=f"reference/{REFERENCE_FILE}")
    features = json.loads(client.get_run(version.run_id).data.tags["features"])
    return pd.read_parquet(path), features, str(version.version)


@flow(name="monitor")
def monitor_flow(settings: Settings, label: str = "latest", since: datetime | None = None, until: datetime | None = None) -> DriftSummary:
    reference, features, version = load_reference(settings)  # what the champion was validated on
    current = read_prediction_log(settings.predictions_dir, since, until)  # live traffic
    if not current.empty:
        current = current[current["model_version"] == version]  # score drift is a property of one model
    else:
        current = reference.iloc[0:0]
    summary = drift_report(reference, current, features, settings.reports_dir / label, settings.drift_share, settings.min_rows)
    get_run_logger().info("drift verdict %s over %d predictions", summary.verdict, summary.current_rows)
    return summary
