"""The report model: everything `engine report` shows, as frozen msgspec Structs.

`build_report` is pure: it takes what the loader read (run.json, scores.json, the response and
judgment records, the items when they could be rebuilt) and returns a `Report`. The renderers
(markdown, html, svg) only format it; `--format json` encodes it as is.

What comes from where:
- rank table, radars, per-subtask tables: scores.json (ranks are never recomputed here);
- model groups: run.json config (adapter embedded / vllm / vllm-offline = local, else API);
- judge counts: scores.json per-model `judge` dicts; agreement between judges: the judgment
  records, parsed with the subtask's rubric; keyword-vs-judge refusal agreement: the breakdown;
- run performance: run.json `lanes`; tokens: the records (every run of a resumed directory);
- drill-down: the records, scored again with the subtask's `score()` to put the worst first.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Literal

import msgspec

from adapters import registry
from engine.core.records import Item, JudgmentRecord, Message, Record

TEXT_LIMIT = 3000  # characters of one prompt message / response / judgment shown in the drill-down

Group = Literal["api", "local"]


class ModelInfo(msgspec.Struct, frozen=True, kw_only=True):
    name: str  # the [models.<name>] key
    group: Group
    adapter: str
    model_id: str  # the id sent to the server


class RankCell(msgspec.Struct, frozen=True, kw_only=True):
    model: str
    rank: int | None
    value: float | None
    n: int | None = None
    ci: tuple[float, float] | None = None
    reason: str | None = None
    scored: bool = True  # False: the subtask (or this model) has no entry in scores.json


class SubtaskRow(msgspec.Struct, frozen=True, kw_only=True):
    key: str
    pillar: str
    subtask: str
    headline: str | None
    direction: str | None
    scored: bool
    cells: tuple[RankCell, ...]  # in RankTable.models order


class PillarCell(msgspec.Struct, frozen=True, kw_only=True):
    model: str
    rank: int | None
    mean_subtask_rank: float | None


class PillarBlock(msgspec.Struct, frozen=True, kw_only=True):
    pillar: str
    rows: tuple[SubtaskRow, ...]
    cells: tuple[PillarCell, ...]  # the pillar rank, in RankTable.models order; empty if unranked


class RankTable(msgspec.Struct, frozen=True, kw_only=True):
    models: tuple[ModelInfo, ...]  # API models first, then local ones (config order within)
    blocks: tuple[PillarBlock, ...]


class RadarSeries(msgspec.Struct, frozen=True, kw_only=True):
    model: str
    ranks: tuple[int | None, ...]  # one per axis


class Radar(msgspec.Struct, frozen=True, kw_only=True):
    group: Group
    axes: tuple[str, ...]  # pillar ids
    n_models: int  # ranks run 1..n_models (across every model of the run)
    series: tuple[RadarSeries, ...]


class ModelMetric(msgspec.Struct, frozen=True, kw_only=True):
    model: str
    rank: int | None
    value: float | None
    n: int = 0
    n_scored: int = 0
    n_unparseable: int = 0
    n_failed: int = 0
    n_missing: int = 0
    ci: tuple[float, float] | None = None
    reason: str | None = None
    judge: dict[str, int] | None = None


class BreakdownRow(msgspec.Struct, frozen=True, kw_only=True):
    label: str  # the path below the table's key ("" when the table is per model only)
    model: str
    cells: dict[str, Any]  # column -> value; an absent column is absent here


class BreakdownTable(msgspec.Struct, frozen=True, kw_only=True):
    title: str
    columns: tuple[str, ...]
    rows: tuple[BreakdownRow, ...]


class SubtaskDetail(msgspec.Struct, frozen=True, kw_only=True):
    key: str
    headline: str
    direction: str
    version: str | None
    judge: str | None
    metrics: tuple[ModelMetric, ...]
    breakdown: tuple[BreakdownTable, ...]
    unparseable: str | None = None  # "exclude" | "zero" ([pillars."<key>"] unparseable)
    tie_break: str | None = None  # breakdown key that orders equal values (higher first)


class JudgeCounts(msgspec.Struct, frozen=True, kw_only=True):
    subtask: str
    judge: str
    judged: int
    unparseable: int
    not_judged: int
    retried: int


class JudgeAgreement(msgspec.Struct, frozen=True, kw_only=True):
    subtask: str
    judge_a: str  # the ranked judge
    judge_b: str
    n: int  # responses both judges scored with a numeric label (> 0)
    share_agree: float
    kappa: float | None  # Cohen's kappa; None when undefined (both judges used one and the same label)


class KeywordAgreement(msgspec.Struct, frozen=True, kw_only=True):
    subtask: str
    model: str
    n: int
    share_agree: float | None = None
    kappa: float | None = None
    keyword_rta: float | None = None
    judge_rta: float | None = None


class LanePerf(msgspec.Struct, frozen=True, kw_only=True):
    model: str
    state: str | None
    planned: int | None
    done: int | None
    judged: int | None
    requests_per_s: float | None
    output_tokens_per_s: float | None
    latency_p50: float | None
    latency_p95: float | None
    latency_p99: float | None
    retries: int | None
    rate_limited: int | None
    errors: dict[str, int]
    wait_s: float | None
    busy_s: float | None
    wall_s: float | None
    tokens: dict[str, int]
    cost: float | None = None


class TokenUse(msgspec.Struct, frozen=True, kw_only=True):
    model: str
    responses: int
    prompt_tokens: int
    completion_tokens: int
    judgments: int
    judge_prompt_tokens: int
    judge_completion_tokens: int
    cost: float | None = None  # from config [prices.<model>] when set


class JudgeText(msgspec.Struct, frozen=True, kw_only=True):
    judge: str
    try_: int = msgspec.field(name="try")
    text: str | None = None
    error: str | None = None


class DrillResponse(msgspec.Struct, frozen=True, kw_only=True):
    model: str
    status: str  # scored | unparseable | failed | missing | unknown (not scorable here)
    score: float | None = None
    label: str | None = None
    text: str | None = None
    finish_reason: str | None = None
    error: str | None = None
    judgments: tuple[JudgeText, ...] = ()


class DrillItem(msgspec.Struct, frozen=True, kw_only=True):
    item_id: str
    sample: int
    prompt: tuple[Message, ...] | None  # None when the items could not be rebuilt
    reference: Any = None
    responses: tuple[DrillResponse, ...] = ()


class Drill(msgspec.Struct, frozen=True, kw_only=True):
    subtask: str
    total: int  # (item, sample) units with at least one record
    items: tuple[DrillItem, ...]
    order: str  # how the sample was chosen


class RunInfo(msgspec.Struct, frozen=True, kw_only=True):
    directory: str
    status: str | None
    config_source: str | None
    started_at: float | None
    ended_at: float | None
    data: str | None
    limit: int | None
    samples: int | None
    judges: tuple[str, ...]


class Report(msgspec.Struct, frozen=True, kw_only=True):
    format: int = 1
    title: str
    run: RunInfo
    models: tuple[ModelInfo, ...]
    rank_table: RankTable | None
    radars: tuple[Radar, ...]
    subtasks: tuple[SubtaskDetail, ...]
    judge_counts: tuple[JudgeCounts, ...]
    judge_agreement: tuple[JudgeAgreement, ...]
    keyword_agreement: tuple[KeywordAgreement, ...]
    lanes: tuple[LanePerf, ...]
    tokens: tuple[TokenUse, ...]
    drilldown: tuple[Drill, ...]
    notes: tuple[str, ...]


class ReportInputs(msgspec.Struct, frozen=True, kw_only=True):
    """What the loader read from a run directory. `items` is None when they could not be rebuilt
    (data dir absent on this machine, a custom --items run); `notes` carries why."""

    directory: str
    run: dict[str, Any]
    scores: dict[str, Any] | None
    records: dict[str, list[Record]]  # model -> responses
    judgments: dict[str, list[JudgmentRecord]]  # judge -> judge outputs
    items: dict[tuple[str, str, str], Item] | None
    notes: tuple[str, ...] = ()


# --------------------------------------------------------------------------- models and ranks


def model_infos(run: Mapping[str, Any], names: Sequence[str]) -> tuple[ModelInfo, ...]:
    """The run's models, API first then local, config order within each group."""
    cfg = run.get("config", {}).get("models", {})
    infos = []
    for name in names:
        m = cfg.get(name, {})
        adapter = str(m.get("adapter", "?"))
        infos.append(ModelInfo(name=name, group="local" if _is_local(adapter) else "api", adapter=adapter,
                               model_id=str(m.get("model") or name)))
    return tuple(sorted(infos, key=lambda i: i.group == "local"))


