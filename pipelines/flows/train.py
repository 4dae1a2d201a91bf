"""The train flow: the point-in-time training set, checks, the fit beside its baselines, and the
registration behind the gate, with MLflow lineage. Reads as the DAG; each step a task over the plain
functions of the training package."""

from __future__ import annotations

import hashlib
import json
import re
import tempfile
from dataclasses import asdict
from datetime import datetime, timedelta
from importlib.metadata import version as installed_version
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.data.pandas_dataset import from_pandas
from mlflow.models import infer_signature
from prefect import Flow, flow, get_run_logger, task

from core import predictions, registry
from core.settings import Settings
from features import labels
from features.offline import transactions_between
from features.schema import SchemaError
from features.store import historical_features, model_features, open_store
from training.fit import ModelConfig, TrainResult, train
from training.gate import champion_on, data_problems, fingerprint_of, gate_failures
from training.plots import write_plots
from training.windows import Windows, censor_by_policy

# What the logged model needs to load and score, pinned to the versions that trained it. Named, not
# inferred: MLflow's inference loads the model in a subprocess, 7 of a tiny training's 12 seconds.
MODEL_REQUIREMENTS = ("lightgbm", "numpy", "pandas", "scipy", "scikit-learn")
REFERENCE_FILE = "reference.parquet"


def _transient(task: object, run: object, state: object) -> bool:
    """Retry I/O hiccups, never bad data: a validation error fails the same way every time."""
    try:
        state.result()  # type: ignore[attr-defined]
    except (ValueError, KeyError, SchemaError):
        return False
    except Exception:
        return True
    return False


def _files_fingerprint(*directories: Path) -> str:
    """Names, sizes and modification times: cheap, and changes whenever the data does."""
    digest = hashlib.sha256()
    for directory in directories:
        for path in sorted(directory.glob("*.parquet")):
            stat = path.stat()
            digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


def _join_cache_key(context: object, parameters: dict[str, object]) -> str:
    settings: Settings = parameters["settings"]  # type: ignore[assignment]
    start, end = parameters["start"], parameters["end"]
    return "training-set-" + hashlib.sha256(
        f"{start}|{end}|{settings.features.feature_service}|{settings.features.feast_registry_url or settings.feast_dir}|"
        f"{_files_fingerprint(settings.transactions_dir, settings.features_dir)}|{labels.version(settings)}".encode()
    ).hexdigest()


@task(retries=2, retry_delay_seconds=2, retry_condition_fn=_transient, cache_key_fn=_join_cache_key,
      cache_expiration=timedelta(days=7), persist_result=True)
def build_training_set(settings: Settings, start: pd.Timestamp, end: pd.Timestamp) -> tuple[pd.DataFrame, list[str]]:
    """The point-in-time join, cached by its inputs: the same windows over the same files and the same
    verdicts are joined once. Labels come from the label store alone: a transaction without a fraud
    verdict is legitimate (the windows end a label delay before the newest data, so theirs matured)."""
    store = open_store(settings)
    transactions = transactions_between(settings.transactions_dir, start, end).drop(columns=["is_fraud", "fraud_scenario"], errors="ignore")
    if transactions.empty:
        raise ValueError(f"no transactions between {start} and {end}")
    verdicts = labels.current(settings, reported_since=start)[["transaction_id", "is_fraud"]]
    labelled = transactions.assign(transaction_id=transactions["transaction_id"].astype(str)).merge(verdicts, on="transaction_id", how="left")
    labelled["is_fraud"] = labelled["is_fraud"].fillna(0).astype("int8")
    return historical_features(store, settings.features.feature_service, labelled), model_features(store, settings.features.feature_service)


@task
def censor_by_serving_policy(frame: pd.DataFrame, settings: Settings) -> pd.DataFrame:
    """Weigh each row by what the API decided for it (`censor_by_policy`): read fresh each run, outside
    the cached join, since the log grows without the join's inputs changing."""
    answers = predictions.logged(settings, frame["transaction_id"].astype(str).tolist(), ("transaction_id", "decision", "propensity"))
    return censor_by_policy(frame, answers)


@task
def check_training_data(frame: pd.DataFrame, features: list[str], windows: Windows, settings: Settings) -> None:
    """Data checks before any fit (`training.gate.data_problems`)."""
    problems = data_problems(frame, features, windows, settings)
    if problems:
        raise ValueError("training data rejected: " + "; ".join(problems))


@task
def train_model(frame: pd.DataFrame, features: list[str], windows: Windows, config: ModelConfig, settings: Settings) -> TrainResult:
    if settings.training.dask_address is None:
        return train(frame, features, windows, config, settings)
    from prefect_dask import get_dask_client

    with get_dask_client() as client:  # this task runs on a worker; the client reaches the whole cluster
        return train(frame, features, windows, config, settings, client)


def _redacted(settings: Settings) -> dict[str, object]:
    """Settings as logged with a run: no tokens, no passwords inside URLs."""
    values = settings.model_dump(mode="json", exclude={"serving": {"admin_token", "labels_token"}})
    return {group: {k: re.sub(r"://([^:/@]+):[^@]+@", r"://\1:***@", v) if isinstance(v, str) else v for k, v in value.items()}
            if isinstance(value, dict) else value for group, value in values.items()}


