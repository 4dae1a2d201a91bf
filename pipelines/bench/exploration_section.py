"""The feedback loop's bias over weeks of simulated traffic (`pipelines/bench/exploration_replay.py`): each week's
retrained model on the week's true labels, with declines counted legitimate, left out, or explored."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from core.settings import Settings
from pipelines.bench.common import SCALES, Section
from pipelines.bench.exploration_replay import ARMS, Run, replay

WEEKS = 8
SHARE = 0.1  # of would-be declines explored: above the 0.5% default, so that a few thousand cards show it


def exploration_frame(s: Settings) -> tuple[pd.DataFrame, list[str]]:
    """A fresh simulation's feature table with the simulator's true labels (the experiment plays the world)."""
    from core.query import select
    from features.compute import FEATURES_FILE
    from features.labels import clear
    from features.live import LIVE_FEATURES
    from features.offline import parts_glob
    from features.simulator import SimulationConfig, deliver_chargebacks, write_simulation
    from pipelines.flows.featurize import compute_feature_tables

    write_simulation(SimulationConfig.from_settings(s.simulation), s.transactions_dir, replace=True)
    clear(s)
    deliver_chargebacks(s)
    compute_feature_tables.fn(s)
    frame = select(f"""SELECT f.*, t.customer_id, t.amount, t.is_fraud FROM read_parquet('{s.features_dir / FEATURES_FILE}') AS f
                       JOIN read_parquet('{parts_glob(s.transactions_dir)}') AS t USING (transaction_id) ORDER BY f.event_timestamp""").df()
    return frame, ["amount", *LIVE_FEATURES]


def exploration_section(settings: Settings, scale: str, repeat: int) -> Section:
    customers, terminals = {"full": (5_000, 10_000), "small": (2_000, 4_000), "smoke": (SCALES["smoke"].customers, SCALES["smoke"].terminals)}[scale]
    days = 30 + 28 + WEEKS * 7  # warm-up of the windows, the first model's weeks, the replayed weeks
    s = settings.replace(state_dir=settings.state_dir / "exploration", customers=customers, terminals=terminals,
                         days=days, train_start_day=30, train_days=14, test_days=7)
    frame, features = exploration_frame(s)
    start = pd.Timestamp(s.simulation.start_date) + pd.Timedelta(days=58)
    runs = {arm: replay(frame, features, start, WEEKS, arm, SHARE, delay_days=s.features.label_delay_days) for arm in ARMS}
    section = Section(f"the feedback loop's bias ({WEEKS} weeks, {customers:,} cards, top 1% declined, {SHARE:.0%} of declines explored)")
    for arm, run in runs.items():
        section.add(f"{arm}: AP of the last week's model", run.weekly_ap[-1], "AP",
                    f"mean over weeks 2-{WEEKS} {np.mean(run.weekly_ap[1:]):.3f}; first week {run.weekly_ap[0]:.3f}; "
                    f"{run.trained_on_explored:,} explored reviews fitted")
    plot(runs, settings.state_dir / "exploration.png")
    return section


def plot(runs: dict[str, Run], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    labels = {"naive": "declines counted legitimate (no chargeback)", "censored": "declines left out",
              "explored": f"{SHARE:.0%} of declines explored, weighted 1 / propensity"}
    for arm, run in runs.items():
        ax.plot(range(1, len(run.weekly_ap) + 1), run.weekly_ap, marker="o", label=labels[arm])
    ax.set(xlabel="week (each retrained on the weeks before, a label delay back)", ylabel="AP on the week's true labels",
           title="Retraining on its own decisions' labels")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
