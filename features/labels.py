"""The label store: verdicts on transactions (chargebacks, analysts' decisions) that arrive days after them.

Transactions arrive without labels. Every label reaches fraudops through `record`, whether it comes
from `POST /labels`, `fraudops labels FILE` or the replay's chargeback feed; delayed-label quality
monitoring and retraining read labels only from here (`current`). Every verdict is kept as an event;
a transaction's label is its latest-reported verdict, so an analyst who overturns a chargeback wins
and the chargeback stays on record. Recording is idempotent: a verdict that is already the current
one changes nothing, so a feed can be sent again whole; and a verdict event is stored once even when
feeders send it at the same moment (a unique index; the feeders also queue, on an advisory lock on
PostgreSQL and on the write lock every SQLite transaction takes, so each receipt counts what its own
batch did).

A verdict's transaction (its terminal and time) is found by a keyed lookup in an index beside the
store (`SEEN`), filled from the offline store's parts and by the API as it scores, so a verdict on
a transaction answered a moment ago is recorded, and no verdict waits for a scan.

A fraud verdict also reaches the live feature state at once (`add_frauds`, idempotent, so a feed
sent again also repairs a state that lost it): the terminal-risk windows count a fraud from the time
of its transaction plus the label delay, never earlier, as offline. A fraud verdict overturned later
stays in the live state until its window passes it: the state has no removal.

Embedded: SQLite in the state folder. With `labels_url`, any SQLAlchemy URL: PostgreSQL in compose.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any

import pandas as pd
from sqlalchemy import (Column, Connection, DateTime, Engine, Index, Integer, MetaData, Select, SmallInteger, Table, Text,
                        create_engine, event, func, insert, inspect, select)
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from core.runtime import atomic_path
from core.settings import Settings
from features.schema import SchemaError, micros, validate_labels

METADATA = MetaData()
EVENTS = Table(
    "label_events", METADATA,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("transaction_id", Text, nullable=False),
    Column("is_fraud", SmallInteger, nullable=False),
    Column("source", Text, nullable=False),
    Column("reported_at", DateTime, nullable=False),  # when the verdict was made: the later one wins
    Column("recorded_at", DateTime, nullable=False),  # when fraudops stored it
    Index("label_events_by_transaction", "transaction_id", "reported_at"),
    # A verdict event is stored once: two feeders sending the same batch at once leave one copy.
    Index("label_events_once", "transaction_id", "is_fraud", "source", "reported_at", unique=True),
)
# Which transactions fraudops has seen, by id: the label path's keyed lookup of a verdict's terminal
# and time, beside the label store. Filled from the offline store's parts (each read once, again if
# it changed; `SEEN_PARTS`) and by the API as it scores (`remember`, part "served"), so a verdict
# never waits for a scan of the offline store or of the prediction log.
SEEN = Table(
    "seen_transactions", METADATA,
    Column("transaction_id", Text, primary_key=True),
    Column("terminal_id", Text, nullable=False),
    Column("timestamp", DateTime, nullable=False),
    Column("part", Text, nullable=False),  # the offline part it was read from, or SERVED
    Index("seen_transactions_by_part", "part"),
)
SEEN_PARTS = Table("seen_parts", METADATA, Column("name", Text, primary_key=True), Column("stamp", Text, nullable=False))
SERVED = "served"
LABELS_LOCK = 0x6672_6f70  # the PostgreSQL advisory lock that queues the label store's writers
SHOWN_UNKNOWN = 100
LOOKUP_CHUNK = 5_000  # ids per IN (...) of one lookup: SQLite takes at most 32,766 parameters a statement


@dataclass
class Receipt:
    """What one batch of verdicts did, by verdict."""

    recorded: int = 0  # the first verdict on its transaction
    changed: int = 0  # a later verdict that overturns the current one
    unchanged: int = 0  # the current verdict again: nothing stored
    superseded: int = 0  # reported before the current verdict: kept in history, does not win
    unknown: list[str] = field(default_factory=list)  # ids of transactions fraudops has never seen: not stored

    def counts(self) -> dict[str, int]:
        return {"recorded": self.recorded, "changed": self.changed, "unchanged": self.unchanged, "superseded": self.superseded,
                "unknown_count": len(self.unknown)}

    def as_dict(self) -> dict[str, object]:
        return {**self.counts(), "unknown": self.unknown[:SHOWN_UNKNOWN]}


_ENGINES = threading.Lock()


def engine(url: str) -> Engine:
    """One engine per store, made once even when threads ask for it at the same moment."""
    with _ENGINES:
        return _engine(url)


@lru_cache(maxsize=8)
def _engine(url: str) -> Engine:
    """One engine (and its connection pool) per store, with the table created on first use."""
    connect_args = {"timeout": 5.0} if url.startswith("sqlite") else {}
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    created = create_engine(url, connect_args=connect_args, pool_pre_ping=True)
    if url.startswith("sqlite"):
        _write_locked(created)
    with created.begin() as con:
        _lock(con)  # workers starting at once would race to create the table
        METADATA.create_all(con)
        if "label_events_once" not in {i["name"] for i in inspect(con).get_indexes("label_events")}:
            _drop_copies(con)  # a store from before the index may hold copies, which would refuse it
        for index in EVENTS.indexes:  # a store made before an index existed gets it
            index.create(con, checkfirst=True)
    return created


def _write_locked(sqlite_engine: Engine) -> None:
    """Every SQLite transaction takes the write lock as it begins (`BEGIN IMMEDIATE`), so writers
    queue on the busy timeout. A transaction that reads, then writes (`record`, the index) would
    otherwise be refused at once, without waiting, when another writer (an API worker's `remember`,
    a second feeder) holds the lock: SQLite's answer to two readers that both want to write. The
    price is that readers queue too, each for the milliseconds of one read. SQLAlchemy's recipe for
    pysqlite: the driver begins no transaction of its own, SQLAlchemy begins each."""
    @event.listens_for(sqlite_engine, "connect")
    def _driver_begins_nothing(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None

    @event.listens_for(sqlite_engine, "begin")
    def _immediate(con: Connection) -> None:
        con.exec_driver_sql("BEGIN IMMEDIATE")


def _drop_copies(con: Connection) -> None:
    """Delete every copy of a verdict event but its first (the lowest id), so `label_events_once`
    can be created on a store written before it existed; history keeps one of each."""
    first = select(func.min(EVENTS.c.id)).group_by(EVENTS.c.transaction_id, EVENTS.c.is_fraud, EVENTS.c.source, EVENTS.c.reported_at)
    con.execute(EVENTS.delete().where(EVENTS.c.id.not_in(first.scalar_subquery())))


def _lock(con: Connection) -> None:
    """On PostgreSQL, queue behind any other writer of the label store until this transaction ends
    (SQLite's transactions all begin with the write lock: `_write_locked`)."""
    if con.dialect.name == "postgresql":
        con.execute(select(func.pg_advisory_xact_lock(LABELS_LOCK)))


def _insert_once(con: Connection, rows: list[dict[str, object]], table: Table = EVENTS) -> None:
    """Insert rows, skipping one already stored (a unique key) instead of failing."""
    if con.dialect.name == "postgresql":
        con.execute(postgresql_insert(table).on_conflict_do_nothing(), rows)
    elif con.dialect.name == "sqlite":
        con.execute(sqlite_insert(table).on_conflict_do_nothing(), rows)
    else:  # the unique key still refuses a copy: the batch fails whole and can be sent again
        con.execute(insert(table), rows)


def remember(settings: Settings, transactions: list[dict[str, object]]) -> None:
    """Transactions the API has scored (transaction_id, terminal_id, timestamp): known to the label
    path from here on, before the prediction log that holds them is written."""
    rows = [{"transaction_id": t["transaction_id"], "terminal_id": t["terminal_id"], "timestamp": t["timestamp"], "part": SERVED}
            for t in transactions]
    with engine(settings.label_store_url).begin() as con:
        for start in range(0, len(rows), LOOKUP_CHUNK):
            _insert_once(con, rows[start:start + LOOKUP_CHUNK], SEEN)


def _index_parts(settings: Settings, con: Connection) -> None:
    """Bring `SEEN` up to the offline store: read each part written or rewritten since (its size and
    modification time), forget the rows of parts gone. A part's three columns come through Arrow, so
    the label path loads no query engine; a part is read once, not at every verdict."""
    import pyarrow.parquet as pq

    on_disk = {}
    for part in settings.transactions_dir.glob("*.parquet") if settings.transactions_dir.exists() else []:
        stat = part.stat()
        on_disk[part.stem] = (part, f"{stat.st_size}:{stat.st_mtime_ns}")

    def changes() -> tuple[list[str], list[str]]:
        indexed = dict(con.execute(select(SEEN_PARTS.c.name, SEEN_PARTS.c.stamp)).tuples().all())
        return ([name for name, stamp in indexed.items() if on_disk.get(name, (None, None))[1] != stamp],
                [name for name, (_, stamp) in on_disk.items() if indexed.get(name) != stamp])

    if not any(changes()):
        return
    _lock(con)  # one indexer at a time; the one that waited finds the work done
    stale, fresh = changes()
    for name in stale:
        con.execute(SEEN.delete().where(SEEN.c.part == name))
        con.execute(SEEN_PARTS.delete().where(SEEN_PARTS.c.name == name))
    for name in fresh:
        table = pq.read_table(on_disk[name][0], columns=["transaction_id", "terminal_id", "timestamp"]).to_pandas()
        rows = table.assign(part=name).to_dict("records")
        for start in range(0, len(rows), LOOKUP_CHUNK):
            _insert_once(con, rows[start:start + LOOKUP_CHUNK], SEEN)
        _insert_once(con, [{"name": name, "stamp": on_disk[name][1]}], SEEN_PARTS)


def known_transactions(settings: Settings, ids: list[str]) -> pd.DataFrame:
    """The transactions among `ids` that fraudops has seen, in the offline store or scored by the API:
    transaction_id, terminal_id, timestamp. A keyed lookup (`SEEN`)."""
    with engine(settings.label_store_url).begin() as con:
        _index_parts(settings, con)
        rows = [row for start in range(0, len(ids), LOOKUP_CHUNK)
                for row in con.execute(select(SEEN.c.transaction_id, SEEN.c.terminal_id, SEEN.c.timestamp)
                                       .where(SEEN.c.transaction_id.in_(ids[start:start + LOOKUP_CHUNK])))]
    found = pd.DataFrame(rows, columns=["transaction_id", "terminal_id", "timestamp"])
    return found.assign(timestamp=pd.to_datetime(found["timestamp"]).astype("datetime64[us]"))


def _now() -> pd.Timestamp:
    return pd.Timestamp(datetime.now(timezone.utc).replace(tzinfo=None))


def record(settings: Settings, labels: pd.DataFrame, default_source: str, where: str = "batch",
           now: pd.Timestamp | None = None, unknown_wait_seconds: float = 0.0) -> Receipt:
    """Validate a batch of verdicts and store it in one transaction, all of it or, on any error,
    none; then hand its new fraud verdicts to the live state. Raises SchemaError for a bad batch.

    `unknown_wait_seconds`: the API's, the period its workers' `remember` writers flush in. A verdict
    on a transaction another worker answered a moment ago may not be remembered yet; the ids not
    found are looked up once more after that wait, so only a transaction never seen is refused."""
    now = now if now is not None else _now()
    batch = validate_labels(labels, where, default_source, now)
    ids = batch["transaction_id"].tolist()
    seen = known_transactions(settings, ids)
    if unknown_wait_seconds and len(seen) < batch["transaction_id"].nunique():
        time.sleep(unknown_wait_seconds)
        seen = known_transactions(settings, ids)
    seen = seen.set_index("transaction_id")
    receipt = Receipt(unknown=sorted(set(batch["transaction_id"]) - set(seen.index)))
    batch = batch[batch["transaction_id"].isin(seen.index)].reset_index(drop=True)
    early = batch.index[batch["reported_at"] < seen.loc[batch["transaction_id"], "timestamp"].to_numpy()].tolist()
    if early:
        raise SchemaError(f"{where}: rejected, nothing recorded: column reported_at: before its transaction at rows "
                          f"{', '.join(map(str, early[:5]))}")
    frauds: list[str] = []  # current fraud verdicts of the batch, new or not: the live state takes each once
    with engine(settings.label_store_url).begin() as con:
        _lock(con)  # so each receipt counts what its own batch did
        ids = batch["transaction_id"].tolist()
        stored = sorted((row for start in range(0, len(ids), LOOKUP_CHUNK) for row in con.execute(
            EVENTS.select().where(EVENTS.c.transaction_id.in_(ids[start:start + LOOKUP_CHUNK])))), key=lambda r: (r.reported_at, r.id))
        current = {row.transaction_id: row for row in stored}  # the last of each, in (reported_at, id) order
        kept = {(row.transaction_id, row.is_fraud, row.source, row.reported_at) for row in stored}
        events = []
        for verdict in batch.itertuples(index=False):
            was = current.get(verdict.transaction_id)
            reported = verdict.reported_at.to_pydatetime()
            if (verdict.transaction_id, verdict.is_fraud, verdict.source, reported) in kept:
                outcome = "unchanged"  # this very verdict, sent again
            elif was is None:
                outcome = "recorded"
            elif reported < was.reported_at:
                outcome = "superseded"
            elif int(was.is_fraud) == verdict.is_fraud:
                outcome = "unchanged"  # the current verdict, confirmed: history needs no copy
            else:
                outcome = "changed"
            setattr(receipt, outcome, getattr(receipt, outcome) + 1)
            if outcome != "unchanged":
                events.append({"transaction_id": verdict.transaction_id, "is_fraud": int(verdict.is_fraud), "source": verdict.source,
                               "reported_at": reported, "recorded_at": now.to_pydatetime()})
            if verdict.is_fraud == 1 and (was is None or reported >= was.reported_at):
                frauds.append(verdict.transaction_id)
        if events:
            _insert_once(con, events)
    if frauds:
        _to_live_state(settings, seen.loc[frauds].reset_index())
    return receipt


def _to_live_state(settings: Settings, frauds: pd.DataFrame) -> None:
    from features.state import open_state

    open_state(settings).add_frauds(zip(frauds["terminal_id"].astype(str), frauds["transaction_id"].astype(str), micros(frauds)))


def _current_query(as_of: datetime | None = None, since: datetime | None = None) -> Select:
    """Each transaction's latest verdict reported by `as_of`: the highest (reported_at, id)."""
    events = EVENTS.select()
    if as_of is not None:
        events = events.where(EVENTS.c.reported_at <= as_of)
    if since is not None:
        events = events.where(EVENTS.c.reported_at >= since)
    ranked = events.add_columns(func.row_number().over(
        partition_by=EVENTS.c.transaction_id, order_by=(EVENTS.c.reported_at.desc(), EVENTS.c.id.desc())).label("rank")).subquery()
    return select(ranked.c.transaction_id, ranked.c.is_fraud, ranked.c.source, ranked.c.reported_at).where(ranked.c.rank == 1)


def current(settings: Settings, as_of: datetime | None = None, reported_since: datetime | None = None) -> pd.DataFrame:
    """Every labelled transaction's verdict as it stood at `as_of` (default: now): transaction_id,
    is_fraud, source, reported_at. `reported_since` bounds the read to the transactions made since
    then: no verdict is reported before its transaction (`record` refuses one), so theirs are all
    among the verdicts reported since then."""
    with engine(settings.label_store_url).connect() as con:
        rows = con.execute(_current_query(as_of, reported_since)).fetchall()
    frame = pd.DataFrame(rows, columns=["transaction_id", "is_fraud", "source", "reported_at"])
    return frame.astype({"transaction_id": str, "is_fraud": "int8", "source": str, "reported_at": "datetime64[us]"})


def write_frauds(settings: Settings, path: Path) -> Path:
    """The ids of every transaction whose current verdict is fraud, as one Parquet file (whole or not
    at all): what the offline feature job reads labels from, on this machine or on Dask workers."""
    verdicts = current(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as partial:
        verdicts.loc[verdicts["is_fraud"] == 1, ["transaction_id"]].to_parquet(partial, index=False)
    return path


def clear(settings: Settings) -> None:
    """Forget every verdict: for a store whose transactions were replaced (a new simulation)."""
    with engine(settings.label_store_url).begin() as con:
        con.execute(EVENTS.delete())
        con.execute(SEEN.delete().where(SEEN.c.part == SERVED))  # the old world's served transactions; its parts reindex as they change


def version(settings: Settings) -> str:
    """Changes whenever a verdict is recorded: what a cached training set is keyed by."""
    with engine(settings.label_store_url).connect() as con:
        count, last = con.execute(select(func.count(), func.max(EVENTS.c.id))).one()
    return f"{count}:{last}"


def history(settings: Settings, transaction_id: str) -> pd.DataFrame:
    """Every verdict recorded on one transaction, in the order they were reported."""
    query = EVENTS.select().where(EVENTS.c.transaction_id == transaction_id).order_by(EVENTS.c.reported_at, EVENTS.c.id)
    with engine(settings.label_store_url).connect() as con:
        return pd.DataFrame(con.execute(query).fetchall(), columns=[c.name for c in EVENTS.columns])
