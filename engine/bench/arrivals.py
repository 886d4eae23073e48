"""When each request of an open-loop benchmark is due (pure; seeded).

Intervals follow `vllm bench serve`: gamma with shape = burstiness and mean 1/rate, so burstiness 1
is a Poisson process, below 1 burstier, above 1 more regular. An infinite rate sends every request
at once (time 0).
"""

from __future__ import annotations

import math
import random

__all__ = ["arrival_times"]


def arrival_times(n: int, rate: float, burstiness: float = 1.0, seed: int = 0) -> list[float]:
    """Offsets in seconds from the start, non-decreasing; the first request is sent at 0."""
    if n <= 0:
        return []
    if math.isinf(rate):
        return [0.0] * n
    if rate <= 0 or burstiness <= 0:
        raise ValueError("rate and burstiness must be > 0")
    rng = random.Random(seed)
    scale = 1.0 / (rate * burstiness)
    out = [0.0]
    t = 0.0
    for _ in range(n - 1):
        t += rng.gammavariate(burstiness, scale)
        out.append(t)
    return out
