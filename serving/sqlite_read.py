"""Feast's SQLite online store, read in one step per batch.

Feast's own read (`SqliteOnlineStore.online_read`) fetches a row per feature: twelve rows per
transaction here. Python's sqlite3 lets go of the GIL around every step of a statement, and on a
worker whose event loop is waiting for the GIL each of those steps became two thread switches: under
load the read cost a third of the worker's CPU, and `/predict` ran at two thirds of its rate with the
read replaced by constants (`make bench`, serving section; docs/06). Here SQLite gathers the rows of
every view into one JSON array, so a batch costs one step and one decode, whatever its size.

The tables, the entity-key bytes and the value protos are Feast's, read through its connection (which
carries serving's lock timeout); a test checks the answers against Feast's `online_read`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

import orjson
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
    def __init__(self, store: FeatureStore, reads: Sequence[Read]) -> None:
        config = store.config
        self.connection: sqlite3.Connection = store._get_provider().online_store._get_conn(config)  # type: ignore[attr-defined]
        self.version = config.entity_key_serialization_version
        versioned = config.registry.enable_online_feature_view_versioning
        self.reads = [(_quote_id(_table_id(config.project, view, versioned)), join_key, names) for view, join_key, names in reads]

    def _key(self, join_key: str, value: str) -> bytes:
        """The entity key as Feast stores it."""
        proto = EntityKeyProto(join_keys=[join_key], entity_values=[ValueProto(string_val=value)])
        return serialize_entity_key(proto, entity_key_serialization_version=self.version)

    def __call__(self, keys: dict[str, list[str]]) -> list[dict[str, float | None]]:
        """The features of each position in `keys` (join key -> one id per transaction); None where
        the store has no value."""
        selects: list[str] = []
        hexes: list[list[str]] = []
        arguments: list[bytes] = []
        for i, (table, join_key, _) in enumerate(self.reads):
            view_keys = [self._key(join_key, k) for k in keys[join_key]]
            hexes.append([key.hex().upper() for key in view_keys])  # as SQLite's hex() writes them
            arguments += view_keys
            selects.append(f"SELECT {i} AS view, entity_key, feature_name, value FROM {table} "
                           f"WHERE entity_key IN ({','.join('?' * len(view_keys))})")
        (document,) = self.connection.execute(
            "SELECT json_group_array(json_array(view, hex(entity_key), feature_name, hex(value))) "
            f"FROM ({' UNION ALL '.join(selects)})", arguments).fetchone()
        found: dict[tuple[int, str], dict[str, str]] = {}
        for view, key, name, value in orjson.loads(document):
            found.setdefault((view, key), {})[name] = value
        raws: list[dict[str, float | None]] = [{} for _ in hexes[0]]
        for i, ((_, _, names), view_hexes) in enumerate(zip(self.reads, hexes)):
            for raw, key_hex in zip(raws, view_hexes):
                values = found.get((i, key_hex), {})
                for name in names:
                    value_hex = values.get(name)
                    raw[name] = None if value_hex is None else number(ValueProto.FromString(bytes.fromhex(value_hex)))
        return raws
