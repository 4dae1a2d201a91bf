"""The features flow: the event-level feature table, the Feast definitions, the live state's backfill."""

from __future__ import annotations

from datetime import datetime

from prefect import flow, task

from core.settings import Settings
from features.compute import FRAUDS_FILE, compute_features, on_dask
from features.labels import write_frauds
from features.store import apply, materialize


@task
def compute_feature_tables(settings: Settings) -> dict[str, int]:
    """Terminal risk's labels from the label store, through a file every worker can read."""
    frauds = write_frauds(settings, settings.features_dir / FRAUDS_FILE)
    if settings.training.dask_address is None:
        return compute_features(settings.transactions_dir, settings.features_dir, frauds, settings.features.label_delay_days)
    return compute_features(settings.transactions_dir, settings.features_dir, frauds, settings.features.label_delay_days,
                            settings.features.feature_buckets, on_dask(settings.training.dask_address))


@task
def apply_feature_repo(settings: Settings) -> None:
    apply(settings)


@task
def backfill_live_state(settings: Settings, end: datetime) -> int:
    return materialize(settings, end)


@flow(name="features")
def features_flow(settings: Settings | None = None, materialize_until: datetime | None = None) -> dict[str, int]:
    settings = settings or Settings()
    rows = compute_feature_tables(settings)  # one row per transaction, as of its own time
    apply_feature_repo(settings)  # register definitions in the Feast registry
    if materialize_until is not None:
        backfill_live_state(settings, materialize_until)  # the online state as it stood then
    return rows