def _is_local(adapter: str) -> bool:
    """A local model process (its registry entry says so); an adapter not registered in this
    process (a module the run named in run.adapter_modules) counts as an API model."""
    entry = registry.find(adapter)
    return entry is not None and entry.local


def _ci(v: Any) -> tuple[float, float] | None:
    if isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(x, (int, float)) for x in v):
        return (float(v[0]), float(v[1]))
    return None


def _subtask_order(spec_keys: Iterable[str], scored_keys: Iterable[str]) -> list[str]:
    """Registry (PROTOCOL.md §6) order; keys the registry does not know go last, in file order."""
    from pillars import registry

    wanted = list(dict.fromkeys([*spec_keys, *scored_keys]))
    known = [s.key for s in registry.all_subtasks()]
    return [k for k in known if k in wanted] + [k for k in wanted if k not in known]


def _pillar_order(keys: Iterable[str]) -> list[str]:
    from pillars.registry import PILLARS

    present = list(dict.fromkeys(k.split("/")[0] for k in keys))
    return [p for p in PILLARS if p in present] + [p for p in present if p not in PILLARS]


def rank_table(scores: Mapping[str, Any], spec_keys: Sequence[str], models: tuple[ModelInfo, ...]) -> RankTable:
    subs = scores.get("subtasks", {})
    keys = _subtask_order(spec_keys, subs)
    blocks = []
    for pillar in _pillar_order(keys):
        rows = []
        for key in (k for k in keys if k.split("/")[0] == pillar):
            s = subs.get(key)
            cells = []
            for info in models:
                d = s["models"].get(info.name) if s else None
                if d is None:
                    cells.append(RankCell(model=info.name, rank=None, value=None, scored=False))
                    continue
                cells.append(RankCell(model=info.name, rank=s.get("ranks", {}).get(info.name), value=d.get("value"),
                                      n=d.get("n"), ci=_ci(d.get("ci")), reason=d.get("reason")))
            rows.append(SubtaskRow(key=key, pillar=pillar, subtask=key.partition("/")[2],
                                   headline=s.get("headline") if s else None,
                                   direction=s.get("direction") if s else None, scored=s is not None,
                                   cells=tuple(cells)))
        p = scores.get("pillars", {}).get(pillar)
        pcells = tuple(PillarCell(model=i.name, rank=p.get("ranks", {}).get(i.name),
                                  mean_subtask_rank=p.get("mean_subtask_rank", {}).get(i.name))
                       for i in models) if p else ()
        blocks.append(PillarBlock(pillar=pillar, rows=tuple(rows), cells=pcells))
    return RankTable(models=models, blocks=tuple(blocks))


