"""`score DIR`: records + judgments -> per-item scores -> subtask metrics -> ranks -> scores.json.

Pure given the files: re-scoring the same directory gives the same scores.json. Nothing is
silently scored: unparseable answers and judge outputs are counted (n_unparseable), failed
generations are counted (n_failed), missing ones are counted (n_missing), and all are excluded
from the metric by default; an undefined metric is null with a reason.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import msgspec
import orjson

from engine.checkpoint import iter_records
from engine.config import Config, parse_config
from engine.core.errors import EngineError
from engine.core.records import Item, Record, judgment_decoder
from engine.core.subtask import ItemScore, Judgment, Metric, Rubric, Subtask
from engine.costs import UsageTable
from engine.requery import requery_limits, requery_samples
from engine.runstate import read_run_json
from engine.spec import RunSpec, judges_for

SCORES_JSON = "scores.json"


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


def pillar_ranks(sub_ranks: dict[str, dict[str, int | None]], models: Sequence[str]) -> dict[str, Any]:
    """PROTOCOL.md §2: the mean of a model's subtask ranks within the pillar, re-ranked."""
    means: dict[str, float | None] = {}
    for m in models:
        rs = [r[m] for r in sub_ranks.values() if r.get(m) is not None]
        means[m] = round(sum(rs) / len(rs), 6) if rs else None  # type: ignore[arg-type]
    return {"mean_subtask_rank": means, "ranks": competition_ranks(means, "lower")}


class _Judged(msgspec.Struct):
    parsed: Judgment | None
    outputs: int
    tries: int


def read_judgments(directory: Path, judge: str, rubrics: dict[str, Rubric]) -> dict[tuple[str, str], _Judged]:
    """(response key, rubric) -> the first parseable judge output by try, or None when every
    output was unparseable (or the judge call failed)."""
    out: dict[tuple[str, str], _Judged] = {}
    rows = sorted(iter_records(directory / "judgments" / f"{judge}.jsonl", judgment_decoder), key=lambda r: r.try_)
    for j in rows:
        rubric = rubrics.get(j.rubric)
        if rubric is None or j.rubric_version != rubric.version:
            continue
        k = (j.response_key, j.rubric)
        cur = out.setdefault(k, _Judged(parsed=None, outputs=0, tries=0))
        cur.tries += 1
        if j.response is None or cur.parsed is not None:
            continue
        cur.outputs += 1
        cur.parsed = rubric.parse(j.response.text)
    return out


def _metric_doc(m: Metric, n_missing: int, judge_stats: dict[str, int] | None) -> dict[str, Any]:
    doc: dict[str, Any] = {"value": m.value, "n": m.n, "n_scored": m.n_scored, "n_unparseable": m.n_unparseable,
                           "n_failed": m.n_failed, "n_missing": n_missing,
                           "ci": list(m.ci) if m.ci is not None else None, "breakdown": m.breakdown}
    if judge_stats is not None:
        doc["judge"] = judge_stats
    if m.reason is not None or m.value is None:
        doc["reason"] = m.reason or "undefined"
    return doc


def _item_scores(sub: Subtask, rubric: Rubric | None, items: Iterable[Item], samples: int,
                 records: dict[tuple[str, str, str, int], Record],
                 judged: dict[tuple[str, str], _Judged], requery: int = 0) -> tuple[list[ItemScore], int, dict[str, int]]:
    scores: list[ItemScore] = []
    missing = 0
    jstats = {"judged": 0, "unparseable": 0, "not_judged": 0, "retried": 0}
    for item in items:
        for s in range(samples):
            # A re-queried sample (engine/requery.py) stands for s: the first answer that parses.
            sc = None
            rec = None
            for idx in requery_samples(s, samples, requery):
                r = records.get((item.pillar, item.subtask, item.id, idx))
                if r is None:
                    break
                rec = r
                judgment = None
                if rubric is not None and r.response is not None and item.metadata.get("judge") is not False:
                    j = judged.get((r.key, rubric.name))
                    if j is None:
                        jstats["not_judged"] += 1
                    elif j.parsed is None:
                        jstats["unparseable"] += 1
                    else:
                        jstats["judged"] += 1
                        judgment = j.parsed
                    if j is not None and j.tries > 1:
                        jstats["retried"] += 1
                sc = sub.score(item, r.response, judgment)
                if sc.status != "unparseable":
                    break
            if rec is None or sc is None:
                missing += 1
                continue
            scores.append(msgspec.structs.replace(sc, sample=s) if sc.sample != s else sc)
    return scores, missing, jstats


