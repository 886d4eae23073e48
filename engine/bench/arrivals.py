"""When each request of an open-loop benchmark is due (pure; seeded).

The schedule is `vllm bench serve`'s: n gamma intervals with shape = burstiness and mean 1/rate
(burstiness 1 is a Poisson process, below 1 burstier, above 1 more regular; infinite burstiness
makes every interval 1/rate), the first of them before the first request, and their running sums
scaled so that the last request is due at exactly n / rate. Without that scaling the schedule's
length is itself random (a sum of n exponential intervals varies by 1/sqrt(n): 90 requests at
1.5 req/s were due over 60 s x 0.96-1.21 across seeds), so two clients given the same rate
measured request throughputs up to 15% apart before the server did anything. An infinite rate
sends every request at once (time 0).
"""

from __future__ import annotations

import math
import random

__all__ = ["arrival_times"]


def arrival_times(n: int, rate: float, burstiness: float = 1.0, seed: int = 0) -> list[float]:
    """Offsets in seconds from the start, non-decreasing; the last one is n / rate."""
    if n <= 0:
        return []
    if math.isinf(rate):
        return [0.0] * n
    if not rate > 0 or not burstiness > 0:
        raise ValueError("rate and burstiness must be > 0")
    if math.isinf(burstiness):
        return [(i + 1) / rate for i in range(n)]
    rng = random.Random(seed)
    scale = 1.0 / (rate * burstiness)
    out: list[float] = []
    t = 0.0
    for _ in range(n):
        t += rng.gammavariate(burstiness, scale)
        out.append(t)
    factor = (n / rate) / t if t > 0 else 1.0
    return [x * factor for x in out]
