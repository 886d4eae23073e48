"""Builds the report's view model (engine/report/view.py) from what the loader read: pure.

What comes from where:
- rank table, radars, per-subtask tables: scores.json (ranks are never recomputed here);
- model groups: run.json config (adapter embedded / vllm / vllm-offline = local, else API);
- judge counts: scores.json per-model `judge` counts; agreement between judges: the judgment
  records, parsed with the subtask's rubric; keyword-vs-judge refusal agreement: the breakdown;
- run performance: run.json `lanes`; tokens: the records (every run of a resumed directory);
- drill-down: the records, scored again with the subtask's `score()` to put the worst first.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import msgspec
from msgspec import UnsetType

from adapters.registry import find as find_adapter
from engine.core.errors import ConfigError
from engine.core.records import ErrorInfo, JudgmentRecord, Message, Record
from engine.core.rundoc import Options, RunDoc, ScoresDoc, SubtaskScores
from engine.core.subtask import Judgment, Subtask
from engine.options import resolve
from engine.report.view import (
    BreakdownRow,
    BreakdownTable,
    Drill,
    DrillItem,
    DrillResponse,
    JudgeAgreement,
    JudgeCounts,
    JudgeText,
    KeywordAgreement,
    LanePerf,
    ModelInfo,
    ModelMetric,
    PillarBlock,
    PillarCell,
    Radar,
    RadarGroup,
    RadarSeries,
    RankCell,
    RankTable,
    Report,
    ReportInputs,
    ResponseCell,
    ResponseRow,
    ResponsesShown,
    RunInfo,
    SubtaskDetail,
    SubtaskRow,
    TokenUse,
)
from pillars import registry

TEXT_LIMIT = 3000  # characters of one prompt message / response / judgment shown in the drill-down


def model_infos(run: RunDoc, names: Sequence[str]) -> tuple[ModelInfo, ...]:
    """The run's models, API first then local, config order within each group."""
    cfg = _table(run.config, "models")
    infos = []
    for name in names:
        m = _table(cfg, name)
        adapter = str(m.get("adapter", "?"))
        infos.append(ModelInfo(name=name, group="local" if _is_local(adapter) else "api", adapter=adapter,
                               model_id=str(m.get("model") or name)))
    return tuple(sorted(infos, key=lambda i: i.group == "local"))


def _is_local(adapter: str) -> bool:
    """A local model process (its registry entry says so); an adapter not registered in this
    process (a module the run named in run.adapter_modules) counts as an API model."""
    entry = find_adapter(adapter)
    return entry is not None and entry.local


def _table(d: Mapping[str, object], key: str) -> Mapping[str, object]:
    """A sub-table of run.json's config (which the report reads as written, never re-validated)."""
    v = d.get(key)
    return v if isinstance(v, Mapping) else {}


def _subtask_order(spec_keys: Iterable[str], scored_keys: Iterable[str]) -> list[str]:
    """Registry (PROTOCOL.md §6) order; keys the registry does not know go last, in file order."""
    wanted = list(dict.fromkeys([*spec_keys, *scored_keys]))
    if not any(k.split("/")[0] in registry.PILLARS for k in wanted):
        return wanted  # custom items only: the registry knows none of them, and its import costs ~100 ms
    known = [s.key for s in registry.all_subtasks()]
    return [k for k in known if k in wanted] + [k for k in wanted if k not in known]


def _pillar_order(keys: Iterable[str]) -> list[str]:
    present = list(dict.fromkeys(k.split("/")[0] for k in keys))
    return [p for p in registry.PILLARS if p in present] + [p for p in present if p not in registry.PILLARS]


