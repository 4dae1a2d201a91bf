"""The request's latency budget, step by step, in this process: the live state's step with the
request-time features (`serving.online`), the model on one row (LightGBM's single-row fast path
beside `Booster.predict`, the public call it stands in for), 50 active rules (model/rules.py), the
reason codes an answer can ask for, and the prediction log's append. The
HTTP stack's share is the serving section's floor."""

from __future__ import annotations

import time
from functools import partial

import numpy as np

from core.settings import Settings
from pipelines.bench.common import Section, latency_ms
from pipelines.bench.serving_section import prepared, write_rules


def budget_section(settings: Settings, scale: str, repeat: int) -> Section:
    from features.live import ANSWER_VALUES
    from features.state import Tx
    from model import rules
    from model.loaded import load_from_registry
    from model.native.lightgbm_row import FastRowPredictor, RowScorer, public_predictor
    from serving.online import OnlineFeatures
    from serving.predlog import PredictionLog
    from serving.service import explain

    s, tx = prepared(settings)
    model = load_from_registry(s, "champion")
    if model is None:
        raise RuntimeError(f"no champion in the bench's registry at {s.tracking_uri}")
    section = Section("request budget (one process, one request at a time, p50 / p99 over many calls)")
    online = OnlineFeatures(s)
    clock = [int(tx["timestamp"].iloc[0].value // 1000)]
    rng = np.random.default_rng(0)

    def lookup() -> object:
        clock[0] += 43_000_000  # a new transaction of one of the cards, event time moving as in the serving section
        i = int(rng.integers(s.simulation.customers))
        return online.lookup(Tx(f"budget-{clock[0]}", str(i), str(i * 2 % s.simulation.terminals), 25.5, clock[0]))

    p50, p99 = latency_ms(lookup, 2_000)
    section.add("state step and request-time features (SQLite), p50", p50, "ms", f"p99 {p99:.3f} ms", p99=p99)
    row = np.asarray([lookup().values[name] for name in model.features], dtype=np.float64)  # type: ignore[attr-defined]
    scorers: list[tuple[str, RowScorer]] = [
        ("model, one row: LightGBM's single-row fast path", FastRowPredictor(model.booster, len(model.features))),
        ("peer: Booster.predict on one row", public_predictor(model.booster, len(model.features)))]
    for label, scorer in scorers:
        p50, p99 = latency_ms(partial(scorer, row), 20_000)
        section.add(f"{label}, p50", p50 * 1000, "us", f"p99 {p99 * 1000:.1f} us", p99=p99 * 1000)
    values = lookup().values  # type: ignore[attr-defined]
    fifty = rules.load(write_rules(s.state_dir / "bench-rules.toml"), ANSWER_VALUES)
    p50, p99 = latency_ms(partial(fifty.decide, "approve", values, 0.01), 20_000)
    section.add(f"{len(fifty.rules)} active rules, one decision, p50", p50 * 1000, "us",
                f"p99 {p99 * 1000:.1f} us; the serving section's rule server uses the same file", p99=p99 * 1000)
    p50, p99 = latency_ms(partial(explain, model, row.tolist()), 5_000)
    section.add("reason codes (?explain=true), one row, p50", p50 * 1000, "us", f"p99 {p99 * 1000:.1f} us; only an answer that asks pays it", p99=p99 * 1000)
    log = PredictionLog(lambda batch: None, batch_size=4096, max_queue=1_000_000)
    record = {"transaction_id": "t", "score": 0.1, **dict(zip(model.features, row.tolist()))}
    started = time.perf_counter()
    for _ in range(100_000):
        log.put(record)
    section.add("prediction log append, mean", (time.perf_counter() - started) / 100_000 * 1e6, "us", "the writer thread's Parquet write is off the request")
    return section
