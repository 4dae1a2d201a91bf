"""The event-time feature definitions, as one function over an entity's recent history.

Every window ends at the transaction and includes it: it holds the transaction itself and every
transaction of the same card (or terminal) with a strictly earlier timestamp inside (t - w, t]. So a
charge 30 days and 1 microsecond old is out, and two charges at the same instant do not see each
other, on either side: the result does not depend on which one arrived first.

Terminal risk reads labels, and a label is known `delay` after its transaction (the chargeback
arrives later, the Handbook's feedback delay): the risk windows are (t - delay - w, t - delay], so a
score never uses a label that production would not have had at that moment.

`features.compute` computes the same definitions offline with DuckDB window functions over the whole
history (one pass, linear in transactions); the API calls `customer_features` and `terminal_features`
on the state that `features.state` keeps (the card's last 30 days). A stream processor would call
the same functions on its own keyed state; the parity tests hold the two sides together.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import TypeVar

from features.logic import CLOCK_FEATURES

SECOND_US = 1_000_000
HOUR_US = 3600 * SECOND_US
DAY_US = 24 * HOUR_US
# The card's windows: a short one for bursts (card testing), then the Handbook's 1, 7 and 30 days.
CUSTOMER_WINDOWS = {"1h": HOUR_US, "1d": DAY_US, "7d": 7 * DAY_US, "30d": 30 * DAY_US}
MEAN_WINDOWS = ("1d", "7d", "30d")
TERMINAL_WINDOWS = {"1d": DAY_US, "7d": 7 * DAY_US, "30d": 30 * DAY_US}
CUSTOMER_HORIZON_US = CUSTOMER_WINDOWS["30d"]  # the card's state keeps this much history

CUSTOMER_FEATURES = (
    [f"customer_tx_count_{w}" for w in CUSTOMER_WINDOWS]
    + [f"customer_amount_sum_{w}" for w in CUSTOMER_WINDOWS]
    + [f"customer_mean_amount_{w}" for w in MEAN_WINDOWS]
    + ["customer_seconds_since_previous", "amount_to_customer_mean_30d"]
)
TERMINAL_FEATURES = [f"terminal_tx_count_{w}" for w in TERMINAL_WINDOWS] + [f"terminal_risk_{w}" for w in TERMINAL_WINDOWS]
LIVE_FEATURES = CUSTOMER_FEATURES + TERMINAL_FEATURES
# Everything an answer knows of its transaction besides the model's score: what a rule may read (model/rules.py).
ANSWER_VALUES = ("amount", *sorted(CLOCK_FEATURES), *LIVE_FEATURES)

CustomerEvent = tuple[int, str, float]  # (time in microseconds since the epoch, transaction id, amount)
TerminalEvent = tuple[int, str]  # (time in microseconds since the epoch, transaction id)
E = TypeVar("E", CustomerEvent, TerminalEvent)


def label_lag_us(delay_days: int) -> int:
    """How far back the terminal's risk windows end. With no delay a label is known at once, but
    never a transaction's own: the window still ends before it."""
    return max(delay_days * DAY_US, 1)


def terminal_horizon_us(delay_days: int) -> int:
    return TERMINAL_WINDOWS["30d"] + label_lag_us(delay_days)


def _earlier(history: Iterable[E], us: int, transaction_id: str) -> Iterator[tuple[int, E]]:
    """(age, event) of the events strictly before `us`, other than the transaction itself."""
    for event in history:
        if event[0] < us and event[1] != transaction_id:
            yield us - event[0], event


def customer_features(history: Iterable[CustomerEvent], us: int, transaction_id: str, amount: float) -> dict[str, float]:
    """The card's features for a transaction at `us`. `history` is what the state holds for the card
    in any order; it may contain this transaction (a retry) and later ones (late arrivals): both are
    passed over, so a retried transaction gets the answer it got the first time."""
    counts = dict.fromkeys(CUSTOMER_WINDOWS, 1)
    sums = dict.fromkeys(CUSTOMER_WINDOWS, amount)
    previous = -1
    for age, (at, _, value) in _earlier(history, us, transaction_id):
        for name, width in CUSTOMER_WINDOWS.items():
            if age < width:
                counts[name] += 1
                sums[name] += value
        if age < CUSTOMER_HORIZON_US and at > previous:
            previous = at
    out: dict[str, float] = {f"customer_tx_count_{w}": float(n) for w, n in counts.items()}
    out.update({f"customer_amount_sum_{w}": s for w, s in sums.items()})
    out.update({f"customer_mean_amount_{w}": sums[w] / counts[w] for w in MEAN_WINDOWS})
    out["customer_seconds_since_previous"] = (us - previous) / SECOND_US if previous >= 0 else math.nan
    mean = out["customer_mean_amount_30d"]
    out["amount_to_customer_mean_30d"] = amount / mean if mean > 0 else math.nan
    return out


def terminal_features(history: Iterable[TerminalEvent], frauds: Iterable[TerminalEvent], us: int, transaction_id: str,
                      delay_days: int) -> dict[str, float]:
    """The terminal's features: fresh transaction counts, and fraud shares over windows that end
    `delay_days` back, from the labels that have arrived (`frauds`)."""
    lag = label_lag_us(delay_days)
    counts = dict.fromkeys(TERMINAL_WINDOWS, 1)
    labelled = dict.fromkeys(TERMINAL_WINDOWS, 0)
    for age, _ in _earlier(history, us, transaction_id):
        for name, width in TERMINAL_WINDOWS.items():
            if age < width:
                counts[name] += 1
            if lag <= age < lag + width:
                labelled[name] += 1
    fraud = dict.fromkeys(TERMINAL_WINDOWS, 0)
    for at, _ in frauds:
        age = us - at
        for name, width in TERMINAL_WINDOWS.items():
            if lag <= age < lag + width:
                fraud[name] += 1
    out: dict[str, float] = {f"terminal_tx_count_{w}": float(n) for w, n in counts.items()}
    out.update({f"terminal_risk_{w}": fraud[w] / labelled[w] if labelled[w] else 0.0 for w in TERMINAL_WINDOWS})
    return out
