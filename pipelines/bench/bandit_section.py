"""Bandit routing against a fixed 10% canary (`pipelines/bench/bandit_replay.py`): the cost above always routing
to the better model, on simulated canary traffic with a week's label delay, for a challenger that is
better and one that is worse. Not a speed figure: what a rollout policy costs, beside its peer."""

from __future__ import annotations

from pathlib import Path

from core.settings import Settings
from pipelines.bench.bandit_replay import Replay, replay, traffic
from pipelines.bench.common import Section

DAYS = 42
CASES = {"a better challenger": 0.8, "a worse challenger": -0.5}  # the challenger's extra separation of the classes


def bandit_section(settings: Settings, scale: str, repeat: int) -> Section:
    customers = {"full": 1_000, "small": 300, "smoke": 100}[scale]
    section = Section(f"bandit routing against a fixed 10% canary ({DAYS} days, {customers:,} cards a day, labels a week late)")
    runs: dict[str, dict[str, Replay]] = {}
    for case, gain in CASES.items():
        frame = traffic(DAYS, customers, gain, seed=0)
        runs[case] = {policy: replay(frame, policy, label_delay=settings.features.label_delay_days, fixed_share=0.1,
                                     min_share=settings.canary.bandit_min_share, max_share=settings.canary.bandit_max_share)
                      for policy in ("canary", "bandit")}
        canary, bandit = runs[case]["canary"], runs[case]["bandit"]
        section.add(f"{case}: bandit's regret", bandit.regret[-1], "cost", f"its share on the last day {bandit.shares[-1]:.2f}")
        section.add(f"{case}: peer, the fixed canary's regret", canary.regret[-1], "cost",
                    f"bandit / canary {bandit.regret[-1] / canary.regret[-1]:.2f}")
    plot(runs, settings.state_dir / "bandit.png")
    return section


def plot(runs: dict[str, dict[str, Replay]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(runs), figsize=(11, 6.5), sharex=True)
    for column, (case, policies) in enumerate(runs.items()):
        for policy, run in policies.items():
            axes[0, column].plot(run.regret, label=policy)
            axes[1, column].plot(run.shares, label=policy)
        axes[0, column].set(title=case, ylabel="cumulative regret (cost)")
        axes[1, column].set(xlabel="day", ylabel="challenger's share")
        axes[0, column].legend()
    fig.suptitle("Thompson sampling against a fixed 10% canary, labels 7 days late")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
