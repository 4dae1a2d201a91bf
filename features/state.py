"""Live feature state: each card's and terminal's recent transactions, updated as they are scored.

Scoring a batch is one atomic step on the store: record the batch's transactions, read back the
history of every card and terminal in it, and prune what no window can reach any more. Then
`features.live` computes the windows. The step is

- exact: the history is the events themselves, so window edges are exact to the microsecond;
- bounded: a card keeps 30 days, a terminal 30 days plus the label delay (pruned on every write);
  one no longer seen is dropped whole (Redis: its keys expire; SQLite: `prune_dormant`, run by the
  monitor flow);
- atomic: on SQLite one `BEGIN IMMEDIATE` transaction, on Redis one Lua script, so N concurrent
  requests for a card from several workers leave exactly N events;
- idempotent: events are keyed by transaction id, so a retried transaction counts once, on both
  stores, whatever amount the retry carries (the first stays; another amount is logged as a conflict).

Labels reach terminal risk through `add_frauds` when they arrive (the label feed, `fraudops replay`),
never earlier. SQLite is the embedded default; Redis when `feast_redis_url` is set, as in
docker-compose. At scale the same step moves to a stream processor keyed by card and terminal
(docs/03-features.md).
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


# KEYS: for each transaction its card's, terminal's and terminal-frauds' sorted sets.
# ARGV: for each transaction: time, card member, transaction id, then the read and prune bounds.
# Scores are times in microseconds: exact in a double up to 2^53 us, the year 2255.
REDIS_UPDATE = """
local out = {}
local n = #KEYS / 3
local card_ttl, terminal_ttl = ARGV[7 * n + 1], ARGV[7 * n + 2]
for i = 0, n - 1 do
  local c, t, f = KEYS[3 * i + 1], KEYS[3 * i + 2], KEYS[3 * i + 3]
  local a = 7 * i
  local us, member, tx = ARGV[a + 1], ARGV[a + 2], ARGV[a + 3]
  -- a transaction id is one event: a retry, whatever its amount, adds nothing (as SQLite's key)
  if not redis.call('ZSCORE', t, tx) then
    redis.call('ZADD', c, 'NX', us, member)
    redis.call('ZADD', t, 'NX', us, tx)
  end
  redis.call('ZREMRANGEBYSCORE', c, '-inf', '(' .. ARGV[a + 6])
  redis.call('ZREMRANGEBYSCORE', t, '-inf', '(' .. ARGV[a + 7])
  redis.call('ZREMRANGEBYSCORE', f, '-inf', '(' .. ARGV[a + 7])
  -- a card or terminal no transaction reaches any more expires with its history
  redis.call('PEXPIRE', c, card_ttl)
  redis.call('PEXPIRE', t, terminal_ttl)
  redis.call('PEXPIRE', f, terminal_ttl)
  out[3 * i + 1] = redis.call('ZRANGEBYSCORE', c, '(' .. ARGV[a + 4], '+inf', 'WITHSCORES')
  out[3 * i + 2] = redis.call('ZRANGEBYSCORE', t, '(' .. ARGV[a + 5], '+inf', 'WITHSCORES')
  out[3 * i + 3] = redis.call('ZRANGEBYSCORE', f, '(' .. ARGV[a + 5], '+inf', 'WITHSCORES')
end
return out
"""
SEPARATOR = "\x1f"  # between a card event's transaction id and its amount (ids cannot hold it)


def _card_member(tx: Tx) -> str:
    """A card event in its sorted set: the transaction id and the amount, exactly (repr round-trips)."""
    return f"{tx.transaction_id}{SEPARATOR}{tx.amount!r}"


class RedisState:
    def __init__(self, url: str, delay_days: int, prefix: str, timeout_seconds: float = 5.0) -> None:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        host_port, *options = url.split(",")
        host, _, port = host_port.partition(":")
        db = int(dict(option.split("=", 1) for option in options).get("db", 0))
        self.client = redis.Redis(host=host or "localhost", port=int(port or 6379), db=db, socket_timeout=timeout_seconds,
                                  socket_connect_timeout=timeout_seconds,
                                  # redis-py retries a timed-out command three times with backoff: seconds, not the
                                  # timeout. Serving answers degraded instead of waiting.
                                  retry=Retry(NoBackoff(), 0))
        self.delay_days = delay_days
        self.terminal_horizon = terminal_horizon_us(delay_days)
        self.prefix = prefix
        self.script = self.client.register_script(REDIS_UPDATE)
        # Pruning reaches only the keys a batch touches, so a card that stops paying would keep its
        # last days forever: each key expires its horizon after the last write to it (wall-clock
        # time, whatever the events' own), and the state stays bounded by the cards still active.
        self.ttl_ms = ((CUSTOMER_HORIZON_US + LATE_MARGIN_US) // 1000, (self.terminal_horizon + LATE_MARGIN_US) // 1000)

    def _keys(self, tx: Tx) -> list[str]:
        # One Redis: a batch's keys go to one script. On a Redis Cluster they span slots, and the
        # batch would be split by slot first (docs/03-features.md).
        return [f"{self.prefix}:c:{tx.customer_id}", f"{self.prefix}:t:{tx.terminal_id}", f"{self.prefix}:f:{tx.terminal_id}"]

    def update(self, batch: Sequence[Tx]) -> list[History]:
        keys: list[str] = []
        argv: list[str | int | float] = []
        latest = max(tx.us for tx in batch)
        for tx in batch:
            keys += self._keys(tx)
            argv += [tx.us, _card_member(tx), tx.transaction_id,
                     tx.us - CUSTOMER_HORIZON_US, tx.us - self.terminal_horizon,
                     latest - CUSTOMER_HORIZON_US - LATE_MARGIN_US, latest - self.terminal_horizon - LATE_MARGIN_US]
        raw = self.script(keys=keys, args=[*argv, *self.ttl_ms])
        out = []
        for i in range(len(batch)):
            card, terminal, frauds = raw[3 * i], raw[3 * i + 1], raw[3 * i + 2]
            customer = []
            for member, score in zip(card[::2], card[1::2]):
                tx_id, _, amount = member.decode().partition(SEPARATOR)
                customer.append((int(float(score)), tx_id, float(amount)))
            out.append(History(customer, [(int(float(s)), m.decode()) for m, s in zip(terminal[::2], terminal[1::2])],
                               [(int(float(s)), m.decode()) for m, s in zip(frauds[::2], frauds[1::2])]))
        conflicts(batch, out)
        return out

    def load(self, batch: Sequence[Tx], chunk: int = 10_000) -> None:
        for first in range(0, len(batch), chunk):
            pipe = self.client.pipeline(transaction=True)
            for tx in batch[first:first + chunk]:
                card, terminal, _ = self._keys(tx)
                pipe.zadd(card, {_card_member(tx): tx.us}, nx=True)
                pipe.zadd(terminal, {tx.transaction_id: tx.us}, nx=True)
                pipe.pexpire(card, self.ttl_ms[0])
                pipe.pexpire(terminal, self.ttl_ms[1])
            pipe.execute()

    def prune_dormant(self) -> int:
        """Nothing to do: a dormant card's or terminal's keys expire on their own (`ttl_ms`)."""
        return 0

    def add_frauds(self, frauds: Iterable[tuple[str, str, int]]) -> None:
        pipe = self.client.pipeline(transaction=True)
        for terminal, tx_id, us in frauds:
            pipe.zadd(f"{self.prefix}:f:{terminal}", {tx_id: us}, nx=True)
            pipe.pexpire(f"{self.prefix}:f:{terminal}", self.ttl_ms[1])
        pipe.execute()


State = SqliteState | RedisState


def open_state(settings: Settings, timeout_seconds: float = 5.0, serving: bool = False) -> State:
    """`serving` keeps SQLite's checkpoints off the request path (`SqliteState`)."""
    if settings.features.feast_redis_url:
        return RedisState(settings.features.feast_redis_url, settings.features.label_delay_days, f"{settings.features.feast_project}:live", timeout_seconds)
    return SqliteState(settings.feast_dir / "live_state.db", settings.features.label_delay_days, timeout_seconds, checkpoint_in_background=serving)