def rank_table(scores: ScoresDoc, spec_keys: Sequence[str], models: tuple[ModelInfo, ...]) -> RankTable:
    subs = scores.subtasks
    keys = _subtask_order(spec_keys, subs)
    blocks = []
    for pillar in _pillar_order(keys):
        rows = []
        for key in (k for k in keys if k.split("/")[0] == pillar):
            s = subs.get(key)
            cells = []
            for info in models:
                d = s.models.get(info.name) if s else None
                if s is None or d is None:
                    cells.append(RankCell(model=info.name, rank=None, value=None, scored=False))
                    continue
                ties = s.tied.get(info.name, []) if isinstance(s.tied, dict) else []
                cells.append(RankCell(model=info.name, rank=s.ranks.get(info.name), value=d.value, n=d.n, ci=d.ci,
                                      reason=d.why, tied=tuple(ties)))
            rows.append(SubtaskRow(key=key, pillar=pillar, subtask=key.partition("/")[2],
                                   headline=s.headline if s else None, direction=s.direction if s else None,
                                   scored=s is not None, cells=tuple(cells)))
        p = scores.pillars.get(pillar)
        pcells = tuple(PillarCell(model=i.name, rank=p.ranks.get(i.name), mean_subtask_rank=p.mean_subtask_rank.get(i.name))
                       for i in models) if p else ()
        blocks.append(PillarBlock(pillar=pillar, rows=tuple(rows), cells=pcells))
    return RankTable(models=models, blocks=tuple(blocks))


def radars(table: RankTable) -> tuple[Radar, ...]:
    """One axis per ranked pillar, every model's pillar ranks: one radar per model group when each
    group has at least two models, else one radar of all of them (ranks run over every model of the
    run either way; a group's lone polygon compares nothing)."""
    blocks = [b for b in table.blocks if b.cells]
    if not blocks:
        return ()
    names: tuple[RadarGroup, ...] = ("api", "local")
    split = [(g, idx) for g in names if (idx := [i for i, m in enumerate(table.models) if m.group == g])]
    if len(split) > 1 and min(len(idx) for _, idx in split) < 2:
        split = [("all", list(range(len(table.models))))]
    return tuple(Radar(group=group, axes=tuple(b.pillar for b in blocks), n_models=len(table.models),
                       series=tuple(RadarSeries(model=table.models[i].name, ranks=tuple(b.cells[i].rank for b in blocks))
                                    for i in idx))
                 for group, idx in split)


# --------------------------------------------------------------------------- per-subtask tables


def _flatten(d: Mapping[str, object], path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], str, object]]:
    """(path, leaf key, value) for every non-dict leaf of a nested dict, a dict's own leaves
    before those of its sub-dicts (a parent row comes before its children); lists are leaves."""
    for k, v in d.items():
        if not (isinstance(v, Mapping) and v):
            yield path, str(k), (None if isinstance(v, Mapping) else v)
    for k, v in d.items():
        if isinstance(v, Mapping) and v:
            yield from _flatten(v, (*path, str(k)))


def breakdown_tables(per_model: Sequence[tuple[str, Mapping[str, object]]]) -> tuple[BreakdownTable, ...]:
    """Nested breakdown dicts as small tables, aligned across models.

    - top-level scalars -> one "summary" table (a row per model);
    - top-level dicts of scalars (e.g. {"value", "ci", "n"}) -> one "entries" table, a row per
      (entry, model), a column per leaf key;
    - deeper dicts (by_method, by_attribute, cells, tiers) -> a table each, a row per (path, model).
    """
    kinds: dict[str, str] = {}
    rank = {"summary": 0, "entries": 1, "table": 2}
    for _, b in per_model:
        for k, v in b.items():
            kind = "summary"
            if isinstance(v, Mapping) and v:
                kind = "table" if any(isinstance(x, Mapping) and x for x in v.values()) else "entries"
            if rank[kind] >= rank[kinds.get(k, "summary")]:
                kinds[k] = kind
    tables: dict[str, tuple[list[str], list[BreakdownRow]]] = {}

    def add(title: str, label: str, model: str, cells: dict[str, object]) -> None:
        cols, rows = tables.setdefault(title, ([], []))
        cols.extend(c for c in cells if c not in cols)
        rows.append(BreakdownRow(label=label, model=model, cells=cells))

    for model, b in per_model:
        summary = {k: (None if isinstance(v, Mapping) else v) for k, v in b.items() if kinds[k] == "summary"}
        if summary:
            add("summary", "", model, summary)
        for k, v in b.items():
            kind = kinds[k]
            if kind == "entries":
                add("entries", k, model, dict(v) if isinstance(v, Mapping) else {"value": v})
            elif kind == "table":
                if not isinstance(v, Mapping) or not v:
                    add(k, "(all)", model, {"value": None if isinstance(v, Mapping) else v})
                    continue
                by_path: dict[tuple[str, ...], dict[str, object]] = {}
                for path, leaf, x in _flatten(v):
                    by_path.setdefault(path, {})[leaf] = x
                for path, cells in by_path.items():
                    add(k, " › ".join(path) or "(all)", model, cells)
    out = []
    for title, (cols, rows) in tables.items():
        order = list(dict.fromkeys(r.label for r in rows))  # group a path's rows together, models in order
        rows_sorted = sorted(rows, key=lambda r: order.index(r.label))
        out.append(BreakdownTable(title=title, columns=tuple(cols), rows=tuple(rows_sorted)))
    return tuple(out)


