"""`compare RUN_A RUN_B [...]`: what changed between runs of the same subtasks, each later run against
the first. Per subtask and model: the value, its difference and a paired bootstrap interval of the
difference over the base items both runs scored (engine/core/stats.py); rank differences per subtask
and pillar; models and subtasks present in one run only; changed config (run.json fingerprints,
config and spec); and every item whose outcome class, parsed answer or item score changed (a
changed rating counts: it is the item score), by item id.

Pure given the files: the per-item scores are engine.scoring.item_scores' (the ones scores.json
aggregates); the values and ranks are each run's scores.json (computed in memory when absent).
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import msgspec

from engine.core.errors import EngineError
from engine.core.rundoc import ModelScore, RunDoc, ScoresDoc, SubtaskScores
from engine.core.stats import paired_bootstrap_ci
from engine.core.subtask import ItemScore, Subtask
from engine.intervals import Resampler, resamples_for, unit_of
from engine.report import is_live, load_inputs
from engine.report.build import Parsed, item_direction
from engine.report.explore import JudgeTexts, judge_texts, outcome, subtask_views, verdicts_of
from engine.report.view import Answer, ItemView
from engine.scoring import SubtaskItems, item_scores, score_run
from engine.store.rundoc_io import read_run, read_scores
from pillars import registry

__all__ = ["ItemState", "ItemChange", "MetricDelta", "PillarDelta", "ConfigChange", "Comparison", "CompareDoc",
           "compare_runs", "regressions", "parse_threshold"]


class ItemState(msgspec.Struct, frozen=True, kw_only=True):
    outcome: str  # engine.report.explore.OUTCOMES
    parsed: str | None = None  # the parsed answer (the scorer's label)
    score: float | None = None  # the item score the metric aggregates


class ItemChange(msgspec.Struct, frozen=True, kw_only=True):
    subtask: str
    model: str
    id: str
    sample: int = 0
    changed: tuple[str, ...]  # which of "outcome", "parsed", "score"
    a: ItemState
    b: ItemState


class MetricDelta(msgspec.Struct, frozen=True, kw_only=True):
    subtask: str
    model: str
    headline: str
    direction: str
    a: float | None
    b: float | None
    delta: float | None  # b - a
    ci: tuple[float, float] | None = None  # paired bootstrap 95% interval of the delta
    ci_reason: str | None = None
    paired_items: int = 0  # base items both runs scored (the interval's units)
    rank_a: int | None = None
    rank_b: int | None = None
    items_changed: int = 0


class PillarDelta(msgspec.Struct, frozen=True, kw_only=True):
    pillar: str
    model: str
    rank_a: int | None
    rank_b: int | None
    mean_rank_a: float | None
    mean_rank_b: float | None


class ConfigChange(msgspec.Struct, frozen=True, kw_only=True):
    path: str  # e.g. "fingerprint.models.alpha", "config.models.alpha.temperature"
    a: object = None
    b: object = None


class Comparison(msgspec.Struct, frozen=True, kw_only=True):
    a: str  # run directories
    b: str
    models_only_in_a: tuple[str, ...] = ()
    models_only_in_b: tuple[str, ...] = ()
    subtasks_only_in_a: tuple[str, ...] = ()
    subtasks_only_in_b: tuple[str, ...] = ()
    config: tuple[ConfigChange, ...] = ()
    metrics: tuple[MetricDelta, ...] = ()
    pillars: tuple[PillarDelta, ...] = ()
    items: tuple[ItemChange, ...] = ()
    # The changed items as the report's item browser shows them (`compare --html` only): each changed
    # model's answer in both runs, labelled "<model> · A" and "<model> · B", side by side.
    views: tuple[ItemView, ...] = ()


class CompareDoc(msgspec.Struct, frozen=True, kw_only=True):
    runs: tuple[str, ...]
    seed: int
    comparisons: tuple[Comparison, ...]
    # One line per run that is not a finished, scored run (still going, stopped, no scores.json):
    # its values cover only what it did, which `compare` says before anything else.
    incomplete: tuple[str, ...] = ()


# --------------------------------------------------------------------------- loading


class _Run:
    def __init__(self, directory: Path, seed: int, views: bool = False) -> None:
        self.dir = directory
        self.doc: RunDoc = read_run(directory)  # one line when it is no run directory, as every command
        if self.doc.spec.items is not None:
            raise EngineError(f"compare: {directory} is a custom --items run: it has no metrics to compare; "
                              f"`python -m engine report {directory}` shows its responses")
        live = is_live(directory)
        scores = None if live else read_scores(directory)  # a live run's scores.json is an earlier one's
        self.scores: ScoresDoc = scores if scores is not None else score_run(directory, seed)
        self.incomplete = _incomplete(directory, self.doc, live, scored=scores is not None)
        self.models = list(self.scores.models)
        self.verdicts: tuple[Parsed, JudgeTexts] | None = None
        if views:  # the judges' verdicts and rationales, as the report reads them
            inputs = load_inputs(directory)
            self.verdicts = (verdicts_of(inputs), judge_texts(inputs.judgments))

    def views(self, chunk: SubtaskItems, models: Sequence[str]) -> list[ItemView]:
        if self.verdicts is None:
            return []
        parsed, texts = self.verdicts
        owner = chunk.subtask.key if chunk.subtask.rubric is not None else (chunk.subtask.source or chunk.key)
        return subtask_views(chunk, models, parsed.get(chunk.judge or "", {}).get(owner, {}), texts)


def _incomplete(directory: Path, doc: RunDoc, live: bool, scored: bool) -> str | None:
    """Why the run's values may cover less than it planned, in one line; None for a finished, scored run."""
    if live:
        state = "is still running: its values are those of the records so far"
    elif doc.status == "running":
        state = ("stopped before it finished (run.json says running; no process holds its lock): its values cover "
                 "only what it did; rerun its `run` command to finish it")
    elif doc.status != "complete":
        state = f"is incomplete (run.json status {doc.status!r}): its values cover only what it did"
    elif not scored:
        return (f"{directory} is unscored (no scores.json): its values are computed here from its records; "
                f"`python -m engine score {directory}` saves them")
    else:
        return None
    return f"{directory} {state}"


