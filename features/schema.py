"""The raw transaction schema, checked on every batch before anything is written.

A batch is rejected whole: a fraud model trained on half a bad file is worse than no model, and a
partial write would make the next run's idempotence checks lie. Messages name the column, the rule and
the first offending rows, so whoever owns the upstream feed can fix it without a debugger.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

# column -> (kind, required); ids are strings so any upstream id format fits.
RAW_COLUMNS: dict[str, tuple[str, bool]] = {
    "transaction_id": ("id", True),
    "timestamp": ("timestamp", True),
    "customer_id": ("id", True),
    "terminal_id": ("id", True),
    "amount": ("amount", True),
    "is_fraud": ("label", True),
    "fraud_scenario": ("scenario", False),
}
SHOWN_ROWS = 5


class SchemaError(ValueError):
    """A batch that breaks the raw schema; the message says where and why."""


def _rows(mask: np.ndarray | pd.Series) -> str:
    idx = np.flatnonzero(np.asarray(mask))
    more = f" (and {idx.size - SHOWN_ROWS} more)" if idx.size > SHOWN_ROWS else ""
    return ", ".join(str(i) for i in idx[:SHOWN_ROWS]) + more


def validate_transactions(frame: pd.DataFrame, source: str = "batch") -> pd.DataFrame:
    """Return the batch coerced to the raw schema, or raise SchemaError listing every broken rule."""
    problems: list[str] = []
    missing = [c for c, (_, required) in RAW_COLUMNS.items() if required and c not in frame.columns]
    if missing:
        raise SchemaError(f"{source}: missing column(s) {', '.join(missing)}; got {', '.join(map(str, frame.columns))}")
    out = pd.DataFrame(index=frame.index)
    for column, (kind, _) in RAW_COLUMNS.items():
        if column not in frame.columns:
            out[column] = np.zeros(len(frame), dtype=np.int8)
            continue
        values = frame[column]
        if kind == "id":
            bad = values.isna() | (values.astype(str).str.len() == 0)
            if bad.any():
                problems.append(f"column {column}: empty id at rows {_rows(bad)}")
            out[column] = values.astype(str)
        elif kind == "timestamp":
            parsed = pd.to_datetime(values, errors="coerce", utc=True)
            bad = parsed.isna()
            if bad.any():
                problems.append(f"column {column}: unparseable timestamp at rows {_rows(bad)}")
            out[column] = parsed.dt.tz_localize(None).astype("datetime64[us]")
        elif kind == "amount":
            if pd.api.types.is_bool_dtype(values):  # true is not an amount of 1.0, on the API or here
                problems.append(f"column {column}: booleans are not amounts")
            numeric = pd.to_numeric(values, errors="coerce").astype(float)
            bad = ~np.isfinite(numeric.to_numpy())
            if bad.any():
                problems.append(f"column {column}: not a finite number at rows {_rows(bad)}")
            negative = numeric.to_numpy() < 0
            if negative.any():
                problems.append(f"column {column}: negative amount at rows {_rows(negative)}")
            out[column] = numeric
        else:
            allowed = {0, 1} if kind == "label" else {0, 1, 2, 3, 4}
            numeric = pd.to_numeric(values, errors="coerce")
            bad = ~numeric.isin(allowed)
            if bad.any():
                problems.append(f"column {column}: must be one of {sorted(allowed)} at rows {_rows(bad)}")
            out[column] = numeric.fillna(0).astype(np.int8)
    duplicated = out["transaction_id"].duplicated(keep=False)
    if duplicated.any():
        problems.append(f"column transaction_id: duplicate id at rows {_rows(duplicated)}")
    if problems:
        raise SchemaError(f"{source}: rejected, nothing written: " + "; ".join(problems))
    return out.reset_index(drop=True)
