"""Event-time features offline: one row per transaction, as of its own timestamp.

The definitions are `features.live`'s (windows that end at the transaction and include it; terminal
risk from labels at least `delay_days` old), written as DuckDB window functions over the whole
history: `RANGE` frames over the time in microseconds, `EXCLUDE TIES` so that transactions at the
same instant do not see each other, as online. The cost grows with the number of transactions, not
with cards x days (1.75 M transactions in seconds here, `make bench`).

A card's windows need only that card's transactions, and a terminal's only that terminal's: the job
is cut into buckets of cards and buckets of terminals (a hash of the id), each computed on its own,
then joined by transaction. On one machine that is one bucket each, in this process; with
`FRAUDOPS_DASK_ADDRESS` the buckets are tasks on the Dask cluster (`compute_features_on_dask`),
with the same SQL, so both give the same table.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import duckdb

from core.runtime import atomic_path
from features.live import CUSTOMER_HORIZON_US, CUSTOMER_WINDOWS, MEAN_WINDOWS, SECOND_US, TERMINAL_WINDOWS, label_lag_us
from features.offline import parts_glob

FEATURES_FILE = "transaction_features.parquet"
FRAUDS_FILE = "fraud_verdicts.parquet"  # beside it: the label store's frauds the job read


def _frame(entity: str, first: int, last: str) -> str:
    """A window over the entity's transactions from `first` microseconds back up to `last`."""
    return f"(PARTITION BY {entity} ORDER BY us RANGE BETWEEN {first} PRECEDING AND {last})"


def _transactions(glob: str, entity: str, index: int, buckets: int) -> str:
    where = "TRUE" if buckets == 1 else f"hash({entity}) % {buckets} = {index}"
    return f"SELECT transaction_id, customer_id, terminal_id, timestamp, amount, epoch_us(timestamp) AS us FROM read_parquet('{glob}') WHERE {where}"


def _labelled(glob: str, frauds: Path, index: int, buckets: int) -> str:
    """The terminal bucket's transactions with `is_fraud` from the fraud verdicts file (the label
    store's, `features.labels.write_frauds`), never from the transactions themselves."""
    return (f"SELECT t.*, CAST(f.transaction_id IS NOT NULL AS INTEGER) AS is_fraud FROM ({_transactions(glob, 'terminal_id', index, buckets)}) t "
            f"LEFT JOIN read_parquet('{frauds}') f ON t.transaction_id = f.transaction_id")


def customer_sql(glob: str, index: int = 0, buckets: int = 1) -> str:
    """The card's windows, its gap since the previous charge and the amount against its mean."""
    columns = []
    for name, width in CUSTOMER_WINDOWS.items():
        frame = _frame("customer_id", width - 1, "CURRENT ROW EXCLUDE TIES")
        columns += [f"CAST(COUNT(*) OVER {frame} AS DOUBLE) AS customer_tx_count_{name}",
                    f"SUM(amount) OVER {frame} AS customer_amount_sum_{name}"]
    columns.append(f"MAX(us) OVER {_frame('customer_id', CUSTOMER_HORIZON_US - 1, '1 PRECEDING')} AS previous_us")
    kept = [f"customer_tx_count_{w}, customer_amount_sum_{w}" for w in CUSTOMER_WINDOWS]
    means = [f"customer_amount_sum_{w} / customer_tx_count_{w} AS customer_mean_amount_{w}" for w in MEAN_WINDOWS]
    return f"""
    WITH windowed AS (SELECT transaction_id, timestamp, amount, us, {', '.join(columns)} FROM ({_transactions(glob, 'customer_id', index, buckets)}))
    SELECT transaction_id, timestamp AS event_timestamp, {', '.join(kept)}, {', '.join(means)},
        CASE WHEN previous_us IS NULL THEN 'NaN'::DOUBLE ELSE (us - previous_us) / {float(SECOND_US)} END AS customer_seconds_since_previous,
        CASE WHEN customer_amount_sum_30d > 0 THEN amount / (customer_amount_sum_30d / customer_tx_count_30d) ELSE 'NaN'::DOUBLE END
            AS amount_to_customer_mean_30d
    FROM windowed"""