def _flat(obj: object, prefix: str) -> Iterator[tuple[str, object]]:
    if isinstance(obj, Mapping) and obj:
        for k, v in obj.items():
            yield from _flat(v, f"{prefix}.{k}")
    else:
        yield prefix, obj


# Paths that differ between any two runs without a change of what was asked.
_OWN_PATHS = ("config.run.output", "spec.output")


def config_changes(a: RunDoc, b: RunDoc) -> tuple[ConfigChange, ...]:
    def flat(doc: RunDoc) -> dict[str, object]:
        spec = msgspec.to_builtins(doc.spec)
        tree = {"fingerprint": msgspec.to_builtins(doc.fingerprint), "config": doc.config,
                "spec": {k: v for k, v in spec.items() if k != "skipped"}}
        return {p: v for p, v in _flat(tree, "")}

    fa, fb = flat(a), flat(b)
    ma, mb = set(_models_of(a)), set(_models_of(b))
    # A model in one run only is one line, not each of its ~30 settings.
    out = [ConfigChange(path=f"config.models.{m}", a="model only in A" if m in ma else None,
                        b="model only in B" if m in mb else None) for m in sorted(ma ^ mb)]
    alone = tuple(f"{root}.models.{m}" for m in ma ^ mb for root in ("config", "fingerprint"))
    for path in sorted(set(fa) | set(fb)):
        name = path.lstrip(".")
        if name in _OWN_PATHS or fa.get(path) == fb.get(path):
            continue
        if not any(name == p or name.startswith(p + ".") for p in alone):
            out.append(ConfigChange(path=name, a=fa.get(path), b=fb.get(path)))
    return tuple(out)


