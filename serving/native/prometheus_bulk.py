"""Many observations into one Prometheus histogram at once.

What it gives: the metrics are counted per scoring batch, off the request path; prometheus_client has
no bulk observe, and a loop of `observe` takes a lock and walks the buckets once per value. Here each
bucket and the sum are written once per batch.

What it costs: the histogram child's private `_upper_bounds`, `_buckets` and `_sum`. With another
prometheus_client version, or without those names, a loop of the public `observe` does the same.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence

from prometheus_client import Histogram

from core.native import written_for

PROMETHEUS_CLIENT = "0.24.1"
_PRIVATE_OK = written_for("prometheus_client", PROMETHEUS_CLIENT)


def observe_many(histogram: Histogram, values: Sequence[float]) -> None:
    """`histogram.observe(v)` for every v; NaN counts in the sum only, as with `observe`."""
    if not (_PRIVATE_OK and hasattr(histogram, "_buckets") and hasattr(histogram, "_upper_bounds")):
        for value in values:
            histogram.observe(value)
        return
    bounds = histogram._upper_bounds
    counts = [0] * len(bounds)
    for value in values:
        if value == value:
            counts[bisect_left(bounds, value)] += 1
    histogram._sum.inc(sum(values))
    for bucket, count in zip(histogram._buckets, counts):
        if count:
            bucket.inc(count)
