"""The drift job on 100k and 1M logged predictions beside Evidently's preset alone."""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from core.settings import Settings
from pipelines.bench.common import Section

if TYPE_CHECKING:
    import pandas as pd


MONITOR_FEATURES = [f"feature_{i}" for i in range(12)] + ["amount"]


def _logged_traffic(n: int, seed: int, amount_scale: float = 1.0) -> pd.DataFrame:
    """A prediction log's shape: 13 skewed numeric features, a score, a variant and a decision."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    columns = {name: rng.gamma(2.0, 10.0 + i, n) for i, name in enumerate(MONITOR_FEATURES[:-1])}
    frame = pd.DataFrame({**columns, "amount": rng.gamma(2.0, 25.0, n) * amount_scale, "score": rng.beta(0.6, 20, n)})
    return frame.assign(variant="champion", model_version="1", features_missing=0, is_fraud_predicted=frame["score"] >= 0.1)


def _monitor_cost(rows: int, peer: bool, out_dir: str) -> tuple[float, float, float, str]:
    """In a fresh process: seconds, peak and baseline RSS in MB, and the verdict, for the drift job on
    `rows` logged predictions against 100k reference rows (or, as the peer, Evidently's bare preset)."""
    import resource

    from evidently import Report
    from evidently.presets import DataDriftPreset

    from monitoring.drift import DriftLimits, Reference, drift_report

    reference, current = _logged_traffic(100_000, 0), _logged_traffic(rows, 1, amount_scale=1.6)
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    started = time.perf_counter()
    if peer:
        Report([DataDriftPreset(columns=MONITOR_FEATURES)]).run(current_data=current[MONITOR_FEATURES], reference_data=reference[MONITOR_FEATURES]).dict()
        verdict = "-"
    else:
        verdict = drift_report({"champion": Reference("1", reference, 0.1)}, current, MONITOR_FEATURES, Path(out_dir),
                               DriftLimits.from_settings(Settings().monitoring))[0].verdict
    return time.perf_counter() - started, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, baseline, verdict


def monitoring_section(settings: Settings, scale: str, repeat: int) -> Section:
    """The drift job (data drift, score and decision-rate drift, HTML report) on 100k and 1M logged
    predictions, each run in a fresh process so its peak memory is its own; beside Evidently's
    DataDriftPreset alone on the same columns, which is the floor of what the job can cost."""
    import multiprocessing

    section = Section("monitoring (drift job against 100k reference rows, fresh process per run)")
    sizes = {"full": (100_000, 1_000_000), "small": (20_000, 100_000), "smoke": (2_000,)}[scale]
    context = multiprocessing.get_context("spawn")
    for rows in sizes:
        for peer in (False, True):
            runs = []
            for _ in range(repeat):
                with context.Pool(1) as pool:
                    runs.append(pool.apply(_monitor_cost, (rows, peer, str(settings.state_dir / "monitoring-bench"))))
            seconds = statistics.median(r[0] for r in runs)
            label = f"peer: Evidently DataDriftPreset alone, {rows:,} rows" if peer else f"drift job, {rows:,} logged predictions"
            section.add(label, seconds, "s", f"peak RSS {statistics.median(r[1] for r in runs):,.0f} MB "
                        f"(after imports and data {statistics.median(r[2] for r in runs):,.0f} MB), median of {len(runs)}")
    return section
