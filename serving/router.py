"""Champion/challenger routing: a weighted split that is sticky per customer.

A customer's bucket (`model.buckets`) is a hash of the id, so the same card always meets the same
model, and raising the share only moves customers from champion to challenger, never back.
"""

from __future__ import annotations

from typing import Literal

from model.buckets import BUCKETS, bucket

Variant = Literal["champion", "challenger"]
Mode = Literal["canary", "shadow", "bandit"]
MODES: tuple[Mode, ...] = ("canary", "shadow", "bandit")


class Router:
    """`canary`: a sticky share of customers is answered by the challenger. `shadow`: the champion
    answers everyone and the challenger scores every request on the side, logged but never returned.
    `bandit`: a canary whose share the monitor sets from the labelled results (monitoring/bandit.py);
    a customer stays on one variant while the share holds."""

    def __init__(self, challenger_share: float, mode: Mode = "canary") -> None:
        self.set_share(challenger_share)
        self.mode: Mode = mode

    @property
    def challenger_share(self) -> float:
        return self._cutoff / BUCKETS

    def set_share(self, share: float) -> None:
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"challenger share must be within [0, 1], got {share}")
        self._cutoff = round(share * BUCKETS)

    def route(self, customer_id: str, challenger_available: bool) -> Variant:
        if challenger_available and self.mode != "shadow" and bucket(customer_id) < self._cutoff:
            return "challenger"
        return "champion"