def radars(table: RankTable) -> tuple[Radar, ...]:
    """One radar per model group; one axis per ranked pillar; every model's pillar ranks."""
    blocks = [b for b in table.blocks if b.cells]
    if not blocks:
        return ()
    out = []
    for group in ("api", "local"):
        idx = [i for i, m in enumerate(table.models) if m.group == group]
        if not idx:
            continue
        series = tuple(RadarSeries(model=table.models[i].name, ranks=tuple(b.cells[i].rank for b in blocks))
                       for i in idx)
        out.append(Radar(group=group, axes=tuple(b.pillar for b in blocks), n_models=len(table.models),
                         series=series))
    return tuple(out)


# --------------------------------------------------------------------------- per-subtask tables


def _flatten(d: Mapping[str, Any], path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], str, Any]]:
    """(path, leaf key, value) for every non-dict leaf of a nested dict, a dict's own leaves
    before those of its sub-dicts (a parent row comes before its children); lists are leaves."""
    for k, v in d.items():
        if not (isinstance(v, Mapping) and v):
            yield path, str(k), (None if isinstance(v, Mapping) else v)
    for k, v in d.items():
        if isinstance(v, Mapping) and v:
            yield from _flatten(v, (*path, str(k)))


def breakdown_tables(per_model: Sequence[tuple[str, Mapping[str, Any]]]) -> tuple[BreakdownTable, ...]:
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

    def add(title: str, label: str, model: str, cells: dict[str, Any]) -> None:
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
                by_path: dict[tuple[str, ...], dict[str, Any]] = {}
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


