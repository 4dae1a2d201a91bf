"""Feast objects, in Feast's conventional order: entities, sources, feature views, request sources,
on-demand views, feature services.

The model names one feature service, `fraud_detection_v2`, for the historical join in training and for
the list of features serving computes: there is no second list of features to drift apart.

Features are event-level: `features.compute` writes one row per transaction, as of its own timestamp
(windows that end at the transaction and include it), so the view is keyed by the transaction and the
point-in-time join gives each transaction exactly its own row. Feast's local engine computes no
time-windowed aggregations (only its Spark and Ray engines tile them), so the windows are this
project's code (`features.live`, `features.compute`) and Feast carries their values and their schema.
Online, the API computes the same windows from the live state (`features.state`).
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pandas as pd
from feast import Entity, FeatureService, FeatureView, Field, FileSource, RequestSource, ValueType
from feast.on_demand_feature_view import on_demand_feature_view
from feast.types import Float64, Int64

from features.compute import FEATURES_FILE
from features.live import CUSTOMER_FEATURES, TERMINAL_FEATURES
from features.logic import request_features

# A row is stamped with its transaction's own time: the join finds it at zero distance.
ROW_TTL = timedelta(seconds=1)
DESCRIPTIONS = {
    "customer_tx_count": "The card's transactions in the window, this one included.",
    "customer_amount_sum": "The card's total amount in the window, this one included.",
    "customer_mean_amount": "The card's mean amount in the window, this one included.",
    "customer_seconds_since_previous": "Seconds since the card's previous transaction (missing if none in 30 days).",
    "amount_to_customer_mean_30d": "This amount over the card's 30-day mean (missing if the mean is 0).",
    "terminal_tx_count": "The terminal's transactions in the window, this one included.",
    "terminal_risk": "Fraud share of the terminal's transactions in the window ending label_delay_days back.",
}

transaction = Entity(name="transaction", join_keys=["transaction_id"], value_type=ValueType.STRING, description="A card transaction.")

transaction_request = RequestSource(
    name="transaction",
    schema=[
        Field(name="amount", dtype=Float64, description="Transaction amount."),
        Field(name="tx_unix_seconds", dtype=Int64, description="Transaction time, seconds since the epoch (UTC)."),
    ],
)


def _describe(name: str) -> str:
    return next(text for prefix, text in DESCRIPTIONS.items() if name.startswith(prefix))


def feature_objects(features_dir: Path) -> list:
    """All Feast objects, with the source pointing at this installation's feature table."""
    source = FileSource(name="transaction_features", path=str(features_dir / FEATURES_FILE), timestamp_field="event_timestamp")
    def view(name: str, features: list[str], description: str) -> FeatureView:
        schema = [Field(name=feature, dtype=Float64, description=_describe(feature)) for feature in features]
        # online=False: nothing is materialized into Feast's online store; the API reads the live state
        # (features/state.py), which keeps the events that exact window edges need.
        return FeatureView(name=name, entities=[transaction], ttl=ROW_TTL, schema=schema, source=source, description=description,
                           online=False)

    card = view("card_history", CUSTOMER_FEATURES, "The card's history up to and including the transaction.")
    terminal = view("terminal_history", TERMINAL_FEATURES, "The terminal's activity, and its risk from labels old enough to be known.")

    @on_demand_feature_view(
        sources=[transaction_request],
        schema=[Field(name="is_weekend", dtype=Int64), Field(name="is_night", dtype=Int64)],
        mode="pandas",
        description="Request-time features: the same function the API calls.",
    )
    def transaction_context(inputs: pd.DataFrame) -> pd.DataFrame:
        from features.logic import request_features as compute

        out = compute(inputs["tx_unix_seconds"])
        return pd.DataFrame({k: out[k] for k in ("is_weekend", "is_night")})

    fraud_detection_v2 = FeatureService(
        name="fraud_detection_v2",
        features=[card, terminal, transaction_context],
        description="Everything the fraud model reads besides the amount, for training and serving alike.",
    )
    return [transaction, transaction_request, source, card, terminal, transaction_context, fraud_detection_v2]


__all__ = ["feature_objects", "request_features"]
