"""`fraudops demo`: the whole system end to end on embedded defaults, in a few minutes.

The story it tells: simulate a bank's transactions, build features, train a champion and a
challenger, put them behind the API, replay a calm production period and then one where amounts
inflate, and watch the monitor tell the two apart.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pandas as pd
from rich.console import Console
from rich.table import Table

from core.runtime import prepare, quiet_stdout, wait_until_up
from core.settings import Settings
from pipelines.docs import write_results
from training.results import model_scores, scores_table

if TYPE_CHECKING:
    from pipelines.flows import Monitoring

PRODUCTION_DAYS = 2  # days replayed per period: enough rows for a drift test, quick on 2 cores


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that gives a child process exactly these settings."""
    env = dict(os.environ)
    for key, value in settings.flat().items():
        if value is not None:
            env[f"FRAUDOPS_{key.upper()}"] = str(value)
    return env


@contextmanager
def running_api(settings: Settings, timeout: float = 120.0, log_name: str = "api.log") -> Iterator[subprocess.Popen[bytes]]:
    """Start the API as its own process, as production would (`fraudops serve`), and wait until it is
    ready. `log_name`: its output's file in the state folder, one per API where several share it."""
    command = [str(Path(sys.executable).parent / "fraudops"), "serve"]
    log_path = settings.state_dir / log_name
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, env=settings_env(settings), stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until_up(f"{settings.api_url}/readyz", process, timeout, log_path)
        yield process
    finally:
        process.terminate()
        process.wait(timeout=30)


def wait_for_challenger(settings: Settings, version: str, timeout: float = 60.0) -> str | None:
    """The API follows the registry on its own (model_poll_seconds): wait until it serves `version`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        models = httpx.get(f"{settings.api_url}/readyz", timeout=5.0).json()["models"]
        if models.get("challenger", {}).get("version") == version:
            return version
        time.sleep(0.5)
    return None


def run(settings: Settings, console: Console) -> dict[str, object]:
    started = time.monotonic()
    prepare(settings, quiet=True)
    from features.simulator import Drift, SimulationConfig, deliver_chargebacks, write_simulation
    from pipelines.flows import features_flow, training_flow
    from training.fit import ModelConfig
    from training.windows import Windows

    windows = Windows.from_settings(settings)
    calm_start = windows.test_end
    drift_day = settings.simulation.days - PRODUCTION_DAYS
    drift_start = datetime.combine(date.fromisoformat(settings.simulation.start_date), datetime.min.time()) + timedelta(days=drift_day)
    if calm_start + timedelta(days=PRODUCTION_DAYS) > drift_start:
        raise ValueError(f"days = {settings.simulation.days} leaves no calm production period after the test window")

    if settings.state_dir.exists():
        shutil.rmtree(settings.state_dir)  # the demo tells its story from an empty state folder
    summary: dict[str, object] = {}

    with console.status("[1/6] simulating transactions"):
        cfg = SimulationConfig.from_settings(settings.simulation, drift=(Drift.amount_inflation,), drift_start_day=drift_day)
        summary["transactions"] = write_simulation(cfg, settings.transactions_dir)
        # the history's chargebacks, the test window's included: they arrived before anyone trained on it
        summary["chargebacks"] = deliver_chargebacks(settings, windows.test_end + timedelta(days=settings.features.label_delay_days))
    console.print(f"[green]✓[/] simulated {summary['transactions']:,} transactions over {settings.simulation.days} days "
                  f"(amounts inflate from day {drift_day}); {summary['chargebacks']:,} chargebacks of the history in the label store")

    with console.status("[2/6] computing features, feast apply"):
        with quiet_stdout():
            feature_rows = features_flow(settings)
    console.print(f"[green]✓[/] event-time features: {feature_rows['transaction']:,} rows, one per transaction as of its own time")

    trained: dict[str, dict[str, object]] = {}
    # The challenger differs in capacity only: the class weight is chosen by validation for both, so
    # their scores stay comparable and the canary guardrail's PSI check judges behaviour, not scale.
    for role, config in (("champion", ModelConfig()), ("challenger", ModelConfig(num_leaves=63))):
        with console.status(f"[3/6] training the {role}"):
            trained[role] = training_flow(settings)(settings, config)
        console.print(f"[green]✓[/] {role}: version {trained[role]['version']} "
                      f"AP {trained[role]['test_average_precision']:.3f}, ROC AUC {trained[role]['test_roc_auc']:.3f}")

    verdicts: dict[str, Monitoring] = {}
    with console.status("[4/6] starting the API"), running_api(settings):
        console.print(f"[green]✓[/] API ready at {settings.api_url}/docs")
        for period, first in (("calm", calm_start.to_pydatetime()), ("drifted", drift_start)):
            verdicts[period] = production_period(settings, console, period, first, summary)

    print_summary(settings, console, time.monotonic() - started, trained, verdicts, summary)
    summary.update(trained=trained, verdicts={k: v.verdict for k, v in verdicts.items()},
                   retrained={k: v.retrain for k, v in verdicts.items() if v.retrain is not None},
                   seconds=time.monotonic() - started)
    write_results(settings.reports_dir / "demo.json", summary, "make demo")  # the figures docs quote (docs/results/demo.json)
    return summary


def print_summary(settings: Settings, console: Console, seconds: float, trained: dict[str, dict[str, object]],
                  verdicts: dict[str, Monitoring], summary: dict[str, object]) -> None:
    """The models' test figures, what the monitor said of each period, and where to look."""
    scores = [model_scores(result, settings, f"{role} v{result['version']}")[0] for role, result in trained.items()]
    console.print(scores_table(scores + model_scores(trained["champion"], settings)[1:], settings,
                               f"test window (no model costs {trained['champion']['test_cost_of_no_model']:,.0f})"))
    table = Table(title=f"fraudops demo finished in {seconds:.0f}s")
    table.add_column("what")
    table.add_column("result")
    for period, verdict in verdicts.items():
        table.add_row(f"drift, {period} period", f"{verdict.verdict}: {os.path.relpath(str(verdict.drift.html))}")
    for period, outcome in verdicts.items():
        if outcome.retrain is not None:
            served = "served by the canary" if summary.get("canary") else "not served"
            table.add_row(f"retrain after the {period} period", f"v{outcome.retrain['version']}: {outcome.retrain['gate']}, {served}; "
                          f"why in {os.path.relpath(settings.reports_dir / period / 'monitor.json')}")
    table.add_row("MLflow UI", "make mlflow-ui  →  http://127.0.0.1:5000")
    table.add_row("Evidently UI (every monitor run)", "make monitor-ui  →  http://127.0.0.1:8001")
    table.add_row("API docs", f"make serve  →  {settings.api_url}/docs")
    table.add_row("prediction log", os.path.relpath(settings.predictions_dir))
    console.print(table)


