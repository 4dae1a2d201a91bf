"""The raw transaction schema, checked on every batch before anything is written.

A batch is rejected whole: a fraud model trained on half a bad file is worse than no model, and a
partial write would make the next run's idempotence checks lie. The rules are a pandera schema
(`RAW_SCHEMA`), checked lazily so that every broken rule is reported at once; messages name the
column, the rule and the first offending rows, so whoever owns the upstream feed can fix it without
a debugger. Before the check, values are brought to their types the way every other path does it
(ids as their text, timestamps in UTC); what cannot be brought is left empty and fails the check.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pandera.pandas as pa
from pandera.errors import SchemaErrors

SHOWN_ROWS = 5
LABELS = [0, 1]
SCENARIOS = [0, 1, 2, 3, 4]


def _id(column: str) -> pa.Column:
    return pa.Column(str, pa.Check(lambda s: s.str.len() > 0, error="empty id"), nullable=False, unique=column == "transaction_id",
                     report_duplicates="all")


RAW_SCHEMA = pa.DataFrameSchema(
    {
        "transaction_id": _id("transaction_id"),
        "timestamp": pa.Column("datetime64[us]", nullable=False),
        "customer_id": _id("customer_id"),
        "terminal_id": _id("terminal_id"),
        "amount": pa.Column(float, [pa.Check(lambda s: np.isfinite(s), error="not a finite number"),
                                    pa.Check.ge(0, error="negative amount")], nullable=False),
        "is_fraud": pa.Column("Int8", pa.Check.isin(LABELS, error=f"must be one of {LABELS}"), nullable=False),
        "fraud_scenario": pa.Column("Int8", pa.Check.isin(SCENARIOS, error=f"must be one of {SCENARIOS}"), nullable=False),
    },
    strict="filter",  # columns beyond the schema are dropped, not stored
)
REQUIRED = [name for name in RAW_SCHEMA.columns if name != "fraud_scenario"]
# what pandera's own checks mean for each column once values were brought to their types (`_typed`)
EMPTY = {"timestamp": "unparseable timestamp", "amount": "not a finite number", "is_fraud": f"must be one of {LABELS}",
         "fraud_scenario": f"must be one of {SCENARIOS}"}


class SchemaError(ValueError):
    """A batch that breaks the raw schema; the message says where and why."""


def _rows(index: list[int]) -> str:
    more = f" (and {len(index) - SHOWN_ROWS} more)" if len(index) > SHOWN_ROWS else ""
    return ", ".join(str(i) for i in index[:SHOWN_ROWS]) + more


def _typed(frame: pd.DataFrame) -> pd.DataFrame:
    """Each column as its type, with what cannot be converted left empty for the schema to report."""
    out = pd.DataFrame(index=pd.RangeIndex(len(frame)))
    for column in ("transaction_id", "customer_id", "terminal_id"):
        values = frame[column].reset_index(drop=True)
        out[column] = values.astype(str).where(values.notna(), None)
    stamps = pd.to_datetime(frame["timestamp"].reset_index(drop=True), errors="coerce", utc=True)
    out["timestamp"] = stamps.dt.tz_localize(None).astype("datetime64[us]")
    amounts = pd.to_numeric(frame["amount"].reset_index(drop=True), errors="coerce").astype(float)
    out["amount"] = amounts.fillna(np.inf)  # unparseable: caught as not finite, not as a null
    for column in ("is_fraud", "fraud_scenario"):
        values = frame[column].reset_index(drop=True) if column in frame else pd.Series(0, index=out.index)
        numeric = pd.to_numeric(values, errors="coerce")
        whole = numeric.notna() & (numeric == numeric.round())
        out[column] = numeric.where(whole, -1).astype("Int8")  # a fraction or a word: outside the allowed set
    return out[list(RAW_SCHEMA.columns)]


def _message(errors: SchemaErrors) -> str:
    cases = errors.failure_cases
    problems = []
    for (column, check), group in cases.groupby(["column", "check"], sort=False, dropna=False):
        rule = {"not_nullable": EMPTY.get(str(column), "empty id"), "field_uniqueness": "duplicate id"}.get(str(check), str(check))
        rows = sorted({int(i) for i in group["index"].dropna()})
        problems.append(f"column {column}: {rule} at rows {_rows(rows)}")
    return "; ".join(problems)


def validate_transactions(frame: pd.DataFrame, source: str = "batch", labelled: bool = True) -> pd.DataFrame:
    """Return the batch coerced to the raw schema, or raise SchemaError listing every broken rule.
    `labelled=False` is a batch to score: its labels, if any, are not required and not kept."""
    if not labelled:
        frame = frame.drop(columns=["is_fraud", "fraud_scenario"], errors="ignore")
    required = REQUIRED if labelled else [c for c in REQUIRED if c != "is_fraud"]
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise SchemaError(f"{source}: missing column(s) {', '.join(missing)}; got {', '.join(map(str, frame.columns))}")
    problems = []
    if pd.api.types.is_bool_dtype(frame["amount"]):  # true is not an amount of 1.0, on the API or here
        problems.append("column amount: booleans are not amounts")
    try:
        out = RAW_SCHEMA.validate(_typed(frame), lazy=True)
    except SchemaErrors as errors:
        problems.append(_message(errors))
    if problems:
        raise SchemaError(f"{source}: rejected, nothing written: " + "; ".join(problems))
    if not labelled:
        return out.drop(columns=["is_fraud", "fraud_scenario"])
    return out.astype({"is_fraud": np.int8, "fraud_scenario": np.int8})