def terminal_sql(glob: str, frauds: Path, delay_days: int, index: int = 0, buckets: int = 1) -> str:
    """The terminal's fresh counts and its risk from labels old enough to be known."""
    lag = label_lag_us(delay_days)
    columns = []
    for name, width in TERMINAL_WINDOWS.items():
        fresh = _frame("terminal_id", width - 1, "CURRENT ROW EXCLUDE TIES")
        delayed = _frame("terminal_id", lag + width - 1, f"{lag} PRECEDING")
        columns += [f"CAST(COUNT(*) OVER {fresh} AS DOUBLE) AS terminal_tx_count_{name}",
                    f"COUNT(*) OVER {delayed} AS labelled_{name}",
                    f"COALESCE(SUM(is_fraud) OVER {delayed}, 0) AS frauds_{name}"]
    risks = [f"CASE WHEN labelled_{w} > 0 THEN CAST(frauds_{w} AS DOUBLE) / labelled_{w} ELSE 0.0 END AS terminal_risk_{w}"
             for w in TERMINAL_WINDOWS]
    counts = [f"terminal_tx_count_{w}" for w in TERMINAL_WINDOWS]
    return f"""
    WITH windowed AS (SELECT transaction_id, {', '.join(columns)} FROM ({_labelled(glob, frauds, index, buckets)}))
    SELECT transaction_id, {', '.join(counts)}, {', '.join(risks)} FROM windowed"""


Job = tuple[str, Path]  # (a bucket's SQL, the Parquet part it writes)
Runner = Callable[[Sequence[Job]], None]


def bucket_jobs(glob: str, frauds: Path, delay_days: int, parts: Path, buckets: int) -> list[Job]:
    """One job per bucket of cards and one per bucket of terminals."""
    return ([(customer_sql(glob, i, buckets), parts / f"customer-{i}.parquet") for i in range(buckets)]
            + [(terminal_sql(glob, frauds, delay_days, i, buckets), parts / f"terminal-{i}.parquet") for i in range(buckets)])


def in_process(jobs: Sequence[Job]) -> None:
    for sql, path in jobs:
        write_part(sql, path)


def on_dask(address: str) -> Runner:
    """Run the jobs as tasks on the Dask cluster at `address`. The workers read the transactions and
    write the parts at the same paths: on a real cluster, storage they all mount (or an object store,
    which DuckDB reads and writes by URL)."""

    def run(jobs: Sequence[Job]) -> None:
        from distributed import Client

        with Client(address) as client:
            client.gather(client.map(write_part, [sql for sql, _ in jobs], [path for _, path in jobs], pure=False))

    return run


def write_part(sql: str, path: Path) -> Path:
    con = duckdb.connect()
    try:
        con.execute(f"COPY ({sql}) TO '{path}' (FORMAT parquet)")
    finally:
        con.close()
    return path


def compute_features(transactions_dir: Path, features_dir: Path, frauds: Path, delay_days: int, buckets: int = 1,
                     run: Runner = in_process) -> dict[str, int]:
    """Write the per-transaction feature table (by rename, whole or not at all); its row count. The
    card and terminal buckets are computed by `run` (here, or `on_dask`), then joined here. `frauds`
    is a Parquet file of the transaction ids with a fraud verdict (`features.labels.write_frauds`):
    the labels terminal risk counts once their transaction is `delay_days` old, as online."""
    import shutil
    import tempfile

    path = features_dir / FEATURES_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    parts = Path(tempfile.mkdtemp(dir=features_dir, prefix=".parts-"))
    con = duckdb.connect()
    try:
        run(bucket_jobs(parts_glob(transactions_dir), frauds, delay_days, parts, buckets))
        with atomic_path(path) as partial:
            con.execute(f"""COPY (
                SELECT * FROM read_parquet('{parts}/customer-*.parquet') AS c JOIN read_parquet('{parts}/terminal-*.parquet') AS t USING (transaction_id)
                ORDER BY event_timestamp, transaction_id) TO '{partial}' (FORMAT parquet)""")
            rows = con.execute(f"SELECT COUNT(*) FROM read_parquet('{partial}')").fetchall()[0][0]
    finally:
        con.close()
        shutil.rmtree(parts, ignore_errors=True)
    return {"transaction": int(rows)}
