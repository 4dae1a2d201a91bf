"""Quality by segment: a slice the model has stopped catching hides in the average.

An attack rarely touches all traffic: mimicry moves leaked cards' frauds into ordinary amounts, card
testing hits new cards, a compromised terminal's wave raises one risk band. So the champion's
labelled traffic is cut along the lines a fraud team reads it by (amount band, card age, terminal
risk band), and each band is judged against the same band of its reference traffic (the test
window, cut at the live decline share: `quality.comparable_reference`), with a bootstrap interval
for its live AP. A band raises the alarm only with enough labelled frauds on both sides, when its
live AP fell below (1 - max_drop) of the reference band's, the aggregate check's own rule, and when
even the top of its interval lies below the reference band's AP, so that the fall is beyond what
the band's size alone would give: a small band's noise never pages anyone.

A first version asked for the whole interval below (1 - max_drop) of the reference. At the demo's
scale that never fired: the bands mimicry broke (terminals with no known fraud, amounts up to 20)
had lost more than half their AP, on 37 to 61 labelled frauds, and intervals that wide reach above
half the reference whatever happened (docs/07-monitoring.md, quality by segment).

The fraud scenario is not a segment here: the label store keeps verdicts, not how a fraud was done,
and a band of frauds alone has no AP.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from model.evaluation import average_precision

AMOUNT_EDGES = (20.0, 100.0, 220.0)  # the Handbook's frauds above 220 are its first scenario's
NEW_CARD_TRANSACTIONS = 3  # at most this many in the card's 30 days, this one included: a new (or newly active) card
RISK_EDGES = (0.0, 0.05)  # no fraud known at the terminal, up to 5% of its labelled transactions, above
RESAMPLES = 200
CONFIDENCE = 0.95
FLAGGING = ("review", "decline")  # the decisions that send a transaction to someone or stop it


def _bands(values: pd.Series, edges: tuple[float, ...], names: tuple[str, ...]) -> pd.Series:
    """`names[i]` for values up to `edges[i]`, the last name for the rest, "unknown" for a missing value."""
    numbers = values.to_numpy(dtype="float64")
    bands = np.array(names, dtype=object)[np.searchsorted(np.asarray(edges), np.nan_to_num(numbers), side="left")]
    return pd.Series(np.where(np.isnan(numbers), "unknown", bands), index=values.index)


SEGMENTS: dict[str, tuple[str, Callable[[pd.DataFrame], pd.Series]]] = {
    "amount": ("amount", lambda f: _bands(f["amount"], AMOUNT_EDGES, ("up to 20", "20-100", "100-220", "over 220"))),
    "card age": ("customer_tx_count_30d", lambda f: _bands(f["customer_tx_count_30d"], (float(NEW_CARD_TRANSACTIONS),), ("new", "established"))),
    "terminal risk": ("terminal_risk_30d", lambda f: _bands(f["terminal_risk_30d"], RISK_EDGES, ("none known", "low", "high"))),
}


@dataclass
class SegmentQuality:
    segment: str
    band: str
    rows: int
    frauds: int
    average_precision: float
    average_precision_low: float  # the bootstrap interval of the live AP (CONFIDENCE)
    average_precision_high: float
    reference_frauds: int
    reference_average_precision: float  # the same band of the reference traffic
    recall_at_review: float  # the band's labelled frauds the model sent to review (or declined)
    alert_rate: float  # the band's transactions sent to review (or declined)
    judged: bool  # enough labelled frauds here and in the reference band
    alarm: bool


def central_interval(values: np.ndarray) -> tuple[float, float]:
    """The central CONFIDENCE share of `values`, NaNs left out (NaN, NaN when none is left)."""
    values = values[~np.isnan(values)]
    if len(values) == 0:
        return float("nan"), float("nan")
    tail = (1 - CONFIDENCE) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def ap_interval(labels: np.ndarray, scores: np.ndarray, resample_seed: int = 0) -> tuple[float, float]:
    """The percentile bootstrap interval of AP over RESAMPLES resamples of the rows."""
    rng = np.random.default_rng(resample_seed)
    picks = rng.integers(0, len(labels), size=(RESAMPLES, len(labels)))
    return central_interval(np.array([average_precision(labels[p], scores[p]) for p in picks]))


def segment_quality(labelled: pd.DataFrame, reference: pd.DataFrame, min_frauds: int, max_drop: float) -> list[SegmentQuality]:
    """Every band of every segment whose column the labelled traffic has. `labelled`: one model's
    matured predictions with is_fraud, score, decision and the logged features (those scored
    degraded are left out: their defaulted features would put them all in one band and page for an
    outage, not a model); `reference`: its comparable reference traffic, with is_fraud, score and
    the same features. The reference band's AP is taken as exact, though it rests on a sample too."""
    out: list[SegmentQuality] = []
    if "degraded" in labelled:  # scored on default features while the store was down: a card with no history, a terminal with no risk
        labelled = labelled[~labelled["degraded"].astype(bool)]
    for segment, (column, band_of) in SEGMENTS.items():
        if column not in labelled or column not in reference or labelled.empty:
            continue
        live_bands, reference_bands = band_of(labelled), band_of(reference)
        for band in sorted(set(live_bands)):
            live = labelled[live_bands == band]
            ref = reference[reference_bands == band]
            labels, scores = live["is_fraud"].to_numpy(dtype="int64"), live["score"].to_numpy(dtype="float64")
            flagged = live["decision"].isin(FLAGGING).to_numpy() if "decision" in live else live["is_fraud_predicted"].astype(bool).to_numpy()
            frauds, reference_frauds = int(labels.sum()), int(ref["is_fraud"].sum())
            ap, reference_ap = average_precision(labels, scores), average_precision(ref["is_fraud"].to_numpy(dtype="int64"), ref["score"].to_numpy(dtype="float64"))
            low, high = ap_interval(labels, scores)
            judged = frauds >= min_frauds and reference_frauds >= min_frauds and not np.isnan(high) and not np.isnan(reference_ap)
            out.append(SegmentQuality(
                segment, str(band), len(live), frauds, ap, low, high, reference_frauds, reference_ap,
                float(flagged[labels == 1].mean()) if frauds else float("nan"), float(flagged.mean()),
                judged, judged and ap < reference_ap * (1 - max_drop) and high < reference_ap,
            ))
    return out
