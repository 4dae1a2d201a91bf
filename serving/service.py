"""The scoring path: route, look up features, score, log. Kept free of web concerns so the API, the
benchmarks and the tests all drive the same object."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from functools import partial

from core import registry
from core.settings import Settings
from features import lists
from features.labels import remember
from features.live import ANSWER_VALUES
from features.state import Tx
from model import rules
from model.decisions import decide_one, explore
from model.loaded import LoadedModel, load
from model.reasons import reason_codes
from serving import logs, predlog
from serving.guardrails import Guardrail, Limits
from serving.metrics import Metrics
from serving.online import OnlineFeatures
from serving.predlog import PredictionLog, Record
from serving.router import MODES, Mode, Router
from serving.schemas import Reason, Score, Transaction

log = logging.getLogger("fraudops.service")
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
ALIASES = ("champion", "challenger")
REMEMBER_SECONDS = 0.05  # how often a worker writes what it answered into the label path's index


def explain(model: LoadedModel, row: list[float]) -> list[Reason]:
    """The row's reason codes (`model.reasons`) as the answer carries them."""
    return [Reason(feature=r.feature, value=r.value, contribution=r.contribution) for r in reason_codes(model, row)]


def live_tx(tx: Transaction) -> Tx:
    """The transaction as the live state keys it: its time in whole microseconds since the epoch, as
    the offline features count it (`epoch_us`)."""
    return Tx(tx.transaction_id, tx.customer_id, tx.terminal_id, tx.amount, (tx.timestamp - EPOCH) // timedelta(microseconds=1))


class ScoringService:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.router = Router(settings.canary.challenger_share)
        self.metrics = Metrics(settings.reports_dir)
        self.models: dict[str, LoadedModel] = {}
        self._lock = threading.Lock()
        self.rules = rules.load(settings.rules.rules_file, ANSWER_VALUES)  # a bad file stops the start-up, named
        self._rules_stamp = self._stamp()
        self.lists = lists.Lists()
        if settings.serving.online_timeout_ms >= settings.serving.predict_timeout_ms:
            log.warning("online_timeout_ms %g is not under predict_timeout_ms %g: a hung online store will answer 503, not degraded",
                        settings.serving.online_timeout_ms, settings.serving.predict_timeout_ms)
        self.online = OnlineFeatures(settings, on_breaker=lambda opened: self.metrics.online_skipped.set(float(opened)))
        self.log = PredictionLog(predlog.sink_for(settings), settings.serving.log_batch_size, settings.serving.log_queue_size, on_wake=self._report)
        # The label path's index of what was answered, written far more often than the log: a verdict
        # sent right after its answer finds its transaction (features.labels.remember).
        self.seen = PredictionLog(partial(remember, settings), settings.serving.log_batch_size, settings.serving.log_queue_size,
                                  flush_seconds=REMEMBER_SECONDS, what="answered transactions for the label path's index")
        # Shadow scoring runs on its own thread from a bounded queue: a slow challenger can only drop
        # shadow scores (counted), never delay an answer.
        self.shadow_queue: queue.Queue[tuple[Transaction, dict[str, float], float] | None] = queue.Queue(maxsize=settings.serving.log_queue_size)
        self.shadow_dropped = 0
        self.guardrail = Guardrail(Limits.from_settings(settings))
        self.last_trip: str | None = None
        self._shadow = threading.Thread(target=self._shadow_loop, name="shadow-scoring", daemon=True)
        self._stopping = threading.Event()
        self._poller = threading.Thread(target=self._poll_loop, name="registry-poll", daemon=True)

    def start(self) -> None:
        self.reload()
        self.refresh_lists()
        self.log.start()
        self.seen.start()
        self._shadow.start()
        if self.settings.serving.model_poll_seconds > 0:
            self._poller.start()

    def stop(self) -> None:
        self._stopping.set()
        self.shadow_queue.put(None)
        self._shadow.join()
        self.log.close()
        self.seen.close()

    def _shadow_loop(self) -> None:
        while (item := self.shadow_queue.get()) is not None:
            tx, values, started = item
            challenger = self.models.get("challenger")
            if challenger is not None:
                self._publish([self._score_with(challenger, "challenger", tx, values, [], False, started, shadow=True)[1]])

    def _poll_loop(self) -> None:
        while not self._stopping.wait(self.settings.serving.model_poll_seconds):
            try:
                self.sync()
            except Exception as exc:  # registry unreachable: keep serving what is loaded
                log.warning("following the registry failed (%s); serving what is loaded", exc)
            self.refresh_lists()
            if self._stamp() != self._rules_stamp:
                try:
                    self.reload_rules()
                except rules.RuleError:
                    pass  # logged; the file is not read again until it changes

    def _stamp(self) -> tuple[int, int] | None:
        """When the rules file last changed, and its size: what the poll compares to see an edit."""
        try:
            found = self.settings.rules.rules_file.stat() if self.settings.rules.rules_file else None
        except OSError:
            return None
        return (found.st_mtime_ns, found.st_size) if found else None

    def refresh_lists(self) -> lists.Lists:
        """Read the block and allow lists again (start-up, each poll, after a change here); a store
        that cannot be read keeps the lists this worker had, and says so."""
        try:
            self.lists = lists.read(self.settings)
        except Exception as exc:
            log.error("block and allow lists not read (%s); the lists read before keep acting", exc)
        return self.lists

    def reload_rules(self) -> rules.RuleSet:
        """Read the rules file again and swap the rules in whole. A file that fails validation raises
        RuleError (logged, with the rule it names) and the rules before it keep running."""
        stamp = self._stamp()
        try:
            loaded = rules.load(self.settings.rules.rules_file, ANSWER_VALUES)
        except rules.RuleError as exc:
            self._rules_stamp = stamp
            log.error("rules not reloaded, %d rules from %s keep running: %s", len(self.rules.rules), self.rules.source, exc)
            raise
        self.rules, self._rules_stamp = loaded, stamp
        log.warning("rules reloaded from %s: %d active, %d in shadow", loaded.source,
                    sum(r.mode == "active" for r in loaded.rules), sum(r.mode == "shadow" for r in loaded.rules))
        return loaded

    def _load(self, alias: str) -> None:
        """Load in the background of serving and swap in whole: a request holds the model it started
        with, and a version that fails to load or to score leaves the current one in place."""
        loaded = load(self.settings, alias)
        with self._lock:
            if loaded is not None:
                self.models = {**self.models, alias: loaded}
            elif alias == "challenger":
                self.models = {k: v for k, v in self.models.items() if k != alias}
        if loaded is not None:
            self.metrics.model_version.labels(alias).set(float(loaded.version))

    def versions(self) -> dict[str, str | None]:
        return {alias: m.version for alias, m in self.models.items()}

    def reload(self) -> dict[str, str | None]:
        """Load both aliases afresh (start-up, admin reload), then adopt the shared routing."""
        for alias in ALIASES:
            self._load(alias)
        try:
            aliases, routing = registry.serving_state(self.settings)
            self._adopt(routing, aliases.get("challenger"))
        except Exception as exc:
            log.warning("reading the shared routing failed (%s); keeping share %s", exc, self.router.challenger_share)
        return self.versions()

    def sync(self) -> dict[str, str | None]:
        """Follow the registry, as every worker and replica does on its own: load an alias whose version
        moved (or that is served from the disk cache), drop a removed challenger, adopt routing that
        another worker, a guardrail or an operator set."""
        aliases, routing = registry.serving_state(self.settings)
        for alias in ALIASES:
            current = self.models.get(alias)
            if current is None or current.version != aliases.get(alias) or current.source == "cache":
                if alias in aliases or current is not None:
                    self._load(alias)
        self._adopt(routing, aliases.get("challenger"))
        return self.versions()

    def routing(self) -> dict[str, object]:
        return {"challenger_share": self.router.challenger_share, "mode": self.router.mode}

    def set_routing(self, share: float | None = None, mode: Mode | None = None) -> tuple[dict[str, object], dict[str, object]]:
        """Change the split for every worker: written to the registry first (if that fails, nothing
        changes), applied here at once, picked up by the other workers at their next poll."""
        previous = self.routing()
        share = self.router.challenger_share if share is None else share
        mode = self.router.mode if mode is None else mode
        registry.set_routing(self.settings, registry.Routing(share, mode, self._challenger()))
        self.router.set_share(share)
        self.router.mode = mode
        log.warning("routing changed: %s -> %s", previous, self.routing())
        return previous, self.routing()

    def _challenger(self) -> str | None:
        loaded = self.models.get("challenger")
        return loaded.version if loaded is not None else None

    def _adopt(self, routing: registry.Routing | None, challenger: str | None) -> None:
        """Follow the shared routing; a share set for another challenger version gives way to the
        configured one, so a new challenger never inherits its predecessor's share."""
        previous = self.routing()
        if routing is not None:
            self.router.set_share(routing.share_for(challenger, self.settings.canary.challenger_share))
            if routing.mode in MODES:
                self.router.mode = routing.mode
        if self.routing() != previous:
            log.warning("routing adopted from the registry: %s -> %s", previous, self.routing())

    @property
    def ready(self) -> bool:
        return "champion" in self.models

    def score_many(self, transactions: Sequence[Transaction], deadlines: Sequence[float],
                   request_ids: Sequence[str | None], queued: Sequence[float], explained: Sequence[bool]) -> list[Score | Exception]:
        """The full path for transactions scored together: one online read for all, then route, model
        and log each under its request's id. A transaction whose deadline (a `perf_counter` time)
        passed during the read has had its 503 already: it is neither scored nor logged. One failure
        is that transaction's answer, not its neighbours'. Latency runs from `queued`, when the request
        handed the transaction over: under load, the wait for this thread is most of what a caller
        waits, and a latency taken from the batch's start hid it from the metric and its alert.
        `explained` says which answers carry their reason codes."""
        lookups = self.online.lookup_many([live_tx(tx) for tx in transactions])
        now = time.perf_counter()
        answers: list[Score | Exception] = []
        records: list[Record] = []
        for tx, lookup, deadline, request_id, started, reasons in zip(transactions, lookups, deadlines, request_ids, queued, explained):
            if now > deadline:
                answers.append(TimeoutError(f"transaction {tx.transaction_id}: the time limit passed during the feature lookup"))
                continue
            logs.request_id.set(request_id)
            try:
                answer, record = self._answer(tx, lookup.values, lookup.missing, lookup.degraded, started, reasons)
            except Exception as exc:
                answers.append(exc)
                continue
            answers.append(answer)
            records.append(record)
        logs.request_id.set(None)
        self._publish(records, len(transactions))
        return answers

    def score_features(self, tx: Transaction, features: dict[str, float], reasons: bool = False) -> Score:
        """The caller brings the features (a batch job, a replay, a benchmark at equal work with a
        plain model server): route, model, log."""
        answer, record = self._answer(tx, features, [], False, time.perf_counter(), reasons)
        self._publish([record])
        return answer

    def _answer(self, tx: Transaction, values: dict[str, float], missing: list[str], degraded: bool,
                started: float, reasons: bool) -> tuple[Score, Record]:
        current = self.models  # one consistent snapshot for this request
        variant = self.router.route(tx.customer_id, "challenger" in current)
        try:
            answer, record = self._score_with(current[variant], variant, tx, values, missing, degraded, started, reasons=reasons)
        except Exception:
            if variant == "champion":
                raise
            # a failing challenger costs the customer nothing: the champion answers, the guardrail counts it
            log.exception("challenger version %s failed; the champion answers", current[variant].version)
            self._guard("challenger", 0.0, None)
            answer, record = self._score_with(current["champion"], "champion", tx, values, missing, degraded, started, reasons=reasons)
        self._guard(answer.variant, time.perf_counter() - started, answer.score)
        if self.router.mode == "shadow" and "challenger" in current:
            try:
                self.shadow_queue.put_nowait((tx, values, time.perf_counter()))
            except queue.Full:
                self.shadow_dropped += 1
        return answer, record

    def _guard(self, variant: str, latency: float, score: float | None) -> None:
        self.guardrail.observe(variant, latency, score)
        if not self.guardrail.due() or self.router.challenger_share == 0.0:
            return
        reason = self.guardrail.breach()
        if reason is not None:
            previous = self.router.challenger_share
            self.router.set_share(0.0)
            self.guardrail.reset()
            self.metrics.guardrail_trips.inc()
            log.error("guardrail tripped: %s; challenger share %s -> 0", reason, previous)
            self.last_trip = reason
            # every other worker must stop too: share 0 goes to the registry, off the request path
            threading.Thread(target=self._publish_trip, name="guardrail-publish", daemon=True).start()

    def _publish_trip(self) -> None:
        try:
            registry.set_routing(self.settings, registry.Routing(0.0, self.router.mode, self._challenger()))
        except Exception as exc:
            log.error("publishing the guardrail trip to the registry failed (%s); only this worker stopped", exc)

    def _score_with(self, model: LoadedModel, variant: str, tx: Transaction, values: dict[str, float], missing: list[str],
                    degraded: bool, started: float, shadow: bool = False, reasons: bool = False) -> tuple[Score, Record]:
        """The answer, and its prediction-log record, which the metrics are counted from too. The
        reason codes cost about one more prediction, paid only by an answer that asks for them."""
        row = [values[name] for name in model.features]
        score = model.score_one(row)
        elapsed = time.perf_counter() - started
        is_fraud = score >= model.threshold
        # rules act on the band, then exploration on what they decided: a rule's declines get labels too
        decision, fired, shadowed = self.rules.decide(decide_one(model.bands, score), values, score,
                                                      self.lists.actions(tx.customer_id, tx.terminal_id))
        decision, propensity = explore(decision, tx.transaction_id, self.settings.costs.exploration_share)
        answer = Score(
            transaction_id=tx.transaction_id,
            score=score,
            is_fraud=is_fraud,
            threshold=model.threshold,
            decision=decision,
            variant=variant,
            model_version=model.version,
            features_missing=missing,
            degraded=degraded,
            reasons=explain(model, row) if reasons else None,
            rules=fired,
            rules_shadow=shadowed,
        )
        record: Record = {
            "transaction_id": tx.transaction_id,
            "customer_id": tx.customer_id,
            "terminal_id": tx.terminal_id,
            "timestamp": tx.timestamp.replace(tzinfo=None),
            **values,
            "score": score,
            "is_fraud_predicted": is_fraud,
            "decision": decision,
            "rules": ",".join(fired),
            "rules_shadow": ",".join(shadowed),
            "propensity": propensity,
            "variant": variant,
            "shadow": shadow,
            "model_version": model.version,
            "features_missing": len(missing),
            "degraded": degraded,
            "latency_ms": elapsed * 1000,
        }
        return answer, record

    def _publish(self, records: list[Record], batch_size: int | None = None) -> None:
        """Log what one batch scored, and hand it to the metrics, which count it off the request path
        (`Metrics.observe`, `_report`)."""
        self.metrics.observe(records, batch_size)
        for record in records:
            self.log.put(record)
            if not record["shadow"]:
                self.seen.put(record)

    def _report(self) -> None:
        """On the prediction log's writer, every second and at shutdown: count the scored batches and
        set the log's own gauges, so a scoring batch writes no metric itself."""
        self.metrics.flush()
        self.metrics.log_dropped.set(self.log.dropped)
        self.metrics.log_depth.set(len(self.log))
