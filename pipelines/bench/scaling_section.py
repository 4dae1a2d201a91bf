"""How the batch jobs grow with the data: the feature job (here and on a Dask cluster) and the
LightGBM fit, at 1x, 4x and 16x the Handbook's scale (5,000 cards, 10,000 terminals, 183 days, times
k), each run in a fresh process so that its peak memory is its own. One run per size: a growth
curve, not a median."""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING

from core.settings import Settings
from pipelines.bench.common import SCALES, Section

if TYPE_CHECKING:
    from distributed import Client

DASK_WORKERS = 2
Figures = tuple[float, float, int]  # seconds, peak RSS in MB, rows


def _peak_mb() -> float:
    """This process's own peak resident set (VmHWM), in MB. Not getrusage's ru_maxrss: Linux carries
    that across exec, so a child started from a bench process that had simulated gigabytes reported
    the parent's peak as its own."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024


@contextmanager
def _local_cluster() -> Iterator[Client]:
    """A client of a LocalCluster of DASK_WORKERS processes of one thread each, as both Dask jobs use."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=DASK_WORKERS, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, Client(cluster) as client:
        yield client


def _peak_with_workers(client: Client) -> float:
    """The largest peak RSS of this process and the cluster's workers, in MB."""
    return max([_peak_mb(), *client.run(_peak_mb).values()])


def _features(settings_json: str, on_dask: bool) -> Figures:
    """Seconds, peak RSS in MB (the largest of this process and the Dask workers) and rows written."""
    from features.compute import FRAUDS_FILE, compute_features
    from features.compute import on_dask as dask_runner
    from features.labels import write_frauds

    s = Settings.model_validate_json(settings_json)
    delay = s.features.label_delay_days
    started = time.perf_counter()
    frauds = write_frauds(s, s.features_dir / FRAUDS_FILE)
    if not on_dask:
        rows = compute_features(s.transactions_dir, s.features_dir, frauds, delay)["transaction"]
        return time.perf_counter() - started, _peak_mb(), rows
    with _local_cluster() as client:
        rows = compute_features(s.transactions_dir, s.features_dir, frauds, delay, s.features.feature_buckets, dask_runner(client.scheduler_info()["address"]))["transaction"]
        seconds = time.perf_counter() - started
        peak = _peak_with_workers(client)
    return seconds, peak, rows


def _fit(settings_json: str, on_dask: bool) -> Figures:
    """The LightGBM fit of the train flow on the training window's rows, features read from the
    feature table: seconds, peak RSS in MB (with Dask the largest of this process and the workers),
    rows fitted. In one process it stops early on validation; lightgbm.dask has no early stopping and
    runs the configured rounds, so the two fits differ in trees as well as in where they run."""
    from core.query import select
    from features.compute import FEATURES_FILE
    from features.live import LIVE_FEATURES
    from features.offline import parts_glob
    from training.fit import ModelConfig, fit_booster
    from training.windows import Windows, window

    s = Settings.model_validate_json(settings_json)
    windows = Windows.from_settings(s)
    frame = select(f"""SELECT f.*, t.customer_id, t.terminal_id, t.amount, t.is_fraud FROM read_parquet('{s.features_dir / FEATURES_FILE}') AS f
                       JOIN read_parquet('{parts_glob(s.transactions_dir)}') AS t USING (transaction_id)
                       WHERE f.event_timestamp >= TIMESTAMP '{windows.train_start}' AND f.event_timestamp < TIMESTAMP '{windows.train_end}'""").df()
    third = windows.train_start + (windows.train_end - windows.train_start) * 2 / 3  # as `split`: validation last
    fit, validation = window(frame, windows.train_start, third), window(frame, third, windows.train_end)
    features, config = ["amount", *LIVE_FEATURES], ModelConfig(scale_pos_weight=1.0)
    if not on_dask:
        started = time.perf_counter()
        fit_booster(fit, validation, features, config)
        return time.perf_counter() - started, _peak_mb(), len(fit)
    with _local_cluster() as client:
        started = time.perf_counter()
        fit_booster(fit, validation, features, config, client)
        seconds = time.perf_counter() - started
        peak = _peak_with_workers(client)
    return seconds, peak, len(fit)


def _call(conn: Connection, call: Callable[..., Figures], args: tuple[object, ...]) -> None:
    try:
        conn.send(call(*args))
    except BaseException as exc:  # noqa: BLE001 - re-raised in the parent
        conn.send(exc)
        raise


def in_fresh_process(call: Callable[..., Figures], args: tuple[object, ...]) -> Figures:
    """`call(*args)` in a new interpreter, which may start processes of its own (a pool's workers are
    daemons and may not: a LocalCluster's nannies would fail to start)."""
    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    process = context.Process(target=_call, args=(send, call, args))
    process.start()
    send.close()  # ours: so that a child that dies without an answer ends the wait
    try:
        result = receive.recv()
    except EOFError:
        result = None
    process.join()
    if result is None:
        raise RuntimeError(f"{call.__name__} died with exit code {process.exitcode} before answering")
    if isinstance(result, BaseException):
        raise result
    return result


def scaling_section(settings: Settings, scale: str, repeat: int) -> Section:
    from features.labels import clear
    from features.simulator import SimulationConfig, deliver_chargebacks, write_simulation

    section = Section("scaling (fresh process per run; one run per size; Dask: a LocalCluster of 2 worker processes on this machine)")
    factors = {"full": (1, 4, 16), "small": (1, 2, 4), "smoke": (1,)}[scale]
    size = SCALES[scale]
    base = (size.customers, size.terminals, size.days)
    curves: dict[str, list[Figures]] = {}
    for k in factors:
        span = settings.training.train_days + settings.features.label_delay_days + settings.training.test_days  # the protocol ends on the last day
        s = settings.replace(state_dir=settings.state_dir / f"scaling-{k}x", customers=base[0] * k,
                             terminals=base[1] * k, days=base[2], train_start_day=base[2] - span)
        rows = write_simulation(SimulationConfig.from_settings(s.simulation), s.transactions_dir, replace=True)
        clear(s)
        deliver_chargebacks(s)
        as_json = s.model_dump_json()
        for label, call, args in (("feature job, one machine", _features, (as_json, False)),
                                  ("feature job, Dask", _features, (as_json, True)),
                                  ("LightGBM fit, training window", _fit, (as_json, False)),
                                  ("LightGBM fit, Dask", _fit, (as_json, True))):
            seconds, peak, done = in_fresh_process(call, args)
            section.add(f"{k}x: {label}", seconds, "s", f"{done:,} rows of {rows:,} transactions")
            section.add(f"{k}x: {label}: peak RSS", peak, "MB", "this process's own (VmHWM); with Dask the largest of it and the workers")
            curves.setdefault(label, []).append((seconds, peak, done))
    plot = settings.state_dir / "scaling.png"
    plot_curves(curves, plot)
    section.add("plot", float(len(factors)), "sizes", str(plot))
    return section


def plot_curves(curves: dict[str, list[Figures]], path: Path) -> None:
    """Time and peak memory against rows, one line per job, on log-log axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for label, points in curves.items():
        rows = [p[2] for p in points]
        left.plot(rows, [p[0] for p in points], marker="o", label=label)
        right.plot(rows, [p[1] for p in points], marker="o", label=label)
    for axis, what in ((left, "seconds"), (right, "peak RSS, MB")):
        axis.set(xscale="log", yscale="log", xlabel="rows", ylabel=what)
        axis.grid(True, which="both", alpha=0.3)
    left.legend(fontsize=8)
    fig.suptitle("batch jobs at 1x, 4x and 16x the Handbook's scale (2 cores)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
