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
        # optional: transactions arrive without labels (the label store holds the verdicts); the
        # simulator writes its ground truth here, for its own chargeback feeds
        "is_fraud": pa.Column("Int8", pa.Check.isin(LABELS, error=f"must be one of {LABELS}"), nullable=True),
        "fraud_scenario": pa.Column("Int8", pa.Check.isin(SCENARIOS, error=f"must be one of {SCENARIOS}"), nullable=False),
    },
    strict="filter",  # columns beyond the schema are dropped, not stored
)
REQUIRED = [name for name in RAW_SCHEMA.columns if name not in ("is_fraud", "fraud_scenario")]
# what pandera's own checks mean for each column once values were brought to their types (`_typed`)
EMPTY = {"timestamp": "unparseable timestamp", "reported_at": "unparseable timestamp", "transaction_id": "empty id",
         "customer_id": "empty id", "terminal_id": "empty id", "source": "empty source", "amount": "not a finite number", "is_fraud": f"must be one of {LABELS}",
         "fraud_scenario": f"must be one of {SCENARIOS}"}


LABEL_SCHEMA = pa.DataFrameSchema(
    {
        "transaction_id": _id("transaction_id"),
        "is_fraud": pa.Column("Int8", pa.Check.isin(LABELS, error=f"must be one of {LABELS}"), nullable=False),
        "reported_at": pa.Column("datetime64[us]", nullable=False),
        "source": pa.Column(str, pa.Check.str_matches(r"^[a-z][a-z0-9_-]{0,31}$", error="a source is 1-32 of a-z 0-9 _ -, from a letter"),
                            nullable=False),
    },
    strict="filter",
)


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
    for column, absent in (("is_fraud", None), ("fraud_scenario", 0)):
        values = frame[column].reset_index(drop=True) if column in frame else pd.Series(absent, index=out.index, dtype=object)
        numeric = pd.to_numeric(values, errors="coerce")
        whole = numeric.notna() & (numeric == numeric.round())
        # a fraction or a word: outside the allowed set; no label (is_fraud only): empty
        out[column] = numeric.where(whole | (values.isna() if absent is None else False), -1).astype("Int8")
    return out[list(RAW_SCHEMA.columns)]


def _message(errors: SchemaErrors) -> str:
    cases = errors.failure_cases
    problems = []
    for (column, check), group in cases.groupby(["column", "check"], sort=False, dropna=False):
        rule = {"not_nullable": EMPTY.get(str(column), "empty"), "field_uniqueness": "duplicate id"}.get(str(check), str(check))
        rows = sorted({int(i) for i in group["index"].dropna()})
        problems.append(f"column {column}: {rule} at rows {_rows(rows)}")
    return "; ".join(problems)


def validate_transactions(frame: pd.DataFrame, source: str = "batch", labelled: bool = True) -> pd.DataFrame:
    """Return the batch coerced to the raw schema, or raise SchemaError listing every broken rule.
    `is_fraud` may be absent or empty (no label known). `labelled=False` is a batch to score: its
    labels, if any, are not kept."""
    if not labelled:
        frame = frame.drop(columns=["is_fraud", "fraud_scenario"], errors="ignore")
    missing = [c for c in REQUIRED if c not in frame.columns]
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
    return out.astype({"is_fraud": "Int8", "fraud_scenario": np.int8})


def validate_labels(frame: pd.DataFrame, source: str, default_source: str, now: pd.Timestamp) -> pd.DataFrame:
    """A batch of verdicts coerced to `LABEL_SCHEMA`, or SchemaError listing every broken rule. A
    verdict without `reported_at` was reported `now` (naive UTC, as every stored time), one without
    `source` comes from `default_source`; none may be reported after `now`: a clock that runs ahead
    would make its verdict win over every later one."""
    missing = [c for c in ("transaction_id", "is_fraud") if c not in frame.columns]
    if missing:
        raise SchemaError(f"{source}: missing column(s) {', '.join(missing)}; got {', '.join(map(str, frame.columns))}")
    out = pd.DataFrame(index=pd.RangeIndex(len(frame)))
    ids = frame["transaction_id"].reset_index(drop=True)
    out["transaction_id"] = ids.astype(str).where(ids.notna(), None)
    numeric = pd.to_numeric(frame["is_fraud"].reset_index(drop=True).map(lambda v: int(v) if isinstance(v, bool) else v), errors="coerce")
    out["is_fraud"] = numeric.where(numeric.notna() & (numeric == numeric.round()), -1).astype("Int8")
    stamps = frame["reported_at"].reset_index(drop=True) if "reported_at" in frame else pd.Series(None, index=out.index)
    parsed = pd.to_datetime(stamps, errors="coerce", utc=True, format="ISO8601").dt.tz_localize(None).astype("datetime64[us]")
    out["reported_at"] = parsed.where(stamps.notna(), now)  # absent: now; present but unparseable: stays empty, reported
    sources = frame["source"].reset_index(drop=True) if "source" in frame else pd.Series(None, index=out.index)
    out["source"] = sources.astype(str).where(sources.notna(), default_source)
    problems = []
    try:
        out = LABEL_SCHEMA.validate(out, lazy=True)
    except SchemaErrors as errors:
        problems.append(_message(errors))
    future = out.index[out["reported_at"] > now].tolist()
    if future:
        problems.append(f"column reported_at: after now ({now}) at rows {_rows(future)}")
    if problems:
        raise SchemaError(f"{source}: rejected, nothing recorded: " + "; ".join(problems))
    return out.astype({"is_fraud": np.int8})


def micros(transactions: pd.DataFrame) -> list[int]:
    """Each transaction's time in whole microseconds since the epoch: how the live state and the
    offline features (`epoch_us`) key time."""
    return transactions["timestamp"].to_numpy().astype("datetime64[us]").astype("int64").tolist()
