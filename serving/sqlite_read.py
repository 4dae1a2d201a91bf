"""Feast's SQLite online store, read in one statement per batch.

Feast's own read (`SqliteOnlineStore.online_read`) fetches a row per feature, twelve a transaction
here, converting a timestamp and decoding a proto for each, and encodes every entity key in Python.
Under load that was a third of `/predict`: with the read replaced by constants it ran 1.49x as fast
(docs/06). Here one statement reads every view for a whole batch, keys are encoded from a fixed
prefix, each row comes back as a number and a value (its place in the batch's flat list of features,
computed by SQLite) and decoded values are memoised. The read took 25 us a transaction in batches of
eight when SQLite folded view, position, name and hex value into one string for Python to split; 17
us this way (docs/serving-measurements.md).

The tables, the entity-key bytes and the value protos are Feast's, read through its connection (which
carries serving's lock timeout); a test checks the answers against Feast's `online_read`."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from feast import FeatureStore, FeatureView
from feast.infra.key_encoding_utils import serialize_entity_key
from feast.infra.online_stores.sqlite import _quote_id, _table_id
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import Value as ValueProto

Read = tuple[FeatureView, str, list[str]]  # a view, its join key, the features taken from it


def entity_key(join_key: str, value: str) -> EntityKeyProto:
    """The key of one entity with a single string join key, as Feast's reads take it."""
    return EntityKeyProto(join_keys=[join_key], entity_values=[ValueProto(string_val=value)])


def number(value: ValueProto | None) -> float | None:
    """A feature value as a float; None when it is absent or unset."""
    kind = value.WhichOneof("val") if value is not None else None
    return None if kind is None else float(getattr(value, kind))


def _key_prefix(join_key: str, version: int) -> bytes:
    """What Feast's `serialize_entity_key` writes before a string id's length and bytes, taken from Feast
    itself: the encoding of an empty id, less its 4-byte length. Feast's function builds the key from a
    proto in Python, a cost per key that the read would pay for every transaction; checked here
    against Feast on an id with non-ASCII characters, so a change in Feast's format stops start-up."""

    def feast(value: str) -> bytes:
        return serialize_entity_key(entity_key(join_key, value), entity_key_serialization_version=version)

    prefix = feast("")[:-4]
    probe = "probe-é-42"
    if feast(probe) != prefix + len(probe.encode()).to_bytes(4, "little") + probe.encode():
        raise RuntimeError(f"Feast's entity-key encoding (version {version}) is not the one serving.sqlite_read writes")
    return prefix


class SqliteRead:
    def __init__(self, store: FeatureStore, reads: Sequence[Read], memo_size: int = 100_000) -> None:
        config = store.config
        self.connection: sqlite3.Connection = store._get_provider().online_store._get_conn(config)  # type: ignore[attr-defined]
        versioned = config.registry.enable_online_feature_view_versioning
        self.names = [name for _, _, names in reads for name in names]
        self.width = len(self.names)  # slots a transaction takes in a batch's flat list
        # Each row comes back as its slot in one flat list for the batch: the transaction's position
        # times the feature count, plus the feature's place in `names`, which SQLite finds from its
        # name. A feature in the table that the service does not take gets none and is passed over.
        self.reads: list[tuple[str, str, str]] = []
        offset = 0
        for view, join_key, names in reads:
            places = " ".join(f"WHEN {_literal(name)} THEN {offset + i}" for i, name in enumerate(names))
            self.reads.append((_quote_id(_table_id(config.project, view, versioned)), join_key, f"CASE t.feature_name {places} END"))
            offset += len(names)
        self.prefixes = {join_key: _key_prefix(join_key, config.entity_key_serialization_version) for _, join_key, _ in reads}
        self._statements: dict[int, str] = {}  # by batch size
        # Decoding a value proto costs more Python than the rest of the read, and values repeat (counts,
        # rates of zero), so decoded values are memoised, and forgotten at `memo_size` entries
        self.memo_size = memo_size
        self._values: dict[bytes, float | None] = {}

    def _key(self, join_key: str, value: str) -> bytes:
        """The entity key as Feast stores it: the join key's fixed prefix, the value's length, the value."""
        encoded = value.encode()
        return self.prefixes[join_key] + len(encoded).to_bytes(4, "little") + encoded

    def _value(self, value: bytes) -> float | None:
        decoded = self._values.get(value, ...)
        if decoded is ...:
            if len(self._values) >= self.memo_size:
                self._values.clear()
            decoded = self._values[value] = number(ValueProto.FromString(value))
        return decoded

    def _statement(self, size: int) -> str:
        """One statement for a batch of `size` transactions: the keys of each view go in with their
        transactions' first slots (a VALUES list, which unlike a UNION has no limit on its rows, for
        /predict/batch), so a key twice is read twice."""
        statement = self._statements.get(size)
        if statement is None:
            tables, selects = [], []
            for i, (table, _, place) in enumerate(self.reads):
                tables.append(f"k{i}(first, key) AS (VALUES {', '.join(f'({p * self.width}, ?)' for p in range(size))})")
                selects.append(f"SELECT k.first + {place} AS slot, t.value AS value FROM k{i} AS k JOIN {table} AS t ON t.entity_key = k.key")
            statement = f"WITH {', '.join(tables)} {' UNION ALL '.join(selects)}"
            if len(self._statements) < 256:  # batch sizes seen; /predict/batch may send any size up to its limit
                self._statements[size] = statement
        return statement

    def __call__(self, keys: dict[str, list[str]]) -> list[dict[str, float | None]]:
        """The features of each position in `keys` (join key -> one id per transaction); None where
        the store has no value."""
        size = len(next(iter(keys.values())))
        arguments = [self._key(join_key, k) for _, join_key, _ in self.reads for k in keys[join_key]]
        width = self.width
        slots: list[float | None] = [None] * (size * width)
        for slot, value in self.connection.execute(self._statement(size), arguments):
            if slot is not None and value is not None:
                slots[slot] = self._value(value)
        return [dict(zip(self.names, slots[p * width:(p + 1) * width])) for p in range(size)]


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"
