"""Our API as users call it, beside mlflow models serve at equal work and bare ASGI peers, each at
the same worker count, loaded from this machine by wrk (closed loop), hey (one repeated body at a
constant rate, closed loop per client) and the open-loop generator (distinct transactions on a
schedule, pipelines/bench/openloop.py), whose rows are the latency the targets are judged by."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd

from core.runtime import quiet_stdout, service_available, wait_until_up
from core.settings import Settings
from pipelines.bench.common import Section
from pipelines.bench.load import WRK_SCRIPT, closed_loop, constant_rate
from pipelines.bench.peers import write_snapshot

WORKERS = 2
PORTS = {"ours": 18081, "mlflow": 18082, "floor": 18083, "lookup": 18084, "snapshot": 18085, "no-lane": 18086, "ours-redis": 18087,
         "ours-rules": 18088}
SERVING_REDIS = "127.0.0.1:6379,db=8"  # the Redis live state of the serving section's third API (db 9 is the features section's)
OPEN_LOOP_RATES = ((500, 3.0), (1_000, 5.0))  # req/s and the p99 target in ms (docs/results/targets.json)
# Seconds a measured run lasts, closed loop and at a constant rate (hey, open loop): the smoke scale
# only proves that every step runs (tests/test_bench.py).
RULES = 50  # active rules on the "ours-rules" API, for the ratio against the path without them (target: docs/results/targets.json)
RUN_SECONDS = {"full": 8, "small": 8, "smoke": 1}
RATE_SECONDS = {"full": 10, "small": 10, "smoke": 1}
HEALTH = {"ours": "/readyz", "no-lane": "/readyz", "ours-redis": "/readyz", "ours-rules": "/readyz", "mlflow": "/ping"}  # the peers answer on "/"
Run = tuple[float, float, float, int]  # req/s, p50 ms, p99 ms, non-2xx


def prepared(settings: Settings) -> tuple[Settings, pd.DataFrame]:
    """The bench's own state at the settings' scale with a trained champion (made once, then kept),
    and the first transaction after the test window."""
    from features.labels import clear
    from features.offline import transactions_between
    from features.simulator import SimulationConfig, deliver_chargebacks, write_simulation
    from pipelines.flows import features_flow, training_flow
    from training.fit import ModelConfig
    from training.windows import Windows

    # pinned: the bench's API has the machine's CPUs to itself (the setting's own description)
    s = settings.replace(state_dir=settings.state_dir / "serving", api_pin_workers=True)
    if not (s.state_dir / "mlflow.db").exists():
        write_simulation(SimulationConfig.from_settings(s.simulation), s.transactions_dir, replace=True)
        clear(s)  # training reads labels from the label store alone: the history's chargebacks go there first
        deliver_chargebacks(s)
        with quiet_stdout():
            features_flow(s, materialize_until=Windows.from_settings(s).test_end.to_pydatetime())
        training_flow(s)(s, ModelConfig(scale_pos_weight=1.0))
    tx = transactions_between(s.transactions_dir, Windows.from_settings(s).test_end).head(1)
    return s, tx


def bodies(s: Settings, tx: pd.DataFrame) -> dict[str, str]:
    """Lua expressions for wrk's request bodies, and hey's one body."""
    from features.store import historical_features, open_store
    from model.loaded import load_from_registry

    model = load_from_registry(s, "champion")
    if model is None:
        raise RuntimeError(f"no champion in the bench's registry at {s.tracking_uri}")
    joined = historical_features(open_store(s), s.features.feature_service, tx)
    row = {name: float(joined[name].iloc[0]) for name in model.features}
    transaction = {"transaction_id": "t", "customer_id": str(tx["customer_id"].iloc[0]), "terminal_id": str(tx["terminal_id"].iloc[0]),
                   "amount": float(tx["amount"].iloc[0]), "timestamp": tx["timestamp"].iloc[0].isoformat() + "Z"}
    features = {k: (None if v != v else v) for k, v in row.items()}
    mlflow_body = json.dumps({"dataframe_split": {"columns": list(model.features), "data": [[row[k] for k in model.features]]}})
    # Every request a new transaction of one of the cards, event time moving 43 s a request (a card
    # then pays about twice a day, as in the simulation) and on by a day and a half a second between
    # runs, so that each card's live state holds its real amount of history, never a pile-up.
    base, started = int(tx["timestamp"].iloc[0].timestamp()), int(time.time())
    full = ("string.format('{\"transaction_id\":\"t%d-%d\",\"customer_id\":\"%d\",\"terminal_id\":\"%d\",\"amount\":%d.5,\"timestamp\":\"%s\"}', "
            f"run, counter, counter % {s.simulation.customers}, counter % {s.simulation.terminals}, counter % 300, "
            f"os.date('!%Y-%m-%dT%H:%M:%SZ', {base} + (os.time() - {started}) * 130000 + counter * 43))")
    with_features = "'" + json.dumps({"transaction": transaction, "features": features}).replace("'", "\\'") + "'"
    return {"full": full, "features": with_features, "mlflow": "'" + mlflow_body + "'", "hey": json.dumps(transaction)}


def write_rules(path: Path, n: int = RULES) -> Path:
    """`n` active rules of the kinds a fraud team writes (velocity, amount against the card's mean,
    terminal risk, the score beside an amount), over every live value, each with its own cut: all
    are evaluated on every request, and few fire, as in production."""
    from features.live import ANSWER_VALUES

    kinds = ["{name} > {cut} and amount > 2000", "customer_tx_count_1h >= {i} and {name} > {cut}",
             "amount / customer_mean_amount_30d > 40 + {i} or {name} < -{cut}", "score > 0.999 and {name} >= {cut}"]
    rules = [f'[[rule]]\nname = "bench-{i}"\nwhen = "{kinds[i % len(kinds)].format(name=ANSWER_VALUES[i % len(ANSWER_VALUES)], cut=1000 + i, i=20 + i)}"\n'
             f'action = "{("review", "decline", "step_up")[i % 3]}"\n' for i in range(n)]
    path.write_text("".join(rules))
    return path


@contextmanager
def servers(s: Settings) -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    """Ours as users run it, with the lane and without; the peers through the same launcher (a socket
    per worker, pinned as ours), so a ratio compares the apps, not how connections reach the workers;
    mlflow as it runs itself."""
    from pipelines.demo import settings_env
    from serving.workers import wait_listening

    env = settings_env(s) | {"MLFLOW_TRACKING_URI": s.tracking_uri, "MLFLOW_MODELS_WORKERS": str(WORKERS), "FRAUDOPS_API_WORKERS": str(WORKERS)}
    bin_dir = Path(sys.executable).parent
    env["PATH"] = f"{bin_dir}:{env.get('PATH', '')}"  # mlflow starts `uvicorn` by name
    ours = [str(bin_dir / "fraudops"), "serve", "--port"]
    commands = {
        "ours": (ours + [str(PORTS["ours"])], env),
        "no-lane": (ours + [str(PORTS["no-lane"])], env | {"FRAUDOPS_SCORING_LANE": "false"}),
        "ours-rules": (ours + [str(PORTS["ours-rules"])], env | {"FRAUDOPS_RULES_FILE": str(write_rules(s.state_dir / "bench-rules.toml"))}),
        "mlflow": ([str(bin_dir / "mlflow"), "models", "serve", "-m", f"models:/{s.stores.model_name}@champion", "-p", str(PORTS["mlflow"]),
                    "--env-manager", "local", "--workers", str(WORKERS)], env),
        **{name: ([sys.executable, "-c", f"from serving.workers import serve; serve('pipelines.bench.peers:{factory}', '127.0.0.1', "
                   f"{PORTS[name]}, {WORKERS}, {s.serving.api_pin_workers})"], env)
           for name, factory in (("floor", "floor_app_factory"), ("lookup", "lookup_floor_app_factory"), ("snapshot", "snapshot_floor_app_factory"))},
    }
    if service_available("127.0.0.1", 6379):  # the same API on the Redis live state, backfilled as the SQLite one is
        from features.store import materialize
        from training.windows import Windows

        on_redis = s.replace(feast_redis_url=SERVING_REDIS)
        materialize(on_redis, Windows.from_settings(s).test_end.to_pydatetime())
        commands["ours-redis"] = (ours + [str(PORTS["ours-redis"])], env | {"FRAUDOPS_FEAST_REDIS_URL": SERVING_REDIS})
    processes = {}
    try:
        for name, (command, process_env) in commands.items():
            processes[name] = subprocess.Popen(command, env=process_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for name, process in processes.items():
            wait_until_up(f"http://127.0.0.1:{PORTS[name]}{HEALTH.get(name, '/')}", process, timeout=180.0)
        # a health check reaches one worker; a connection made before the other listens stays with the first
        for name in processes.keys() - {"mlflow"}:
            wait_listening(PORTS[name], WORKERS, timeout=180.0)
        time.sleep(3)
        yield processes
    finally:
        for process in processes.values():
            process.terminate()
        for process in processes.values():
            process.wait(timeout=30)


def closed_loop_rounds(section: Section, body: dict[str, str], repeat: int, seconds: int) -> None:
    """Every target in rounds of one run each: this kind of machine drifted by up to 2x within
    minutes, which moved a ratio by a fifth when each target's runs came one after the other. The
    50-rule server runs beside the full path it is compared with."""
    post = lambda name, text, path="/": (PORTS[name], WRK_SCRIPT.format(method="POST", body=text, path=path))  # noqa: E731
    targets = {
        "1. /predict (lookup, routing, model, log)": post("ours", body["full"], "/predict"),
        f"1r. /predict with {RULES} active rules": post("ours-rules", body["full"], "/predict"),
        "1b. /predict through FastAPI's own route (lane off)": post("no-lane", body["full"], "/predict"),
        "2. /predict/features (routing, model, log)": post("ours", body["features"], "/predict/features"),
        "2b. /predict/features through FastAPI's own route (lane off)": post("no-lane", body["features"], "/predict/features"),
        "3. peer: mlflow models serve (model)": post("mlflow", body["mlflow"], "/invocations"),
        "4. floor: constant ASGI app": (PORTS["floor"], WRK_SCRIPT.format(method="GET", body="nil", path="/")),
        "5. the floor plus one state step per request": post("lookup", body["full"]),
        "6. before live state: the floor plus a daily snapshot's two reads": post("snapshot", body["full"]),
    }
    for port, script in targets.values():
        # discarded: a worker still loading its model, cold caches and the first log files
        # made the first of three runs a third as fast as the other two
        closed_loop(f"http://127.0.0.1:{port}", script, min(3, seconds), 16)
    runs: dict[str, list[Run]] = {label: [] for label in targets}
    for round_ in range(repeat):
        # every other round in reverse: a target's place in the round (after which neighbour, how
        # long into it) cancels out of a ratio instead of weighing on one side of it every time
        for label, (port, script) in (reversed(targets.items()) if round_ % 2 else targets.items()):
            runs[label].append(closed_loop(f"http://127.0.0.1:{port}", script, seconds, 16))
    rates = {label.split(".")[0]: statistics.median(r[0] for r in done) for label, done in runs.items()}
    for label, done in runs.items():
        section.add(f"{label}: throughput", rates[label.split(".")[0]], "req/s", f"non-2xx: {sum(r[3] for r in done)}")
        section.add(f"{label}: p50 / p99 at saturation", statistics.median(r[1] for r in done), "ms",
                    f"p99 {statistics.median(r[2] for r in done):.1f} ms", p99=statistics.median(r[2] for r in done))
    by_key = {label.split(".")[0]: done for label, done in runs.items()}
    for a, b, what, note in (("2", "3", "ours vs mlflow at equal work", "target >= 10; "),
                             ("1", "1b", "the lane against FastAPI's route, full path", ""),
                             ("1r", "1", f"{RULES} active rules against none, full path", "target >= 0.9; "),
                             ("2", "2b", "the lane against FastAPI's route, features in", ""),
                             ("1", "4", "full path vs HTTP floor", ""),
                             ("5", "4", "the most a path stepping the state per request can reach", ""),
                             ("5", "6", "the live state's step against a snapshot's reads", "")):
        per_round = ", ".join(f"{x[0] / y[0]:.3g}" for x, y in zip(by_key[a], by_key[b]))
        section.add(f"ratio ({a}) / ({b}): {what}", rates[a] / rates[b], "x", f"{note}by round: {per_round}")


def constant_rates(section: Section, body: str, repeat: int, seconds: int) -> None:
    """/predict at constant rates beside the constant app at the same rates. hey sends one body, so
    every request after the first is a retry of one transaction: the state step still runs (and
    counts it once), one card's history is read each time."""
    for rate, target in OPEN_LOOP_RATES:
        constant, floor = [], []
        for _ in range(repeat):  # in rounds too
            constant.append(constant_rate(f"http://127.0.0.1:{PORTS['ours']}/predict", body, seconds, rate))
            floor.append(constant_rate(f"http://127.0.0.1:{PORTS['floor']}/", body, seconds, rate))
        section.add(f"/predict at a constant {rate:,} req/s (hey -q): p50", statistics.median(c[1] for c in constant), "ms",
                    f"achieved {statistics.median(c[0] for c in constant):.0f} req/s")
        section.add(f"/predict at a constant {rate:,} req/s (hey -q): p99", statistics.median(c[2] for c in constant), "ms",
                    f"one repeated body, closed loop: not the target's measure (the open-loop rows are); constant app: p99 {statistics.median(f[2] for f in floor):.1f} ms",
                    floor_p99=statistics.median(f[2] for f in floor))


