"""Metric aggregation shared by subtasks; all pure, all return ``engine.core.subtask.Metric``.

Conventions:
- Only items with status "scored" enter a value; unparseable and failed items are counted in the
  Metric (n_unparseable / n_failed) but never silently scored as wrong.
- Accuracy CIs are Wilson score intervals (well-behaved at 0 and 1 and for small n, unlike the
  normal approximation). Means of continuous scores use the normal interval mean ± 1.96·sd/√n
  with the sample sd (ddof=1), which is what the ethics pillar reports.
- Macro-F1 averages per-label F1 over the labels that occur in the gold or the predictions
  (a label absent from both says nothing about the model); an unparsed prediction (None) counts
  as a miss for its gold label.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from engine.core.stats import Z95, normal_mean_ci, wilson
from engine.core.subtask import ItemScore, Metric

__all__ = [
    "tally",
    "accuracy_metric",
    "mean_metric",
    "pearson",
    "macro_f1",
    "wilson",
    "mean_ci",
    "value_of",
]

def tally(scores: Sequence[ItemScore]) -> tuple[int, int, int, int]:
    """(n, n_scored, n_unparseable, n_failed)."""
    n_scored = sum(1 for s in scores if s.status == "scored")
    n_unp = sum(1 for s in scores if s.status == "unparseable")
    n_failed = sum(1 for s in scores if s.status == "failed")
    return len(scores), n_scored, n_unp, n_failed


def mean_ci(values: Iterable[float], z: float = Z95) -> tuple[float, float] | None:
    """mean ± z·sd/√n (sample sd); None when fewer than 2 values."""
    return normal_mean_ci([float(v) for v in values], z)


def pearson(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Pearson r (as numpy.corrcoef); None when n < 2, lengths differ, or either side is constant."""
    n = len(xs)
    if n < 2 or n != len(ys):
        return None
    mx = sum(xs) / n
    my = sum(ys) / n
    dx = [x - mx for x in xs]
    dy = [y - my for y in ys]
    sxx = sum(d * d for d in dx)
    syy = sum(d * d for d in dy)
    if sxx == 0 or syy == 0:
        return None
    r = sum(a * b for a, b in zip(dx, dy)) / math.sqrt(sxx * syy)
    return max(-1.0, min(1.0, r))


def macro_f1(
    pred: Sequence[str | None], gold: Sequence[str], labels: Sequence[str]
) -> float | None:
    """Mean per-label F1 over the labels present in gold or pred; None when there are none."""
    present = [lab for lab in labels if lab in set(gold) or lab in set(pred)]
    if not present or len(pred) != len(gold):
        return None
    f1s = []
    for lab in present:
        tp = sum(1 for p, g in zip(pred, gold) if p == lab and g == lab)
        fp = sum(1 for p, g in zip(pred, gold) if p == lab and g != lab)
        fn = sum(1 for p, g in zip(pred, gold) if p != lab and g == lab)
        denom = 2 * tp + fp + fn
        f1s.append(2 * tp / denom if denom else 0.0)
    return sum(f1s) / len(f1s)


def value_of(s: ItemScore) -> float:
    """The value of an item the caller kept as scored with a value (so None here is a bug)."""
    if s.value is None:
        raise ValueError(f"{s.item_id}: an item without a value was aggregated")
    return float(s.value)


def _scored(scores: Sequence[ItemScore]) -> list[ItemScore]:
    return [s for s in scores if s.status == "scored" and s.value is not None]


def _groups(scored: Sequence[ItemScore], key: str) -> dict[str, list[ItemScore]]:
    out: dict[str, list[ItemScore]] = {}
    for s in scored:
        g = s.group.get(key)
        if g is not None:
            out.setdefault(g, []).append(s)
    return out


def accuracy_metric(
    scores: Sequence[ItemScore],
    *,
    macro_f1_labels: Sequence[str] | None = None,
    group_by: str | None = None,
) -> Metric:
    """Share of scored items with value 1.0, with a Wilson 95% CI.

    breakdown: "macro_f1" (from ``label`` vs ``reference`` of the scored items) when labels are
    given; "by_<group_by>" = {group: {"value", "n"}} when group_by is given.
    """
    n, n_scored, n_unp, n_failed = tally(scores)
    scored = _scored(scores)
    breakdown: dict[str, object] = {}
    if not scored:
        return Metric(value=None, n=n, n_scored=n_scored, n_unparseable=n_unp,
                      n_failed=n_failed, reason="no scored items")
    k = sum(1 for s in scored if s.value and s.value >= 0.5)
    if macro_f1_labels is not None:
        breakdown["macro_f1"] = macro_f1(
            [s.label for s in scored], [str(s.reference) for s in scored], macro_f1_labels
        )
    if group_by:
        breakdown[f"by_{group_by}"] = {
            g: {"value": sum(1 for s in ss if s.value and s.value >= 0.5) / len(ss), "n": len(ss)}
            for g, ss in _groups(scored, group_by).items()
        }
    return Metric(value=k / len(scored), n=n, n_scored=n_scored, n_unparseable=n_unp,
                  n_failed=n_failed, ci=wilson(k, len(scored)), breakdown=breakdown)


def _mean_entry(values: Sequence[float]) -> dict[str, object]:
    return {"value": sum(values) / len(values), "ci": mean_ci(values), "n": len(values)}


def mean_metric(
    scores: Sequence[ItemScore], *, group_by: str | None = None, extras: bool = True
) -> Metric:
    """Mean of ``value`` over scored items with a normal 95% CI (None below n = 2).

    breakdown: one {"value", "ci", "n"} entry per extras key (e.g. "sc1") when ``extras``;
    "by_<group_by>" = {group: {"value", "ci", "n"}} when group_by is given.
    """
    n, n_scored, n_unp, n_failed = tally(scores)
    scored = _scored(scores)
    if not scored:
        return Metric(value=None, n=n, n_scored=n_scored, n_unparseable=n_unp,
                      n_failed=n_failed, reason="no scored items")
    values = [value_of(s) for s in scored]
    breakdown: dict[str, object] = {}
    if extras:
        keys: list[str] = []
        for s in scored:
            keys.extend(k for k in s.extras if k not in keys)
        for key in keys:
            vals = [float(s.extras[key]) for s in scored if key in s.extras]
            breakdown[key] = _mean_entry(vals)
    if group_by:
        breakdown[f"by_{group_by}"] = {
            g: _mean_entry([value_of(s) for s in ss])
            for g, ss in _groups(scored, group_by).items()
        }
    return Metric(value=sum(values) / len(values), n=n, n_scored=n_scored,
                  n_unparseable=n_unp, n_failed=n_failed, ci=mean_ci(values),
                  breakdown=breakdown)
