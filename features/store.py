"""Opening the Feast store from settings, applying definitions and materializing."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from string import Template

import pandas as pd
import prometheus_client  # noqa: F401  (first: see below)
import yaml
from feast import FeatureStore, RepoConfig

from core.settings import Settings

# prometheus_client picks how it stores values once, when imported: in files when
# PROMETHEUS_MULTIPROC_DIR is set. Feast's metrics module, which materializing imports, sets it to a
# folder of its own when it is unset; imported before prometheus_client, it put every counter of the
# process in shared files, so two API instances in one process (the tests) counted together. Imported
# here first, values stay in memory unless a launcher asked for files (`serving.metrics`).

TEMPLATE = Path(__file__).parent / "repo" / "feature_store.yaml"


def render_config(settings: Settings) -> str:
    """feature_store.yaml with this installation's values, as Feast's own CLI would read it."""
    if settings.feast_registry_url:
        registry = {"registry_type": "sql", "path": settings.feast_registry_url, "cache_ttl_seconds": 60}
    else:
        registry = {"registry_type": "file", "path": str(settings.feast_dir / "registry.db"), "cache_ttl_seconds": 60}
    if settings.feast_redis_url:
        online = {"type": "redis", "connection_string": settings.feast_redis_url}
    else:
        online = {"type": "sqlite", "path": str(settings.feast_dir / "online.db")}
    values = {"project": settings.feast_project, "registry": json.dumps(registry), "online_store": json.dumps(online)}
    return Template(TEMPLATE.read_text()).substitute(values)


def open_store(settings: Settings) -> FeatureStore:
    settings.feast_dir.mkdir(parents=True, exist_ok=True)
    rendered = render_config(settings)
    (settings.feast_dir / "feature_store.yaml").write_text(rendered)
    config = RepoConfig(repo_path=settings.feast_dir, **yaml.safe_load(rendered))
    return FeatureStore(config=config)


def apply(settings: Settings) -> FeatureStore:
    from features.repo.definitions import feature_objects

    store = open_store(settings)
    store.apply(feature_objects(settings.features_dir))
    return store


def materialize(settings: Settings, end: datetime) -> None:
    """Load snapshots up to `end` into the online store, starting where the last run stopped.

    Feast's incremental mode starts a first run at "now minus TTL", which loads nothing for data
    that is not from today; a first run starts at `end` minus the TTL instead, which is all that
    serving can use anyway.
    """
    from features.repo.definitions import SNAPSHOT_TTL

    store = open_store(settings)
    views = store.list_feature_views()
    if any(view.materialization_intervals for view in views):
        store.materialize_incremental(end_date=end)
    else:
        store.materialize(start_date=end - SNAPSHOT_TTL, end_date=end)


def model_features(store: FeatureStore, service: str) -> list[str]:
    """The model's input columns in order: the request amount, then the feature service's features."""
    fs = store.get_feature_service(service)
    return ["amount"] + [f.name for projection in fs.feature_view_projections for f in projection.features]


def historical_features(store: FeatureStore, service: str, transactions: pd.DataFrame) -> pd.DataFrame:
    """Point-in-time join: each transaction gets the feature values as of its own timestamp."""
    entity = transactions.rename(columns={"timestamp": "event_timestamp"})
    entity["tx_unix_seconds"] = entity["event_timestamp"].astype("datetime64[s]").astype("int64")
    joined = store.get_historical_features(entity_df=entity, features=store.get_feature_service(service)).to_df()
    joined["event_timestamp"] = joined["event_timestamp"].dt.tz_localize(None)
    return joined.sort_values(["event_timestamp", "transaction_id"], ignore_index=True)


def latest_snapshot(settings: Settings) -> datetime:
    """The newest snapshot time in the offline feature tables: "materialize everything we have"."""
    from core.query import select

    path = settings.features_dir / "customer_features.parquet"
    return select(f"SELECT MAX(event_timestamp) FROM read_parquet('{path}')").fetchall()[0][0]
