"""Feast's SQLite online store, read in one step per batch.

Feast's own read (`SqliteOnlineStore.online_read`) fetches a row per feature: twelve rows per
transaction here. Python's sqlite3 lets go of the GIL around every step of a statement, and on a
worker whose event loop is waiting for the GIL each of those steps became two thread switches: under
load the read cost a third of the worker's CPU, and `/predict` ran at two thirds of its rate with the
read replaced by constants (`make bench`, serving section; docs/06). Here SQLite gathers the rows of
every view into one string, so a batch costs one step, whatever its size.

The tables, the entity-key bytes and the value protos are Feast's, read through its connection (which
carries serving's lock timeout); a test checks the answers against Feast's `online_read`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from feast import FeatureStore, FeatureView
from feast.infra.key_encoding_utils import serialize_entity_key
from feast.infra.online_stores.sqlite import _quote_id, _table_id
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import Value as ValueProto

Read = tuple[FeatureView, str, list[str]]  # a view, its join key, the features taken from it


def number(value: ValueProto | None) -> float | None:
    """A feature value as a float; None when it is absent or unset."""
    kind = value.WhichOneof("val") if value is not None else None
    return None if kind is None else float(getattr(value, kind))


class SqliteRead:
    def __init__(self, store: FeatureStore, reads: Sequence[Read], memo_size: int = 100_000) -> None:
        config = store.config
        self.connection: sqlite3.Connection = store._get_provider().online_store._get_conn(config)  # type: ignore[attr-defined]
        self.version = config.entity_key_serialization_version
        versioned = config.registry.enable_online_feature_view_versioning
        self.reads = [(_quote_id(_table_id(config.project, view, versioned)), join_key, set(names)) for view, join_key, names in reads]
        self.names = [name for _, _, names in reads for name in names]
        # Feast's key encoding and the value protos cost more Python than the rest of the read: both
        # are pure functions of what they are given, and ids and values repeat, so they are memoised
        # (and forgotten at `memo_size` entries)
        self.memo_size = memo_size
        self._keys: dict[tuple[str, str], bytes] = {}
        self._values: dict[str, float | None] = {}

    def _key(self, join_key: str, value: str) -> bytes:
        """The entity key as Feast stores it."""
        key = self._keys.get((join_key, value))
        if key is None:
            if len(self._keys) >= self.memo_size:
                self._keys.clear()
            proto = EntityKeyProto(join_keys=[join_key], entity_values=[ValueProto(string_val=value)])
            key = self._keys[join_key, value] = serialize_entity_key(proto, entity_key_serialization_version=self.version)
        return key

    def _value(self, value_hex: str) -> float | None:
        value = self._values.get(value_hex, ...)
        if value is ...:
            if len(self._values) >= self.memo_size:
                self._values.clear()
            value = self._values[value_hex] = number(ValueProto.FromString(bytes.fromhex(value_hex)))
        return value

    def __call__(self, keys: dict[str, list[str]]) -> list[dict[str, float | None]]:
        """The features of each position in `keys` (join key -> one id per transaction); None where
        the store has no value."""
        selects: list[str] = []
        arguments: list[bytes] = []
        for i, (table, join_key, _) in enumerate(self.reads):
            ids = keys[join_key]
            # the positions go in with the keys and come back with the rows: a key twice is read twice
            positions = " UNION ALL ".join(f"SELECT {p} AS position, ? AS key" for p in range(len(ids)))
            arguments += [self._key(join_key, k) for k in ids]
            selects.append(f"SELECT {i} AS view, k.position AS position, t.feature_name AS name, t.value AS value "
                           f"FROM ({positions}) AS k JOIN {table} AS t ON t.entity_key = k.key")
        (text,) = self.connection.execute(
            "SELECT group_concat(view || ' ' || position || ' ' || name || ' ' || hex(value), ' ') "
            f"FROM ({' UNION ALL '.join(selects)})", arguments).fetchone()
        raws: list[dict[str, float | None]] = [dict.fromkeys(self.names) for _ in next(iter(keys.values()))]
        fields = (text or "").split()  # Feast's feature names are identifiers: no spaces
        for view, position, name, value_hex in zip(*[iter(fields)] * 4):
            if name in self.reads[int(view)][2]:
                raws[int(position)][name] = self._value(value_hex)
        return raws
