"""Freshness: how soon what one API process learns is seen by another's next score.

Two things change the features of a card or a terminal: a transaction (the card's windows) and a
fraud verdict (the terminal's risk, once the label delay has passed). Both are written to the live
state before their answer goes back (the state step, `features.labels.record`), so the other
processes see them at their next read, with no cache to expire. That is the claim this measures,
with two API processes of one worker each on one state (as two pods on one Redis), per store:

- a transaction A of a new card sent to the first, then, the moment its answer is back, a
  transaction B of the same card to the second. A was visible from its state write on, which came
  before its answer, so A's arrival-to-answer time bounds the freshness from above, provided B saw
  it; B's logged window count says whether it did.
- a fraud verdict on A sent to the first's POST /labels, then, the moment its receipt is back, a
  transaction C at A's terminal a label delay and an hour after A to the second: the receipt time
  bounds the freshness, provided C's logged terminal risk counted A as fraud.

Probes go one at a time on keep-alive connections, so each time is a write's own, not a queue's.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone

import numpy as np
import pandas as pd

from core.runtime import service_available
from core.settings import Settings
from pipelines.bench.common import Section
from pipelines.bench.local_redis import free_ports
from pipelines.bench.serving_section import SERVING_REDIS, prepared

PROBES = {"full": 500, "small": 200, "smoke": 10}
TOKEN = "freshness-bench"  # the bench's own labels token: its APIs are its own, on ports nobody else uses


def transaction(tx_id: str, card: str, terminal: str, when: pd.Timestamp) -> str:
    return json.dumps({"transaction_id": tx_id, "customer_id": card, "terminal_id": terminal, "amount": 42.5,
                       "timestamp": when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")})


def probe(first: str, second: str, run: str, probes: int, start: pd.Timestamp, delay_days: int) -> dict[str, np.ndarray]:
    """Send the probes (module docstring) through the two APIs at `first` and `second`; the seconds
    each write took to be answered, by probe."""
    from pipelines.bench.openloop import Connection

    a, b = Connection(f"{first}/predict"), Connection(f"{second}/predict")
    labels = Connection(f"{first}/labels", {"Authorization": f"Bearer {TOKEN}"})
    warm_up = labels.request(json.dumps({"labels": [{"transaction_id": f"{run}-warm-up", "is_fraud": False}]}))
    written, labelled = np.full(probes, np.nan), np.full(probes, np.nan)

    def timed(connection: Connection, body: str) -> float:
        """How long `body` took to be answered (NaN if not 200)."""
        request = connection.request(body)
        sent = time.perf_counter()
        status, answered = connection.send(request)
        return answered - sent if status == 200 else float("nan")

    try:
        # untimed first requests: each connection open and each process's first-request costs paid;
        # the label path's index of seen transactions is built from the offline store at its first
        # lookup (seconds at the Handbook's scale, once), which a verdict on an unknown id does
        for connection, name in ((a, "a"), (b, "b")):
            connection.send(connection.request(transaction(f"{run}-warm-{name}", f"{run}-warm-{name}", f"{run}-warm", start)))
        labels.send(warm_up)
        for i in range(probes):
            when = start + pd.Timedelta(minutes=i)
            written[i] = timed(a, transaction(f"{run}-a-{i}", f"{run}-{i}", f"{run}-{i}", when))
            b.send(b.request(transaction(f"{run}-b-{i}", f"{run}-{i}", f"{run}-{i}", when + pd.Timedelta(seconds=1))))
        # a worker writes what it answered into the label path's index every REMEMBER_SECONDS (a
        # fraction of this pause): a verdict on a transaction answered a moment ago would wait for
        # that write (POST /labels looks again), which is not this measure
        time.sleep(1.0)
        labels.send(warm_up)  # the labels connection idled through the transactions: opened again untimed if closed
        reported = datetime.now(timezone.utc).isoformat()
        for i in range(probes):
            verdict = json.dumps({"labels": [{"transaction_id": f"{run}-a-{i}", "is_fraud": True, "reported_at": reported, "source": "bench"}]})
            labelled[i] = timed(labels, verdict)
            later = start + pd.Timedelta(minutes=i) + pd.Timedelta(days=delay_days, hours=1)
            b.send(b.request(transaction(f"{run}-c-{i}", f"{run}-{i}-c", f"{run}-{i}", later)))
    finally:
        for connection in (a, b, labels):
            connection.close()
    return {"transaction": written, "label": labelled}


def freshness_section(settings: Settings, scale: str, repeat: int) -> Section:
    """`repeat` does not apply: the probes are many short samples already."""
    from core import predictions
    from features.store import materialize
    from pipelines.demo import running_api
    from training.windows import Windows

    probes = PROBES[scale]
    section = Section(f"freshness ({probes} probes a store, one at a time: two API processes of one worker each on one live state)")
    s, _ = prepared(settings)
    start = Windows.from_settings(s).test_end
    stores: dict[str, dict[str, str]] = {"SQLite": {}} | ({"Redis": {"feast_redis_url": SERVING_REDIS}} if service_available("127.0.0.1", 6379) else {})
    for store, changes in stores.items():
        folder = s.state_dir / "freshness"
        folder.mkdir(exist_ok=True)
        # the probes' verdicts go to a label store of their own, not the bench state's, which trains
        on = s.replace(**changes, labels_token=TOKEN, labels_url=f"sqlite:///{folder / f'labels-{store}.db'}",
                       api_workers=1, api_pin_workers=False, model_poll_seconds=0.0)
        if changes:
            materialize(on, start.to_pydatetime())
        run = f"fresh-{store}-{int(time.time())}"
        first, second = (on.replace(api_port=port) for port in free_ports(2))
        with running_api(first, log_name="api-freshness-1.log"), running_api(second, log_name="api-freshness-2.log"):
            times = probe(first.api_url, second.api_url, run, probes, start, s.features.label_delay_days)
        log = predictions.read(on, since=start.to_pydatetime())  # both APIs have stopped: their logs are flushed
        seen = {
            # B's card had A and B in its last hour if B saw A
            "transaction": _by_probe(log, f"{run}-b-", "customer_tx_count_1h", probes) >= 2,
            # C's terminal held A and B in its delayed day: risk 0.5 if A's verdict reached it, 0 if not
            "label": _by_probe(log, f"{run}-c-", "terminal_risk_1d", probes) > 0,
        }
        for kind, what in (("transaction", "a transaction in the other process's next score of its card"),
                           ("label", "a fraud verdict in the terminal risk of the other process's next score")):
            ms = times[kind] * 1000
            answered = ~np.isnan(ms)
            p50, p99 = (float(np.quantile(ms[answered], q)) if answered.any() else float("nan") for q in (0.5, 0.99))
            section.add(f"freshness, {store} state: {what}", p50, "ms",
                        f"p99 {p99:.2f} ms, an upper bound (the write's answer); seen in {int(seen[kind].sum())} of {probes} probes",
                        p99=p99, seen=float(seen[kind].sum()), probes=float(probes))
    return section


def _by_probe(log: pd.DataFrame, prefix: str, feature: str, probes: int) -> np.ndarray:
    """The logged value of `feature` for each probe's transaction `prefix<i>` (NaN where not logged)."""
    if log.empty or feature not in log:
        return np.full(probes, np.nan)
    # a probe's transaction logged twice (a retry the server had acted on): its first score is what it saw
    rows = log[log["transaction_id"].str.startswith(prefix)].drop_duplicates("transaction_id")
    values = pd.Series(rows[feature].to_numpy(), index=rows["transaction_id"].str.removeprefix(prefix).astype(int))
    return values.reindex(range(probes)).to_numpy(dtype=float)

