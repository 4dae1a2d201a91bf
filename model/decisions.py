"""From a score to what happens to the transaction: approve, step-up, review or decline.

A single threshold answers "flag or not"; a card issuer has more than two actions, each with its own
price. A step-up (a one-time code, 3-D Secure) costs a little friction on every transaction it
touches and stops most fraud, since the fraudster rarely holds the phone; a review by an analyst
stops the fraud but costs an analyst's time, of which there is a fixed amount a day; a decline
stops the fraud and costs a good customer a lost sale. So the score is cut into four bands, lowest
to highest, and the cuts are chosen on validation data to minimise the total cost, with the review
band held within the team's daily capacity (`Settings.costs.top_k`, the Handbook's 100 cards a day).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from core.settings import CostSettings, Settings

Decision = Literal["approve", "step_up", "review", "decline"]
DECISIONS: tuple[Decision, ...] = ("approve", "step_up", "review", "decline")
EMPTY = float(np.nextafter(1.0, 2.0))  # a cut above every probability: its band holds nothing
CANDIDATES = 120  # cut points per band, as counts of top scores: 120^3 / 6 combinations, priced at once


@dataclass(frozen=True)
class Costs:
    review_fee: float  # an analyst's review, on every transaction reviewed
    step_up_fee: float  # the friction of a challenge, on every transaction stepped up
    step_up_catch: float  # the share of frauds a challenge stops
    decline_fee: float  # a good customer declined: the lost sale and the call that follows
    reviews_per_day: float  # what the analysts can review a day (transactions, an upper bound on cards)

    @classmethod
    def from_settings(cls, costs: CostSettings) -> Costs:
        return cls(costs.review_fee, costs.step_up_fee, costs.step_up_catch, costs.decline_fee, float(costs.top_k))


@dataclass(frozen=True)
class Bands:
    """The lowest score of the step-up, review and decline bands (ascending; EMPTY for a band unused)."""

    step_up: float
    review: float
    decline: float

    @classmethod
    def from_threshold(cls, threshold: float) -> Bands:
        """A model from before the bands: flag means review, as its threshold was chosen for."""
        return cls(threshold, threshold, EMPTY)

    def cuts(self) -> np.ndarray:
        return np.array([self.step_up, self.review, self.decline])

    def decide(self, scores: np.ndarray) -> np.ndarray:
        """The decision for each score, as an index into DECISIONS."""
        return np.searchsorted(self.cuts(), scores, side="right")


def decide_one(bands: Bands, score: float) -> Decision:
    """One score's decision without NumPy's call overhead: the request path's version of `decide`."""
    score = float(score)  # NumPy's booleans add as a logical or
    return DECISIONS[(score >= bands.step_up) + (score >= bands.review) + (score >= bands.decline)]


def exploration_draw(transaction_id: str) -> float:
    """A uniform number in [0, 1) fixed by the transaction id: the same on a retry and on every
    worker, and independent of the router's customer hash (its own salt)."""
    digest = hashlib.blake2b(transaction_id.encode(), digest_size=8, salt=b"explore").digest()
    return int.from_bytes(digest, "big") / 2**64


def explore(decision: Decision, transaction_id: str, share: float) -> tuple[Decision, float]:
    """The feedback loop's answer to its own bias: a declined transaction never gets a label (it never
    happened, so no chargeback comes), and a model retrained on what it let through learns from a
    censored sample. A `share` of would-be declines goes to review instead, where an analyst's
    verdict labels it. Returns the decision taken and its propensity, the probability the policy had
    of taking it, which evaluation on logged data divides by (`model.evaluation.ips_weights`)."""
    if decision != "decline" or share <= 0.0:
        return decision, 1.0
    return ("review", share) if exploration_draw(transaction_id) < share else ("decline", 1.0 - share)


def cost(labels: np.ndarray, amounts: np.ndarray, decisions: np.ndarray, costs: Costs) -> float:
    """Money lost by these decisions: frauds let through (all of an approval's, the share a challenge
    misses), the fees of challenges and reviews, and good customers declined."""
    fraud = labels == 1
    approve, step_up, review, decline = (decisions == i for i in range(4))
    return float(amounts[fraud & approve].sum() + (1 - costs.step_up_catch) * amounts[fraud & step_up].sum()
                 + costs.step_up_fee * step_up.sum() + costs.review_fee * review.sum() + costs.decline_fee * (decline & ~fraud).sum())