def production_period(settings: Settings, console: Console, period: str, first: datetime, summary: dict[str, object]) -> Monitoring:
    """Replay `PRODUCTION_DAYS` from `first` through the running API with labels at their delay, then
    run the monitor over them, and follow a retrain it triggers into the canary."""
    from features.offline import transactions_between
    from features.simulator import deliver_chargebacks
    from features.store import materialize
    from pipelines.flows import monitor_flow
    from pipelines.replay import label_feed, replay

    # the label store and the live state as they stood when the period began: the days between were not replayed
    deliver_chargebacks(settings, first)
    materialize(settings, first)
    for offset in range(PRODUCTION_DAYS):
        day = first + timedelta(days=offset)
        with console.status(f"[5/6] replaying the {period} period, {day.date()}"):
            tx = transactions_between(settings.transactions_dir, day, day + timedelta(days=1))
            # the labels of earlier transactions arrive as the day goes on, and move terminal risk then
            stats = replay(settings.api_url, tx, feed=label_feed(settings, pd.Timestamp(day), pd.Timestamp(day + timedelta(days=1))))
        console.print(f"[green]✓[/] replayed {stats.sent:,} transactions of {day.date()} at {stats.rate:,.0f}/s, "
                      f"statuses {stats.statuses}, variants {stats.by_variant}")
    time.sleep(1.5)  # let the prediction log's writer flush its last batch
    with console.status(f"[6/6] monitoring the {period} period"):
        outcome = monitor_flow(settings, period, first, first + timedelta(days=PRODUCTION_DAYS))
    console.print(f"[green]✓[/] {period} period: drift verdict [bold]{outcome.verdict}[/] "
                  f"({outcome.drift.drifted_share:.0%} of features drifted)")
    for q in outcome.quality.values():
        console.print(f"[green]✓[/] labels arrived for {q.labelled_rows:,} {q.variant} predictions: AP {q.average_precision:.3f} "
                      f"(its reference traffic {q.reference_average_precision:.3f}), precision {q.precision:.3f}, recall {q.recall:.3f}")
    if outcome.retrain is not None and outcome.retrain["version"] is None:
        console.print(f"[yellow]![/] the monitor retrained, and the candidate failed the gate: {outcome.retrain['gate']}")
    elif outcome.retrain is not None:
        console.print(f"[green]✓[/] the monitor retrained: version {outcome.retrain['version']} is the {outcome.retrain['alias']} "
                      f"(AP {outcome.retrain['test_average_precision']:.3f}); why: {'; '.join(outcome.reasons)}")
        with console.status("waiting for the API to follow the registry"):
            summary["canary"] = wait_for_challenger(settings, str(outcome.retrain["version"]))
        console.print(f"[green]✓[/] the API serves challenger v{summary['canary']} to {settings.canary.challenger_share:.0%} of customers")
    return outcome