def _models_of(doc: RunDoc) -> Mapping[str, object]:
    models = doc.config.get("models")
    return models if isinstance(models, Mapping) else {}


# --------------------------------------------------------------------------- items and intervals


def _states(chunk: SubtaskItems, model: str) -> dict[tuple[str, int], ItemState]:
    sub = chunk.subtask
    direction = item_direction(sub)
    pillar, name = sub.generates_from.split("/", 1)
    records = chunk.records.get(model, {})
    out = {}
    for s in chunk.scores.get(model, ()):
        rec = records.get((pillar, name, s.item_id, s.sample))
        out[(s.item_id, s.sample)] = ItemState(outcome=outcome(s, rec, direction), parsed=s.label, score=s.value)
    return out


def item_changes(key: str, model: str, a: Mapping[tuple[str, int], ItemState],
                 b: Mapping[tuple[str, int], ItemState]) -> list[ItemChange]:
    """Every (item, sample) whose outcome, parsed answer or score differs; one scored in a single
    run counts as changed from or to `missing`."""
    missing = ItemState(outcome="missing")
    out = []
    for unit in sorted(set(a) | set(b)):
        sa, sb = a.get(unit, missing), b.get(unit, missing)
        changed = tuple(f for f in ("outcome", "parsed", "score") if getattr(sa, f) != getattr(sb, f))
        if changed:
            out.append(ItemChange(subtask=key, model=model, id=unit[0], sample=unit[1], changed=changed, a=sa, b=sb))
    return out


def paired_interval(sub_a: Subtask, sub_b: Subtask, inputs_a: Sequence[ItemScore], inputs_b: Sequence[ItemScore], *,
                    seed: int, key: str) -> tuple[tuple[float, float] | None, str | None, int]:
    """Paired bootstrap of b - a over the base items both runs have: (interval, why none, units)."""
    common = sorted({unit_of(s.item_id) for s in inputs_a} & {unit_of(s.item_id) for s in inputs_b})
    if not common:
        return None, "no item in both runs", 0
    keep = set(common)
    ra = Resampler([s for s in inputs_a if unit_of(s.item_id) in keep])
    rb = Resampler([s for s in inputs_b if unit_of(s.item_id) in keep])
    if sorted(inputs_a, key=_order) == sorted(inputs_b, key=_order):
        return (0.0, 0.0), None, len(common)  # what every resample would give: the same items, the same scores
    ci, why = paired_bootstrap_ci(lambda u: sub_a.aggregate(ra.expand(u)).value, lambda u: sub_b.aggregate(rb.expand(u)).value,
                                  common, seed=seed, key=key,
                                  resamples=resamples_for(2 * max(len(inputs_a), len(inputs_b))))
    return ci, why, len(common)


def _order(s: ItemScore) -> tuple[str, int, str]:
    return (s.item_id, s.sample, str(s.group.get("variant", "")))


def _delta(x: float | None, y: float | None) -> float | None:
    return None if x is None or y is None else y - x


def _metric(key: str, model: str, sa: SubtaskScores, sb: SubtaskScores, interval: tuple[tuple[float, float] | None, str | None, int],
            n_changed: int) -> MetricDelta:
    ma, mb = sa.models.get(model), sb.models.get(model)
    va, vb = (ma.value if ma else None), (mb.value if mb else None)
    ci, why, n = interval
    if va is None or vb is None:
        ci, why = None, _undefined(ma, mb)
    return MetricDelta(subtask=key, model=model, headline=sa.headline, direction=sa.direction, a=va, b=vb,
                       delta=_delta(va, vb), ci=ci, ci_reason=why if ci is None else None, paired_items=n,
                       rank_a=sa.ranks.get(model), rank_b=sb.ranks.get(model), items_changed=n_changed)