def score_run(directory: Path) -> dict[str, Any]:
    from engine.items import limited
    from pillars import registry

    doc = read_run_json(directory)
    if doc is None:
        raise EngineError(f"{directory}: no run.json; is this a run output directory?")
    cfg: Config = parse_config(doc["config"], f"{directory}/run.json", stored=True)
    spec = msgspec.convert(doc["spec"], RunSpec)
    if spec.items is not None:
        raise EngineError(f"{directory}: a custom --items run has no pillar metrics to score")
    data_dir = Path(spec.data_dir) if spec.data_dir else None
    from engine.options import resolve

    resolved = {k: resolve(k, spec.options.get(k)) for k in spec.subtasks}
    subtasks = [resolved[k][0] for k in spec.subtasks]
    models = list(spec.models)

    rubrics = {s.rubric.name: s.rubric for s in subtasks if s.rubric is not None}
    judged_by: dict[str, dict[tuple[str, str], _Judged]] = {}
    for r in rubrics.values():
        judges = judges_for(cfg, r)
        if judges and judges[0] not in judged_by:
            judged_by[judges[0]] = read_judgments(directory, judges[0], rubrics)

    usage = UsageTable()
    records: dict[str, dict[tuple[str, str, str, int], Record]] = {}
    for m in models:
        records[m] = {}
        for r in iter_records(directory / "responses" / f"{m}.jsonl"):
            records[m][(r.pillar, r.subtask, r.item_id, r.sample)] = r
            if r.response is not None:
                usage.add(m, "target", r.pillar, r.response.usage)
    jdir = directory / "judgments"
    for path in sorted(jdir.glob("*.jsonl")) if jdir.is_dir() else ():
        for j in iter_records(path, judgment_decoder):
            if j.response is not None:
                usage.add(j.judge, "judge", j.pillar, j.response.usage)

    def zeroed(scores: list[ItemScore]) -> list[ItemScore]:
        return [msgspec.structs.replace(x, status="scored", value=0.0) if x.status == "unparseable" else x
                for x in scores]

    def items_of(sub: Subtask) -> list[Item]:
        own = resolve(sub.key, spec.options.get(sub.key))[1].limit
        return list(limited(registry.load_items(sub, data_dir), own if own is not None else spec.limit))

    requery_n = requery_limits(subtasks, spec.options)
    out_subs: dict[str, Any] = {}
    cache: dict[tuple[str, str], list[ItemScore]] = {}
    for sub in subtasks:
        eng = resolved[sub.key][1]
        gen_key = sub.generates_from
        gen = sub if gen_key == sub.key else resolve(gen_key, spec.options.get(gen_key))[0]
        items = items_of(gen)
        rubric = sub.rubric
        ranked_judge = judges_for(cfg, rubric)[0] if rubric is not None and judges_for(cfg, rubric) else None
        judged = judged_by.get(ranked_judge, {}) if ranked_judge else {}
        models_doc: dict[str, Any] = {}
        for m in models:
            scores, missing, jstats = _item_scores(sub, rubric, items, spec.samples, records[m], judged,
                                                   requery_n.get(sub.key, 0))
            cache[(sub.key, m)] = scores
            clean_key = sub.clean_source
            agg_input = scores
            if clean_key:
                clean = cache.get((clean_key, m))
                if clean is None:
                    csub = resolve(clean_key, spec.options.get(clean_key))[0]
                    clean, _, _ = _item_scores(csub, csub.rubric, items_of(csub), spec.samples, records[m],
                                               judged_by.get(judges_for(cfg, csub.rubric)[0], {})
                                               if csub.rubric is not None and judges_for(cfg, csub.rubric) else {})
                agg_input = scores + [msgspec.structs.replace(c, group={**c.group, "variant": "clean"}) for c in clean]
            if eng.unparseable == "zero":
                agg_input = zeroed(agg_input)
            metric = sub.aggregate(agg_input)
            models_doc[m] = _metric_doc(metric, missing, jstats if rubric is not None else None)
        values = {m: models_doc[m]["value"] for m in models}
        tb = ({m: models_doc[m]["breakdown"].get(eng.tie_break) for m in models} if eng.tie_break else None)
        out_subs[sub.key] = {"headline": sub.headline, "direction": sub.direction, "version": sub.version,
                             "judge": ranked_judge, "unparseable": eng.unparseable, "tie_break": eng.tie_break,
                             "models": models_doc, "ranks": competition_ranks(values, sub.direction, tb)}

    pillars_doc: dict[str, Any] = {}
    for p in registry.PILLARS:
        sub_ranks = {k: v["ranks"] for k, v in out_subs.items() if k.split("/")[0] == p}
        if sub_ranks:
            pillars_doc[p] = pillar_ranks(sub_ranks, models)
    return {"format": 1, "models": models, "unparseable": "exclude", "data": spec.data_dir or "builtin",
            "limit": spec.limit, "subtasks": out_subs, "pillars": pillars_doc, "usage": usage.to_dict(cfg),
            "skipped": dict(spec.skipped)}


def write_scores(directory: Path, scores: dict[str, Any]) -> Path:
    path = directory / SCORES_JSON
    tmp = path.with_name(f".{SCORES_JSON}.{os.getpid()}.tmp")
    tmp.write_bytes(orjson.dumps(scores, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
    os.replace(tmp, path)
    return path
