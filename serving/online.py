"""Online features: one Feast online-store read for the customer and terminal views, then the
request-time features computed by the same function as Feast's on-demand view offline.

The views are read directly rather than through the feature service's on-demand view: the lookup is
about ten times faster, and parity holds because both sides call `features.logic.request_features`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from features.logic import request_features
from features.store import open_store
from pipelines.settings import Settings

log = logging.getLogger("fraudops.online")

# What a customer or terminal with no history has offline: no transactions, so zero counts, means
# and risk. An unknown entity gets exactly these, and the answer lists it in `features_missing`.
DEFAULT_VALUE = 0.0


@dataclass
class Lookup:
    values: dict[str, float]
    missing: list[str]
    degraded: bool


class OnlineFeatures:
    def __init__(self, settings: Settings) -> None:
        self.store = open_store(settings)
        service = self.store.get_feature_service(settings.feature_service)
        views = {view.name for view in self.store.list_feature_views()}
        self.refs = [
            f"{p.name}:{f.name}" for p in service.feature_view_projections if p.name in views for f in p.features
        ]
        self.names = [ref.split(":", 1)[1] for ref in self.refs]

    def lookup(self, customer_id: str, terminal_id: str, amount: float, unix_seconds: int) -> Lookup:
        degraded = False
        try:
            fetched = self.store.get_online_features(
                features=self.refs, entity_rows=[{"customer_id": customer_id, "terminal_id": terminal_id}]
            ).to_dict()
            raw = {name: fetched[name][0] for name in self.names}
        except Exception as exc:  # an online-store outage degrades the answer, it never fails it
            log.warning("online store read failed: %s", exc)
            raw, degraded = dict.fromkeys(self.names), True
        missing = [name for name, value in raw.items() if value is None]
        values = {name: DEFAULT_VALUE if value is None else float(value) for name, value in raw.items()}
        extra = request_features([amount], [unix_seconds], [values["customer_mean_amount_30d"]])
        values.update({name: float(column[0]) for name, column in extra.items()})
        return Lookup(values, missing, degraded)