def _undefined(ma: ModelScore | None, mb: ModelScore | None) -> str:
    """Which run has no value, and why (scores.json's reason)."""
    def why(m: ModelScore | None) -> str:
        return "not scored" if m is None else (m.why or "undefined")
    if (ma is None or ma.value is None) and (mb is None or mb.value is None):
        return f"undefined in both runs (A: {why(ma)}; B: {why(mb)})"
    return f"undefined in A: {why(ma)}" if ma is None or ma.value is None else f"undefined in B: {why(mb)}"


# --------------------------------------------------------------------------- one comparison


def _compare(a: _Run, b: _Run, seed: int) -> Comparison:
    keys_a, keys_b = list(a.scores.subtasks), list(b.scores.subtasks)
    common_keys = [k for k in keys_a if k in b.scores.subtasks]
    if not common_keys:
        raise EngineError(f"compare: {a.dir} and {b.dir} have no subtask in common ({', '.join(keys_a) or 'none'} vs "
                          f"{', '.join(keys_b) or 'none'}); compare runs of the same subtasks")
    models = [m for m in a.models if m in b.models]
    chunks_a = {c.key: c for c in item_scores(a.dir) if c.key in common_keys}
    metrics: list[MetricDelta] = []
    items: list[ItemChange] = []
    pairs: list[tuple[ItemView, ItemView | None]] = []
    for cb in item_scores(b.dir):
        ca = chunks_a.pop(cb.key, None)
        if ca is None:
            continue
        sa, sb = a.scores.subtasks[cb.key], b.scores.subtasks[cb.key]
        first = len(items)
        for m in models:
            if m not in sa.models and m not in sb.models:
                continue
            changes = item_changes(cb.key, m, _states(ca, m), _states(cb, m))
            items.extend(changes)
            interval = paired_interval(ca.subtask, cb.subtask, ca.inputs.get(m, []), cb.inputs.get(m, []),
                                       seed=seed, key=f"{cb.key}/{m}")
            metrics.append(_metric(cb.key, m, sa, sb, interval, len(changes)))
        if len(items) > first:
            pairs.extend(_changed_pairs(items[first:], a.views(ca, models), b.views(cb, models)))
    pillars = [PillarDelta(pillar=p, model=m, rank_a=pa.ranks.get(m), rank_b=pb.ranks.get(m),
                           mean_rank_a=pa.mean_subtask_rank.get(m), mean_rank_b=pb.mean_subtask_rank.get(m))
               for p, pa in a.scores.pillars.items() if (pb := b.scores.pillars.get(p)) is not None for m in models]
    return Comparison(a=str(a.dir), b=str(b.dir),
                      models_only_in_a=tuple(m for m in a.models if m not in b.models),
                      models_only_in_b=tuple(m for m in b.models if m not in a.models),
                      subtasks_only_in_a=tuple(k for k in keys_a if k not in b.scores.subtasks),
                      subtasks_only_in_b=tuple(k for k in keys_b if k not in a.scores.subtasks),
                      config=config_changes(a.doc, b.doc), metrics=tuple(metrics), pillars=tuple(pillars), items=tuple(items),
                      views=side_by_side(pairs, [m for m in models if any(c.model == m for c in items)]))


def _changed_pairs(changes: Sequence[ItemChange], va: Sequence[ItemView],
                   vb: Sequence[ItemView]) -> list[tuple[ItemView, ItemView | None]]:
    """The report's views of each changed (item, sample) in A and in B."""
    wanted = {(c.id, c.sample) for c in changes}
    by_b = {(v.id, v.sample): v for v in vb if (v.id, v.sample) in wanted}
    return [(v, by_b.get((v.id, v.sample))) for v in va if (v.id, v.sample) in wanted]


def side_by_side(pairs: Sequence[tuple[ItemView, ItemView | None]], models: Sequence[str]) -> tuple[ItemView, ...]:
    """One view per changed item: every changed model's answer in A, then in B ("<model> · A", ...),
    so the browser's columns are the same for every item."""
    out = []
    for va, vb in pairs:
        answers = []
        for m in models:
            for label, v in (("A", va), ("B", vb)):
                got = [x for x in (v.answers if v else ()) if x.model == m]
                answers.append(msgspec.structs.replace(got[0], model=f"{m} · {label}") if got
                               else Answer(model=f"{m} · {label}", outcome="missing"))
        out.append(msgspec.structs.replace(va, answers=tuple(answers)))
    return tuple(out)