def _unparseable_policy(s: SubtaskScores) -> str:
    """What the value did with unparseable answers: [pillars."<key>"] unparseable, unless the subtask's
    own option counted them wrong after all (ethics' unreadable = "wrong", in each model's breakdown)."""
    if s.unparseable == "exclude" and any(m.breakdown.get("unreadable") == "wrong" for m in s.models.values()):
        return "wrong"
    return s.unparseable


def subtask_details(scores: ScoresDoc, models: tuple[ModelInfo, ...]) -> tuple[SubtaskDetail, ...]:
    subs = scores.subtasks
    out = []
    for key in _subtask_order((), subs):
        s = subs[key]
        metrics = []
        per_model = []
        for info in models:
            d = s.models.get(info.name)
            if d is None:
                continue
            metrics.append(ModelMetric(
                model=info.name, rank=s.ranks.get(info.name), value=d.value, n=d.n, n_scored=d.n_scored,
                n_unparseable=d.n_unparseable, n_failed=d.n_failed, n_missing=d.n_missing, ci=d.ci,
                judge=d.judge_stats, reason=d.why, ci_reason=d.ci_reason if isinstance(d.ci_reason, str) else None))
            if d.breakdown:
                per_model.append((info.name, d.breakdown))
        out.append(SubtaskDetail(key=key, headline=s.headline, direction=s.direction, version=s.version,
                                 judge=s.judge, metrics=tuple(metrics), breakdown=breakdown_tables(per_model),
                                 unparseable=_unparseable_policy(s), tie_break=s.tie_break,
                                 prompts=s.prompts if isinstance(s.prompts, str) else None,
                                 constrained=_flag(s.constrained), judge_constrained=_flag(s.judge_constrained),
                                 judge_hardened=_flag(s.judge_hardened)))
    return tuple(out)


def _flag(v: bool | UnsetType) -> bool | None:
    return v if isinstance(v, bool) else None


# --------------------------------------------------------------------------- judges


def cohen_kappa(a: Sequence[object], b: Sequence[object]) -> float | None:
    """Cohen's kappa of two raters; None when empty or when chance agreement is 1."""
    n = len(a)
    if n == 0 or n != len(b):
        return None
    po = sum(1 for x, y in zip(a, b) if x == y) / n
    pe = sum((a.count(c) / n) * (b.count(c) / n) for c in set(a) | set(b))
    if pe >= 1.0:
        return None
    return (po - pe) / (1 - pe)


def judgment_label(parsed: Mapping[str, object] | None) -> float | None:
    """One comparable label per parsed judgment: the only numeric field, or the rounded mean of
    several (booleans count as 0/1); None when there is no numeric field."""
    if not parsed:
        return None
    nums = [float(v) for v in parsed.values() if isinstance(v, (bool, int, float)) and not (
        isinstance(v, float) and math.isnan(v))]
    if not nums:
        return None
    return nums[0] if len(nums) == 1 else float(round(sum(nums) / len(nums)))


def judge_counts(scores: ScoresDoc) -> tuple[JudgeCounts, ...]:
    """scores.json's per-model judge counts, summed over models, for the ranked judge."""
    out = []
    for key in _subtask_order((), scores.subtasks):
        s = scores.subtasks[key]
        stats = [j for d in s.models.values() if (j := d.judge_stats) is not None]
        if not stats:
            continue
        out.append(JudgeCounts(subtask=key, judge=s.judge or "?", judged=sum(j.judged for j in stats),
                               unparseable=sum(j.unparseable for j in stats),
                               not_judged=sum(j.not_judged for j in stats), retried=sum(j.retried for j in stats)))
    return tuple(out)


