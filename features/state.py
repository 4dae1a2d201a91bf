"""Live feature state: each card's and terminal's recent transactions, updated as they are scored.

Scoring a batch is one atomic step on the store: record the batch's transactions, read back the
history of every card and terminal in it, and prune what no window can reach any more. Then
`features.live` computes the windows. The step is

- exact: the history is the events themselves, so window edges are exact to the microsecond;
- bounded: a card keeps 30 days, a terminal 30 days plus the label delay (pruned on every write);
  one no longer seen is dropped whole (Redis: its keys expire; SQLite: `prune_dormant`, run by the
  monitor flow);
- atomic: on SQLite one `BEGIN IMMEDIATE` transaction, on Redis one Lua script, on a Redis Cluster
  one script per hash slot (each card's and each terminal's keys share one), so N concurrent
  requests for a card from several workers leave exactly N events;
- idempotent: events are keyed by transaction id, so a retried transaction counts once, on every
  store, whatever amount or time the retry carries (the first stays; another amount is logged as a
  conflict).

Labels reach terminal risk through `add_frauds` when they arrive (the label feed, `fraudops replay`),
never earlier. SQLite is the embedded default; Redis when `feast_redis_url` is set, as in
docker-compose; a Redis Cluster with `feast_redis_cluster`. At scale the same step moves to a stream
processor keyed by card and terminal (docs/03-features.md).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
import weakref
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from core.settings import Settings
from features.live import CUSTOMER_HORIZON_US, DAY_US, CustomerEvent, TerminalEvent, customer_features, terminal_features, terminal_horizon_us

LOG = logging.getLogger(__name__)
# Kept past the longest window, so a transaction that arrives a little late still sees its history.
LATE_MARGIN_US = DAY_US
# Serving's WAL checkpoints, off the request path: a passive one this often, and a restart (which
# briefly holds writers back) once the log has grown past this many pages.
CHECKPOINT_SECONDS = 0.2
CHECKPOINT_RESTART_PAGES = 10_000
LOCK_POLL_SECONDS = 0.0001  # between tries for the write lock while another worker holds it


@dataclass(frozen=True)
class Tx:
    transaction_id: str
    customer_id: str
    terminal_id: str
    amount: float
    us: int  # transaction time, microseconds since the epoch (UTC)


@dataclass
class History:
    customer: list[CustomerEvent]
    terminal: list[TerminalEvent]
    frauds: list[TerminalEvent]


def features(tx: Tx, history: History, delay_days: int) -> dict[str, float]:
    """The one function a scoring path (or a stream processor) runs on a transaction and its state."""
    return {**customer_features(history.customer, tx.us, tx.transaction_id, tx.amount),
            **terminal_features(history.terminal, history.frauds, tx.us, tx.transaction_id, delay_days)}


def conflicts(batch: Sequence[Tx], histories: Sequence[History]) -> list[str]:
    """Transactions of `batch` already recorded with another amount: a retry that is not the same
    transaction. The first amount stays (both stores keep one event per transaction id); the
    conflict is logged, so a client that reuses ids is seen."""
    clashing = []
    for tx, history in zip(batch, histories):
        stored = [amount for _, tx_id, amount in history.customer if tx_id == tx.transaction_id]
        if stored and stored[0] != tx.amount:
            clashing.append(tx.transaction_id)
    if clashing:
        LOG.warning("live state: %d transaction ids already recorded with another amount, first kept: %s",
                    len(clashing), ", ".join(clashing[:10]))
    return clashing


class SqliteState:
    SCHEMA = """
    CREATE TABLE IF NOT EXISTS customer_events (customer_id TEXT NOT NULL, transaction_id TEXT NOT NULL, us INTEGER NOT NULL,
        amount REAL NOT NULL, PRIMARY KEY (customer_id, transaction_id)) WITHOUT ROWID;
    CREATE INDEX IF NOT EXISTS customer_events_time ON customer_events (customer_id, us);
    CREATE TABLE IF NOT EXISTS terminal_events (terminal_id TEXT NOT NULL, transaction_id TEXT NOT NULL, us INTEGER NOT NULL,
        PRIMARY KEY (terminal_id, transaction_id)) WITHOUT ROWID;
    CREATE INDEX IF NOT EXISTS terminal_events_time ON terminal_events (terminal_id, us);
    CREATE TABLE IF NOT EXISTS terminal_frauds (terminal_id TEXT NOT NULL, transaction_id TEXT NOT NULL, us INTEGER NOT NULL,
        PRIMARY KEY (terminal_id, transaction_id)) WITHOUT ROWID;
    """

    def __init__(self, path: Path, delay_days: int, timeout_seconds: float = 5.0, checkpoint_in_background: bool = False) -> None:
        """`checkpoint_in_background` is serving's: SQLite's own checkpoint runs inside the commit that
        crosses a thousand pages of log, and that request pays the copy and the fsync: milliseconds,
        the tail of /predict on this state (docs/serving-measurements.md). A thread copies the log
        back instead, so no request does."""
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.delay_days = delay_days
        self.terminal_horizon = terminal_horizon_us(delay_days)
        self._local = threading.local()  # a connection per thread: sqlite3 connections are not shared
        self.timeout_seconds = timeout_seconds
        self.checkpoint_in_background = checkpoint_in_background
        setup = sqlite3.connect(path, timeout=timeout_seconds, isolation_level=None)  # SQLite's own wait for a peer's lock
        try:
            setup.execute("PRAGMA journal_mode = WAL")  # kept in the file: every later connection uses it
            setup.executescript(self.SCHEMA)
        finally:
            setup.close()
        if checkpoint_in_background:
            threading.Thread(target=_checkpoint, args=(path, weakref.ref(self)), name="sqlite-checkpoint", daemon=True).start()

    def _connection(self) -> sqlite3.Connection:
        con = getattr(self._local, "connection", None)
        if con is None:
            con = sqlite3.connect(self.path, timeout=self.timeout_seconds, isolation_level=None, check_same_thread=False)
            con.execute("PRAGMA synchronous = NORMAL")
            con.execute("PRAGMA busy_timeout = 0")  # `_immediate` waits for the write lock, finely
            if self.checkpoint_in_background:
                con.execute("PRAGMA wal_autocheckpoint = 0")
            self._local.connection = con
        return con

    @contextmanager
    def _immediate(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken at its start (`BEGIN IMMEDIATE`), so concurrent workers queue
        for the lock instead of failing when a read would turn into a write; undone on any failure.

        The lock is polled every `LOCK_POLL_SECONDS`, not left to SQLite's busy handler, which sleeps
        1, 2, 5, 10 ms and more between tries: two workers share the file and each holds the lock for
        a fraction of a millisecond, so a worker that waited slept milliseconds past its turn."""
        con = self._connection()
        deadline = time.monotonic() + self.timeout_seconds
        while True:
            try:
                con.execute("BEGIN IMMEDIATE")
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() >= deadline:
                    raise
                time.sleep(LOCK_POLL_SECONDS)
        try:
            yield con
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise

    @staticmethod
    def _record(con: sqlite3.Connection, batch: Sequence[Tx]) -> None:
        con.executemany("INSERT OR IGNORE INTO customer_events VALUES (?, ?, ?, ?)",
                        [(tx.customer_id, tx.transaction_id, tx.us, tx.amount) for tx in batch])
        con.executemany("INSERT OR IGNORE INTO terminal_events VALUES (?, ?, ?)", [(tx.terminal_id, tx.transaction_id, tx.us) for tx in batch])

    def update(self, batch: Sequence[Tx]) -> list[History]:
        customers = sorted({tx.customer_id for tx in batch})
        terminals = sorted({tx.terminal_id for tx in batch})
        latest = max(tx.us for tx in batch)
        earliest = min(tx.us for tx in batch)
        c_marks, t_marks = ",".join("?" * len(customers)), ",".join("?" * len(terminals))
        by_customer: dict[str, list[CustomerEvent]] = defaultdict(list)
        by_terminal: dict[str, list[TerminalEvent]] = defaultdict(list)
        frauds: dict[str, list[TerminalEvent]] = defaultdict(list)
        with self._immediate() as con:
            self._record(con, batch)
            con.execute(f"DELETE FROM customer_events WHERE customer_id IN ({c_marks}) AND us < ?",
                        [*customers, latest - CUSTOMER_HORIZON_US - LATE_MARGIN_US])
            for table in ("terminal_events", "terminal_frauds"):
                con.execute(f"DELETE FROM {table} WHERE terminal_id IN ({t_marks}) AND us < ?",
                            [*terminals, latest - self.terminal_horizon - LATE_MARGIN_US])
            for customer, tx_id, us, amount in con.execute(
                    f"SELECT customer_id, transaction_id, us, amount FROM customer_events WHERE customer_id IN ({c_marks}) AND us > ?",
                    [*customers, earliest - CUSTOMER_HORIZON_US]):
                by_customer[customer].append((us, tx_id, amount))
            for table, target in (("terminal_events", by_terminal), ("terminal_frauds", frauds)):
                for terminal, tx_id, us in con.execute(
                        f"SELECT terminal_id, transaction_id, us FROM {table} WHERE terminal_id IN ({t_marks}) AND us > ?",
                        [*terminals, earliest - self.terminal_horizon]):
                    target[terminal].append((us, tx_id))
        histories = [History(by_customer[tx.customer_id], by_terminal[tx.terminal_id], frauds[tx.terminal_id]) for tx in batch]
        conflicts(batch, histories)
        return histories

    def prune_dormant(self, chunk: int = 500) -> int:
        """Drop the history of every card and terminal no transaction has reached within its horizon
        of the newest event held: the step prunes only the entities it touches, so without this a
        card that stopped paying would keep its last days forever. The dormant ones are found by a
        read, then deleted `chunk` at a time, each a short write so serving's steps are not held up.

        The newest event counts at most `LATE_MARGIN_US` past the wall clock: one transaction
        stamped in the future must not make every card look dormant. Returns how many cards and
        terminals were pruned (the monitor flow runs it)."""
        con = self._connection()
        (newest,), = con.execute("SELECT max(us) FROM customer_events").fetchall()
        if newest is None:
            return 0
        latest = min(newest, int(time.time() * 1_000_000) + LATE_MARGIN_US)
        pruned: set[tuple[str, str]] = set()
        for table, key, bound in (("customer_events", "customer_id", latest - CUSTOMER_HORIZON_US - LATE_MARGIN_US),
                                  ("terminal_events", "terminal_id", latest - self.terminal_horizon - LATE_MARGIN_US),
                                  ("terminal_frauds", "terminal_id", latest - self.terminal_horizon - LATE_MARGIN_US)):
            dormant = [row[0] for row in con.execute(f"SELECT {key} FROM {table} GROUP BY {key} HAVING max(us) < ?", [bound])]
            for first in range(0, len(dormant), chunk):
                ids = dormant[first:first + chunk]
                with self._immediate() as write:
                    write.execute(f"DELETE FROM {table} WHERE {key} IN ({','.join('?' * len(ids))}) AND us < ?", [*ids, bound])
            pruned.update((key, entity) for entity in dormant)
        return len(pruned)

    def load(self, batch: Sequence[Tx]) -> None:
        """Record transactions without scoring them: the backfill (`features.store.materialize`)."""
        with self._immediate() as con:
            self._record(con, batch)

    def add_frauds(self, frauds: Iterable[tuple[str, str, int]]) -> None:
        """Confirmed frauds as their labels arrive: (terminal_id, transaction_id, transaction time)."""
        with self._immediate() as con:
            con.executemany("INSERT OR IGNORE INTO terminal_frauds VALUES (?, ?, ?)", list(frauds))


