"""Batch scoring's throughput (`fraudops score`): the last two months of a store at the Handbook's
scale scored whole, point-in-time features, model and Parquet write included, beside the model
alone (the ceiling a batch job can approach) and beside what the same rows cost on the per-request
path (the live state's step and one row through the model, per transaction)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from core.settings import Settings
from pipelines.bench.common import SCALES, Section, timed
from pipelines.bench.serving_section import prepared

SCORED_DAYS = 61
EXPLAINED_ROWS = 20_000  # reason codes cost about a hundred times the score: timed on a slice
PER_REQUEST_ROWS = 2_000  # enough for a steady per-row figure; the full path's rate is the serving section's


def batch_store(settings: Settings, scale: str, registry: Settings) -> Settings:
    """A store at `scale` with its features applied (made once, then kept), scored with the serving
    section's champion (`registry`): the model's size, not the store's, sets its cost per row."""
    from features.labels import clear
    from features.simulator import SimulationConfig, deliver_chargebacks, write_simulation
    from features.store import apply
    from pipelines.flows.featurize import compute_feature_tables

    customers, terminals, days = (SCALES[scale].customers, SCALES[scale].terminals, SCALES[scale].days)
    s = settings.replace(state_dir=settings.state_dir / f"batch-{scale}", mlflow_tracking_uri=registry.tracking_uri,
                         customers=customers, terminals=terminals, days=days)
    if not (s.state_dir / "applied").exists():
        write_simulation(SimulationConfig.from_settings(s.simulation), s.transactions_dir, replace=True)
        clear(s)
        deliver_chargebacks(s)
        compute_feature_tables.fn(s)
        apply(s)
        (s.state_dir / "applied").touch()
    return s


def batch_section(settings: Settings, scale: str, repeat: int) -> Section:
    from features.offline import transactions_between
    from features.state import Tx
    from features.store import historical_features, open_store
    from model.loaded import fetch
    from pipelines.batch import score
    from serving.online import OnlineFeatures
    from training.windows import Windows

    registry, _ = prepared(settings)
    s = batch_store(settings, scale, registry)
    model = fetch(s, "champion")
    if model is None:
        raise RuntimeError(f"no champion in the bench's registry at {s.tracking_uri}")
    end = pd.Timestamp(s.simulation.start_date) + pd.Timedelta(days=s.simulation.days)
    tx = transactions_between(s.transactions_dir, end - pd.Timedelta(days=min(SCORED_DAYS, s.simulation.days)), end).drop(columns=["is_fraud", "fraud_scenario"])
    section = Section(f"batch scoring ({len(tx):,} transactions, the last {SCORED_DAYS} days at {scale} scale; 2 threads; medians of {repeat})")
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "scores.parquet"
        seconds = float(np.median(timed(lambda: score(s, tx, out), repeat)))
        section.add("fraudops score: model fetch, features, model, write", len(tx) / seconds * 60 / 1e6, "M rows/min", f"{seconds:.1f} s")
        sample = tx.tail(EXPLAINED_ROWS)
        seconds = float(np.median(timed(lambda: score(s, sample, out, explain=True), repeat)))
        section.add("fraudops score --explain (reason codes)", len(sample) / seconds * 60 / 1e6, "M rows/min",
                    f"{seconds:.1f} s for {len(sample):,} rows")
    matrix = historical_features(open_store(s), s.features.feature_service, tx)[list(model.features)].to_numpy(np.float64)
    seconds = float(np.median(timed(lambda: model.score(matrix, threads=2), repeat)))
    section.add("peer: the model alone on the joined rows", len(tx) / seconds * 60 / 1e6, "M rows/min", "the ceiling: no join, no write")
    online = OnlineFeatures(registry)  # the serving section's live state, its cards and terminals
    cards = transactions_between(registry.transactions_dir, Windows.from_settings(registry).test_end).head(PER_REQUEST_ROWS)
    # a month past the serving state's data: after every transaction the serving and budget sections add
    clock = [int((pd.Timestamp(registry.simulation.start_date) + pd.Timedelta(days=registry.simulation.days + 30)).value // 1000)]

    def per_request() -> None:
        for row in cards.itertuples(index=False):
            clock[0] += 1  # a new transaction each time, not a retry of one already counted
            lookup = online.lookup(Tx(f"bench-batch-{clock[0]}", row.customer_id, row.terminal_id, row.amount, clock[0]))
            model.score_one([lookup.values[name] for name in model.features])

    seconds = float(np.median(timed(per_request, repeat)))
    section.add("peer: the per-request path, one transaction at a time", PER_REQUEST_ROWS / seconds * 60 / 1e6, "M rows/min",
                f"{seconds / PER_REQUEST_ROWS * 1e6:.0f} us a row, one thread, HTTP not included")
    return section