def subtask_details(scores: Mapping[str, Any], models: tuple[ModelInfo, ...]) -> tuple[SubtaskDetail, ...]:
    subs = scores.get("subtasks", {})
    out = []
    for key in _subtask_order((), subs):
        s = subs[key]
        metrics = []
        per_model = []
        for info in models:
            d = s["models"].get(info.name)
            if d is None:
                continue
            metrics.append(ModelMetric(
                model=info.name, rank=s.get("ranks", {}).get(info.name), value=d.get("value"), n=d.get("n", 0),
                n_scored=d.get("n_scored", 0), n_unparseable=d.get("n_unparseable", 0),
                n_failed=d.get("n_failed", 0), n_missing=d.get("n_missing", 0), ci=_ci(d.get("ci")),
                reason=d.get("reason"), judge=d.get("judge")))
            if d.get("breakdown"):
                per_model.append((info.name, d["breakdown"]))
        out.append(SubtaskDetail(key=key, headline=s.get("headline", "?"), direction=s.get("direction", "?"),
                                 version=s.get("version"), judge=s.get("judge"), metrics=tuple(metrics),
                                 breakdown=breakdown_tables(per_model), unparseable=s.get("unparseable"),
                                 tie_break=s.get("tie_break")))
    return tuple(out)


# --------------------------------------------------------------------------- judges


def cohen_kappa(a: Sequence[Any], b: Sequence[Any]) -> float | None:
    """Cohen's kappa of two raters; None when empty or when chance agreement is 1."""
    n = len(a)
    if n == 0 or n != len(b):
        return None
    po = sum(1 for x, y in zip(a, b) if x == y) / n
    pe = sum((a.count(c) / n) * (b.count(c) / n) for c in set(a) | set(b))
    if pe >= 1.0:
        return None
    return (po - pe) / (1 - pe)


def judgment_label(parsed: Mapping[str, Any] | None) -> float | None:
    """One comparable label per parsed judgment: the only numeric field, or the rounded mean of
    several (booleans count as 0/1); None when there is no numeric field."""
    if not parsed:
        return None
    nums = [float(v) for v in parsed.values() if isinstance(v, (bool, int, float)) and not (
        isinstance(v, float) and math.isnan(v))]
    if not nums:
        return None
    return nums[0] if len(nums) == 1 else float(round(sum(nums) / len(nums)))


def judge_counts(scores: Mapping[str, Any]) -> tuple[JudgeCounts, ...]:
    """scores.json's per-model judge dicts, summed over models, for the ranked judge."""
    out = []
    for key in _subtask_order((), scores.get("subtasks", {})):
        s = scores["subtasks"][key]
        dicts = [d["judge"] for d in s["models"].values() if d.get("judge")]
        if not dicts:
            continue
        tot = {f: sum(int(d.get(f, 0)) for d in dicts) for f in ("judged", "unparseable", "not_judged", "retried")}
        out.append(JudgeCounts(subtask=key, judge=str(s.get("judge") or "?"), **tot))
    return tuple(out)


def subtask_for(key: str, options: Mapping[str, Any]) -> Any | None:
    """The subtask as the run configured it ([pillars."<key>"] options from run.json's spec), or
    None when this code base does not know the key."""
    from engine.core.errors import ConfigError
    from engine.options import resolve
    from pillars import registry

    try:
        return resolve(key, options.get(key))[0]
    except registry.UnknownSubtask:
        return None
    except ConfigError:  # options this code no longer takes: fall back to the defaults
        pass
    return registry.get(key)


def _rubric_owners(spec_keys: Sequence[str], options: Mapping[str, Any]) -> dict[tuple[str, str], Any]:
    """(generating subtask key, rubric name) -> the subtask that owns the rubric."""
    owners: dict[tuple[str, str], Any] = {}
    for key in spec_keys:
        sub = subtask_for(key, options)
        if sub is None:
            continue
        if sub.rubric is not None:
            owners[(sub.generates_from, sub.rubric.name)] = sub
    return owners


Parsed = dict[str, dict[str, dict[str, dict[str, Any] | None]]]