def subtask_for(key: str, options: Options, data_dir: str | None = None) -> Subtask | None:
    """The subtask as the run configured it ([pillars."<key>"] options from run.json's spec, and the
    official prompts its data dir holds, so an official rubric's judgments match its version), or
    None when this code base does not know the key."""
    folder = Path(data_dir) if data_dir and Path(data_dir).is_dir() else None
    try:
        return resolve(key, options.get(key), folder)[0]
    except registry.UnknownSubtask:
        return None
    except ConfigError:  # options this code no longer takes: fall back to the defaults
        pass
    return registry.get(key)


def _rubric_owners(spec_keys: Sequence[str], options: Options,
                   data_dir: str | None = None) -> dict[tuple[str, str], Subtask]:
    """(generating subtask key, rubric name) -> the subtask that owns the rubric."""
    owners: dict[tuple[str, str], Subtask] = {}
    for key in spec_keys:
        sub = subtask_for(key, options, data_dir)
        if sub is None:
            continue
        if sub.rubric is not None:
            owners[(sub.generates_from, sub.rubric.name)] = sub
    return owners


Parsed = dict[str, dict[str, dict[str, Judgment | None]]]  # None: no parseable judge output


def parsed_judgments(judgments: Mapping[str, list[JudgmentRecord]], owners: Mapping[tuple[str, str], Subtask]) -> Parsed:
    """judge -> owning subtask key -> response key -> the first parseable output by try (None
    when no output was parseable), parsed with the owning subtask's rubric (matching version)."""
    out: Parsed = {}
    for judge, rows in judgments.items():
        got: dict[str, dict[str, Judgment | None]] = {}
        for j in sorted(rows, key=lambda r: r.try_):
            sub = owners.get((f"{j.pillar}/{j.subtask}", j.rubric))
            rubric = sub.rubric if sub is not None else None
            if sub is None or rubric is None or j.rubric_version != rubric.version:
                continue
            per = got.setdefault(sub.key, {})
            if per.get(j.response_key) is not None:
                continue
            per[j.response_key] = rubric.read(j.response.text) if j.response is not None else None
        out[judge] = got
    return out


def judge_agreement(parsed: Parsed, ranked: Mapping[str, str | None]) -> tuple[JudgeAgreement, ...]:
    """Cohen's kappa between a subtask's ranked judge and every other judge, on the responses
    both judged parseably (labels from `judgment_label`)."""
    out = []
    judges = list(parsed)
    keys = _subtask_order((), {k for per in parsed.values() for k in per})
    for key in keys:
        a = ranked.get(key) or judges[0]
        if key not in parsed.get(a, {}):
            continue
        for b in judges:
            if b == a or key not in parsed[b]:
                continue
            pairs = []
            for rk, pa in parsed[a][key].items():
                la, lb = judgment_label(pa), judgment_label(parsed[b][key].get(rk))
                if la is not None and lb is not None:
                    pairs.append((la, lb))
            if not pairs:  # e.g. free-text judge outputs: nothing to compare
                continue
            out.append(JudgeAgreement(
                subtask=key, judge_a=a, judge_b=b, n=len(pairs),
                share_agree=sum(1 for x, y in pairs if x == y) / len(pairs),
                kappa=cohen_kappa([x for x, _ in pairs], [y for _, y in pairs])))
    return tuple(out)


def keyword_agreement(scores: ScoresDoc) -> tuple[KeywordAgreement, ...]:
    out = []
    for key in _subtask_order((), scores.subtasks):
        for model, d in scores.subtasks[key].models.items():
            ag = d.breakdown.get("keyword_judge_agreement")
            if isinstance(ag, Mapping):
                out.append(KeywordAgreement(subtask=key, model=model, n=int(ag.get("n", 0)),
                                            share_agree=ag.get("share_agree"), kappa=ag.get("kappa"),
                                            keyword_rta=ag.get("keyword_rta"), judge_rta=ag.get("judge_rta")))
    return tuple(out)


# --------------------------------------------------------------------------- performance


def lanes(run: RunDoc) -> tuple[LanePerf, ...]:
    out = []
    for model, d in run.lane_map.items():
        lat = d.latency_s
        out.append(LanePerf(
            model=model, state=d.state, planned=d.planned, done=d.done, judged=d.judged,
            requests_per_s=d.requests_per_s, output_tokens_per_s=d.output_tokens_per_s,
            latency_p50=lat.p50, latency_p95=lat.p95, latency_p99=lat.p99,
            retries=d.retries, rate_limited=d.rate_limited, errors=dict(d.errors),
            wait_s=d.wait_s, busy_s=d.busy_s, wall_s=d.wall_s, tokens=msgspec.structs.asdict(d.tokens),
            cost=d.cost if not isinstance(d.cost, UnsetType) else None,
            invocations=d.invocations if not isinstance(d.invocations, UnsetType) else None,
            started_at=d.started_at if not isinstance(d.started_at, UnsetType) else None,
            ended_at=d.ended_at if not isinstance(d.ended_at, UnsetType) else None))
    return tuple(out)


