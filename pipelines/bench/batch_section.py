"""Batch scoring's throughput (`fraudops score`): the held-out month of the bench's state scored
whole, point-in-time features, model and Parquet write included, beside what the same rows cost
on the per-request path (the live state's step and one row through the model, per transaction)
and beside the model alone, the ceiling a batch job can approach."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from core.settings import Settings
from pipelines.bench.common import Section, timed
from pipelines.bench.serving_section import prepared

PER_REQUEST_ROWS = 2_000  # enough for a steady per-row figure; the full path's rate is the serving section's


def batch_section(settings: Settings, scale: str, repeat: int) -> Section:
    from features.offline import transactions_between
    from features.state import Tx
    from features.store import historical_features, open_store
    from pipelines.batch import score
    from pipelines.training import Windows
    from serving.models import fetch
    from serving.online import OnlineFeatures

    s, _ = prepared(settings)
    model = fetch(s, "champion")
    if model is None:
        raise RuntimeError(f"no champion in the bench's registry at {s.tracking_uri}")
    windows = Windows.from_settings(s)
    tx = transactions_between(s.transactions_dir, windows.test_start, windows.test_end).drop(columns=["is_fraud", "fraud_scenario"])
    section = Section(f"batch scoring ({len(tx):,} held-out transactions, 2 threads; medians of {repeat})")
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "scores.parquet"
        for label, explain in (("fraudops score: features, model, write", False), ("fraudops score --explain (reason codes)", True)):
            seconds = float(np.median(timed(lambda: score(s, tx, out, explain=explain), repeat)))
            section.add(label, len(tx) / seconds * 60 / 1e6, "M rows/min", f"{seconds:.1f} s")
    matrix = historical_features(open_store(s), s.feature_service, tx)[list(model.features)].to_numpy(np.float64)
    seconds = float(np.median(timed(lambda: model.score(matrix, threads=2), repeat)))
    section.add("peer: the model alone on the joined rows", len(tx) / seconds * 60 / 1e6, "M rows/min", "the ceiling: no join, no write")
    online = OnlineFeatures(s)
    sample = tx.head(PER_REQUEST_ROWS)
    # a month past the test window: after every transaction the serving and budget sections add
    clock = [int((windows.test_end + pd.Timedelta(days=30)).value // 1000)]

    def per_request() -> None:
        for row in sample.itertuples(index=False):
            clock[0] += 1  # a new transaction each time, not a retry of one already counted
            lookup = online.lookup(Tx(f"bench-batch-{clock[0]}", row.customer_id, row.terminal_id, row.amount, clock[0]))
            model.score_one([lookup.values[name] for name in model.features])

    seconds = float(np.median(timed(per_request, repeat)))
    section.add("peer: the per-request path, one transaction at a time", PER_REQUEST_ROWS / seconds * 60 / 1e6, "M rows/min",
                f"{seconds / PER_REQUEST_ROWS * 1e6:.0f} us a row, one thread, HTTP not included")
    return section