def choose_bands(labels: np.ndarray, amounts: np.ndarray, scores: np.ndarray, days: float, costs: Costs,
                 capacities: Sequence[float] = (), review_only: bool = False) -> list[Bands]:
    """The cuts with the least cost on this (validation) data whose review band fits the capacity:
    for `costs.reviews_per_day`, then for each of `capacities` (the cost-against-capacity curve).
    `review_only`: no step-up and no decline, the team that has only its analysts.

    Counted from the top: the n3 highest scores are declined, the next up to n2 reviewed, the next up
    to n1 stepped up. With prefix sums over the scores sorted high to low, each combination's cost is
    a handful of array reads, so every combination on the candidate grid is priced at once."""
    order = np.argsort(-scores, kind="stable")
    ranked, fraud = scores[order], labels[order] == 1
    fraud_amount = np.concatenate([[0.0], np.cumsum(np.where(fraud, amounts[order], 0.0))])
    legit = np.concatenate([[0], np.cumsum(~fraud)])
    # finest at the top, where the decline and review bands are decided; no band reaches past half the traffic
    counts = np.unique(np.concatenate([[0], np.round(np.geomspace(1, max(1, len(ranked) // 2), CANDIDATES)).astype(int)]))
    n3, n2, n1 = np.meshgrid(counts, counts, counts, indexing="ij")
    priced = (costs.decline_fee * legit[n3] + costs.review_fee * (n2 - n3)
              + costs.step_up_fee * (n1 - n2) + (1 - costs.step_up_catch) * (fraud_amount[n1] - fraud_amount[n2])
              + fraud_amount[-1] - fraud_amount[n1])
    priced[(n3 > n2) | (n2 > n1) | (review_only & ((n3 > 0) | (n1 > n2)))] = np.inf
    reviewed = n2 - n3
    chosen = []
    for capacity in (costs.reviews_per_day, *capacities):
        best = np.unravel_index(np.argmin(np.where(reviewed <= capacity * days, priced, np.inf)), priced.shape)
        cut = [EMPTY if n == 0 else float(ranked[n - 1]) for n in (n1[best], n2[best], n3[best])]
        chosen.append(Bands(step_up=cut[0], review=cut[1], decline=cut[2]))
    return chosen


def days_in(frame: pd.DataFrame) -> float:
    """Days of traffic the frame covers: what a daily capacity is multiplied by."""
    return float(frame["event_timestamp"].dt.floor("D").nunique())


CAPACITIES = (0.0, 10.0, 25.0, 50.0, 100.0, 200.0, 400.0, 800.0)  # reviews a day, for the cost-against-capacity figure


def decision_bands(validation: pd.DataFrame, validation_scores: np.ndarray, test: pd.DataFrame, test_scores: np.ndarray,
                   settings: Settings) -> tuple[Bands, dict[str, float], dict[str, dict[float, float]]]:
    """The bands for the settings' capacity, their test figures, and the test cost at other
    capacities, with all four actions and with reviews alone."""
    costs = Costs.from_settings(settings.costs)
    labels, amounts = test["is_fraud"].to_numpy(), test["amount"].to_numpy()
    chosen = {actions: choose_bands(validation["is_fraud"].to_numpy(), validation["amount"].to_numpy(), validation_scores,
                                    days_in(validation), costs, CAPACITIES, review_only=actions == "review only")
              for actions in ("four bands", "review only")}
    bands = chosen["four bands"][0]
    decisions = bands.decide(test_scores)
    metrics = {"decision_cost": cost(labels, amounts, decisions, costs), "reviews_per_day": float((decisions == 2).sum()) / days_in(test),
               **{f"{name}_share": float((decisions == i).mean()) for i, name in enumerate(DECISIONS)}}
    return bands, metrics, {actions: {c: cost(labels, amounts, b.decide(test_scores), costs) for c, b in zip(CAPACITIES, cuts[1:])}
                            for actions, cuts in chosen.items()}