def token_use(run: RunDoc, records: Mapping[str, list[Record]],
              judgments: Mapping[str, list[JudgmentRecord]], shown: ResponsesShown | None = None) -> tuple[TokenUse, ...]:
    """Tokens per model; of an --items run, from the loader's counts over every record (`records`
    holds only the shown items' records there)."""
    prices = _table(run.config, "prices")
    tallies = {t.model: t for t in shown.models} if shown is not None else {}
    out = []
    for model in dict.fromkeys([*records, *judgments]):
        rs = [r.response for r in records.get(model, ()) if r.response is not None]
        js = [j.response for j in judgments.get(model, ()) if j.response is not None]
        p, c = sum(r.usage.prompt_tokens for r in rs), sum(r.usage.completion_tokens for r in rs)
        n = len(records.get(model, ()))
        if (t := tallies.get(model)) is not None:
            p, c, n = t.prompt_tokens, t.completion_tokens, t.ok + t.failed
        jp, jc = sum(r.usage.prompt_tokens for r in js), sum(r.usage.completion_tokens for r in js)
        price = _table(prices, model)
        cost = saved = None
        if price:
            rates = (_float(price.get("input_per_mtok", 0)), _float(price.get("output_per_mtok", 0)))
            listed = ((p + jp) * rates[0] + (c + jc) * rates[1]) / 1e6
            batch = _batch_rates(_table(_table(run.config, "models"), model), price, rates)
            cost = listed if batch is None else ((p + jp) * batch[0] + (c + jc) * batch[1]) / 1e6
            saved = None if batch is None else listed - cost
        out.append(TokenUse(model=model, responses=n, prompt_tokens=p, completion_tokens=c,
                            judgments=len(judgments.get(model, ())), judge_prompt_tokens=jp,
                            judge_completion_tokens=jc, cost=cost, batch_saved=saved))
    return tuple(out)


def _batch_rates(model: Mapping[str, object], price: Mapping[str, object],
                 listed: tuple[float, float]) -> tuple[float, float] | None:
    """A batch lane's (input, output) price per million tokens (engine/costs.lane_price, from
    run.json as written); None when the model ran without `batch = true`."""
    if model.get("batch") is not True:
        return None
    entry = find_adapter(str(model.get("adapter")))
    factor = (entry.caps.batch_price_factor if entry is not None else None) or 1.0
    bi, bo = price.get("batch_input_per_mtok"), price.get("batch_output_per_mtok")
    return (_float(bi) if bi is not None else listed[0] * factor, _float(bo) if bo is not None else listed[1] * factor)


def _float(v: object) -> float:
    return float(v) if isinstance(v, (int, float, str)) else 0.0


# --------------------------------------------------------------------------- drill-down


def item_direction(sub: Subtask) -> str:
    """Which way a per-item value is better. Usually the headline's direction; a dispersion or
    drop headline (fairness std, robustness relative drop) aggregates per-item quality scores,
    where higher is better. A subtask can say so itself with extra["item_direction"]."""
    own = (sub.extra or {}).get("item_direction")
    if own in ("higher", "lower"):
        return own
    if any(w in sub.headline for w in ("std", "drop")):
        return "higher"
    return sub.direction


_STATUS_BADNESS = {"failed": 3, "unparseable": 2, "unknown": 1, "scored": 0, "missing": -1}