def parsed_judgments(judgments: Mapping[str, list[JudgmentRecord]], owners: Mapping[tuple[str, str], Any]) -> Parsed:
    """judge -> owning subtask key -> response key -> the first parseable output by try (None
    when no output was parseable), parsed with the owning subtask's rubric (matching version)."""
    out: Parsed = {}
    for judge, rows in judgments.items():
        got: dict[str, dict[str, dict[str, Any] | None]] = {}
        for j in sorted(rows, key=lambda r: r.try_):
            sub = owners.get((f"{j.pillar}/{j.subtask}", j.rubric))
            if sub is None or j.rubric_version != sub.rubric.version:
                continue
            per = got.setdefault(sub.key, {})
            if per.get(j.response_key) is not None:
                continue
            per[j.response_key] = sub.rubric.parse(j.response.text) if j.response is not None else None
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


def keyword_agreement(scores: Mapping[str, Any]) -> tuple[KeywordAgreement, ...]:
    out = []
    for key in _subtask_order((), scores.get("subtasks", {})):
        for model, d in scores["subtasks"][key]["models"].items():
            ag = (d.get("breakdown") or {}).get("keyword_judge_agreement")
            if isinstance(ag, Mapping):
                out.append(KeywordAgreement(subtask=key, model=model, n=int(ag.get("n", 0)),
                                            share_agree=ag.get("share_agree"), kappa=ag.get("kappa"),
                                            keyword_rta=ag.get("keyword_rta"), judge_rta=ag.get("judge_rta")))
    return tuple(out)


# --------------------------------------------------------------------------- performance


def lanes(run: Mapping[str, Any]) -> tuple[LanePerf, ...]:
    out = []
    for model, d in (run.get("lanes") or {}).items():
        lat = d.get("latency_s") or {}
        out.append(LanePerf(
            model=model, state=d.get("state"), planned=d.get("planned"), done=d.get("done"), judged=d.get("judged"),
            requests_per_s=d.get("requests_per_s"), output_tokens_per_s=d.get("output_tokens_per_s"),
            latency_p50=lat.get("p50"), latency_p95=lat.get("p95"), latency_p99=lat.get("p99"),
            retries=d.get("retries"), rate_limited=d.get("rate_limited"), errors=dict(d.get("errors") or {}),
            wait_s=d.get("wait_s"), busy_s=d.get("busy_s"), wall_s=d.get("wall_s"),
            tokens=dict(d.get("tokens") or {}), cost=d.get("cost")))
    return tuple(out)


def token_use(run: Mapping[str, Any], records: Mapping[str, list[Record]],
              judgments: Mapping[str, list[JudgmentRecord]]) -> tuple[TokenUse, ...]:
    prices = run.get("config", {}).get("prices") or {}
    out = []
    for model in dict.fromkeys([*records, *judgments]):
        rs = [r.response for r in records.get(model, ()) if r.response is not None]
        js = [j.response for j in judgments.get(model, ()) if j.response is not None]
        p, c = sum(r.usage.prompt_tokens for r in rs), sum(r.usage.completion_tokens for r in rs)
        jp, jc = sum(r.usage.prompt_tokens for r in js), sum(r.usage.completion_tokens for r in js)
        price = prices.get(model)
        cost = None
        if price:
            cost = ((p + jp) * float(price.get("input_per_mtok", 0))
                    + (c + jc) * float(price.get("output_per_mtok", 0))) / 1e6
        out.append(TokenUse(model=model, responses=len(records.get(model, ())), prompt_tokens=p, completion_tokens=c,
                            judgments=len(judgments.get(model, ())), judge_prompt_tokens=jp,
                            judge_completion_tokens=jc, cost=cost))
    return tuple(out)


# --------------------------------------------------------------------------- drill-down


def item_direction(sub: Any) -> str:
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


def _clip(text: str | None) -> str | None:
    if text is None or len(text) <= TEXT_LIMIT:
        return text
    return f"{text[:TEXT_LIMIT]}… [{len(text) - TEXT_LIMIT} more characters]"


def _error_text(e: Any) -> str | None:
    return f"{e.kind} {e.status or ''} {e.message}".strip() if e is not None else None


def drilldown(inputs: ReportInputs, spec_keys: Sequence[str], models: Sequence[str],
              ranked: Mapping[str, str | None], parsed: Parsed, per_subtask: int,
              options: Mapping[str, Any] | None = None) -> tuple[Drill, ...]:
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
        sub = subtask_for(key, options or {})
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