def distinct_transactions(s: Settings, tx: pd.DataFrame, run: int) -> Callable[[int], str]:
    """Request i of run `run`: a new transaction of a random card at a random terminal, its event
    time 43 s after the one before (about twice a day a card, as simulated) and each run a day past
    the last, so every request is a state step on a card's real history, never a retry."""
    rng = np.random.default_rng(run)
    n = 200_000
    cards, terminals = rng.integers(0, s.simulation.customers, n), rng.integers(0, s.simulation.terminals, n)
    amounts = np.round(rng.gamma(2.0, 25.0, n), 2)
    base = tx["timestamp"].iloc[0] + pd.Timedelta(days=run)

    def body(i: int) -> str:
        stamp = (base + pd.Timedelta(seconds=43 * i)).strftime("%Y-%m-%dT%H:%M:%SZ")
        return (f'{{"transaction_id":"open-{run}-{i}","customer_id":"{cards[i % n]}","terminal_id":"{terminals[i % n]}",'
                f'"amount":{amounts[i % n]},"timestamp":"{stamp}"}}')

    return body


def open_loop_rates(section: Section, s: Settings, tx: pd.DataFrame, targets: list[str], repeat: int, seconds: float) -> None:
    """/predict at constant rates of distinct transactions, open loop (pipelines/bench/openloop.py),
    on the SQLite and the Redis live state, beside the bare ASGI app at the same rates in the same
    rounds; and the generator itself at 2,000 req/s against the bare app, its own overhead."""
    from pipelines.bench import openloop

    run = 0
    for rate, target in OPEN_LOOP_RATES:
        results: dict[str, list[openloop.Result]] = {name: [] for name in targets}
        for _ in range(repeat):
            for name in targets:
                run += 1
                path = "/" if name == "floor" else "/predict"
                results[name].append(openloop.run(f"http://127.0.0.1:{PORTS[name]}{path}", distinct_transactions(s, tx, run), rate, seconds))
        for name, done in results.items():
            what = {"ours": "/predict, SQLite state", "ours-redis": "/predict, Redis state", "floor": "the bare ASGI app"}[name]
            p99 = statistics.median(r.p99_ms for r in done)
            verdict = {} if name == "floor" else {"verdict": "met" if p99 <= target else "missed"}
            section.add(f"open loop {rate:,} req/s, distinct transactions: {what}: p99", p99, "ms",
                        f"p50 {statistics.median(r.p50_ms for r in done):.2f}, p99.9 {statistics.median(r.p999_ms for r in done):.1f} ms; "
                        f"achieved {statistics.median(r.achieved for r in done):.0f} req/s; errors {sum(r.errors for r in done)}"
                        + (f"; target <= {target:g} ms: {verdict['verdict']}" if verdict else ""),
                        p50=statistics.median(r.p50_ms for r in done), p999=statistics.median(r.p999_ms for r in done),
                        achieved=statistics.median(r.achieved for r in done), errors=float(sum(r.errors for r in done)), **verdict)
    own = [openloop.run(f"http://127.0.0.1:{PORTS['floor']}/", distinct_transactions(s, tx, 0), 2_000, seconds) for _ in range(repeat)]
    section.add("open-loop generator at 2,000 req/s against the bare app: its own lateness, p99", statistics.median(r.overhead_p99_ms for r in own),
                "ms", f"achieved {statistics.median(r.achieved for r in own):.0f} req/s; target < 0.1 ms",
                achieved=statistics.median(r.achieved for r in own))


def serving_section(settings: Settings, scale: str, repeat: int) -> Section:
    s, tx = prepared(settings)
    body = bodies(s, tx)
    write_snapshot(s)
    section = Section(f"serving ({WORKERS} workers each, pinned, wrk -t1 -c16 closed loop, a warm-up then {repeat} rounds of one "
                      f"{RUN_SECONDS[scale]} s run per target; hey and open loop {RATE_SECONDS[scale]} s a run; medians)")
    with servers(s) as processes:
        closed_loop_rounds(section, body, repeat, RUN_SECONDS[scale])
        # the tail at a constant rate is the machine's: idle workers of the other targets wake every
        # second (model polls, log flushes), so only the two measured stay up
        for name in processes.keys() - {"ours", "floor", "ours-redis"}:
            processes[name].terminate()
            processes[name].wait(timeout=30)
        constant_rates(section, body["hey"], repeat, RATE_SECONDS[scale])
        open_loop_rates(section, s, tx, [name for name in ("ours", "ours-redis", "floor") if name in processes], repeat, RATE_SECONDS[scale])
    return section
