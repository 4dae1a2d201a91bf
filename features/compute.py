"""Batch feature computation with DuckDB over the offline transaction Parquet.

Features are daily snapshots: the row stamped D 00:00 holds the windows that end at D, built only
from transactions strictly before D. Feast's point-in-time join then gives a transaction at any time
on day D that snapshot, and materialization puts the same snapshot online, so offline and online see
the same numbers. Every known entity gets a row every day (zero-activity days included), which makes
"no history" identical in training and serving.

Terminal risk uses labels, and labels arrive `delay_days` after the transaction: the risk windows end
`delay_days` before the snapshot, so training never sees a label that scoring would not have.
"""

from __future__ import annotations

import os
from pathlib import Path

import duckdb

from features.logic import WINDOWS_DAYS
from features.offline import parts_glob


def _windows(value: str, alias: str) -> str:
    return ",\n".join(
        f"SUM({value}) OVER (PARTITION BY entity ORDER BY day ROWS BETWEEN {w - 1} PRECEDING AND CURRENT ROW) AS {alias}_{w}d"
        for w in WINDOWS_DAYS
    )


def _dense_daily(entity: str, extra: str) -> str:
    """Per-entity per-day totals on a dense calendar, so ROWS windows are day windows."""
    return f"""
    daily AS (
        SELECT {entity} AS entity, CAST(timestamp AS DATE) AS day, COUNT(*) AS n, SUM(amount) AS amount_sum, SUM(is_fraud) AS frauds
        FROM tx GROUP BY ALL
    ),
    calendar AS (
        SELECT CAST(UNNEST(generate_series(MIN(day), MAX(day), INTERVAL 1 DAY)) AS DATE) AS day FROM daily
    ),
    dense AS (
        SELECT e.entity, c.day, COALESCE(d.n, 0) AS n, COALESCE(d.amount_sum, 0) AS amount_sum, COALESCE(d.frauds, 0) AS frauds
        FROM (SELECT DISTINCT entity FROM daily) e CROSS JOIN calendar c
        LEFT JOIN daily d ON d.entity = e.entity AND d.day = c.day
    ),
    windowed AS (
        SELECT entity, day, {_windows('n', 'n')}, {extra} FROM dense
    )"""


def customer_features_sql(glob: str) -> str:
    counts = ", ".join(f"n_{w}d AS customer_tx_count_{w}d" for w in WINDOWS_DAYS)
    means = ", ".join(
        f"CASE WHEN n_{w}d > 0 THEN s_{w}d / n_{w}d ELSE 0 END AS customer_mean_amount_{w}d" for w in WINDOWS_DAYS
    )
    return f"""
    WITH tx AS (SELECT * FROM read_parquet('{glob}')), {_dense_daily('customer_id', _windows('amount_sum', 's'))}
    SELECT entity AS customer_id, CAST(day + INTERVAL 1 DAY AS TIMESTAMP) AS event_timestamp, {counts}, {means}
    FROM windowed ORDER BY event_timestamp, customer_id"""


def terminal_features_sql(glob: str, delay_days: int) -> str:
    lagged = ",\n".join(
        f"COALESCE(LAG({c}_{w}d, {delay_days}) OVER (PARTITION BY entity ORDER BY day), 0) AS {c}_{w}d_delayed"
        for c in ("n", "f")
        for w in WINDOWS_DAYS
    ) if delay_days > 0 else ",\n".join(f"{c}_{w}d AS {c}_{w}d_delayed" for c in ("n", "f") for w in WINDOWS_DAYS)
    counts = ", ".join(f"n_{w}d_delayed AS terminal_tx_count_{w}d" for w in WINDOWS_DAYS)
    risks = ", ".join(
        f"CASE WHEN n_{w}d_delayed > 0 THEN f_{w}d_delayed / n_{w}d_delayed ELSE 0 END AS terminal_risk_{w}d"
        for w in WINDOWS_DAYS
    )
    return f"""
    WITH tx AS (SELECT * FROM read_parquet('{glob}')), {_dense_daily('terminal_id', _windows('frauds', 'f'))},
    delayed AS (SELECT entity, day, {lagged} FROM windowed)
    SELECT entity AS terminal_id, CAST(day + INTERVAL 1 DAY AS TIMESTAMP) AS event_timestamp, {counts}, {risks}
    FROM delayed ORDER BY event_timestamp, terminal_id"""


def _write(sql: str, path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.tmp")
    con = duckdb.connect()
    con.execute(f"COPY ({sql}) TO '{partial}' (FORMAT parquet)")
    rows = con.execute(f"SELECT COUNT(*) FROM read_parquet('{partial}')").fetchall()[0][0]
    os.replace(partial, path)
    return int(rows)


def compute_features(transactions_dir: Path, features_dir: Path, delay_days: int) -> dict[str, int]:
    """Write customer and terminal snapshot tables; returns the row count of each."""
    glob = parts_glob(transactions_dir)
    return {
        "customer": _write(customer_features_sql(glob), features_dir / "customer_features.parquet"),
        "terminal": _write(terminal_features_sql(glob, delay_days), features_dir / "terminal_features.parquet"),
    }
