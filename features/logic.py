"""Feature logic shared by the offline pipeline and the online path.

Each function here runs unchanged in both places (Feast's on-demand view offline, the API online), so
training and serving cannot compute a feature two different ways.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

NIGHT_END_HOUR = 6  # transactions before 06:00 UTC count as night-time
EPOCH_WEEKDAY = 3  # 1970-01-01 was a Thursday (Monday = 0)
# Functions of the clock: their distribution depends on which hours and days a window covers, not on
# who is transacting, so drift tests over a two-day window would flag them every time.
CLOCK_FEATURES = frozenset({"is_weekend", "is_night"})


def request_features(unix_seconds: ArrayLike) -> dict[str, np.ndarray]:
    """Features of the transaction's clock alone: known at request time, no state needed."""
    seconds = np.asarray(unix_seconds, dtype=np.int64)
    days, within = np.divmod(seconds, 86_400)
    return {
        "is_weekend": ((days + EPOCH_WEEKDAY) % 7 >= 5).astype(np.int64),
        "is_night": (within < NIGHT_END_HOUR * 3600).astype(np.int64),
    }