def compare_runs(dirs: Sequence[Path], seed: int = 0, views: bool = False) -> CompareDoc:
    """Each run after the first against the first; `views`: the changed items for the HTML browser."""
    if len(dirs) < 2:
        raise EngineError("compare: give at least two run directories (the first is the baseline)")
    runs = [_Run(Path(d), seed, views) for d in dirs]
    return CompareDoc(runs=tuple(str(d) for d in dirs), seed=seed,
                      comparisons=tuple(_compare(runs[0], r, seed) for r in runs[1:]),
                      incomplete=tuple(dict.fromkeys(r.incomplete for r in runs if r.incomplete)))


# --------------------------------------------------------------------------- regressions


def parse_threshold(text: str, known: Sequence[str] | None = None) -> tuple[str, float]:
    """`METRIC=DELTA`: a subtask key, a pillar or `all` (known: every registered subtask), and how
    much worse it may get."""
    if known is None:
        known = [s.key for s in registry.all_subtasks()]
    name, sep, num = text.partition("=")
    try:
        delta = float(num)
    except ValueError:
        delta = -1.0
    if not sep or not delta >= 0 or not math.isfinite(delta):  # nan or inf would switch the gate off
        raise EngineError(f"--fail-on-regression {text}: expected METRIC=DELTA with DELTA a finite number >= 0, "
                          "e.g. crisis/identification=0.02, crisis=0.05 or all=0.05")
    pillars = sorted({k.split("/")[0] for k in known})
    if name != "all" and name not in known and name not in pillars:
        close = difflib.get_close_matches(name, ["all", *pillars, *known], n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise EngineError(f"--fail-on-regression {text}: {name!r} is no subtask or pillar{hint} (METRIC: a subtask "
                          f"key such as crisis/identification, a pillar ({', '.join(pillars)}) or all)")
    return name, delta


def _covers(name: str, key: str) -> bool:
    return name in ("all", key, key.split("/")[0])


def regressions(doc: CompareDoc, thresholds: Sequence[tuple[str, float]]) -> list[str]:
    """One line per (comparison, subtask, model) whose value got worse by more than its threshold
    (worse: lower for a higher-is-better metric, higher for a lower-is-better one), and one per
    value, model or subtask that A has and B lost (a value undefined in B, a model or subtask not
    in B): a loss is worse than any threshold. A value undefined in A is never a regression."""
    out = []
    for c in doc.comparisons:
        where = f"in {c.b} vs {c.a}"
        in_a = [d.subtask for d in c.metrics if d.a is not None] + list(c.subtasks_only_in_a)
        for m in c.models_only_in_a:
            if any(_covers(name, k) for name, _ in thresholds for k in in_a):
                out.append(f"regression: model {m} is not in B (A has it) {where}")
        for k in c.subtasks_only_in_a:
            if any(_covers(name, k) for name, _ in thresholds):
                out.append(f"regression: subtask {k} is not in B (A has it) {where}")
        for d in c.metrics:
            if d.a is None or not any(_covers(name, d.subtask) for name, _ in thresholds):
                continue
            if d.b is None or d.delta is None:
                out.append(f"regression: {d.subtask} {d.model} {d.headline} {d.a:.4f} -> none, the value is lost "
                           f"({d.ci_reason or 'undefined in B'}) {where}")
                continue
            worse = -d.delta if d.direction == "higher" else d.delta
            for name, limit in thresholds:
                if _covers(name, d.subtask) and worse > limit + 1e-12:
                    out.append(f"regression: {d.subtask} {d.model} {d.headline} {d.a:.4f} -> {d.b:.4f} "
                               f"({d.delta:+.4f}, worse by more than {limit:g}) {where}")
                    break
    return out