def build_report(inputs: ReportInputs, *, per_subtask: int = 5) -> Report:
    run, scores = inputs.run, inputs.scores
    spec = run.get("spec") or {}
    names = list((scores or {}).get("models") or spec.get("models") or run.get("config", {}).get("models", {}))
    models = model_infos(run, names)
    spec_keys = list(spec.get("subtasks") or ())
    table = rank_table(scores, spec_keys, models) if scores else None
    ranked = {k: s.get("judge") for k, s in (scores or {}).get("subtasks", {}).items()}
    options = spec.get("options") or {}
    owners = _rubric_owners(list(dict.fromkeys([*spec_keys, *ranked])), options)
    parsed = parsed_judgments(inputs.judgments, owners)
    notes = list(inputs.notes)
    if scores is None:
        notes.append("no scores.json: ranks and metrics are not shown (run `python -m engine score DIR`)")
    cfg = run.get("config", {})
    judges = tuple(dict.fromkeys([*(cfg.get("judge", {}).get("models") or ()), *inputs.judgments]))
    info = RunInfo(directory=inputs.directory, status=run.get("status"), config_source=run.get("config_source"),
                   started_at=run.get("started_at"), ended_at=run.get("ended_at"),
                   data=(scores or {}).get("data") or spec.get("data_dir") or "builtin",
                   limit=spec.get("limit"), samples=spec.get("samples"), judges=judges)
    return Report(
        title="TrustMH-Bench report", run=info, models=models, rank_table=table,
        radars=radars(table) if table else (),
        subtasks=subtask_details(scores, models) if scores else (),
        judge_counts=judge_counts(scores) if scores else (),
        judge_agreement=judge_agreement(parsed, ranked) if len(parsed) > 1 else (),
        keyword_agreement=keyword_agreement(scores) if scores else (),
        lanes=lanes(run), tokens=token_use(run, inputs.records, inputs.judgments),
        drilldown=drilldown(inputs, list(dict.fromkeys([*spec_keys, *ranked])), [m.name for m in models],
                            ranked, parsed, per_subtask, options) if per_subtask > 0 else (),
        notes=tuple(notes))


# --------------------------------------------------------------------------- formatting (shared by renderers)


def fmt_num(v: Any, digits: int = 3) -> str:
    """Numbers as every renderer prints them: ints as is, floats with `digits` decimals."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v) or math.isinf(v):
            return str(v)
        return f"{v:.{digits}f}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(fmt_num(x, digits) for x in v) + "]"
    return str(v)


def fmt_cost(v: float | None) -> str:
    """Costs in the price's currency: 4 decimals below 1, else 2."""
    if v is None:
        return ""
    return f"{v:.4f}" if abs(v) < 1 else f"{v:.2f}"


def fmt_ci(ci: tuple[float, float] | None) -> str:
    return "" if ci is None else f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def fmt_time(ts: float | None) -> str:
    if ts is None:
        return ""
    import datetime as dt

    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def fmt_policy(unparseable: str | None, tie_break: str | None) -> str:
    """The subtask's scoring options in words ("" when they are the defaults or unknown)."""
    parts = []
    if unparseable == "zero":
        parts.append("unparseable answers count as 0")
    elif unparseable == "exclude":
        parts.append("unparseable answers excluded")
    if tie_break:
        parts.append(f"equal values ordered by {tie_break} (higher first)")
    return "; ".join(parts)


def fmt_span(started: float | None, ended: float | None) -> str:
    """"started X, ended Y" with whatever is known."""
    parts = [f"started {fmt_time(started)}" if started else "", f"ended {fmt_time(ended)}" if ended else ""]
    return ", ".join(p for p in parts if p)


def rank_colour(rank: int | None, n_models: int) -> str:
    """Rank 1 green, the last rank red, through yellow (a light RdYlGn, readable under black text)."""
    if rank is None:
        return "#e5e5e5"
    t = 0.0 if n_models <= 1 else min(max((rank - 1) / (n_models - 1), 0.0), 1.0)
    stops = ((0.0, (0x66, 0xBD, 0x63)), (0.5, (0xFF, 0xFF, 0xBF)), (1.0, (0xF4, 0x6D, 0x43)))
    for (t0, c0), (t1, c1) in zip(stops, stops[1:]):
        if t <= t1:
            f = (t - t0) / (t1 - t0)
            return "#" + "".join(f"{round(a + (b - a) * f):02x}" for a, b in zip(c0, c1))
    return "#f46d43"
