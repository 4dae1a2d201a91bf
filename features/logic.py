"""Feature logic shared by the offline pipeline and the online path.

Each function here runs unchanged in both places (Feast's on-demand view offline, the API online), so
training and serving cannot compute a feature two different ways.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

WINDOWS_DAYS = (1, 7, 30)
NIGHT_END_HOUR = 6  # transactions before 06:00 UTC count as night-time
EPOCH_WEEKDAY = 3  # 1970-01-01 was a Thursday (Monday = 0)
# Functions of the clock: their distribution depends on which hours and days a window covers, not on
# who is transacting, so drift tests over a two-day window would flag them every time.
CLOCK_FEATURES = frozenset({"is_weekend", "is_night"})


def request_features(amount: ArrayLike, unix_seconds: ArrayLike, customer_mean_30d: ArrayLike) -> dict[str, np.ndarray]:
    """Features known only at request time: they need the transaction itself.

    The amount ratio is NaN when the customer has no 30-day history: LightGBM routes missing values
    on purpose, where 0 or 1 would pretend to know the customer's habits.
    """
    amount = np.asarray(amount, dtype=np.float64)
    mean = np.asarray(customer_mean_30d, dtype=np.float64)
    seconds = np.asarray(unix_seconds, dtype=np.int64)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(mean > 0, amount / mean, np.nan)
    days, within = np.divmod(seconds, 86_400)
    return {
        "amount": amount,
        "amount_to_customer_mean_30d": ratio,
        "is_weekend": ((days + EPOCH_WEEKDAY) % 7 >= 5).astype(np.int64),
        "is_night": (within < NIGHT_END_HOUR * 3600).astype(np.int64),
    }