@task
def log_and_register(result: TrainResult, frame: pd.DataFrame, windows: Windows, fingerprint: str, settings: Settings,
                     trigger: str, against_champion: bool = False) -> dict[str, object]:
    """Log lineage, the model and its figures; register only a model that passes the gate; set the alias
    last. A failure on the way leaves no new version and every alias where it was. An automatic
    retrain (`against_champion`) must also match the champion on its own test window: an operator's
    challenger is an experiment the canary is there to judge, a retrain nobody asked for is not."""
    client = registry.configure(settings)
    features = result.features
    example = frame[features].head(5).astype("float64")  # counts may be missing online: doubles, not ints
    champion_ap = champion_on(result, settings) if against_champion else None
    failures = gate_failures(result.metrics, champion_ap, settings.training.min_average_precision)
    passed = not failures
    gate = "passed" if passed else "failed: " + "; ".join(failures)
    with mlflow.start_run(run_name=f"lightgbm-{result.config.num_leaves}-leaves") as run:
        mlflow.log_params({**asdict(result.config), "threshold": result.threshold, "train_rows": result.train_rows})
        mlflow.log_metrics({**result.metrics, **result.selection})
        mlflow.set_tags(
            {
                "git_commit": registry.git_commit(),
                "feature_service": settings.features.feature_service,
                "features": json.dumps(features),
                "train_window": f"{windows.train_start.date()}..{windows.train_end.date()}",
                "test_window": f"{windows.test_start.date()}..{windows.test_end.date()}",
                "fingerprint": fingerprint,
                "trigger": trigger,
                "gate": gate,
            }
        )
        mlflow.log_dict(_redacted(settings), "settings.json")
        mlflow.log_input(from_pandas(frame[["event_timestamp", *features, "is_fraud"]], name="training-set", targets="is_fraud"), context="training")
        info = mlflow.lightgbm.log_model(
            result.booster,
            name="model",
            signature=infer_signature(example, result.booster.predict(example.to_numpy())),
            input_example=example,
            pip_requirements=[f"{name}=={installed_version(name)}" for name in MODEL_REQUIREMENTS],
            metadata={"threshold": result.threshold, "bands": result.bands.cuts().tolist(), "calibration": result.calibration.params(), "features": features,
                      "feature_service": settings.features.feature_service},
        )
        with tempfile.TemporaryDirectory() as tmp:
            for path in write_plots(result, settings, Path(tmp) / "plots"):
                mlflow.log_artifact(str(path), artifact_path="plots")
            reference = Path(tmp) / REFERENCE_FILE
            result.reference.to_parquet(reference, index=False)
            mlflow.log_artifact(str(reference), artifact_path="reference")
    outcome: dict[str, object] = {"run_id": run.info.run_id, "version": None, "alias": None, "gate": gate, **result.metrics}
    if not passed:
        return outcome
    version = mlflow.register_model(info.model_uri, settings.stores.model_name, tags={"fingerprint": fingerprint}).version
    try:
        alias = registry.CHAMPION if registry.aliased_version(client, settings.stores.model_name, registry.CHAMPION) is None else registry.CHALLENGER
        client.set_registered_model_alias(settings.stores.model_name, alias, version)
    except Exception:
        client.delete_model_version(settings.stores.model_name, version)  # no version without its alias
        raise
    return {**outcome, "version": str(version), "alias": alias}








@flow(name="train")
def train_flow(settings: Settings | None = None, config: ModelConfig = ModelConfig(), as_of: datetime | None = None,
               trigger: str = "manual or scheduled") -> dict[str, object]:
    """Train and register a candidate. Windows come from the settings, or with `as_of` (a retrain the
    monitor triggered) are the latest whose labels have arrived by then; `trigger` says why it ran."""
    settings = settings or Settings()  # a scheduled run reads its settings from the environment
    windows = Windows.latest(pd.Timestamp(as_of), settings) if as_of is not None else Windows.from_settings(settings)
    folds = windows.prequential(settings.training.prequential_folds, settings.training.prequential_step_days) if config.scale_pos_weight is None else []
    first = min([windows.train_start, *(f.train_start for f in folds)])
    frame, features = build_training_set.submit(settings, first, windows.test_end).result()  # Feast point-in-time join, cached
    frame = censor_by_serving_policy(frame, settings)  # declined: no label will come; explored: weighted
    check_training_data(frame, features, windows, settings)  # data checks before any fit
    fingerprint = fingerprint_of(frame, features, windows, config, settings)
    existing = registry.version_with_fingerprint(settings, fingerprint)
    if existing is not None:  # a re-run on the same inputs: no new version, no alias moved
        get_run_logger().info("model version %s already holds these inputs; nothing to do", existing)
        return {**registry.version_metrics(settings, existing), "version": existing, "alias": None, "gate": "unchanged"}
    result = train_model.submit(frame, features, windows, config, settings).result()  # select imbalance, fit, baselines, test
    return log_and_register(result, frame, windows, fingerprint, settings, trigger, against_champion=as_of is not None)  # MLflow lineage, gate, registry


def training_flow(settings: Settings) -> Flow[..., dict[str, object]]:
    """The train flow with the task runner the settings ask for: Prefect's DaskTaskRunner on the
    cluster at `dask_address`, so the feature join and the fits run there, or the in-process default."""
    if settings.training.dask_address is None:
        return train_flow
    from prefect_dask import DaskTaskRunner

    return train_flow.with_options(task_runner=DaskTaskRunner(address=settings.training.dask_address))
