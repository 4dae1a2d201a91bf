"""Data drift and prediction drift of the live traffic against the model's training reference.

The reference is what the model saw when it was judged: its test-window features and its own scores,
logged with the model version. Comparing against it answers the question that matters for a fraud
model: is today's traffic still the traffic this model was validated on?
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

import duckdb
import pandas as pd
from evidently import Report
from evidently.metrics import ValueDrift
from evidently.presets import DataDriftPreset

Verdict = Literal["ok", "drift", "insufficient_data"]


@dataclass
class ColumnDrift:
    column: str
    method: str
    value: float
    threshold: float
    drifted: bool


@dataclass
class DriftSummary:
    verdict: Verdict
    current_rows: int
    reference_rows: int
    drifted_share: float = 0.0
    score_drifted: bool = False
    columns: list[ColumnDrift] = field(default_factory=list)
    excluded: dict[str, str] = field(default_factory=dict)
    html: str | None = None
    created_at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))


def read_prediction_log(directory: Path, since: datetime | None = None, until: datetime | None = None) -> pd.DataFrame:
    """Logged predictions by transaction time; DuckDB reads only the columns and rows asked for."""
    if not any(directory.glob("*.parquet")):
        return pd.DataFrame()
    clauses = ["TRUE"]
    if since is not None:
        clauses.append(f"timestamp >= TIMESTAMP '{since.isoformat(sep=' ')}'")
    if until is not None:
        clauses.append(f"timestamp < TIMESTAMP '{until.isoformat(sep=' ')}'")
    return duckdb.sql(f"SELECT * FROM read_parquet('{directory}/*.parquet') WHERE {' AND '.join(clauses)}").df()


def _drifted(method: str, value: float, threshold: float) -> bool:
    # Evidently reports p-values for statistical tests (drift when small) and distances otherwise.
    return value < threshold if "p_value" in method else value >= threshold


def _usable(reference: pd.DataFrame, current: pd.DataFrame, columns: list[str]) -> tuple[list[str], dict[str, str]]:
    """Drop columns a drift test cannot judge, and say why: all-null or constant in both datasets."""
    keep, excluded = [], {}
    for column in columns:
        if current[column].isna().all():
            excluded[column] = "all values missing in current data"
        elif pd.concat([reference[column], current[column]]).nunique(dropna=True) <= 1:
            excluded[column] = "constant"
        else:
            keep.append(column)
    return keep, excluded


def drift_report(
    reference: pd.DataFrame, current: pd.DataFrame, features: list[str], out_dir: Path, drift_share: float, min_rows: int
) -> DriftSummary:
    """Run Evidently, write the HTML report and the JSON summary, and return the summary."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if len(current) < min_rows:
        summary = DriftSummary("insufficient_data", len(current), len(reference))
        (out_dir / "summary.json").write_text(json.dumps(asdict(summary), indent=2))
        return summary
    columns, excluded = _usable(reference, current, features)
    report = Report([DataDriftPreset(columns=columns, drift_share=drift_share), ValueDrift(column="score")])
    snapshot = report.run(current_data=current[columns + ["score"]], reference_data=reference[columns + ["score"]])
    html = out_dir / "report.html"
    snapshot.save_html(str(html))
    results: list[ColumnDrift] = []
    drifted_share = 0.0
    for metric in snapshot.dict()["metrics"]:
        config = metric["config"]
        if config["type"].endswith("DriftedColumnsCount"):
            drifted_share = float(metric["value"]["share"])
        elif config["type"].endswith("ValueDrift"):
            value, threshold = float(metric["value"]), float(config["threshold"])
            results.append(ColumnDrift(config["column"], config["method"], value, threshold, _drifted(config["method"], value, threshold)))
    score_drifted = any(c.drifted for c in results if c.column == "score")
    verdict: Verdict = "drift" if drifted_share >= drift_share or score_drifted else "ok"
    summary = DriftSummary(verdict, len(current), len(reference), drifted_share, score_drifted, results, excluded, str(html))
    (out_dir / "summary.json").write_text(json.dumps(asdict(summary), indent=2))
    return summary
