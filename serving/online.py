"""Online features: each transaction updates its card's and terminal's live state and reads back their
history in one atomic step (`features.state`), then the windows are computed by the same definitions
as offline (`features.live`), so every score sees the card's history up to the transaction itself.

A store that fails or stops answering must not take the API with it: every step gives up after
`online_timeout_ms`, and after a failure the store is skipped for `online_retry_seconds` (a circuit
breaker), so an outage costs one slow answer per retry period, not one per request. Meanwhile the
windows hold only the transaction itself (as for a card never seen), and answers say `degraded`
and list every stateful feature in `features_missing`.

The transactions scored while the store was skipped are kept (up to `online_repair_max` a worker)
and written into it by a background thread once it answers again, so an outage leaves no hole in
any card's windows; past the cap the oldest are dropped, counted and logged, and only a backfill
(`fraudops features materialize`) brings them back.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from core.settings import Settings
from features.live import LIVE_FEATURES
from features.logic import request_features
from features.state import History, Tx, features, open_state

log = logging.getLogger("fraudops.online")
NO_HISTORY = History([], [], [])
REPAIR_CHUNK = 1_000  # transactions a repair write takes at once: short writes beside serving's steps


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
        self.state = open_state(settings, timeout_seconds=settings.serving.online_timeout_ms / 1000, serving=True)
        self.delay_days = settings.features.label_delay_days
        self.names = ["amount", *LIVE_FEATURES, "is_weekend", "is_night"]
        self.breaker = Breaker(settings.serving.online_retry_seconds, on_breaker)
        self.missed: deque[Tx] = deque(maxlen=settings.serving.online_repair_max)  # scored degraded, not yet in the state
        self.dropped = 0  # missed transactions pushed out of `missed` by the cap since the last repair
        self._missed_lock = threading.Lock()
        self._repairing = threading.Lock()  # one repair at a time
        self._repair_after = 0.0  # monotonic time before which no repair starts: a failed one waits a retry period

    def lookup(self, tx: Tx) -> Lookup:
        return self.lookup_many([tx])[0]

    def lookup_many(self, batch: Sequence[Tx]) -> list[Lookup]:
        """The features of several transactions, updated and read together: what the scoring thread
        does with every request that waited while it worked (`serving.batcher`)."""
        histories: list[History] | None = None
        if self.breaker.allow():
            try:
                histories = self.state.update(batch)
                self.breaker.succeeded()
            except Exception as exc:  # an online-store outage degrades the answer, it never fails it
                self.breaker.failed(exc)
        degraded = histories is None
        if degraded:
            self._miss(batch)
        elif self.missed and time.monotonic() >= self._repair_after and not self._repairing.locked():
            threading.Thread(target=self.repair, name="online-repair", daemon=True).start()
        clock = request_features([tx.us // 1_000_000 for tx in batch])
        lookups = []
        for i, (tx, history) in enumerate(zip(batch, histories or [NO_HISTORY] * len(batch))):
            values = features(tx, history, self.delay_days)
            values["amount"] = tx.amount
            values["is_weekend"] = float(clock["is_weekend"][i])
            values["is_night"] = float(clock["is_night"][i])
            lookups.append(Lookup(values, list(LIVE_FEATURES) if degraded else [], degraded))
        return lookups

    def _miss(self, batch: Sequence[Tx]) -> None:
        with self._missed_lock:
            if self.missed.maxlen is not None:
                self.dropped += max(0, len(self.missed) + len(batch) - self.missed.maxlen)
            self.missed.extend(batch)

    def repair(self) -> int:
        """Write the transactions scored while the store was skipped into it, `REPAIR_CHUNK` at a
        time, oldest first (each state keeps one event per transaction id, so a repeat is harmless).
        A failed write puts the rest back for the next repair, which waits a retry period: a store that
        answers reads but refuses these writes would otherwise be sent a repair with every batch.
        Returns how many were written."""
        if not self._repairing.acquire(blocking=False):
            return 0
        written = 0
        try:
            with self._missed_lock:
                pending, dropped = list(self.missed), self.dropped
                self.missed.clear()
                self.dropped = 0
            if dropped:
                log.warning("online store repair: %d transactions scored during the outage were dropped past "
                            "online_repair_max; run `fraudops features materialize` to bring them back", dropped)
            for start in range(0, len(pending), REPAIR_CHUNK):
                try:
                    self.state.load(pending[start:start + REPAIR_CHUNK])
                except Exception as exc:
                    with self._missed_lock:
                        self.missed.extendleft(reversed(pending[start:]))
                    self._repair_after = time.monotonic() + self.breaker.retry_seconds  # not again on every batch meanwhile
                    log.warning("online store repair stopped after %d of %d transactions (%s): it resumes with the "
                                "first answer the store gives after %g s", written, len(pending), exc, self.breaker.retry_seconds)
                    break
                written += len(pending[start:start + REPAIR_CHUNK])
            else:
                log.info("online store repaired: %d transactions scored during the outage written into it", written)
            return written
        finally:
            self._repairing.release()
