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
    """One row's reasons, highest contribution first."""
    order, contributions = model.reasons(np.asarray([row], dtype=np.float64))
    return [ReasonCode(model.features[i], None if row[i] != row[i] else row[i], float(c)) for i, c in zip(order[0], contributions[0])]


def reason_columns(model: LoadedModel, rows: np.ndarray, threads: int = 1) -> dict[str, np.ndarray]:
    """Many rows' reasons as columns (`reason_1`, `reason_1_contribution`, ...), for a scored file."""
    order, contributions = model.reasons(rows, threads=threads)
    names = np.asarray(model.features)
    columns: dict[str, np.ndarray] = {}
    for k in range(order.shape[1]):
        columns[f"reason_{k + 1}"] = names[order[:, k]]
        columns[f"reason_{k + 1}_contribution"] = contributions[:, k]
    return columns