def _checkpoint(path: Path, state: weakref.ref[SqliteState]) -> None:
    """Copy the write-ahead log back into the database while `state` lives. A passive checkpoint
    never waits for a writer, but under steady writes the log never empties, so past
    `CHECKPOINT_RESTART_PAGES` a restart rewinds it.

    A pending restart holds new writers back for as long as it waits, so it is tried only when the
    passive round just copied the whole log (no reader is pinned to an older snapshot, so nothing
    is left to wait for) and with a 1 ms busy timeout: if a writer is mid-commit, it gives up and
    the next round tries again, instead of stalling every request behind it."""
    con = sqlite3.connect(path, timeout=0.001, isolation_level=None, check_same_thread=False)
    try:
        while state() is not None:
            time.sleep(CHECKPOINT_SECONDS)
            try:
                (busy, pages, copied), = con.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                if not busy and pages > CHECKPOINT_RESTART_PAGES and copied == pages:
                    con.execute("PRAGMA wal_checkpoint(RESTART)").fetchall()
            except sqlite3.OperationalError:  # busy or locked: the next round tries again
                continue
    finally:
        con.close()


# One entity per entry: a card (its events, and the ids it holds) or a terminal (its events, and its
# frauds). An entry's two keys share a hash slot (a hash tag), so on a Redis Cluster each slot's
# entries run as one script on their own shard.
# KEYS: two per entry. ARGV: six per entry (kind, time, transaction id, card member, read bound,
# prune bound), then the card's and the terminal's time to live. Scores are times in microseconds:
# exact in a double up to 2^53 us, the year 2255.
REDIS_STEP = """
local out = {}
local n = #KEYS / 2
local ttl = {c = ARGV[6 * n + 1], t = ARGV[6 * n + 2]}
for i = 0, n - 1 do
  local events, side = KEYS[2 * i + 1], KEYS[2 * i + 2]
  local a = 6 * i
  local kind, us, tx, member = ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4]
  local bound = '(' .. ARGV[a + 6]
  -- a transaction id is one event: a retry, whatever its amount or time, adds nothing (as SQLite's key)
  if kind == 'c' then
    if redis.call('HSETNX', side, tx, '') == 1 then redis.call('ZADD', events, us, member) end
    for _, old in ipairs(redis.call('ZRANGEBYSCORE', events, '-inf', bound)) do
      redis.call('HDEL', side, string.sub(old, 1, string.find(old, '\\31', 1, true) - 1))
    end
  else
    redis.call('ZADD', events, 'NX', us, tx)
    redis.call('ZREMRANGEBYSCORE', side, '-inf', bound)
  end
  redis.call('ZREMRANGEBYSCORE', events, '-inf', bound)
  -- a card or terminal no transaction reaches any more expires with its history
  redis.call('PEXPIRE', events, ttl[kind])
  redis.call('PEXPIRE', side, ttl[kind])
  out[2 * i + 1] = redis.call('ZRANGEBYSCORE', events, '(' .. ARGV[a + 5], '+inf', 'WITHSCORES')
  out[2 * i + 2] = kind == 'c' and {} or redis.call('ZRANGEBYSCORE', side, '(' .. ARGV[a + 5], '+inf', 'WITHSCORES')
end
return out
"""
SEPARATOR = "\x1f"  # between a card event's transaction id and its amount (ids cannot hold it); \31 in Lua


