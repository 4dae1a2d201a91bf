"""Feast objects, in Feast's conventional order: entities, sources, feature views, request sources,
on-demand views, feature services.

The model names one feature service, `fraud_detection_v1`, for both the historical join in training
and the online lookup in serving: there is no second list of features to drift apart.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pandas as pd
from feast import Entity, FeatureService, FeatureView, Field, FileSource, RequestSource, ValueType
from feast.on_demand_feature_view import on_demand_feature_view
from feast.types import Float64, Int64

from features.logic import WINDOWS_DAYS, request_features

# Snapshots are daily; two days of TTL tolerates one late batch without serving stale-forever values.
SNAPSHOT_TTL = timedelta(days=2)

customer = Entity(name="customer", join_keys=["customer_id"], value_type=ValueType.STRING, description="A card holder.")
terminal = Entity(name="terminal", join_keys=["terminal_id"], value_type=ValueType.STRING, description="A point of sale.")

transaction_request = RequestSource(
    name="transaction",
    schema=[
        Field(name="amount", dtype=Float64, description="Transaction amount."),
        Field(name="tx_unix_seconds", dtype=Int64, description="Transaction time, seconds since the epoch (UTC)."),
    ],
)


def feature_objects(features_dir: Path) -> list:
    """All Feast objects, with sources pointing at this installation's snapshot files."""
    customer_source = FileSource(
        name="customer_snapshots",
        path=str(features_dir / "customer_features.parquet"),
        timestamp_field="event_timestamp",
    )
    terminal_source = FileSource(
        name="terminal_snapshots",
        path=str(features_dir / "terminal_features.parquet"),
        timestamp_field="event_timestamp",
    )
    customer_spending = FeatureView(
        name="customer_spending",
        entities=[customer],
        ttl=SNAPSHOT_TTL,
        schema=[Field(name=f"customer_tx_count_{w}d", dtype=Int64, description=f"Transactions in the last {w} days.") for w in WINDOWS_DAYS]
        + [Field(name=f"customer_mean_amount_{w}d", dtype=Float64, description=f"Mean amount over the last {w} days (0 if none).") for w in WINDOWS_DAYS],
        source=customer_source,
        description="Customer spending behaviour, daily snapshots.",
    )
    terminal_risk = FeatureView(
        name="terminal_risk",
        entities=[terminal],
        ttl=SNAPSHOT_TTL,
        schema=[Field(name=f"terminal_tx_count_{w}d", dtype=Int64, description=f"Transactions in the {w} days before the label delay.") for w in WINDOWS_DAYS]
        + [Field(name=f"terminal_risk_{w}d", dtype=Float64, description=f"Fraud share in the {w} days before the label delay.") for w in WINDOWS_DAYS],
        source=terminal_source,
        description="Terminal risk from labels old enough to be known at scoring time.",
    )

    @on_demand_feature_view(
        sources=[customer_spending, transaction_request],
        schema=[
            Field(name="amount_to_customer_mean_30d", dtype=Float64),
            Field(name="is_weekend", dtype=Int64),
            Field(name="is_night", dtype=Int64),
        ],
        mode="pandas",
        description="Request-time features: the same function the API calls.",
    )
    def transaction_context(inputs: pd.DataFrame) -> pd.DataFrame:
        from features.logic import request_features as compute

        out = compute(inputs["amount"], inputs["tx_unix_seconds"], inputs["customer_mean_amount_30d"])
        return pd.DataFrame({k: out[k] for k in ("amount_to_customer_mean_30d", "is_weekend", "is_night")})

    fraud_detection_v1 = FeatureService(
        name="fraud_detection_v1",
        features=[customer_spending, terminal_risk, transaction_context],
        description="Everything the fraud model reads, for training and serving alike.",
    )
    return [customer, terminal, transaction_request, customer_source, terminal_source, customer_spending, terminal_risk, transaction_context, fraud_detection_v1]


__all__ = ["feature_objects", "request_features"]