def responses(inputs: ReportInputs, models: Sequence[str]) -> tuple[ResponseRow, ...]:
    """A custom --items run: every (item, sample) the loader kept (the first RESPONSE_ROWS items) in
    file order with each model's response."""
    by_unit: dict[tuple[str, int], dict[str, Record]] = {}
    for model in models:
        for r in inputs.records.get(model, ()):
            by_unit.setdefault((r.item_id, r.sample), {}).setdefault(model, r)
    items = {k[2]: v for k, v in (inputs.items or {}).items()}  # file order
    ids = [*items, *sorted({i for i, _ in by_unit} - set(items))]
    samples = sorted({s for _, s in by_unit}) or [0]
    order = [(i, s) for i in ids for s in samples if (i, s) in by_unit or s == 0]
    rows = []
    for item_id, sample in order:
        got = by_unit.get((item_id, sample), {})
        item = items.get(item_id)
        cells = tuple(_cell(m, got.get(m)) for m in models)
        rows.append(ResponseRow(item_id=item_id, sample=sample, cells=cells,
                                prompt=_clip(item.messages[-1].content) if item and item.messages else None))
    return tuple(rows)


def _cell(model: str, rec: Record | None) -> ResponseCell:
    if rec is None:
        return ResponseCell(model=model, status="missing")
    if rec.response is None:
        return ResponseCell(model=model, status="failed")
    return ResponseCell(model=model, text=_clip(rec.response.text))


def _clip(text: str | None) -> str | None:
    if text is None or len(text) <= TEXT_LIMIT:
        return text
    return f"{text[:TEXT_LIMIT]}… [{len(text) - TEXT_LIMIT} more characters]"


def _error_text(e: ErrorInfo | None) -> str | None:
    return f"{e.kind} {e.status or ''} {e.message}".strip() if e is not None else None


def drilldown(inputs: ReportInputs, spec_keys: Sequence[str], models: Sequence[str],
              ranked: Mapping[str, str | None], parsed: Parsed, per_subtask: int,
              options: Options | None = None, data_dir: str | None = None) -> tuple[Drill, ...]:
    """For every subtask, up to `per_subtask` (item, sample) units, worst first: a failed or
    unparseable answer first, then the lowest (or, for lower-is-better values, highest) per-item
    score of any model; each with its prompt and every model's response and judge outputs.
    Every record is scored once; texts are copied for the chosen units only."""

    by_unit: dict[str, dict[tuple[str, str, int], Record]] = {}
    for model in models:
        for r in inputs.records.get(model, ()):
            by_unit.setdefault(f"{r.pillar}/{r.subtask}", {}).setdefault((model, r.item_id, r.sample), r)
    judged: dict[tuple[str, str], list[tuple[str, JudgmentRecord]]] = {}
    for jname, rows in inputs.judgments.items():
        for j in rows:
            judged.setdefault((j.response_key, j.rubric), []).append((jname, j))
    out = []
    for key in _subtask_order(spec_keys, ()):
        sub = subtask_for(key, options or {}, data_dir)
        if sub is None:
            continue
        gen = sub.generates_from
        units = by_unit.get(gen, {})
        if not units:
            continue
        rubric, judge, direction = sub.rubric, ranked.get(key), item_direction(sub)
        pillar, subtask = gen.split("/", 1)
        order: dict[tuple[str, int], int] = {}
        scored: dict[tuple[str, int], dict[str, tuple[Record, str, float | None, str | None]]] = {}
        worst: dict[tuple[str, int], tuple[int, float]] = {}
        for (model, item_id, sample), rec in units.items():
            u = (item_id, sample)
            order.setdefault(u, len(order))
            item = inputs.items.get((pillar, subtask, item_id)) if inputs.items is not None else None
            status, score, label = ("failed" if rec.response is None else "unknown"), None, None
            if item is not None:
                judgment = parsed.get(judge or "", {}).get(key, {}).get(rec.key) if rubric else None
                sc = sub.score(item, rec.response, judgment)
                status, score, label = sc.status, sc.value, sc.label
            bad = (_STATUS_BADNESS[status], 0.0 if score is None else (-score if direction == "higher" else score))
            worst[u] = max(worst.get(u, bad), bad)
            scored.setdefault(u, {})[model] = (rec, status, score, label)
        chosen = sorted(order, key=lambda u: (-worst[u][0], -worst[u][1], order[u]))[:per_subtask]
        items = []
        for u in chosen:
            responses = []
            for m in models:
                if m not in scored[u]:
                    responses.append(DrillResponse(model=m, status="missing"))
                    continue
                rec, status, score, label = scored[u][m]
                js = sorted(judged.get((rec.key, rubric.name), ()) if rubric else (),
                            key=lambda t: (t[0] != judge, t[0], t[1].try_))
                responses.append(DrillResponse(
                    model=m, status=status, score=score, label=label,
                    text=_clip(rec.response.text) if rec.response else None,
                    finish_reason=rec.response.finish_reason if rec.response else None,
                    error=_error_text(rec.error),
                    judgments=tuple(JudgeText(judge=jn, try_=j.try_, error=_error_text(j.error),
                                              text=_clip(j.response.text) if j.response else None)
                                    for jn, j in js)))
            item = inputs.items.get((pillar, subtask, u[0])) if inputs.items is not None else None
            items.append(DrillItem(item_id=u[0], sample=u[1],
                                   prompt=tuple(Message(role=msg.role, content=_clip(msg.content) or "")
                                                for msg in item.messages) if item else None,
                                   reference=item.reference if item else None, responses=tuple(responses)))
        how = ("worst first: failed, then unparseable, then by per-item score "
               f"({'lower' if direction == 'higher' else 'higher'} is worse) of any model")
        if inputs.items is None:
            how = "failed first, then record order (items could not be rebuilt, so nothing was re-scored)"
        out.append(Drill(subtask=key, total=len(order), items=tuple(items), order=how))
    return tuple(out)


