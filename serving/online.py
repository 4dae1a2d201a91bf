"""Online features: one Feast online-store read for the customer and terminal views, then the
request-time features computed by the same function as Feast's on-demand view offline.

The views are read below `get_online_features` with the on-demand view: on SQLite in one statement per
batch (`serving.sqlite_read`), on other stores through Feast's provider. The lookup is several times
faster (`fraudops bench`), and parity holds because both sides call `features.logic.request_features`;
the parity tests compare the two paths.

A store that fails or stops answering must not take the API with it: every read gives up after
`online_timeout_ms`, and after a failure the store is skipped for `online_retry_seconds` (a circuit
breaker), so an outage costs one slow answer per retry period, not one per request. Meanwhile answers
use the defaults and say `degraded`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from features.logic import request_features
from features.store import open_store
from core.settings import Settings
from serving.sqlite_read import SqliteRead, entity_key, number

log = logging.getLogger("fraudops.online")

# What a customer or terminal with no history has offline: no transactions, so zero counts, means
# and risk. An unknown entity gets exactly these, and the answer lists it in `features_missing`.
DEFAULT_VALUE = 0.0


@dataclass
class Lookup:
    values: dict[str, float]
    missing: list[str]
    degraded: bool


class Breaker:
    """Closed: every lookup reads the store. Open (after a failure): lookups skip it until the retry
    time, when exactly one of them tries again; its success closes the breaker, its failure re-opens
    it for another period."""

    def __init__(self, retry_seconds: float, on_change: Callable[[bool], None] = lambda opened: None) -> None:
        self.retry_seconds = retry_seconds
        self.retry_at: float | None = None  # monotonic time of the next try; None while closed
        self.on_change = on_change  # told when the breaker opens (True) or closes (False), not per lookup
        self._lock = threading.Lock()

    @property
    def open(self) -> bool:
        return self.retry_at is not None

    def allow(self) -> bool:
        if self.retry_at is None:
            return True
        with self._lock:
            now = time.monotonic()
            if now < self.retry_at:
                return False
            self.retry_at = now + self.retry_seconds  # this caller tries; the others keep skipping
            return True

    def failed(self, exc: Exception) -> None:
        opening = self.retry_at is None
        self.retry_at = time.monotonic() + self.retry_seconds
        if opening:
            log.warning("online store read failed (%s): answering with default features for %g s", exc, self.retry_seconds)
            self.on_change(True)

    def succeeded(self) -> None:
        if self.retry_at is not None:
            log.info("online store answering again")
            self.retry_at = None
            self.on_change(False)


class OnlineFeatures:
    def __init__(self, settings: Settings, on_breaker: Callable[[bool], None] = lambda opened: None) -> None:
        self.store = open_store(settings)
        service = self.store.get_feature_service(settings.feature_service)
        views = {view.name: view for view in self.store.list_feature_views()}
        # (view, its join key, the features this service takes from it), read with one key lookup each
        self.reads = [
            (views[p.name], views[p.name].join_keys[0], [f.name for f in p.features])
            for p in service.feature_view_projections
            if p.name in views
        ]
        self.names = [name for _, _, names in self.reads for name in names]
        self.provider = self.store._get_provider()  # Feast's own online-store read, without the response assembly
        # SQLite: one statement and one step per batch (`serving.sqlite_read`); any other store: Feast's read
        self._read: Callable[[dict[str, list[str]]], list[dict[str, float | None]]] = SqliteRead(self.store, self.reads) if self.store.config.online_store.type == "sqlite" else self._provider_read
        self.breaker = Breaker(settings.online_retry_seconds, on_breaker)
        self._bound_reads(settings.online_timeout_ms / 1000)

    def _bound_reads(self, seconds: float) -> None:
        """Make each read give up after `seconds`, in the store's own terms. Here, not in the shared
        feature_store.yaml: materialization writes in large batches and must not get serving's limit."""
        online = self.store.config.online_store
        if online.type == "redis":  # Feast builds its client from this string
            from redis.backoff import NoBackoff
            from redis.retry import Retry

            given = online.connection_string
            extra = [f"{key}={seconds}" for key in ("socket_timeout", "socket_connect_timeout") if f"{key}=" not in given]
            online.connection_string = ",".join([given, *extra])
            # redis-py retries a timed-out command three times with backoff: 6 s, not 0.2, measured
            # against a Redis that never answers. Serving answers degraded instead of retrying.
            self.provider.online_store._get_client(online).set_retry(Retry(NoBackoff(), 0))  # type: ignore[attr-defined]
        else:  # SQLite waits for a writer's lock this long, instead of Python's default 5 s
            connection = self.provider.online_store._get_conn(self.store.config)  # type: ignore[attr-defined]
            connection.execute(f"PRAGMA busy_timeout = {max(1, round(seconds * 1000))}")

    def _provider_read(self, keys: dict[str, list[str]]) -> list[dict[str, float | None]]:
        """One read per view for every key at once: a batch costs one pipeline (Redis) per view, not
        one per transaction."""
        raws: list[dict[str, float | None]] = [{} for _ in next(iter(keys.values()))]
        for view, join_key, names in self.reads:
            entity_keys = [entity_key(join_key, k) for k in keys[join_key]]
            # a copy: the Redis store appends its timestamp keys to the list it is given
            for raw, (_, values) in zip(raws, self.provider.online_read(self.store.config, view, entity_keys, list(names))):
                for name in names:
                    raw[name] = number(values.get(name) if values else None)
        return raws

    def lookup(self, customer_id: str, terminal_id: str, amount: float, unix_seconds: int) -> Lookup:
        return self.lookup_many([customer_id], [terminal_id], [amount], [unix_seconds])[0]

    def lookup_many(self, customer_ids: Sequence[str], terminal_ids: Sequence[str], amounts: Sequence[float],
                    unix_seconds: Sequence[int]) -> list[Lookup]:
        """The features of several transactions, read together: what the scoring thread does with every
        request that waited while it worked (`serving.batcher`)."""
        raws: list[dict[str, float | None]] | None = None
        if self.breaker.allow():
            try:
                raws = self._read({"customer_id": list(customer_ids), "terminal_id": list(terminal_ids)})
                self.breaker.succeeded()
            except Exception as exc:  # an online-store outage degrades the answer, it never fails it
                self.breaker.failed(exc)
        degraded = raws is None
        if raws is None:
            raws = [dict.fromkeys(self.names) for _ in customer_ids]
        lookups = [
            Lookup({name: DEFAULT_VALUE if value is None else value for name, value in raw.items()},
                   [name for name, value in raw.items() if value is None], degraded)
            for raw in raws
        ]
        extra = request_features(amounts, unix_seconds, [lookup.values["customer_mean_amount_30d"] for lookup in lookups])
        columns = {name: column.tolist() for name, column in extra.items()}
        for i, lookup in enumerate(lookups):
            lookup.values.update({name: float(column[i]) for name, column in columns.items()})
        return lookups
