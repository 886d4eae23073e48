"""Shared parts of the robustness subtasks: options, variant ids, and the relative-drop metric.

Items of a robustness subtask are ONLY perturbed variants, id ``<clean id>~<level>@<intensity>``
(PROTOCOL.md §6), group {"level", "intensity"}. The clean items are the reliability subtask's own
(``Subtask.clean_source``): the engine schedules them there and passes their ItemScores
to ``aggregate`` after the variant scores, each with ``group["variant"] == "clean"``.

Metric [I, PROTOCOL.md §3.6; the rank table favours a relative measure]: for each (level,
intensity) cell, pair every clean id that has both a scored clean item and a scored variant;
drop = (clean mean - perturbed mean) / clean mean over those pairs (samples of one item are
averaged first). Headline = mean drop over the cells (lower = more robust). A cell is null when no
pair exists or its clean mean is 0 (a relative drop from 0 is undefined), and then the headline is
null too, with the reason; averaging fewer cells would not compare with other models.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from engine.core.subtask import Aggregator, ItemScore, Metric
from pillars.common.metrics import tally
from pillars.perturb import DEFAULT_INTENSITIES, DEFAULT_SEED, LEVELS, Variant, default_variants

__all__ = [
    "RobustnessOptions",
    "variant_group",
    "clean_id_of",
    "relative_drop_metric",
    "make_aggregate",
]


@dataclass(frozen=True)
class RobustnessOptions:
    levels: tuple[str, ...] = LEVELS
    intensities: tuple[float, ...] = DEFAULT_INTENSITIES
    seed: int = DEFAULT_SEED
    variants: tuple[Variant, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "levels", tuple(self.levels))
        object.__setattr__(self, "intensities", tuple(float(p) for p in self.intensities))
        object.__setattr__(self, "variants", default_variants(self.levels, self.intensities))

    @classmethod
    def given(cls, levels: Sequence[str] | None, intensities: Sequence[float] | None, seed: int) -> RobustnessOptions:
        """The options a make_subtask was given (None: the default)."""
        return cls(levels=LEVELS if levels is None else tuple(levels),
                   intensities=DEFAULT_INTENSITIES if intensities is None else tuple(intensities), seed=seed)

    def as_extra(self) -> dict[str, object]:
        return {"levels": list(self.levels), "intensities": list(self.intensities),
                "seed": self.seed, "variants": [v.name for v in self.variants]}


def variant_group(v: Variant) -> dict[str, str]:
    return {"level": v.level, "intensity": f"{v.intensity:g}"}


def clean_id_of(item_id: str) -> str:
    """``3#7~char@0.1`` -> ``3#7``; a clean id is returned as it is."""
    return item_id.rsplit("~", 1)[0] if "~" in item_id else item_id


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def _per_item(scores: Sequence[ItemScore]) -> dict[str, float]:
    acc: dict[str, list[float]] = {}
    for s in scores:
        if s.status == "scored" and s.value is not None:
            acc.setdefault(clean_id_of(s.item_id), []).append(float(s.value))
    return {k: _mean(v) for k, v in acc.items()}


def relative_drop_metric(scores: Sequence[ItemScore], variants: Sequence[Variant]) -> Metric:
    clean = [s for s in scores if s.group.get("variant") == "clean"]
    perturbed = [s for s in scores if s.group.get("variant") != "clean"]
    n, n_scored, n_unp, n_failed = tally(perturbed)
    clean_values = _per_item(clean)
    cells: dict[str, dict[str, object]] = {}
    # name -> (level, intensity, relative drop or None, why None)
    drops: dict[str, tuple[str, str, float | None, str]] = {}
    expected = [(v.level, f"{v.intensity:g}") for v in variants]
    by_cell: dict[tuple[str, str], list[ItemScore]] = {}
    for s in perturbed:
        by_cell.setdefault((s.group.get("level", ""), s.group.get("intensity", "")), []).append(s)
    for level, intensity in expected + sorted(set(by_cell) - set(expected)):
        name = f"{level}@{intensity}"
        cells[name], value, why = _cell(level, intensity, clean_values, _per_item(by_cell.get((level, intensity), [])))
        drops[name] = (level, intensity, value, why)
    breakdown: dict[str, object] = {"cells": cells, "n_clean": len(clean_values)}
    for dim in ("level", "intensity"):
        agg: dict[str, list[float]] = {}
        for level, intensity, value, _ in drops.values():
            if value is not None:
                agg.setdefault(level if dim == "level" else intensity, []).append(value)
        breakdown[f"by_{dim}"] = {k: _mean(v) for k, v in agg.items()}
    nulls = [name for name, d in drops.items() if d[2] is None]
    values = [d[2] for d in drops.values() if d[2] is not None]
    if nulls or not values:
        if not cells:
            reason = "no variants"
        elif not clean_values:
            reason = "no scored clean items to compare with"
        elif not values:
            reasons = sorted({drops[c][3] for c in nulls})
            reason = "; ".join(reasons)
        else:
            reason = f"cells without a value: {', '.join(nulls)}"
        return Metric(value=None, n=n, n_scored=n_scored, n_unparseable=n_unp,
                      n_failed=n_failed, breakdown=breakdown, reason=reason)
    return Metric(value=_mean(values), n=n, n_scored=n_scored, n_unparseable=n_unp,
                  n_failed=n_failed, breakdown=breakdown)


def _cell(level: str, intensity: str, clean_values: Mapping[str, float],
          pert_values: Mapping[str, float]) -> tuple[dict[str, object], float | None, str]:
    """One (level, intensity) cell of the breakdown, its relative drop, and why it has none."""
    paired = [i for i in pert_values if i in clean_values]
    cell: dict[str, object] = {"level": level, "intensity": intensity, "n_pairs": len(paired)}
    if not paired:
        why = "no item scored both clean and perturbed"
        cell.update(value=None, reason=why)
        return cell, None, why
    c = _mean([clean_values[i] for i in paired])
    p = _mean([pert_values[i] for i in paired])
    cell.update(clean=c, perturbed=p)
    if c == 0:
        why = "clean score is 0: relative drop undefined"
        cell.update(value=None, reason=why)
        return cell, None, why
    cell["value"] = (c - p) / c
    return cell, (c - p) / c, ""


def make_aggregate(variants: Sequence[Variant]) -> Aggregator:
    def aggregate(scores: Sequence[ItemScore]) -> Metric:
        """Mean relative drop from clean over (level, intensity) cells; lower is better."""
        return relative_drop_metric(scores, variants)

    return aggregate