# --------------------------------------------------------------------------- the report


def build_report(inputs: ReportInputs, *, per_subtask: int = 5, parsed: Parsed | None = None) -> Report:
    """`parsed`: the judgments as `parsed_judgments` reads them, when the caller has them already
    (report_for shares them with the item browser: parsing every verdict is the costly part)."""
    run, scores = inputs.run, inputs.scores
    spec = run.spec
    names = list((scores.models if scores else None) or spec.models or _table(run.config, "models"))
    models = model_infos(run, names)
    spec_keys = list(spec.subtasks)
    table = rank_table(scores, spec_keys, models) if scores else None
    ranked = {k: s.judge for k, s in scores.subtasks.items()} if scores else {}
    options = spec.options
    owners = _rubric_owners(list(dict.fromkeys([*spec_keys, *ranked])), options, spec.data_dir)
    if parsed is None:
        parsed = parsed_judgments(inputs.judgments, owners)
    notes = list(inputs.notes)
    shown = inputs.responses_shown
    if spec.items is not None and shown is not None and shown.truncated:
        notes.append(f"a custom --items run: custom items have no metric; the first {shown.shown} items' prompts and "
                     "responses are below")
    elif spec.items is not None:
        notes.append("a custom --items run: custom items have no metric; every prompt and model's response is below")
    elif scores is None:
        notes.append(f"no scores.json: ranks and metrics are not shown (run `python -m engine score {inputs.directory}`)")
    configured = _table(run.config, "judge").get("models")
    judges = tuple(dict.fromkeys([*(map(str, configured) if isinstance(configured, list) else ()),
                                  *inputs.judgments]))
    perf = lanes(run)
    # Lanes merged over invocations (run.json since they are): the run's span is the first start to
    # the last end; an older run.json keeps the last invocation's, as it always reported.
    first = run.history[0].started_at if run.history and any(ln.invocations for ln in perf) else None
    info = RunInfo(directory=inputs.directory, status=run.status, config_source=run.config_source,
                   started_at=first or run.started_at, ended_at=run.ended_at,
                   data=f"items file {spec.items}" if spec.items is not None
                   else (scores.data if scores else None) or spec.data_dir or "builtin",
                   limit=spec.limit, samples=spec.samples, judges=judges)
    return Report(
        title="TrustMH-Bench report", run=info, models=models, rank_table=table,
        radars=radars(table) if table else (),
        subtasks=subtask_details(scores, models) if scores else (),
        judge_counts=judge_counts(scores) if scores else (),
        judge_agreement=judge_agreement(parsed, ranked) if len(parsed) > 1 else (),
        keyword_agreement=keyword_agreement(scores) if scores else (),
        lanes=perf, tokens=token_use(run, inputs.records, inputs.judgments, shown),
        drilldown=drilldown(inputs, list(dict.fromkeys([*spec_keys, *ranked])), [m.name for m in models],
                            ranked, parsed, per_subtask, options, spec.data_dir) if per_subtask > 0 else (),
        notes=tuple(notes),
        responses=responses(inputs, [m.name for m in models]) if spec.items is not None else (),
        responses_shown=shown if spec.items is not None else None, progress=inputs.progress)
