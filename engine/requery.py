"""Protocol re-queries: some subtasks re-ask when an answer cannot be parsed (the privacy ratings
of PROTOCOL.md §3.5 re-query "until parseable"). We send at most N extra samples (default from
the subtask's `extra["requery_unparseable"]`, overridable by `[pillars."<key>"] requery`).

Extra sample k of sample s has index s + k·S (S = run.samples), so it never collides with a
planned sample; its body differs only in `seed` (seed + index) where the request has one, so a
seeded greedy server does not repeat itself. Scoring takes, per (item, sample), the first of
s, s+S, s+2S, ... that parses.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from engine.core.records import Response, request_key
from engine.core.subtask import Subtask
from engine.options import resolve
from engine.run.units import Unit


def requery_limits(subtasks: list[Subtask], options: Mapping[str, Mapping[str, object]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for sub in subtasks:
        if sub.rubric is not None:  # judged answers are re-judged, not re-asked
            continue
        n = resolve(sub.key, options.get(sub.key))[1].requery
        if n is None:
            declared = sub.extra.get("requery_unparseable", 0) if sub.extra else 0
            n = declared if isinstance(declared, int) else 0
        if n > 0:
            out[sub.key] = n
    return out


def make_requery(model: str, subtasks: Mapping[str, Subtask], limits: Mapping[str, int],
                 samples: int) -> Callable[[Unit, Response], Unit | None] | None:
    if not limits:
        return None

    def requery(unit: Unit, resp: Response) -> Unit | None:
        key = f"{unit.item.pillar}/{unit.item.subtask}"
        n = limits.get(key)
        if not n or unit.sample // samples >= n:
            return None
        if subtasks[key].score(unit.item, resp, None).status != "unparseable":
            return None
        sample = unit.sample + samples
        body = dict(unit.body)
        seed = body.get("seed")
        if isinstance(seed, int):
            body["seed"] = seed + sample
        return Unit(unit.item, sample, body,
                    request_key(model, unit.item.pillar, unit.item.subtask, unit.item.id, sample, body),
                    unit.est_tokens, max_out=unit.max_out)

    return requery


def requery_samples(sample: int, samples: int, n: int) -> list[int]:
    """The sample indices that stand for planned sample `sample`, in the order they were asked."""
    return [sample + k * samples for k in range(n + 1)]
