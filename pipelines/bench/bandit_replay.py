"""Bandit routing against a fixed canary, replayed: what each costs while the challenger is judged.

Thompson sampling sends each unit to an arm with the probability that the arm is the best, given
what has been seen. Routing is sticky per customer, so the unit is the customer and the allocation
is a share: the challenger answers the share of customers equal to the posterior probability that
it costs less per transaction (the fraction of the canary's bootstrap resamples over customers in
which it did, `monitoring.canary.compare`), held within [min, max] so that its estimate keeps
learning and a promotion stays a decision. The monitor run sets it for every worker through the
registry, as an operator would; a share of 0 (a guardrail trip, or an operator's stop) pauses the
bandit until someone sets a share again, so the guardrails keep the last word.

The price of a fixed canary is regret: while it runs, a worse challenger costs money on its share
and a better one saves money only on its share. `replay` measures that against a fixed 10% canary on
simulated canary traffic whose counterfactual costs are known, with the label delay in force.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from core.settings import CanarySettings, FeatureSettings
from model.buckets import BUCKETS, bucket
from monitoring.canary import compare, thompson_share

# The settings' defaults (`model_construct` reads no variables), so the replay's are not a second copy.
_CANARY, _FEATURES = CanarySettings.model_construct(), FeatureSettings.model_construct()


@dataclass(frozen=True)
class Replay:
    shares: list[float]  # the challenger's share each day
    regret: list[float]  # cumulative cost above always routing to the better arm, by day


def traffic(days: int, customers: int, challenger_gain: float, seed: int) -> pd.DataFrame:
    """A transaction per customer per day; a compromised card's days are all fraud. Both arms score
    every row, so each row carries what either arm's decision would have cost."""
    rng = np.random.default_rng(seed)
    card = np.tile(np.arange(customers), days)
    day = np.repeat(np.arange(days), customers)
    fraud = (rng.random(customers) < 0.05)[card].astype(int)
    amount = rng.gamma(2.0, 50.0, card.size)
    frame = pd.DataFrame({"customer_id": card.astype(str), "day": day, "is_fraud": fraud, "amount": amount,
                          "timestamp": pd.Timestamp("2025-07-01") + pd.to_timedelta(day, unit="D")})
    for arm, separation in (("champion", 1.0), ("challenger", 1.0 + challenger_gain)):
        score = 1 / (1 + np.exp(-(rng.normal(0, 1, card.size) + separation * (2 * fraud - 1) - 1.5)))
        frame[f"{arm}_score"] = score
        frame[f"{arm}_cost"] = np.where(fraud & (score < 0.5), amount, 0.0) + 5.0 * (score >= 0.5)
    return frame


def replay(frame: pd.DataFrame, policy: str, label_delay: int = _FEATURES.label_delay_days, fixed_share: float = _CANARY.challenger_share,
           min_share: float = _CANARY.bandit_min_share, max_share: float = _CANARY.bandit_max_share, resamples: int = 100) -> Replay:
    """Run `policy` ("canary": `fixed_share` throughout; "bandit": `thompson_share` each day from the
    rows whose labels have arrived) over `frame` (`traffic`), day by day."""
    buckets = frame["customer_id"].map(bucket).to_numpy()
    best = min(frame["champion_cost"].sum(), frame["challenger_cost"].sum()) / frame["day"].nunique()
    share, shares, regret, served, total = fixed_share, [], [], [], 0.0
    for day, rows in frame.groupby("day"):
        on_challenger = buckets[rows.index] < round(share * BUCKETS)
        variant = np.where(on_challenger, "challenger", "champion")
        cost = np.where(on_challenger, rows["challenger_cost"], rows["champion_cost"])
        total += float(cost.sum()) - best
        shares.append(share)
        regret.append(total)
        score = np.where(on_challenger, rows["challenger_score"], rows["champion_score"])
        served.append(rows.assign(variant=variant, model_version=np.where(on_challenger, "2", "1"), score=score, is_fraud_predicted=score >= 0.5))
        if policy == "bandit":
            labelled = pd.concat(served[: max(0, len(served) - label_delay)] or [served[0].iloc[0:0]])
            share = thompson_share(compare(labelled, 5.0, 1, 1.0, resamples=resamples, seed=int(day)), share, min_share, max_share)
    return Replay(shares, regret)
