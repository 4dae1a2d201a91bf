"""Reason codes: the features that pushed a score towards fraud most, with their values.

One formatter for every path that explains a score (the API's `?explain=true`, batch scoring's
`--explain`), so an analyst reads the same reasons for the same transaction wherever it was scored.
The contributions are LightGBM's own SHAP values (`LoadedModel.reasons`), in log-odds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from model.loaded import LoadedModel


@dataclass(frozen=True)
class ReasonCode:
    feature: str
    value: float | None  # None where the feature was missing (NaN), as the answer's JSON says it
    contribution: float


def reason_codes(model: LoadedModel, row: list[float]) -> list[ReasonCode]:
    """One row's reasons, highest contribution first: only the features that raised the score. A
    feature that lowered it is no reason for suspicion, so a row the model finds unremarkable may
    have fewer reasons than asked for, or none."""
    order, contributions = model.reasons(np.asarray([row], dtype=np.float64))
    return [ReasonCode(model.features[i], None if row[i] != row[i] else row[i], float(c))
            for i, c in zip(order[0], contributions[0]) if c > 0]


def reason_columns(model: LoadedModel, rows: np.ndarray, threads: int = 1) -> dict[str, np.ndarray]:
    """Many rows' reasons as columns (`reason_1`, `reason_1_contribution`, ...), for a scored file;
    where a row has fewer features that raised its score, the rest are empty (None, NaN)."""
    order, contributions = model.reasons(rows, threads=threads)
    names = np.asarray(model.features, dtype=object)
    columns: dict[str, np.ndarray] = {}
    for k in range(order.shape[1]):
        raised = contributions[:, k] > 0
        named = names[order[:, k]]
        named[~raised] = None
        columns[f"reason_{k + 1}"] = named
        columns[f"reason_{k + 1}_contribution"] = np.where(raised, contributions[:, k], np.nan)
    return columns
