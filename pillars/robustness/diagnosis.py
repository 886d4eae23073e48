"""Robustness / Psychological Diagnosis: classification of perturbed posts (PROTOCOL.md §3.6).

Items: the reliability/diagnosis rows with only the post (or consultation) text perturbed by
``pillars.perturb``; the prompt (instructions, category list, answer format) is built AFTER the
perturbation with the same ``build_prompt``, so it is never perturbed. Id ``<id>~<level>@<p>``,
group {"level", "intensity"}; ``metadata["base"]`` = the clean id.

Options (``make_subtask(**options)``): ``levels``, ``intensities``, ``seed`` (defaults char,
word, sent x 0.05, 0.1, 0.2, seed 0) and the reliability/diagnosis options (``dataset``,
``split``, ``d4_target``). Each text is keyed by its row id, so ``word@p`` builds on exactly the
``char@p`` text. For D4 the whole consultation text is perturbed, speaker labels included [I].

Scoring: ``score_diagnosis`` (label match, 1/0), exactly as clean. Metric: relative accuracy drop
from the clean items (``pillars.robustness.common``), lower is better.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import msgspec

from engine.core.records import GenParams, Item
from engine.core.subtask import Row, Subtask
from pillars.perturb import perturb
from pillars.reliability.diagnosis import (
    TASK_LABELS,
    DiagnosisOptions,
    diagnosis_item,
    label_schema,
    official_source,
    score_diagnosis,
)
from pillars.robustness.common import RobustnessOptions, make_aggregate, variant_group

__all__ = ["robust_diagnosis_items", "make_subtask", "SUBTASK"]


def robust_diagnosis_items(
    rows: Iterable[Row], ropts: RobustnessOptions
) -> Iterator[Item]:
    for row in rows:
        rid = str(row["id"])
        for v in ropts.variants:
            noisy = dict(row)
            noisy["text"] = perturb(str(row["text"]), v.level, v.intensity, seed=ropts.seed,
                                    key=rid)
            yield diagnosis_item(
                noisy, item_id=f"{rid}~{v.name}", pillar="robustness", subtask="diagnosis",
                extra_meta={"group": variant_group(v), "clean_id": rid},
            )


def make_subtask(
    *,
    levels: Sequence[str] | None = None,
    intensities: Sequence[float] | None = None,
    seed: int = 0,
    **diagnosis_options: object,
) -> Subtask:
    ropts = RobustnessOptions.given(levels, intensities, seed)
    dopts = msgspec.convert(diagnosis_options, DiagnosisOptions)
    labels = TASK_LABELS[dopts.task]
    return Subtask(
        make=make_subtask,
        pillar="robustness",
        id="diagnosis",
        version="1",
        kind="classification",
        headline="mean_relative_drop",
        direction="lower",
        items=lambda rows: robust_diagnosis_items(rows, ropts),
        score=score_diagnosis,
        aggregate=make_aggregate(ropts.variants),
        official=official_source(dopts),
        params=GenParams(temperature=0.0, json_schema=label_schema(labels)),
        doc="Diagnosis of perturbed posts (char/word/sentence x intensity); headline = mean "
        "relative accuracy drop from clean.",
        clean_source="reliability/diagnosis",
        builtin_source="reliability/diagnosis",
        extra={
            "dataset": dopts.dataset, "split": dopts.split, "d4_target": dopts.d4_target,
            "labels": list(labels),
            **ropts.as_extra(),
        },
    )


SUBTASK = make_subtask()
