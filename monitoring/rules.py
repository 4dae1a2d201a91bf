"""Rules measured like models: how often each fires, and once labels arrive, how often it is right.

A rule switched on in a hurry during an attack is a model nobody validated, so the monitor reads the
prediction log's `rules` and `rules_shadow` columns (model/rules.py) and reports, per rule: its hit
rate over the live window, and over the matured, labelled window its precision (frauds among its
labelled hits, with a Wilson interval), and the frauds it caught that the model's score missed (below
the threshold): what the rule adds beside the model. A shadow rule gets the same figures without
having acted, which is what makes switching it on a measured decision.

A decline rule's hits are labelled only through exploration (a declined transaction never gets a
chargeback), so its precision rests on the explored share; the labelled count says how much.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

Z = 1.959963984540054  # the standard normal's 97.5% point: a 95% interval


@dataclass
class RuleFigures:
    rule: str
    mode: str  # active or shadow, as logged
    hits: int  # in the live window
    hit_rate: float
    labelled_hits: int  # in the matured window, with a verdict
    frauds: int
    precision: float  # frauds / labelled_hits; NaN with none
    precision_low: float
    precision_high: float
    frauds_model_missed: int  # labelled frauds it hit whose score was below the model's threshold


def wilson(successes: int, n: int) -> tuple[float, float]:
    """The Wilson score interval of a proportion: sensible at 0 and n, where the normal one is not."""
    if n == 0:
        return math.nan, math.nan
    p = successes / n
    centre, half = p + Z * Z / (2 * n), Z * math.sqrt(p * (1 - p) / n + Z * Z / (4 * n * n))
    return (centre - half) / (1 + Z * Z / n), (centre + half) / (1 + Z * Z / n)


def _fired(frame: pd.DataFrame, column: str) -> pd.DataFrame:
    """One row per (logged answer, rule that fired), with the answer's columns."""
    if column not in frame or frame.empty:
        return pd.DataFrame(columns=["rule", "is_fraud", "is_fraud_predicted"])
    names = frame[column].fillna("").astype(str).str.split(",")
    return frame.assign(rule=names).explode("rule").query("rule != ''")


def rule_figures(live: pd.DataFrame, labelled: pd.DataFrame) -> list[RuleFigures]:
    """Each rule that fired in either window (answered traffic, not shadow scoring), active and shadow."""
    answered = lambda frame: frame[~frame["shadow"].astype(bool)] if "shadow" in frame else frame  # noqa: E731
    live, labelled = answered(live), answered(labelled)
    figures = []
    for mode, column in (("active", "rules"), ("shadow", "rules_shadow")):
        hits, judged = _fired(live, column), _fired(labelled, column)
        for rule in sorted(set(hits["rule"]) | set(judged["rule"])):
            mine = judged[judged["rule"] == rule]
            frauds = int(mine["is_fraud"].astype(bool).sum())
            low, high = wilson(frauds, len(mine))
            n = int((hits["rule"] == rule).sum())
            figures.append(RuleFigures(rule, mode, n, n / len(live) if len(live) else math.nan, len(mine), frauds,
                                       frauds / len(mine) if len(mine) else math.nan, low, high,
                                       int((mine["is_fraud"].astype(bool) & ~mine["is_fraud_predicted"].astype(bool)).sum())))
    return figures
