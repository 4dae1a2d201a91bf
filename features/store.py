"""Opening the Feast store from settings, applying definitions, the training join, and the backfill of
the live feature state.

Feast owns the feature definitions, the feature service the model names, and the point-in-time join
over the offline store (training, batch scoring). It does not serve online: the API reads the live
state (features/state.py), and Feast's online store is configured only because Feast requires one.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timedelta
from pathlib import Path
from string import Template

import numpy as np
import pandas as pd
import yaml

from core.runtime import write_atomically
from core.settings import Settings

# Feast's metrics module, which `import feast` loads, sets PROMETHEUS_MULTIPROC_DIR to a folder of its
# own when it is unset: for this process, where prometheus_client then keeps every counter in shared
# files (two API instances in one process, as in the tests, counted together), and for every child the
# process starts (`fraudops serve` from the demo). prometheus_client picks its value store once, at its
# own import: imported before Feast it keeps values in memory unless a launcher asked for files
# (`serving.metrics`), and Feast's folder is taken back out of the environment.
_ASKED_FOR_FILES = "PROMETHEUS_MULTIPROC_DIR" in os.environ
import prometheus_client  # noqa: E402,F401  (before Feast, see above)
from feast import FeatureStore, RepoConfig  # noqa: E402

if not _ASKED_FOR_FILES:
    os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)

TEMPLATE = Path(__file__).parent / "repo" / "feature_store.yaml"


def render_config(settings: Settings) -> str:
    """feature_store.yaml with this installation's values, as Feast's own CLI would read it."""
    if settings.features.feast_registry_url:
        registry = {"registry_type": "sql", "path": settings.features.feast_registry_url, "cache_ttl_seconds": 60}
    else:
        registry = {"registry_type": "file", "path": str(settings.feast_dir / "registry.db"), "cache_ttl_seconds": 60}
    values = {"project": settings.features.feast_project, "registry": json.dumps(registry), "online_path": json.dumps(str(settings.feast_dir / "online.db"))}
    return Template(TEMPLATE.read_text()).substitute(values)


def open_store(settings: Settings) -> FeatureStore:
    settings.feast_dir.mkdir(parents=True, exist_ok=True)
    rendered = render_config(settings)
    write_atomically(settings.feast_dir / "feature_store.yaml", rendered)  # processes opening the store together each write it
    config = RepoConfig(repo_path=settings.feast_dir, **yaml.safe_load(rendered))
    return FeatureStore(config=config)


def apply(settings: Settings) -> FeatureStore:
    from features.repo.definitions import feature_objects

    store = open_store(settings)
    store.apply(feature_objects(settings.features_dir))
    return store


def materialize(settings: Settings, end: datetime) -> int:
    """Backfill the live state as it stood at `end`: every transaction a window at `end` can reach,
    and the frauds whose verdicts the label store held by then. Serving
    keeps it current from there, transaction by transaction. Idempotent: events are keyed by
    transaction id, so a second backfill over the same period changes nothing. The number of
    transactions loaded."""
    from features.labels import current
    from features.live import terminal_horizon_us
    from features.offline import transactions_between
    from features.schema import micros
    from features.state import LATE_MARGIN_US, Tx, open_state

    start = end - timedelta(microseconds=terminal_horizon_us(settings.features.label_delay_days) + LATE_MARGIN_US)
    frame = transactions_between(settings.transactions_dir, start, end)
    us = np.asarray(micros(frame))
    state = open_state(settings)
    state.load([Tx(str(t), str(c), str(m), float(a), int(u)) for t, c, m, a, u in
                zip(frame["transaction_id"], frame["customer_id"], frame["terminal_id"], frame["amount"], us)])
    verdicts = current(settings, as_of=end, reported_since=start)  # the label store's, as it stood at `end`
    known = frame["transaction_id"].astype(str).isin(verdicts.loc[verdicts["is_fraud"] == 1, "transaction_id"]).to_numpy()
    state.add_frauds(zip(frame["terminal_id"][known], frame["transaction_id"][known], us[known].tolist()))
    return len(frame)


def model_features(store: FeatureStore, service: str) -> list[str]:
    """The model's input columns in order: the request amount, then the feature service's features."""
    fs = store.get_feature_service(service)
    return ["amount"] + [f.name for projection in fs.feature_view_projections for f in projection.features]


def historical_features(store: FeatureStore, service: str, transactions: pd.DataFrame) -> pd.DataFrame:
    """Point-in-time join: each transaction gets the feature values as of its own timestamp (its own
    row of the event-level views)."""
    entity = transactions.rename(columns={"timestamp": "event_timestamp"})
    entity["tx_unix_seconds"] = entity["event_timestamp"].astype("datetime64[s]").astype("int64")
    joined = store.get_historical_features(entity_df=entity, features=store.get_feature_service(service)).to_df()
    joined["event_timestamp"] = joined["event_timestamp"].dt.tz_localize(None)
    return joined.sort_values(["event_timestamp", "transaction_id"], ignore_index=True)


def latest_transaction(settings: Settings) -> datetime:
    """The newest transaction time in the offline store: "backfill everything we have"."""
    from core.query import select
    from features.offline import parts_glob

    return select(f"SELECT MAX(timestamp) FROM read_parquet('{parts_glob(settings.transactions_dir)}')").fetchall()[0][0]
