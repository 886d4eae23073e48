"""`score DIR`: records + judgments -> per-item scores -> subtask metrics -> ranks -> scores.json.

Pure given the files: re-scoring the same directory gives the same scores.json. Nothing is
silently scored: unparseable answers and judge outputs are counted (n_unparseable), failed
generations are counted (n_failed), missing ones are counted (n_missing), and all are excluded
from the metric by default; an undefined metric is null with a reason.

Memory is one subtask at a time, not the run: a subtask's judge verdicts (every model's) and then
each model's records are read from the checkpoints when it is scored and dropped after; token
usage is summed in its own pass that holds nothing. Each checkpoint is read once into a line index
(engine/store/index.py: offsets by model x pillar x subtask, 16 bytes a record) and a subtask
reads only its own lines by offset, so a file is read about once in all, not once per subtask. A
1M-record run scores in the memory of its largest subtask (its verdicts and item scores; records
only stream by) plus ~16 MB of index.

The per-unit API, for readers that want per-item results without holding the run (the report):
- `ScoringPass(directory, cfg, spec)`: the run's configured subtasks (`.subtasks`, spec order) and
  models (`.models`); per subtask its items (`.items_of(sub)`) and ranked judge (`.ranked_judge`);
- `pass_.subtask_verdicts(sub, items)`: the verdicts every model of the subtask is scored with
  (`.verdicts` / `.source_verdicts` for one model), read on the call; `.records_of(model, items)`:
  a model's records of the subtask, streamed (an iterator: nothing is held);
- `record_score(sub, item, record, verdicts, source) -> Scored` (pure): one record's `ItemScore`
  and how its verdict counts; `outcomes_of` applies it to a record stream, keyed by (position in
  the item list, sample), and `scores_from(items, samples, outcomes, requery)` (pure) turns those
  into exactly the per-item scores the metric aggregates; `pass_.unit_scores(sub, model, items)`
  is the three together, `pass_.subtask(sub)` the subtask's `SubtaskScores`;
- `item_scores(directory)`: per subtask, a `SubtaskItems` with every model's item scores, the
  aggregate's inputs and that subtask's records (the report's item browser and `compare` read
  this; drop each chunk before taking the next and the reader holds one subtask).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import msgspec

from engine.config import Config
from engine.core.errors import EngineError
from engine.core.records import Item, Record, judgment_decoder, record_decoder
from engine.core.rundoc import UNSET, IntervalsDoc, ModelScore, PillarRanks, RunSpec, ScoresDoc, SubtaskScores
from engine.core.stats import RESAMPLES
from engine.core.subtask import ItemScore, JudgeStats, Judgment, Rubric, Subtask
from engine.costs import UsageTable
from engine.intervals import tied, with_interval
from engine.items import limited
from engine.options import EngineOptions, resolve
from engine.requery import requery_limits, requery_samples
from engine.spec import judges_for
from engine.store.checkpoint import iter_records, iter_records_of
from engine.store.index import LineIndex
from engine.store.rundoc_io import load_run, write_scores
from pillars import registry

__all__ = ["Judged", "Scored", "ScoringPass", "SubtaskItems", "competition_ranks", "item_scores", "outcomes_of",
           "pillar_ranks", "read_judgments", "record_score", "score_run", "scores_from", "write_scores"]

Records = dict[tuple[str, str, str, int], Record]  # (pillar, subtask, item id, sample) -> record


def competition_ranks(values: dict[str, float | None], direction: str,
                      tie_break: dict[str, float | None] | None = None) -> dict[str, int | None]:
    """1 = most trustworthy; equal values share a rank and the next rank skips ("1, 2, 2, 4");
    a model without a value has no rank. `tie_break` (higher is better) orders equal values."""
    sign = -1.0 if direction == "higher" else 1.0
    tb = tie_break or {}

    def key(m: str) -> tuple[float, float]:
        v = values[m]
        assert v is not None
        t = tb.get(m)
        return (round(sign * v, 12), -t if t is not None else 0.0)

    present = [m for m, v in values.items() if v is not None]
    keys = {m: key(m) for m in present}
    ranks: dict[str, int | None] = {}
    for m, v in values.items():
        ranks[m] = None if v is None else 1 + sum(1 for o in present if keys[o] < keys[m])
    return ranks


def pillar_ranks(sub_ranks: dict[str, dict[str, int | None]], models: Sequence[str], n_subtasks: int | None = None,
                 coverage: dict[str, dict[str, int]] | None = None,
                 scored: Mapping[str, Mapping[str, int]] | None = None) -> PillarRanks:
    """PROTOCOL.md §2: the mean of a model's subtask ranks within the pillar, re-ranked, over the same
    subtasks for every model: a subtask where a model has no scored item (all unparseable, failed or
    missing; `scored`: subtask -> model -> n_scored) counts as its worst rank (the number of models),
    so a missing answer never helps; a value undefined for another reason (e.g. every jailbreak
    answer refused, so no toxicity to rate) leaves that subtask out of the model's mean. A subtask
    no model has a value for is left out and the pillar is marked partial (k of n_subtasks)."""
    present = {k: r for k, r in sub_ranks.items() if any(v is not None for v in r.values())}
    worst = len(models)
    means: dict[str, float | None] = {}
    for m in models:
        rs = []
        for k, ranks in present.items():
            r = ranks.get(m)
            if r is None and (scored is None or scored.get(k, {}).get(m, 0) == 0):
                r = worst
            if r is not None:
                rs.append(r)
        means[m] = round(sum(rs) / len(rs), 6) if rs else None
    n = n_subtasks if n_subtasks is not None else len(sub_ranks)
    partial = f"{len(present)} of {n} subtasks" if len(present) < n else UNSET
    return PillarRanks(mean_subtask_rank=means, ranks=competition_ranks(means, "lower"), partial=partial,
                       coverage=coverage if coverage is not None else UNSET)


def _coverage(subs: Mapping[str, SubtaskScores], models: Sequence[str]) -> dict[str, dict[str, int]]:
    """model -> {"scored", "planned"} items over the given subtasks (planned = asked + missing)."""
    out = {}
    for m in models:
        scored = planned = 0
        for s in subs.values():
            d = s.models.get(m)
            if d is not None:
                scored += d.n_scored
                planned += d.n + d.n_missing
        out[m] = {"scored": scored, "planned": planned}
    return out


class Judged(msgspec.Struct):
    """One response's verdict under one rubric: the first parseable judge output by try (None when
    every output was unparseable or the judge call failed), of `outputs` outputs over `tries` tries."""

    parsed: Judgment | None
    outputs: int
    tries: int


Verdicts = dict[tuple[str, str], Judged]  # (response key, rubric) -> verdict
Where = Callable[[str, str, str], bool]  # (model, pillar, subtask) -> a record or judgment to read


def read_judgments(directory: Path, judge: str, rubrics: dict[str, Rubric], where: Where | None = None,
                   index: LineIndex | None = None) -> Verdicts:
    """(response key, rubric) -> `Judged`, over the judge's judgments of the responses `where`
    picks (by the judged response's model, pillar and subtask; all when None). Outputs count in
    try order, file order within a try: one streamed pass per try number present (tries are 0 and
    the single retry 1), so no judgment is held past its own line. `index`: the judge file's
    LineIndex, to read only the picked judgments."""
    out: Verdicts = {}
    path = directory / "judgments" / f"{judge}.jsonl"
    seen: set[int] = {0}
    done: set[int] = set()
    while todo := sorted(seen - done):
        t = todo[0]
        done.add(t)
        found = (iter_records(path, judgment_decoder) if where is None else
                 index.read(where) if index is not None else iter_records_of(path, where, judgment_decoder))
        for j in found:
            seen.add(j.try_)
            if j.try_ != t:
                continue
            rubric = rubrics.get(j.rubric)
            if rubric is None or j.rubric_version != rubric.version:
                continue
            k = (j.response_key, j.rubric)
            cur = out.setdefault(k, Judged(parsed=None, outputs=0, tries=0))
            cur.tries += 1
            if j.response is None or cur.parsed is not None:
                continue
            cur.outputs += 1
            cur.parsed = rubric.read(j.response.text)
    return out


class Scored(msgspec.Struct, frozen=True):
    """One record's outcome (`record_score`): its score, how its verdict counts (None: it needs
    none) and whether the judge was retried on it."""

    score: ItemScore
    judge: str | None = None  # "judged" | "unparseable" | "not_judged"
    retried: bool = False


def record_score(sub: Subtask, item: Item, r: Record, judged: Verdicts,
                 source: tuple[str, Verdicts] | None = None) -> Scored:
    """One record scored with its verdict (pure); `source`: a derived subtask's source rubric name
    and verdicts."""
    rubric = sub.rubric
    judgment = None
    count = None
    retried = False
    if rubric is not None and r.response is not None and item.metadata.get("judge") is not False:
        j = judged.get((r.key, rubric.name))
        count = "not_judged" if j is None else "unparseable" if j.parsed is None else "judged"
        if j is not None:
            judgment = j.parsed
            retried = j.tries > 1
    if source is not None and r.response is not None:
        # A derived subtask also sees its source's verdict (antitoxic: the jailbreak judge's
        # refusal), so the two subtasks agree on what was answered.
        sj = source[1].get((r.key, source[0]))
        if sj is not None and sj.parsed is not None:
            judgment = {**(judgment or {}), "source": sj.parsed}
    return Scored(score=sub.score(item, r.response, judgment), judge=count, retried=retried)


UnitVerdicts = tuple[Verdicts, tuple[str, Verdicts] | None]  # a rubric's verdicts, a derived subtask's source's
Outcomes = dict[tuple[int, int], Scored]  # (position in the item list, sample) -> its record's outcome


def outcomes_of(sub: Subtask, items: Sequence[Item], records: Iterable[Record], judged: Verdicts,
                source: tuple[str, Verdicts] | None = None) -> Outcomes:
    """Every record of the items, scored as it streams by (records of other items are passed
    over); a later record of the same (item, sample) replaces an earlier one."""
    where: dict[tuple[str, str, str], list[int]] = {}
    for pos, item in enumerate(items):
        where.setdefault((item.pillar, item.subtask, item.id), []).append(pos)
    out: Outcomes = {}
    for r in records:
        for pos in where.get((r.pillar, r.subtask, r.item_id), ()):
            out[(pos, r.sample)] = record_score(sub, items[pos], r, judged, source)
    return out


def scores_from(items: Sequence[Item], samples: int, outcomes: Outcomes,
                requery: int = 0) -> tuple[list[ItemScore], int, JudgeStats]:
    """One subtask x model's per-item scores (pure): (scores in item then sample order, missing
    (item, sample)s, judge counts). A re-queried sample (engine/requery.py) stands for its planned
    one: the first answer that parses."""
    scores: list[ItemScore] = []
    missing = 0
    jstats = {"judged": 0, "unparseable": 0, "not_judged": 0, "retried": 0}
    for pos in range(len(items)):
        for s in range(samples):
            sc = None
            reasks = 0
            for k, idx in enumerate(requery_samples(s, samples, requery)):
                o = outcomes.get((pos, idx))
                if o is None:
                    break
                reasks = k
                if o.judge is not None:
                    jstats[o.judge] += 1
                if o.retried:
                    jstats["retried"] += 1
                sc = o.score
                if sc.status != "unparseable":
                    break
            if sc is None:
                missing += 1
                continue
            if reasks:  # the re-asks an answer cost, for the subtask's breakdown
                sc = msgspec.structs.replace(sc, extras={**sc.extras, "reasks": float(reasks)})
            scores.append(msgspec.structs.replace(sc, sample=s) if sc.sample != s else sc)
    return scores, missing, JudgeStats(**jstats)


class ScoringPass:
    """One scoring pass over a run directory, one subtask x model at a time (module docstring)."""

    def __init__(self, directory: Path, cfg: Config, spec: RunSpec, seed: int | None = 0,
                 items: Mapping[str, Sequence[Item]] | None = None) -> None:
        """`seed`: of the bootstrap intervals; None: no intervals (the per-item views need none).
        `items`: subtask key -> its items as the run limited them, where the caller built them
        already (the report's loader: robustness perturbation makes building them cost seconds)."""
        self.directory, self.cfg, self.spec, self.seed = directory, cfg, spec, seed
        self.data_dir = Path(spec.data_dir) if spec.data_dir else None
        self.resolved = {k: resolve(k, spec.options.get(k), self.data_dir) for k in spec.subtasks}
        self.subtasks = [self.resolved[k][0] for k in spec.subtasks]
        self.models = list(spec.models)
        self.rubrics = {s.rubric.name: s.rubric for s in self.subtasks if s.rubric is not None}
        # The judges whose verdicts count: each configured rubric's ranked (first) judge.
        self.judges = {j for r in self.rubrics.values() if (j := self.ranked_judge(r)) is not None}
        self.requery_n = requery_limits(self.subtasks, spec.options)
        # Only the scores a robustness subtask compares with are kept past their own subtask.
        self.keep = {s.clean_source for s in self.subtasks if s.clean_source}
        self.cache: dict[tuple[str, str], list[ItemScore]] = {}
        self.known = items or {}
        # Each checkpoint is read once into a line index; a unit then reads only its own lines.
        self.indexes: dict[Path, LineIndex] = {}

    def index(self, path: Path, decoder: msgspec.json.Decoder[Any]) -> LineIndex:
        found = self.indexes.get(path)
        if found is None:
            found = self.indexes[path] = LineIndex(path, decoder)
        return found

    def records_of(self, model: str, items: Sequence[Item]) -> Iterator[Record]:
        """The model's records of the items' subtasks, streamed from its checkpoint."""
        wanted = {(i.pillar, i.subtask) for i in items}
        index = self.index(self.directory / "responses" / f"{model}.jsonl", record_decoder)
        return index.read(lambda m, p, s: (p, s) in wanted)

    def verdicts(self, rubric: Rubric | None, model: str | None, items: Sequence[Item]) -> Verdicts:
        """The rubric's ranked judge's verdicts on the model's (None: every model's) responses to the
        items ({} unjudged). A judgment carries its response's model, pillar and subtask
        (engine/run/lane.py); response keys differ between models, so one map serves them all."""
        judge = self.ranked_judge(rubric)
        if judge is None or judge not in self.judges:
            return {}
        wanted = {(i.pillar, i.subtask) for i in items}
        index = self.index(self.directory / "judgments" / f"{judge}.jsonl", judgment_decoder)
        return read_judgments(self.directory, judge, self.rubrics,
                              lambda m, p, s: (p, s) in wanted and (model is None or m == model), index)

    def subtask_verdicts(self, sub: Subtask, items: Sequence[Item]) -> UnitVerdicts:
        """What every model of `sub` is scored with, read once: the judgments file is passed over
        once per subtask, not once per subtask x model."""
        return self.verdicts(sub.rubric, None, items), self.source_verdicts(sub, None, items)

    def source_verdicts(self, sub: Subtask, model: str | None, items: Sequence[Item]) -> tuple[str, Verdicts] | None:
        """A derived subtask's source rubric name and its ranked judge's verdicts, when judged."""
        if sub.kind != "derived" or not sub.source or sub.source not in self.resolved:
            return None
        src = self.resolved[sub.source][0].rubric
        return (src.name, self.verdicts(src, model, items)) if src is not None and self.ranked_judge(src) else None

    def unit_scores(self, sub: Subtask, model: str, items: Sequence[Item], requery: int = 0,
                    records: Iterable[Record] | None = None,
                    verdicts: UnitVerdicts | None = None) -> tuple[list[ItemScore], int, JudgeStats]:
        """`sub` x `model`'s item scores: its verdicts (read now unless given), then its records
        (`records_of` unless given) scored as they stream by."""
        judged, source = verdicts if verdicts is not None else (
            self.verdicts(sub.rubric, model, items), self.source_verdicts(sub, model, items))
        stream = self.records_of(model, items) if records is None else records
        outcomes = outcomes_of(sub, items, stream, judged, source)
        del judged, source  # the verdicts are in the outcomes now
        return scores_from(items, self.spec.samples, outcomes, requery)

    def items_of(self, sub: Subtask) -> list[Item]:
        """The items `sub`'s answers come from (its generating subtask's), as the run limited them."""
        gen_key = sub.generates_from
        gen = sub if gen_key == sub.key else resolve(gen_key, self.spec.options.get(gen_key), self.data_dir)[0]
        return self._items(gen)

    def _items(self, sub: Subtask) -> list[Item]:
        if sub.key in self.known:
            return list(self.known[sub.key])
        own = resolve(sub.key, self.spec.options.get(sub.key))[1].limit
        return list(limited(registry.load_items(sub, self.data_dir), own if own is not None else self.spec.limit))

    def ranked_judge(self, rubric: Rubric | None) -> str | None:
        judges = judges_for(self.cfg, rubric) if rubric is not None else ()
        return judges[0] if judges else None

    def _clean_scores(self, clean_key: str, model: str) -> list[ItemScore]:
        """The clean items' scores a robustness subtask compares with (scored here if the run did
        not select the clean subtask itself)."""
        clean = self.cache.get((clean_key, model))
        if clean is None:
            csub = resolve(clean_key, self.spec.options.get(clean_key), self.data_dir)[0]
            clean, _, _ = self.unit_scores(csub, model, self._items(csub))
        return clean

    def metric(self, sub: Subtask, eng: EngineOptions, items: list[Item], model: str,
               records: Iterable[Record] | None = None,
               verdicts: UnitVerdicts | None = None) -> tuple[ModelScore, list[ItemScore], list[ItemScore]]:
        """The unit's metric, its item scores and what the aggregate saw (the scores, a robustness
        subtask's clean ones added, the unparseable policy applied)."""
        scores, missing, jstats = self.unit_scores(sub, model, items, self.requery_n.get(sub.key, 0), records,
                                                   verdicts)
        if sub.key in self.keep:
            self.cache[(sub.key, model)] = scores
        agg_input = scores
        if sub.clean_source:
            agg_input = scores + [msgspec.structs.replace(c, group={**c.group, "variant": "clean"})
                                  for c in self._clean_scores(sub.clean_source, model)]
        if eng.unparseable == "zero":
            agg_input = [msgspec.structs.replace(x, status="scored", value=0.0) if x.status == "unparseable" else x
                         for x in agg_input]
        metric = sub.aggregate(agg_input)
        if self.seed is not None:
            metric = with_interval(metric, sub.aggregate, agg_input, seed=self.seed, key=f"{sub.key}/{model}")
        return ModelScore.of(metric, missing, jstats if sub.rubric is not None else None), scores, agg_input

    def subtask(self, sub: Subtask) -> SubtaskScores:
        eng = self.resolved[sub.key][1]
        items = self.items_of(sub)
        verdicts = self.subtask_verdicts(sub, items)
        models = {m: self.metric(sub, eng, items, m, verdicts=verdicts)[0] for m in self.models}
        values = {m: s.value for m, s in models.items()}
        tb = {m: _number(s.breakdown.get(eng.tie_break)) for m, s in models.items()} if eng.tie_break else None
        return SubtaskScores(headline=sub.headline, direction=sub.direction, version=sub.version,
                             judge=self.ranked_judge(sub.rubric), unparseable=eng.unparseable,
                             tie_break=eng.tie_break, models=models,
                             ranks=competition_ranks(values, sub.direction, tb),
                             tied=tied({m: s.ci for m, s in models.items()}),
                             prompts=sub.prompts if sub.prompt_files else UNSET,
                             constrained=(sub.params.json_schema is not None
                                          if registry.get(sub.key).params.json_schema is not None else UNSET),
                             judge_constrained=sub.rubric.constrained if sub.rubric is not None else UNSET,
                             judge_hardened=False if sub.rubric is not None and not sub.rubric.hardened else UNSET)


def _usage(directory: Path, models: Sequence[str]) -> UsageTable:
    """Tokens of every record and judgment, summed as they stream by (nothing held)."""
    table = UsageTable()
    for model in models:
        for r in iter_records(directory / "responses" / f"{model}.jsonl"):
            if r.response is not None:
                table.add(model, "target", r.pillar, r.response.usage)
    jdir = directory / "judgments"
    for path in sorted(jdir.glob("*.jsonl")) if jdir.is_dir() else ():
        for j in iter_records(path, judgment_decoder):
            if j.response is not None:
                table.add(j.judge, "judge", j.pillar, j.response.usage)
    return table


def _number(v: object) -> float | None:
    return float(v) if isinstance(v, (int, float)) else None


def score_run(directory: Path, seed: int = 0) -> ScoresDoc:
    """`seed`: the bootstrap intervals' (`score --seed`); the same seed gives the same scores.json."""
    doc, cfg = load_run(directory)
    spec = doc.spec
    if spec.items is not None:
        raise EngineError(f"{directory}: a custom --items run has no pillar metrics to score")
    scorer = ScoringPass(directory, cfg, spec, seed)
    subs = {sub.key: scorer.subtask(sub) for sub in scorer.subtasks}
    pillars: dict[str, PillarRanks] = {}
    for p in registry.PILLARS:
        mine = {k: v for k, v in subs.items() if k.split("/")[0] == p}
        if mine:
            n = sum(1 for s in registry.all_subtasks() if s.pillar == p)
            scored = {k: {m: d.n_scored for m, d in v.models.items()} for k, v in mine.items()}
            pillars[p] = pillar_ranks({k: v.ranks for k, v in mine.items()}, scorer.models, n,
                                      _coverage(mine, scorer.models), scored)
    return ScoresDoc(models=scorer.models, data=spec.data_dir or "builtin", limit=spec.limit, subtasks=subs,
                     pillars=pillars, usage=_usage(directory, scorer.models).usage(cfg), skipped=dict(spec.skipped),
                     intervals=IntervalsDoc(bootstrap_seed=seed, bootstrap_resamples=RESAMPLES))


class SubtaskItems(msgspec.Struct, frozen=True, kw_only=True):
    """One subtask's per-item scores, exactly those its metric in scores.json aggregates, with the
    items and records they came from (what the report's item browser shows)."""

    key: str
    subtask: Subtask
    items: list[Item]  # the generating subtask's items (a derived subtask scores its source's)
    scores: dict[str, list[ItemScore]]  # model -> one per (item, sample) with a record
    records: dict[str, Records]  # model -> that model's records of this subtask's items (nothing else is read)
    judge: str | None  # the ranked judge of the subtask's rubric (or of its source's, when derived)
    # model -> what `subtask.aggregate` gets for that model (compare's paired bootstrap re-runs it)
    inputs: dict[str, list[ItemScore]] = {}


def item_scores(directory: Path, known: Mapping[str, Sequence[Item]] | None = None) -> Iterator[SubtaskItems]:
    """Per subtask in run order, every model's per-item scores as `score_run` computes them
    (re-queries, source verdicts and unparseable policy included), one subtask at a time: only that
    subtask's records are read for it, and a consumer that drops each chunk holds one subtask.
    `known`: subtask key -> items, where the caller has them (`ScoringPass`'s `items`)."""
    doc, cfg = load_run(directory)
    if doc.spec.items is not None:
        raise EngineError(f"{directory}: a custom --items run has no per-item scores")
    scorer = ScoringPass(directory, cfg, doc.spec, seed=None, items=known)
    for sub in scorer.subtasks:
        items = scorer.items_of(sub)
        eng = scorer.resolved[sub.key][1]
        records: dict[str, Records] = {}
        scores: dict[str, list[ItemScore]] = {}
        inputs: dict[str, list[ItemScore]] = {}
        verdicts = scorer.subtask_verdicts(sub, items)
        for m in scorer.models:
            records[m] = {(r.pillar, r.subtask, r.item_id, r.sample): r for r in scorer.records_of(m, items)}
            _, scores[m], inputs[m] = scorer.metric(sub, eng, items, m, records[m].values(), verdicts)
        src = scorer.resolved[sub.source][0].rubric if sub.source and sub.source in scorer.resolved else None
        judge = scorer.ranked_judge(sub.rubric or src)
        yield SubtaskItems(key=sub.key, subtask=sub, items=items, records=records, judge=judge, scores=scores,
                           inputs=inputs)
