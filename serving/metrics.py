"""The API's Prometheus metrics, whole across uvicorn's workers.

Each worker is its own process, and a scrape of `/metrics` reaches one of them: with per-process
counters, Prometheus saw one worker's count, then another's, and read every drop as a counter reset.
So a server with several workers keeps its metrics in prometheus_client's multiprocess mode: each
worker writes its values to files in one folder (`PROMETHEUS_MULTIPROC_DIR`, which must be set before
prometheus_client is imported, so the launcher sets it: `worker_metrics_env`), and every scrape sums
them. Gauges say how to combine workers: a count of dropped records adds up, a model version or the
online store's breaker takes the highest.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess

from core.monitor_metrics import MonitoringCollector
from serving.native.prometheus_bulk import observe_many

MULTIPROCESS = "PROMETHEUS_MULTIPROC_DIR"
PREFIX = "fraudops-metrics-"


def worker_metrics_env(workers: int) -> dict[str, str]:
    """The environment for a server about to start its workers: a new, empty folder for their metrics,
    its own even where replicas share the state folder (each replica is scraped on its own). A single
    worker runs in the launcher's process, which has imported prometheus_client already, and needs none."""
    return {} if workers == 1 else {MULTIPROCESS: tempfile.mkdtemp(prefix=PREFIX)}


class Metrics:
    def __init__(self, reports_dir: Path) -> None:
        # Only a launcher's folder counts: importing Feast points the variable at a temporary folder
        # of its own whenever it is unset, so its presence alone proves nothing.
        self.shared = Path(os.environ.get(MULTIPROCESS, "")).name.startswith(PREFIX)
        self.registry = CollectorRegistry()
        self.reports = MonitoringCollector(reports_dir)  # the newest monitor run, read at scrape time
        r = self.registry
        r.register(self.reports)
        self.responses = Counter("fraudops_http_responses_total", "HTTP answers by route and status", ["path", "status"], registry=r)
        self.requests = Counter("fraudops_predictions_total", "Scored transactions; shadow scores are logged, never returned", ["variant", "mode"], registry=r)
        self.latency = Histogram(
            "fraudops_prediction_seconds", "Time to score one transaction", ["variant"], registry=r,
            buckets=(0.0005, 0.001, 0.002, 0.003, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5),
        )
        self.scores = Histogram(
            "fraudops_score", "Fraud scores", ["variant"], registry=r, buckets=(0.01, 0.05, 0.1, 0.2, 0.5, 0.8, 0.95)
        )
        self.batch_size = Histogram(
            "fraudops_scoring_batch_transactions", "Transactions per online read: the requests that waited for the scoring thread, together",
            registry=r, buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
        )
        self.missing = Counter("fraudops_features_missing_total", "Answers with defaulted features", registry=r)
        self.degraded = Counter("fraudops_degraded_total", "Answers without the online store", registry=r)
        self.online_skipped = Gauge("fraudops_online_store_skipped", "1 while answers skip a failing online store (online_retry_seconds)",
                                    registry=r, multiprocess_mode="livemax")
        self.log_dropped = Gauge("fraudops_prediction_log_dropped", "Prediction records dropped", registry=r, multiprocess_mode="sum")
        self.log_depth = Gauge("fraudops_prediction_log_queue", "Prediction records waiting", registry=r, multiprocess_mode="livesum")
        self.timeouts = Counter("fraudops_prediction_timeouts_total", "Predictions answered 503 for overrunning their time limit", registry=r)
        self.guardrail_trips = Counter("fraudops_guardrail_trips_total", "Times the challenger was cut to zero", registry=r)
        self.labels = Counter("fraudops_labels_total", "Verdicts received on POST /labels, by what they did", ["outcome"], registry=r)
        self.model_version = Gauge("fraudops_model_version", "Loaded model version", ["alias"], registry=r, multiprocess_mode="livemax")
        self._responded: dict[tuple[str, int], int] = {}  # answers not yet in `responses`
        self._lock = threading.Lock()  # `observe` is called from the scoring, shadow and event-loop threads
        self._observed: list[Sequence[Mapping[str, Any]]] = []  # record batches not yet counted
        self._batch_sizes: list[int] = []

    def responded(self, path: str, status: int, flush_seconds: float = 0.5) -> None:
        """Count one HTTP answer, on the event loop. Answers are added to `responses` every
        `flush_seconds` and before a scrape, not one by one: like the scoring metrics, each addition is a
        locked write to a shared file, and this one ran for every request."""
        if not self._responded:
            asyncio.get_running_loop().call_later(flush_seconds, self.flush_responses)
        key = (path, status)
        self._responded[key] = self._responded.get(key, 0) + 1

    def flush_responses(self) -> None:
        """On the event loop that counts them, so no answer is counted into a dict already flushed."""
        pending, self._responded = self._responded, {}
        for (path, status), count in pending.items():
            self.responses.labels(path, str(status)).inc(count)

    def observe(self, records: Sequence[Mapping[str, Any]], batch_size: int | None = None) -> None:
        """Take a batch of prediction-log records (`serving.predlog`), and the size of the scoring batch
        they came from, for `flush` to count. Any thread may call it: it only appends, since in
        multiprocess mode every metric write is a locked update of a shared file, and the ten of a
        scoring batch cost 15-18 us, 6% of a request scored alone (docs/serving-measurements.md)."""
        with self._lock:
            self._observed.append(records)
            if batch_size is not None:
                self._batch_sizes.append(batch_size)

    def flush(self) -> None:
        """Count what `observe` took since the last flush, each series written once: the prediction log's
        writer calls this every second, a scrape and the shutdown before they read."""
        with self._lock:
            batches, self._observed = self._observed, []
            sizes, self._batch_sizes = self._batch_sizes, []
        if sizes:
            observe_many(self.batch_size, sizes)
        records = [record for batch in batches for record in batch]
        groups: dict[tuple[str, bool], list[Mapping[str, Any]]] = {}
        for record in records:
            groups.setdefault((record["variant"], record["shadow"]), []).append(record)
        for (variant, shadow), group in groups.items():
            self.requests.labels(variant, "shadow" if shadow else "answered").inc(len(group))
            observe_many(self.latency.labels(variant), [r["latency_ms"] / 1000 for r in group])
            observe_many(self.scores.labels(variant), [r["score"] for r in group])
        missing = sum(1 for r in records if r["features_missing"])
        degraded = sum(1 for r in records if r["degraded"])
        if missing:
            self.missing.inc(missing)
        if degraded:
            self.degraded.inc(degraded)

    def labelled(self, counts: Mapping[str, int]) -> None:
        """Count a batch of verdicts by outcome: recorded, changed, unchanged, superseded, unknown."""
        for outcome, count in counts.items():
            if count:
                self.labels.labels(outcome.removesuffix("_count")).inc(count)

    def exposition(self) -> bytes:
        """What `/metrics` answers: this process's metrics, or with several workers all of theirs."""
        self.flush_responses()
        self.flush()
        if not self.shared:
            return generate_latest(self.registry)
        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged)
        merged.register(self.reports)
        return generate_latest(merged)

    def worker_exited(self) -> None:
        """Drop this worker's live gauges (its queue depth, its breaker) from the sums."""
        if self.shared:
            multiprocess.mark_process_dead(os.getpid())
