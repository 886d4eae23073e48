"""95% intervals, pure: the analytic ones (Wilson for a rate, Fisher z for a Pearson r, the normal
interval of a mean) and the seeded percentile bootstrap for any other statistic, single or paired.

The bootstrap resamples units (items, or a base item with its variants) with replacement,
`resamples` times, from `random.Random(f"{seed}:{key}")` (a string seed goes through sha512, so the
draws are the same on every machine and Python run, whatever PYTHONHASHSEED says, and do not depend
on the order in which models or subtasks are scored). A resample whose statistic is undefined is
left out; when more than `MAX_UNDEFINED` of them are, the interval is undefined and says why.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from typing import TypeVar

__all__ = ["Z95", "RESAMPLES", "MAX_UNDEFINED", "wilson", "normal_mean_ci", "fisher_z_ci", "percentile",
           "bootstrap_ci", "paired_bootstrap_ci", "overlap", "rng_for"]

# 1.96, as the intervals in scores.json always used (and the ethics authors' large-n value).
Z95 = 1.96
RESAMPLES = 1000
# The share of resamples that may lack a value (e.g. a relative drop whose clean mean came out 0)
# before the interval is reported as undefined rather than conditioned on the lucky resamples.
MAX_UNDEFINED = 0.05

T = TypeVar("T")
Interval = tuple[float, float]


def wilson(k: int, n: int, z: float = Z95) -> Interval | None:
    """Wilson score interval for k successes out of n; None when n == 0."""
    if n <= 0:
        return None
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def normal_mean_ci(values: Sequence[float], z: float = Z95) -> Interval | None:
    """mean ± z·sd/√n with the sample sd; None below 2 values."""
    n = len(values)
    if n < 2:
        return None
    m = sum(values) / n
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1))
    half = z * sd / math.sqrt(n)
    return (m - half, m + half)


def fisher_z_ci(r: float, n: int, z: float = Z95) -> Interval | None:
    """Fisher z interval of a Pearson r from n pairs: tanh(atanh r ± z/√(n-3)); None below 4 pairs."""
    if n < 4:
        return None
    # |r| = 1 has no finite atanh; a hair inside keeps the interval at (almost) the point itself.
    zr = math.atanh(max(-1 + 1e-12, min(1 - 1e-12, r)))
    half = z / math.sqrt(n - 3)
    return (math.tanh(zr - half), math.tanh(zr + half))


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The q-quantile (0..1) of sorted values, linearly interpolated (numpy's default)."""
    pos = q * (len(sorted_values) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def rng_for(seed: int, key: str) -> random.Random:
    return random.Random(f"{seed}:{key}")


def _interval(stats: list[float], resamples: int, level: float) -> tuple[Interval | None, str | None]:
    if resamples - len(stats) > MAX_UNDEFINED * resamples:
        return None, f"undefined in {resamples - len(stats)} of {resamples} bootstrap resamples"
    stats.sort()
    a = (1 - level) / 2
    return (percentile(stats, a), percentile(stats, 1 - a)), None


def bootstrap_ci(stat: Callable[[list[T]], float | None], units: Sequence[T], *, seed: int, key: str,
                 resamples: int = RESAMPLES, level: float = 0.95) -> tuple[Interval | None, str | None]:
    """Percentile bootstrap of `stat` over `units` -> (interval, None) or (None, why not)."""
    if len(units) < 2:
        return None, "fewer than 2 base items: no interval"
    rng = rng_for(seed, key)
    pool = list(units)
    stats = [v for _ in range(resamples) if (v := stat(rng.choices(pool, k=len(pool)))) is not None]
    return _interval(stats, resamples, level)


def paired_bootstrap_ci(stat_a: Callable[[list[T]], float | None], stat_b: Callable[[list[T]], float | None],
                        units: Sequence[T], *, seed: int, key: str, resamples: int = RESAMPLES,
                        level: float = 0.95) -> tuple[Interval | None, str | None]:
    """Interval of stat_b - stat_a where both are measured on the same resampled units each time
    (the items both runs or models answered): the item-to-item variation they share cancels."""
    def diff(sample: list[T]) -> float | None:
        a, b = stat_a(sample), stat_b(sample)
        return None if a is None or b is None else b - a

    return bootstrap_ci(diff, units, seed=seed, key=key, resamples=resamples, level=level)


def overlap(a: Interval, b: Interval) -> bool:
    return a[0] <= b[1] and b[0] <= a[1]