def _card_member(tx: Tx) -> str:
    """A card event in its sorted set: the transaction id and the amount, exactly (repr round-trips)."""
    return f"{tx.transaction_id}{SEPARATOR}{tx.amount!r}"


NOTHING, EVERYTHING = "+inf", "-inf"  # a read bound that reads nothing; a prune bound that keeps everything


@dataclass(frozen=True)
class Entry:
    """One entity's part of a state step, in `REDIS_STEP`'s layout."""

    keys: tuple[str, str]
    args: tuple[str | int | float, ...]


class RedisState:
    """The state on one Redis or, with `cluster`, on a Redis Cluster (the URL then names one or more
    of its nodes). One Redis runs a batch as one script: every entity's update in it is atomic. A
    cluster runs one script per hash slot the batch touches, sent to the shards in one pipeline:
    each card's and each terminal's update stays atomic, which is all the features need (none reads
    a card and a terminal together)."""

    def __init__(self, url: str, delay_days: int, prefix: str, timeout_seconds: float = 5.0, cluster: bool = False) -> None:
        import redis
        from redis.backoff import NoBackoff
        from redis.cluster import ClusterNode, RedisCluster
        from redis.retry import Retry

        parts = url.split(",")
        nodes = [part.partition(":") for part in parts if "=" not in part]
        options = dict(part.split("=", 1) for part in parts if "=" in part)
        # redis-py retries a timed-out command three times with backoff: seconds, not the timeout.
        # Serving answers degraded instead of waiting.
        common: dict[str, Any] = {"socket_timeout": timeout_seconds, "socket_connect_timeout": timeout_seconds,
                                  "retry": Retry(NoBackoff(), 0)}
        self.cluster = cluster
        self.client: Any
        if cluster:  # connects (and reads the slot map) as it is built, so at first use: serving starts while it is down
            self._connect = lambda: RedisCluster(
                startup_nodes=[ClusterNode(host or "localhost", int(port or 6379)) for host, _, port in nodes], **common)
            self.client = None
            self._stale = False  # the slot map may be out of date: a command failed since it was read
        else:
            (host, _, port), = nodes
            self.client = redis.Redis(host=host or "localhost", port=int(port or 6379), db=int(options.get("db", 0)), **common)
            self.script = self.client.register_script(REDIS_STEP)
        self.delay_days = delay_days
        self.terminal_horizon = terminal_horizon_us(delay_days)
        self.prefix = prefix
        # Pruning reaches only the keys a batch touches, so a card that stops paying would keep its
        # last days forever: each key expires its horizon after the last write to it (wall-clock
        # time, whatever the events' own), and the state stays bounded by the cards still active.
        self.ttl_ms = ((CUSTOMER_HORIZON_US + LATE_MARGIN_US) // 1000, (self.terminal_horizon + LATE_MARGIN_US) // 1000)

    def _tag(self, kind: str, entity: str) -> str:
        """An entity's events key; its other key adds a suffix. The braces: an entity's keys share a slot."""
        return f"{self.prefix}:{{{kind}:{entity}}}"

    def _card(self, tx: Tx, read_from: int | str, prune_before: int | str) -> Entry:
        tag = self._tag("c", tx.customer_id)
        return Entry((tag, f"{tag}:ids"), ("c", tx.us, tx.transaction_id, _card_member(tx), read_from, prune_before))

    def _terminal(self, tx: Tx, read_from: int | str, prune_before: int | str) -> Entry:
        tag = self._tag("t", tx.terminal_id)
        return Entry((tag, f"{tag}:f"), ("t", tx.us, tx.transaction_id, "", read_from, prune_before))

    def _run(self, entries: Sequence[Entry]) -> list[list[Any]]:
        """Each entry's two answers (its events with their times; a terminal's frauds), in order."""
        if not self.cluster:
            raw = self.script(keys=[key for e in entries for key in e.keys], args=[*(a for e in entries for a in e.args), *self.ttl_ms])
            return [raw[2 * i:2 * i + 2] for i in range(len(entries))]
        slots: dict[int, list[int]] = defaultdict(list)
        for i, entry in enumerate(entries):
            slots[self._slot(entry.keys[0])].append(i)
        # EVAL, not EVALSHA: a replica promoted by a failover holds no script cache
        answers = self._send([(entries[members[0]].keys[0],
                               ("EVAL", REDIS_STEP, 2 * len(members), *(k for i in members for k in entries[i].keys),
                                *(a for i in members for a in entries[i].args), *self.ttl_ms)) for members in slots.values()])
        out: list[list[Any]] = [[] for _ in entries]
        for members, raw in zip(slots.values(), answers):
            for j, i in enumerate(members):
                out[i] = raw[2 * j:2 * j + 2]
        return out

    def _slot(self, key: str) -> int:
        from redis.crc import key_slot

        return cast(int, key_slot(key.encode()))

    def _send(self, commands: Sequence[tuple[str, tuple[Any, ...]]]) -> list[Any]:
        """Each command (the key that places it, its words) in one pipeline per node; answers in order.

        On a cluster the commands are grouped by the node that holds their slot, from redis-py's map
        of slots, and sent on that node's own client: redis-py's cluster pipeline asks the server for
        the keys of every EVAL and ZADD it sends (COMMAND GETKEYS, a round trip each, to one fixed
        node, which may be the one that failed). After any failure the map is read again before the
        next try, so the first try after a failover finds the promoted replica."""
        if not self.cluster:
            pipe = self.client.pipeline(transaction=False)
            for _, words in commands:
                pipe.execute_command(*words)
            return cast(list[Any], pipe.execute())
        if self.client is None:
            self.client = self._connect()
        if self._stale:  # read at the try, not right after the failure: a map read then may predate a promotion
            self.client.nodes_manager.initialize()
            self._stale = False
        by_node: dict[str, tuple[Any, list[int]]] = {}
        for i, (key, _) in enumerate(commands):
            node = self.client.nodes_manager.get_node_from_slot(self._slot(key))
            by_node.setdefault(node.name, (node, []))[1].append(i)
        out: list[Any] = [None] * len(commands)
        try:
            for node, members in by_node.values():
                pipe = self.client.get_redis_connection(node).pipeline(transaction=False)
                for i in members:
                    pipe.execute_command(*commands[i][1])
                for i, answer in zip(members, pipe.execute()):
                    out[i] = answer
        except Exception:
            self._stale = True
            raise
        return out

    def update(self, batch: Sequence[Tx]) -> list[History]:
        latest = max(tx.us for tx in batch)
        card_bound, terminal_bound = latest - CUSTOMER_HORIZON_US - LATE_MARGIN_US, latest - self.terminal_horizon - LATE_MARGIN_US
        entries = [entry for tx in batch for entry in (self._card(tx, tx.us - CUSTOMER_HORIZON_US, card_bound),
                                                       self._terminal(tx, tx.us - self.terminal_horizon, terminal_bound))]
        raw = self._run(entries)
        out = []
        for i in range(len(batch)):
            (card, _), (terminal, frauds) = raw[2 * i], raw[2 * i + 1]
            customer = []
            for member, score in zip(card[::2], card[1::2]):
                tx_id, _, amount = member.decode().partition(SEPARATOR)
                customer.append((int(float(score)), tx_id, float(amount)))
            out.append(History(customer, [(int(float(s)), m.decode()) for m, s in zip(terminal[::2], terminal[1::2])],
                               [(int(float(s)), m.decode()) for m, s in zip(frauds[::2], frauds[1::2])]))
        conflicts(batch, out)
        return out

    def load(self, batch: Sequence[Tx], chunk: int = 5_000) -> None:
        """Record transactions without scoring them (the backfill, the outage repair): the step's own
        script, reading nothing and pruning nothing, so a repeat is as harmless as a retry."""
        for first in range(0, len(batch), chunk):
            self._run([entry for tx in batch[first:first + chunk]
                       for entry in (self._card(tx, NOTHING, EVERYTHING), self._terminal(tx, NOTHING, EVERYTHING))])

    def prune_dormant(self) -> int:
        """Nothing to do: a dormant card's or terminal's keys expire on their own (`ttl_ms`)."""
        return 0

    def add_frauds(self, frauds: Iterable[tuple[str, str, int]]) -> None:
        """Each write is idempotent (NX), so a pipeline without MULTI is safe to send again (a cluster
        refuses MULTI across slots)."""
        commands: list[tuple[str, tuple[Any, ...]]] = []
        for terminal, tx_id, us in frauds:
            key = f"{self._tag('t', terminal)}:f"
            commands += [(key, ("ZADD", key, "NX", us, tx_id)), (key, ("PEXPIRE", key, self.ttl_ms[1]))]
        if commands:
            self._send(commands)


State = SqliteState | RedisState


def open_state(settings: Settings, timeout_seconds: float = 5.0, serving: bool = False) -> State:
    """`serving` keeps SQLite's checkpoints off the request path (`SqliteState`)."""
    if settings.features.feast_redis_url:
        return RedisState(settings.features.feast_redis_url, settings.features.label_delay_days, f"{settings.features.feast_project}:live",
                          timeout_seconds, cluster=settings.features.feast_redis_cluster)
    return SqliteState(settings.feast_dir / "live_state.db", settings.features.label_delay_days, timeout_seconds, checkpoint_in_background=serving)
