"""`fraudops bench`: measured performance, each figure beside a peer measured in the same run.

Timings are repeated and reported as medians (and p99 for latencies), never a single run; the
machine's own noise is part of what a reader should see.
"""

from __future__ import annotations

import json
import re
import shutil
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from rich.console import Console
from rich.table import Table

from core.runtime import quiet_stdout, service_available, wait_until_up
from core.settings import Settings

if TYPE_CHECKING:  # pandas is imported where a section needs it, to keep `fraudops bench --help` fast
    import pandas as pd

    from pipelines.training import Windows

REDIS_URL = "127.0.0.1:6379,db=9"


@dataclass
class Section:
    name: str
    rows: list[tuple[str, float, str, str]] = field(default_factory=list)  # figure, value, unit, note

    def add(self, figure: str, value: float, unit: str, note: str = "") -> None:
        self.rows.append((figure, value, unit, note))


def timed(fn: Callable[[], object], repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        out.append(time.perf_counter() - started)
    return out


def latency_ms(fn: Callable[[], object], n: int) -> tuple[float, float]:
    samples = np.array(timed(fn, n)) * 1000
    return float(np.median(samples)), float(np.quantile(samples, 0.99))


def features_section(settings: Settings, scale: str, repeat: int) -> Section:
    """Simulation, the event-time feature job, Feast's join into a training set, the backfill of the
    live state, and the state step a scored transaction pays (update, read, windows)."""
    import pandas as pd

    from features.compute import compute_features
    from features.offline import read_transactions
    from features.simulator import SimulationConfig, write_simulation
    from features.state import Tx, features, open_state
    from features.store import apply, historical_features, materialize, open_store

    section = Section(f"features ({scale} scale)")
    customers, terminals, days = (5_000, 10_000, 183) if scale == "full" else (1_000, 2_000, 60)
    cfg = SimulationConfig.from_settings(settings, customers=customers, terminals=terminals, days=days)
    rows = 0

    def simulate() -> None:
        nonlocal rows
        rows = write_simulation(cfg, settings.transactions_dir, replace=True)

    runs = timed(simulate, repeat)
    section.add("simulate", statistics.median(runs), "s", f"{rows:,} transactions, median of {repeat}")
    compute = timed(lambda: compute_features(settings.transactions_dir, settings.features_dir, settings.label_delay_days), repeat)
    section.add("event-time features (DuckDB window functions)", statistics.median(compute), "s",
                f"{rows:,} rows, one per transaction; {rows / statistics.median(compute) / 1e6:.2f} M rows/s; median of {repeat}")

    apply(settings)
    store = open_store(settings)
    entity = read_transactions(settings.transactions_dir)
    joined = timed(lambda: historical_features(store, settings.feature_service, entity), 1 if scale == "full" else repeat)
    section.add("Feast point-in-time join into the training set", min(joined), "s", f"{len(entity):,} entity rows, DuckDB offline store")
    section.add("training set from raw transactions (features + join)", statistics.median(compute) + min(joined), "s", "target < 60 s at full scale")

    end = datetime.combine(cfg.start_date, datetime.min.time()) + timedelta(days=cfg.days)
    started = time.perf_counter()
    loaded = materialize(settings, end)
    seconds = time.perf_counter() - started
    section.add("backfill the live state (SQLite)", loaded / seconds, "rows/s", f"{loaded:,} transactions in {seconds:.1f}s")

    customer_ids = entity["customer_id"].to_numpy()
    terminal_ids = entity["terminal_id"].to_numpy()
    rng = np.random.default_rng(0)
    clock = [int(pd.Timestamp(end).value // 1000)]

    def next_tx() -> Tx:
        i = int(rng.integers(len(customer_ids)))
        clock[0] += 60_000_000  # a transaction a minute of event time: the cards' histories stay their real size
        return Tx(f"bench-{clock[0]}", str(customer_ids[i]), str(terminal_ids[i]), 10.0, clock[0])

    def step(state: object) -> Callable[[], object]:
        def call() -> object:
            tx = next_tx()
            return features(tx, state.update([tx])[0], settings.label_delay_days)  # type: ignore[attr-defined]
        return call

    history = open_state(settings).update([next_tx()])[0]
    sample = next_tx()
    p50, p99 = latency_ms(lambda: features(sample, history, settings.label_delay_days), 2_000)
    section.add("windows alone (features.live on a card's history), p50 / p99", p50, "ms", f"p99 {p99:.3f} ms; no store")
    p50, p99 = latency_ms(step(open_state(settings)), 2_000)
    section.add("state step, SQLite (insert, prune, read, windows), p50 / p99", p50, "ms", f"p99 {p99:.3f} ms; one transaction at a time")

    if service_available("127.0.0.1", 6379):
        import redis

        redis.Redis(host="127.0.0.1", port=6379, db=9).flushdb()
        on_redis = settings.model_copy(update={"feast_redis_url": REDIS_URL, "state_dir": settings.state_dir / "redis"})
        shutil.copytree(settings.transactions_dir, on_redis.transactions_dir, dirs_exist_ok=True)
        started = time.perf_counter()
        loaded = materialize(on_redis, end)
        seconds = time.perf_counter() - started
        section.add("backfill the live state (Redis)", loaded / seconds, "rows/s", f"{loaded:,} transactions in {seconds:.1f}s")
        p50, p99 = latency_ms(step(open_state(on_redis)), 2_000)
        section.add("state step, Redis (one Lua script), p50 / p99", p50, "ms", f"p99 {p99:.3f} ms; one transaction at a time")
        redis.Redis(host="127.0.0.1", port=6379, db=9).flushdb()
    else:
        section.add("state step, Redis", float("nan"), "ms", "Redis not reachable on 127.0.0.1:6379: skipped")
    return section


def run(settings: Settings, sections: list[str], scale: str, repeat: int, json_path: Path | None, console: Console) -> dict[str, dict[str, float]]:
    results: dict[str, dict[str, float]] = {}
    for name in sections:
        with console.status(f"benchmarking {name}"):
            section = SECTIONS[name](settings, scale, repeat)
        table = Table(title=section.name)
        for column in ("figure", "value", "unit", "note"):
            table.add_column(column, justify="right" if column == "value" else "left")
        for figure, value, unit, note in section.rows:
            table.add_row(figure, f"{value:,.3f}" if value < 100 else f"{value:,.0f}", unit, note)
        console.print(table)
        results[name] = {figure: value for figure, value, _, _ in section.rows}
    if json_path:
        json_path.write_text(json.dumps(results, indent=2))
    return results


def floor_app_factory() -> Callable:
    """A bare ASGI app answering a constant: the floor of this machine's HTTP stack."""

    async def app(scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": b'{"score":0.0}'})

    return app


def lookup_floor_app_factory() -> Callable:
    """The floor plus one online lookup per request and nothing else: the body parsed by orjson, no
    validation, routing, model, log or metrics, the read on the event loop with no thread. It bounds
    any path that reads the store once per request; ours reads once per batch (`serving.batcher`)."""
    import orjson

    from core.settings import get_settings
    from features.state import Tx
    from serving.online import OnlineFeatures

    online = OnlineFeatures(get_settings())
    floor = floor_app_factory()

    async def app(scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "http":
            body = (await receive()).get("body", b"")  # wrk's bodies arrive in one message
            if body:  # the health check's GET has none
                tx = orjson.loads(body)
                stamp = datetime.fromisoformat(tx["timestamp"].replace("Z", "+00:00"))
                online.lookup(Tx(tx["transaction_id"], tx["customer_id"], tx["terminal_id"], float(tx["amount"]), int(stamp.timestamp() * 1_000_000)))
        await floor(scope, receive, send)  # which answers without reading the body

    return app


SNAPSHOT_DB = "snapshot.db"


def write_snapshot(settings: Settings) -> None:
    """The serving store of a daily-snapshot design: each card's and terminal's last feature row, one
    key-value read each, nothing computed or written per request. The path before live state."""
    import sqlite3

    import orjson
    import pandas as pd

    from features.compute import FEATURES_FILE
    from features.live import CUSTOMER_FEATURES, TERMINAL_FEATURES

    from features.offline import read_transactions

    keys = read_transactions(settings.transactions_dir, "TRUE")[["transaction_id", "customer_id", "terminal_id"]]
    frame = pd.read_parquet(settings.features_dir / FEATURES_FILE).sort_values("event_timestamp").merge(keys, on="transaction_id")
    path = settings.state_dir / SNAPSHOT_DB
    path.unlink(missing_ok=True)
    with sqlite3.connect(path) as con:
        for entity, names in (("customer_id", CUSTOMER_FEATURES), ("terminal_id", TERMINAL_FEATURES)):
            last = frame.drop_duplicates(entity, keep="last")
            con.execute(f"CREATE TABLE {entity} (k TEXT PRIMARY KEY, v BLOB) WITHOUT ROWID")  # NaN stored as null
            con.executemany(f"INSERT INTO {entity} VALUES (?, ?)",
                            zip(last[entity].astype(str), (orjson.dumps(row) for row in last[list(names)].to_dict("records"))))


def snapshot_floor_app_factory() -> Callable:
    """The floor plus the daily snapshot's two key-value reads per request (`write_snapshot`), the
    body parsed by orjson and nothing else: the lookup's cost before live state, beside (5)."""
    import sqlite3

    import orjson

    from core.settings import get_settings

    con = sqlite3.connect(get_settings().state_dir / SNAPSHOT_DB, check_same_thread=False)
    floor = floor_app_factory()

    async def app(scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "http":
            body = (await receive()).get("body", b"")
            if body:
                tx = orjson.loads(body)
                for table, key in (("customer_id", tx["customer_id"]), ("terminal_id", tx["terminal_id"])):
                    row = con.execute(f"SELECT v FROM {table} WHERE k = ?", (key,)).fetchone()
                    if row:
                        orjson.loads(row[0])
        await floor(scope, receive, send)

    return app


WRK_SCRIPT = """
wrk.method = "{method}"
run = os.time()
wrk.headers["Content-Type"] = "application/json"
counter = 0
request = function()
  counter = counter + 1
  local body = {body}
  return wrk.format(nil, "{path}", nil, body)
end
"""


def _found(pattern: str, output: str) -> tuple[str, ...]:
    """The groups of `pattern` in a load generator's output, or an error that shows the output."""
    found = re.search(pattern, output)
    if found is None:
        raise RuntimeError(f"no match for {pattern!r} in:\n{output}")
    return found.groups()


def _wrk(url: str, script: str, seconds: int, connections: int) -> tuple[float, float, float, int]:
    """Requests/s, p50 ms, p99 ms and non-2xx count of one closed-loop wrk run."""
    import subprocess
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(script)
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", f.name, url],
                         capture_output=True, text=True, check=True).stdout
    Path(f.name).unlink()

    def ms(label: str) -> float:
        value, unit = _found(rf"{label}\s+([\d.]+)(us|ms|s)\b", out)
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    rate = float(_found(r"Requests/sec:\s+([\d.]+)", out)[0])
    return rate, ms("50%"), ms("99%"), int(errors.group(1)) if errors else 0


def _hey(url: str, body: str, seconds: int, rate: int) -> tuple[float, float, float]:
    """Achieved rate, p50 ms and p99 ms at a constant offered rate (hey -q). hey's -q paces each of its
    -c clients, and a client waits for its answer before the next request, so one client cannot offer
    500 req/s once answers take 2 ms; but the clients tick in step, so c clients send bursts of c. One
    client per 250 req/s: bursts of two at 500 req/s (one per server worker), whole rates up to 4 ms."""
    import subprocess

    clients = max(1, rate // 250)
    out = subprocess.run(["hey", "-z", f"{seconds}s", "-q", str(rate // clients), "-c", str(clients), "-m", "POST", "-T", "application/json", "-d", body, url],
                         capture_output=True, text=True, check=True).stdout
    achieved = float(_found(r"Requests/sec:\s+([\d.]+)", out)[0])
    p50 = float(_found(r"50%+ in ([\d.]+) secs", out)[0]) * 1000
    p99 = float(_found(r"99%+ in ([\d.]+) secs", out)[0]) * 1000
    return achieved, p50, p99


def serving_section(settings: Settings, scale: str, repeat: int) -> Section:
    """Our API as users call it, with features passed in, `mlflow models serve` at equal work, a
    constant ASGI app, and that app with the online lookup added, each at the same worker count,
    loaded by wrk from this machine."""
    import subprocess
    import sys

    from features.offline import read_transactions
    from features.simulator import SimulationConfig, write_simulation
    from features.store import historical_features, open_store
    from pipelines.demo import settings_env
    from pipelines.flows import features_flow, training_flow
    from pipelines.training import ModelConfig, Windows

    workers = 2
    section = Section(f"serving ({workers} workers each, pinned, wrk -t1 -c16 closed loop, a 3 s warm-up then {repeat} rounds of one 8 s run per target, medians)")
    # pinned: the bench's API has the machine's CPUs to itself (the setting's own description)
    s = settings.model_copy(update={"state_dir": settings.state_dir / "serving", "api_pin_workers": True})
    if not (s.state_dir / "mlflow.db").exists():
        cfg = SimulationConfig.from_settings(s)
        write_simulation(cfg, s.transactions_dir, replace=True)
        with quiet_stdout():
            features_flow(s, materialize_until=Windows.from_settings(s).test_end.to_pydatetime())
        training_flow(s)(s, ModelConfig(scale_pos_weight=1.0))
    windows = Windows.from_settings(s)
    tx = read_transactions(s.transactions_dir, f"timestamp >= TIMESTAMP '{windows.test_end}'").head(1)
    joined = historical_features(open_store(s), s.feature_service, tx)
    from serving.models import load_from_registry
    from serving.workers import wait_listening

    model = load_from_registry(s, "champion")
    if model is None:
        raise RuntimeError(f"no champion in the bench's registry at {s.tracking_uri}")
    row = {name: float(joined[name].iloc[0]) for name in model.features}
    transaction = {"transaction_id": "t", "customer_id": str(tx["customer_id"].iloc[0]), "terminal_id": str(tx["terminal_id"].iloc[0]),
                   "amount": float(tx["amount"].iloc[0]), "timestamp": tx["timestamp"].iloc[0].isoformat() + "Z"}
    row_json = json.dumps({k: (None if v != v else v) for k, v in row.items()})
    mlflow_body = json.dumps({"dataframe_split": {"columns": list(model.features), "data": [[row[k] for k in model.features]]}})

    write_snapshot(s)
    ports = {"ours": 18081, "mlflow": 18082, "floor": 18083, "lookup": 18084, "snapshot": 18085}
    env = settings_env(s) | {"MLFLOW_TRACKING_URI": s.tracking_uri, "MLFLOW_MODELS_WORKERS": str(workers)}
    bin_dir = Path(sys.executable).parent
    env["PATH"] = f"{bin_dir}:{env.get('PATH', '')}"  # mlflow starts `uvicorn` by name
    # ours as users run it; the floor through the same launcher (a socket per worker, pinned as ours), so the ratio
    # compares the apps, not how connections reach the workers; mlflow as it runs itself
    commands = {
        "ours": [str(bin_dir / "fraudops"), "serve", "--port", str(ports["ours"])],
        "mlflow": [str(bin_dir / "mlflow"), "models", "serve", "-m", f"models:/{s.model_name}@champion", "-p", str(ports["mlflow"]), "--env-manager", "local", "--workers", str(workers)],
        **{name: [sys.executable, "-c", f"from serving.workers import serve; serve('pipelines.bench:{factory}', '127.0.0.1', {ports[name]}, {workers}, {s.api_pin_workers})"]
           for name, factory in (("floor", "floor_app_factory"), ("lookup", "lookup_floor_app_factory"), ("snapshot", "snapshot_floor_app_factory"))},
    }
    health = {"ours": "/readyz", "mlflow": "/ping", "floor": "/", "lookup": "/", "snapshot": "/"}
    processes = {}
    try:
        for name, command in commands.items():
            processes[name] = subprocess.Popen(command, env=env | {"FRAUDOPS_API_WORKERS": str(workers)}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for name, process in processes.items():
            wait_until_up(f"http://127.0.0.1:{ports[name]}{health[name]}", process, timeout=180.0)
        # a health check reaches one worker; a connection made before the other listens stays with the first
        for name in ("ours", "floor", "lookup", "snapshot"):
            wait_listening(ports[name], workers, timeout=180.0)
        time.sleep(3)
        # Every request a new transaction of one of the cards, event time moving 43 s a request (a card
        # then pays about twice a day, as in the simulation) and on by a day and a half a second between
        # runs, so that each card's live state holds its real amount of history, never a pile-up.
        base, started = int(tx["timestamp"].iloc[0].timestamp()), int(time.time())
        body_full = ("string.format('{\"transaction_id\":\"t%d-%d\",\"customer_id\":\"%d\",\"terminal_id\":\"%d\",\"amount\":%d.5,\"timestamp\":\"%s\"}', "
                     f"run, counter, counter % {s.customers}, counter % {s.terminals}, counter % 300, "
                     f"os.date('!%Y-%m-%dT%H:%M:%SZ', {base} + (os.time() - {started}) * 130000 + counter * 43))")
        body_features = "'" + json.dumps({"transaction": transaction, "features": json.loads(row_json)}).replace("'", "\\'") + "'"
        targets = {
            "1. /predict (lookup, routing, model, log)": (ports["ours"], WRK_SCRIPT.format(method="POST", body=body_full, path="/predict")),
            "2. /predict/features (routing, model, log)": (ports["ours"], WRK_SCRIPT.format(method="POST", body=body_features, path="/predict/features")),
            "3. peer: mlflow models serve (model)": (ports["mlflow"], WRK_SCRIPT.format(method="POST", body="'" + mlflow_body + "'", path="/invocations")),
            "4. floor: constant ASGI app": (ports["floor"], WRK_SCRIPT.format(method="GET", body="nil", path="/")),
            "5. the floor plus one state step per request": (ports["lookup"], WRK_SCRIPT.format(method="POST", body=body_full, path="/")),
            "6. before live state: the floor plus a daily snapshot's two reads": (ports["snapshot"], WRK_SCRIPT.format(method="POST", body=body_full, path="/")),
        }
        for port, script in targets.values():
            # discarded: a worker still loading its model, cold caches and the first log files
            # made the first of three runs a third as fast as the other two
            _wrk(f"http://127.0.0.1:{port}", script, 3, 16)
        # In rounds of one run per target: this kind of machine drifted by up to 2x within minutes,
        # which moved a ratio by a fifth when each target's runs came one after the other.
        runs: dict[str, list[tuple[float, float, float, int]]] = {label: [] for label in targets}
        for _ in range(repeat):
            for label, (port, script) in targets.items():
                runs[label].append(_wrk(f"http://127.0.0.1:{port}", script, 8, 16))
        rates = {}
        for label, done in runs.items():
            rates[label] = statistics.median(r[0] for r in done)
            section.add(f"{label}: throughput", rates[label], "req/s", f"non-2xx: {sum(r[3] for r in done)}")
            section.add(f"{label}: p50 / p99 at saturation", statistics.median(r[1] for r in done), "ms",
                        f"p99 {statistics.median(r[2] for r in done):.1f} ms")
        labels = list(targets)

        def ratio(a: int, b: int) -> float:
            return rates[labels[a]] / rates[labels[b]]

        def rounds(a: int, b: int) -> str:
            return "by round: " + ", ".join(f"{x[0] / y[0]:.3g}" for x, y in zip(runs[labels[a]], runs[labels[b]]))

        section.add("ratio (2) / (3): ours vs mlflow at equal work", ratio(1, 2), "x", f"target >= 10; {rounds(1, 2)}")
        section.add("ratio (1) / (4): full path vs HTTP floor", ratio(0, 3), "x", f"target >= 0.25; {rounds(0, 3)}")
        section.add("ratio (5) / (4): the most a path reading per request can reach", ratio(4, 3), "x", rounds(4, 3))
        section.add("ratio (5) / (6): the live state's read and update against a snapshot read", ratio(4, 5), "x", rounds(4, 5))
        body = json.dumps(transaction)
        for rate, target in ((500, 3), (1_000, 10)):
            constant, floor = [], []
            for _ in range(repeat):  # in rounds too
                constant.append(_hey(f"http://127.0.0.1:{ports['ours']}/predict", body, 10, rate))
                floor.append(_hey(f"http://127.0.0.1:{ports['floor']}/", body, 10, rate))
            section.add(f"/predict at a constant {rate:,} req/s (hey -q): p50", statistics.median(c[1] for c in constant), "ms",
                        f"achieved {statistics.median(c[0] for c in constant):.0f} req/s")
            section.add(f"/predict at a constant {rate:,} req/s (hey -q): p99", statistics.median(c[2] for c in constant), "ms",
                        f"target <= {target} ms; constant app: p99 {statistics.median(f[2] for f in floor):.1f} ms")
    finally:
        for process in processes.values():
            process.terminate()
        for process in processes.values():
            process.wait(timeout=30)
    return section


def training_section(settings: Settings, scale: str, repeat: int) -> Section:
    """The train flow end to end at three data sizes, and the LightGBM fit beside scikit-learn's
    histogram gradient boosting on the same matrix."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    from features.simulator import SimulationConfig, write_simulation
    from features.store import historical_features, model_features, open_store
    from features.offline import read_transactions
    from pipelines.flows import features_flow, training_flow
    from pipelines.training import ModelConfig, Windows, fit_booster, split

    section = Section("training (train flow end to end; fit beside a peer)")
    sizes = (500, 1_000, 2_000) if scale == "small" else (1_000, 2_500, 5_000)
    for customers in sizes:
        s = settings.model_copy(update={"state_dir": settings.state_dir / f"training-{customers}", "customers": customers, "terminals": 2 * customers})
        cfg = SimulationConfig.from_settings(s)
        rows = write_simulation(cfg, s.transactions_dir, replace=True)
        with quiet_stdout():
            features_flow(s)
        started = time.perf_counter()
        result = training_flow(s)(s, ModelConfig())  # prequential selection included
        seconds = time.perf_counter() - started
        k = s.top_k
        section.add(f"train flow, {customers:,} customers", seconds, "s",
                    f"{rows:,} transactions simulated; test AP / CP@{k}: LightGBM {result['test_average_precision']:.3f} / "
                    f"{result[f'test_card_precision_at_{k}']:.3f}, logistic regression {result['baseline_logistic_regression_average_precision']:.3f} / "
                    f"{result[f'baseline_logistic_regression_card_precision_at_{k}']:.3f}, amount rule "
                    f"{result['baseline_amount_rule_average_precision']:.3f} / {result[f'baseline_amount_rule_card_precision_at_{k}']:.3f}")
    windows = Windows.from_settings(s)
    store = open_store(s)
    tx = read_transactions(s.transactions_dir, f"timestamp >= TIMESTAMP '{windows.train_start}' AND timestamp < TIMESTAMP '{windows.test_end}'")
    frame = historical_features(store, s.feature_service, tx)
    features = model_features(store, s.feature_service)
    fit, validation, _ = split(frame, windows)
    lgb_runs = timed(lambda: fit_booster(fit, validation, features, ModelConfig(num_boost_round=200, scale_pos_weight=1.0)), repeat)
    section.add("LightGBM fit (early stopping on validation)", statistics.median(lgb_runs), "s", f"{len(fit):,} rows, median of {repeat}")
    X, y = fit[features].to_numpy(np.float64), fit["is_fraud"].to_numpy()
    peer = timed(lambda: HistGradientBoostingClassifier(max_iter=200, early_stopping=True, random_state=7).fit(X, y), repeat)
    section.add("peer: scikit-learn HistGradientBoosting fit", statistics.median(peer), "s", f"LightGBM time / peer time = {statistics.median(lgb_runs) / statistics.median(peer):.1f}")
    for row in freshness(frame, features, windows):
        section.add(*row)
    return section


SHORT_WINDOWS = ("customer_tx_count_1h", "customer_amount_sum_1h", "customer_seconds_since_previous")


def freshness(frame: pd.DataFrame, features: list[str], windows: Windows) -> list[tuple[str, float, str, str]]:
    """What the short windows buy on card testing: the same fit with and without them, judged on the
    test window's card-testing frauds against its legitimate traffic."""
    from sklearn.metrics import average_precision_score

    from core.evaluation import recall_at_fpr
    from pipelines.training import ModelConfig, fit_booster, split

    fit, validation, test = split(frame, windows)
    tested = test[test["fraud_scenario"].isin([0, 4])]
    rows = []
    for label, used in (("with", features), ("without", [f for f in features if f not in SHORT_WINDOWS])):
        booster = fit_booster(fit, validation, used, ModelConfig(scale_pos_weight=1.0))
        scores = np.asarray(booster.predict(tested[used].to_numpy(np.float64)))
        labels = np.asarray(tested["is_fraud"].to_numpy())
        rows.append((f"card testing, {label} the short windows: AP", float(average_precision_score(labels, scores)), "",
                     f"recall at 1% FPR {recall_at_fpr(labels, scores, 0.01):.3f}; {int(labels.sum()):,} card-testing frauds "
                     f"among {len(tested):,} test rows; AP on all the test window {average_precision_score(test['is_fraud'], booster.predict(test[used].to_numpy(np.float64))):.3f}"))
    return rows


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
                               DriftLimits.from_settings(Settings()))[0].verdict
    return time.perf_counter() - started, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, baseline, verdict


def monitoring_section(settings: Settings, scale: str, repeat: int) -> Section:
    """The drift job (data drift, score and decision-rate drift, HTML report) on 100k and 1M logged
    predictions, each run in a fresh process so its peak memory is its own; beside Evidently's
    DataDriftPreset alone on the same columns, which is the floor of what the job can cost."""
    import multiprocessing

    section = Section("monitoring (drift job against 100k reference rows, fresh process per run)")
    sizes = (100_000, 1_000_000) if scale == "full" else (20_000, 100_000)
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


SECTIONS: dict[str, Callable[[Settings, str, int], Section]] = {
    "features": features_section,
    "training": training_section,
    "serving": serving_section,
    "monitoring": monitoring_section,
}
