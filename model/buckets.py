"""The customer's bucket: the one hash that decides which variant answers a card.

A hash of the customer id, so the same card always meets the same model (a canary must not flip a
customer's decisions between requests), every worker agrees without talking to the others, and the
bandit replay (pipelines/bench/bandit_replay.py) splits its simulated customers exactly as the API does.
"""

from __future__ import annotations

import hashlib

BUCKETS = 10_000


def bucket(customer_id: str) -> int:
    digest = hashlib.blake2b(customer_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % BUCKETS
