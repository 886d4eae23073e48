"""The 95% interval of every subtask metric and the statistically tied marks of the rank table.

An aggregate that knows an analytic interval sets `Metric.ci` itself (pillars/common/metrics.py:
Wilson, normal mean; privacy/awareness: Fisher z). For the others (a mean of Pearson r over tiers,
a relative drop, a mean of standard deviations) the engine re-runs the subtask's own pure aggregate
on seeded bootstrap resamples of its items (engine/core/stats.py). The resampled unit is a base
item: its samples, its variants (`<id>~<variant>`, PROTOCOL.md §6) and, for robustness, the clean
item they are compared with go together, so that a resample keeps the pairs the metric is made of.
A unit drawn k > 1 times enters as k distinct items (ids prefixed `k|`), since aggregates that
average an item's samples first would otherwise count it once.

Each resample re-runs the aggregate over all of a model's item scores (about 8 µs a score in pure
Python), so a large subtask gets fewer resamples: `resamples_for(n)` = 1000 up to 500 item scores,
then 500 000 // n, never below 200 (a robustness subtask of 200 base items × 9 variants: 2000
scores, 250 resamples, about 4 s a model). The count depends on the data only, so it is reproducible.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import msgspec

from engine.core.stats import RESAMPLES, bootstrap_ci, overlap
from engine.core.subtask import ItemScore, Metric

__all__ = ["unit_of", "with_interval", "tied", "Resampler", "resamples_for", "WORK", "MIN_RESAMPLES"]

WORK = 500_000  # item scores aggregated per bootstrap interval, at most (above MIN_RESAMPLES)
MIN_RESAMPLES = 200


def resamples_for(n_scores: int) -> int:
    return max(MIN_RESAMPLES, min(RESAMPLES, WORK // max(n_scores, 1)))


def unit_of(item_id: str) -> str:
    """The base item an item id belongs to: `3#7~char@0.1` -> `3#7`, `12~gender=f` -> `12`."""
    return item_id.split("~", 1)[0]


class Resampler:
    """Item scores grouped by unit; `expand` turns a resample of units into item scores."""

    def __init__(self, scores: Sequence[ItemScore]) -> None:
        self.by_unit: dict[str, list[ItemScore]] = {}
        for s in scores:
            self.by_unit.setdefault(unit_of(s.item_id), []).append(s)
        self.units = sorted(self.by_unit)
        self._copies: dict[tuple[str, int], list[ItemScore]] = {}

    def _copy(self, unit: str, k: int) -> list[ItemScore]:
        got = self._copies.get((unit, k))
        if got is None:
            got = [msgspec.structs.replace(s, item_id=f"{k}|{s.item_id}") for s in self.by_unit[unit]]
            self._copies[(unit, k)] = got
        return got

    def expand(self, sample: Sequence[str]) -> list[ItemScore]:
        seen: dict[str, int] = {}
        out: list[ItemScore] = []
        for u in sample:
            k = seen.get(u, 0)
            seen[u] = k + 1
            out.extend(self.by_unit[u] if k == 0 else self._copy(u, k))
        return out


def with_interval(m: Metric, aggregate: Callable[[Sequence[ItemScore]], Metric], scores: Sequence[ItemScore], *,
                  seed: int, key: str, resamples: int | None = None) -> Metric:
    """`m` with its interval: as the aggregate gave it, else bootstrapped, else null with why."""
    if m.value is None or m.ci is not None:
        return m
    rs = Resampler(scores)
    ci, why = bootstrap_ci(lambda sample: aggregate(rs.expand(sample)).value, rs.units, seed=seed, key=key,
                           resamples=resamples if resamples is not None else resamples_for(len(scores)))
    if ci is None:
        return msgspec.structs.replace(m, ci_reason=m.ci_reason or why)
    return msgspec.structs.replace(m, ci=ci, ci_reason=None)


def tied(cis: Mapping[str, tuple[float, float] | None]) -> dict[str, list[str]]:
    """model -> the other models whose interval overlaps its own (models without one left out)."""
    have = {m: c for m, c in cis.items() if c is not None}
    return {m: [o for o, d in have.items() if o != m and overlap(c, d)] for m, c in have.items()}
