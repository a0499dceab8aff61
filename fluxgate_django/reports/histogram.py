"""Fixed log-scale latency buckets: p50/p95 from rollup rows without reading events.

Bucket edges are ``2 ** (k / 3)`` milliseconds for ``k = 9 … 51``, i.e. 8 ms to 131.072 s,
three buckets per doubling (each ~26% wider than the previous), 44 buckets in all:

* bucket 0 holds ``[0, 8 ms)`` (response-cache hits and other near-instant calls),
* buckets 1 … 42 hold ``[edge[i-1], edge[i])``,
* bucket 43 holds everything from 131.072 s up.

The same edges (the same Python floats) are used by the recorder, which buckets each
event in Python, and by the rebuild, which buckets in SQL with ``>=``/``<`` comparisons,
so both put every event in the same bucket.

**Error bound.** :func:`quantile` finds the bucket holding the nearest-rank quantile
(the ``ceil(q·n)``-th smallest latency) and interpolates inside it (geometrically; linearly
in bucket 0). The estimate and the true value share a bucket, so for latencies between
8 ms and 131 s the estimate is within a factor ``2 ** (1/3)`` of the true value: at most
26% above it or 21% below it (in practice, with many events, a few percent). Below 8 ms
the error is under 8 ms; above 131 s the estimate is 131.072 s, a lower bound.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

#: Upper edges (ms) of buckets 0 … 42; bucket 43 is open-ended.
EDGES_MS: tuple[float, ...] = tuple(2 ** (k / 3) for k in range(9, 52))
BUCKET_COUNT = len(EDGES_MS) + 1
#: Column names of the buckets on the rollup tables.
BUCKET_FIELDS: tuple[str, ...] = tuple(f"lat_{i:02d}" for i in range(BUCKET_COUNT))
#: Largest relative overestimate of a quantile between the first and last edge.
MAX_RELATIVE_ERROR = 2 ** (1 / 3) - 1


def bucket_of(latency_ms: float) -> int:
    """The bucket index of one latency (negative values land in bucket 0)."""
    return bisect.bisect_right(EDGES_MS, latency_ms)


def bucket_bounds(index: int) -> tuple[float, float | None]:
    """``(low, high)`` of a bucket in ms; ``high`` is None for the open-ended last one."""
    low = 0.0 if index == 0 else EDGES_MS[index - 1]
    high = EDGES_MS[index] if index < len(EDGES_MS) else None
    return low, high


def quantile(counts: Sequence[int], q: float) -> float | None:
    """The ``q``-quantile (0 < q <= 1) of a histogram, in ms; None when it is empty."""
    total = sum(counts)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for index, count in enumerate(counts):
        if count and seen + count >= rank:
            fraction = max(0.0, (rank - seen) / count)
            low, high = bucket_bounds(index)
            if high is None:
                return low
            if index == 0:
                return low + (high - low) * fraction
            return low * (high / low) ** fraction
        seen += count
    return bucket_bounds(len(counts) - 1)[0]  # pragma: no cover - unreachable for q <= 1
