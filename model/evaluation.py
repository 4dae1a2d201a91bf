"""How a fraud model is judged, before any algorithm is chosen.

At a base rate near 1%, accuracy rewards a model that never flags anything. What matters to a fraud
team is (a) ranking quality on the rare class (average precision), (b) how many of the cards an
analyst team can review per day are truly compromised (card precision at top-k, the handbook's CP@k),
and (c) money: a missed fraud costs its amount, a false alarm costs a review.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """AP, or NaN where it is undefined (no fraud, or nothing but fraud)."""
    return float(average_precision_score(labels, scores)) if 0 < labels.sum() < len(labels) else float("nan")


def card_precision_at_k(frame: pd.DataFrame, scores: np.ndarray, k: int) -> float:
    """The Fraud Detection Handbook's card precision at k (its `card_precision_top_k`): mean over days
    of the compromised cards among the day's k highest-scored cards, divided by k.

    A card's daily score is its highest transaction score: analysts review cards, not transactions.
    A card found compromised on a day is blocked, so it is left out of every later day: a model
    cannot score again, day after day, on a card it has already caught. Counting it again (a per-day
    precision with no memory) flatters a model that ranks a few compromised cards high all week.
    """
    scored = frame.assign(score=scores, day=frame["event_timestamp"].dt.floor("D"))[["day", "customer_id", "score", "is_fraud"]]
    detected: set[object] = set()
    daily = []
    for _, day in scored.groupby("day", sort=True):
        day = day[~day["customer_id"].isin(detected)]
        per_card = day.groupby("customer_id", observed=True).agg(score=("score", "max"), fraud=("is_fraud", "max"))
        top = per_card.sort_values("score", ascending=False, kind="stable").head(k)
        caught = top.index[top["fraud"] == 1]
        daily.append(len(caught) / k)
        detected.update(caught)
    return float(np.mean(daily)) if daily else float("nan")


def expected_cost(labels: np.ndarray, amounts: np.ndarray, flagged: np.ndarray, review_fee: float) -> float:
    """Money lost: amounts of missed frauds plus a review fee per flagged transaction."""
    missed = (labels == 1) & ~flagged
    return float(amounts[missed].sum() + review_fee * flagged.sum())


def cost_optimal_threshold(labels: np.ndarray, amounts: np.ndarray, scores: np.ndarray, review_fee: float) -> tuple[float, float]:
    """The score threshold with the least expected cost, and that cost; scanned over score quantiles."""
    candidates = np.unique(np.quantile(scores, np.linspace(0.5, 1.0, 501)))
    costs = [expected_cost(labels, amounts, scores >= t, review_fee) for t in candidates]
    best = int(np.argmin(costs))
    return float(candidates[best]), float(costs[best])


def recall_at_fpr(labels: np.ndarray, scores: np.ndarray, max_fpr: float) -> float:
    """Share of frauds caught while flagging at most `max_fpr` of genuine transactions."""
    fpr, tpr, _ = roc_curve(labels, scores)
    return float(tpr[fpr <= max_fpr].max())


def card_precision_key(top_k: int) -> str:
    return f"card_precision_at_{top_k}"


def recall_key(max_fpr: float) -> str:
    return f"recall_at_fpr_{max_fpr:g}"


MAX_IPS_WEIGHT = 50.0  # no logged row stands for more than 50: an explored review at the default 0.5% share is clipped from 200


def ips_weights(decisions: pd.Series, propensities: pd.Series) -> np.ndarray:
    """Weights that let logged, labelled traffic stand for all of it: a declined transaction never
    gets a label and weighs 0; every other weighs 1 / the propensity of the decision it got, so an
    explored review (`model.decisions.explore`, propensity = the exploration share) stands for the
    declines like it that went unlabelled. A record from before propensities were logged weighs 1.

    Clipped at `MAX_IPS_WEIGHT`: at the default exploration share of 0.5% an explored review would
    weigh 200, and a week holds only a handful of them, so one analyst's verdict would move a fit or
    an AP as much as 200 ordinary rows. Clipping trades that variance for a known bias: the explored
    reviews then stand for a quarter of the declines like them, which under-weighs the top scores
    and makes the estimate conservative, never flattering."""
    censored = (decisions == "decline").to_numpy()
    inverse = 1.0 / propensities.fillna(1.0).to_numpy(np.float64)
    return np.where(censored, 0.0, np.minimum(inverse, MAX_IPS_WEIGHT))


def ips_average_precision(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> float:
    """Average precision on logged traffic, inverse-propensity weighted (`ips_weights`)."""
    kept = weights > 0
    if not 0 < labels[kept].sum() < kept.sum():
        return float("nan")
    return float(average_precision_score(labels[kept], scores[kept], sample_weight=weights[kept]))


def evaluate(frame: pd.DataFrame, scores: np.ndarray, threshold: float, review_fee: float, top_k: int, max_fpr: float = 0.01) -> dict[str, float]:
    labels = frame["is_fraud"].to_numpy()
    amounts = frame["amount"].to_numpy()
    flagged = scores >= threshold
    both_classes = 0 < labels.sum() < labels.size
    return {
        "roc_auc": float(roc_auc_score(labels, scores)) if both_classes else float("nan"),
        "average_precision": float(average_precision_score(labels, scores)) if both_classes else float("nan"),
        card_precision_key(top_k): card_precision_at_k(frame, scores, top_k),
        recall_key(max_fpr): recall_at_fpr(labels, scores, max_fpr) if both_classes else float("nan"),
        "expected_cost": expected_cost(labels, amounts, flagged, review_fee),
        "cost_of_no_model": expected_cost(labels, amounts, np.zeros_like(flagged), review_fee),
        "flag_rate": float(flagged.mean()),
        "rows": float(labels.size),
        "frauds": float(labels.sum()),
    }
