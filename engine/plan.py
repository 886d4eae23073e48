"""`plan CONFIG.toml`: before any call, what a run will send: where the items come from, requests
per model × pillar (judge included) with subtotals, estimated tokens and cost per model, and how
long each lane takes: an API lane at best under its rate limits, a local lane at the throughput
measured in earlier runs (engine/throughput.py).

Estimates are upper bounds of the same kind the limiter charges: the prompt counted by the model's
tokenizer where one works offline, else estimated (engine/tokens.py; each model's line says which),
and a completion of the full max_tokens. Requests already answered in `--output` are left out, so
the plan of a resumed run shows what is left.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from adapters import registry
from adapters.registry import make_adapter
from engine.config import Config
from engine.core.fence import PLAN_NONCE
from engine.core.rundoc import LaneSummary, RunSpec
from engine.costs import cost, lane_price
from engine.gpus import render_placement
from engine.items import ItemFactory
from engine.requery import requery_limits
from engine.run.judge import judge_params
from engine.run.units import estimate_tokens, lane_units
from engine.spec import item_factory, judges_for, rubrics_by_source, subtasks
from engine.store.checkpoint import scan_responses
from engine.store.keyset import KeySet
from engine.store.rundoc_io import read_run_if_any
from engine.throughput import Throughput, measured
from engine.tokens import counter_for


@dataclass
class Cell:
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass
class Plan:
    cells: dict[tuple[str, str, str], Cell] = field(default_factory=lambda: defaultdict(Cell))  # (model, role, pillar)
    done: dict[str, int] = field(default_factory=dict)
    requery: dict[str, int] = field(default_factory=dict)  # subtask -> extra samples per unparseable answer
    prompts: dict[str, str] = field(default_factory=dict)  # subtask -> "official" | "own"
    skipped: dict[str, str] = field(default_factory=dict)  # subtask -> why (no data)
    source: str = ""  # where the items come from, and how many
    estimators: dict[str, str] = field(default_factory=dict)  # model -> how its prompt tokens are counted
    rates: dict[str, Throughput] = field(default_factory=dict)  # local model -> measured throughput

    def add(self, model: str, role: str, pillar: str, prompt: int, completion: int) -> None:
        c = self.cells[(model, role, pillar)]
        c.requests += 1
        c.prompt_tokens += prompt
        c.completion_tokens += completion


def build_plan(cfg: Config, spec: RunSpec, out: Path | None) -> Plan:
    plan = Plan()
    factory = item_factory(spec)
    subs = subtasks(spec)
    plan.requery = requery_limits(subs, spec.options)
    plan.prompts = {s.key: s.prompts for s in subs}
    plan.skipped = dict(spec.skipped)
    plan.source = _source(spec, factory)
    doc = read_run_if_any(out) if out is not None else None
    earlier: dict[str, LaneSummary] = doc.lane_map if doc is not None else {}
    for name in dict.fromkeys([*spec.models, *cfg.judge.models]):
        plan.estimators[name] = counter_for(cfg.models[name], name).name
        rate = measured(cfg, name, earlier) if registry.entry(cfg.models[name].adapter).local else None
        if rate is not None:
            plan.rates[name] = rate
    by_source = rubrics_by_source(subs)
    for name in spec.models:
        adapter, _ = make_adapter(name, cfg.models[name], Path("."), with_secrets=False)
        done = KeySet()
        if out is not None:
            done = scan_responses(out / "responses" / f"{name}.jsonl").done
        skipped = 0
        for u in lane_units(name, cfg.models[name], adapter, factory, spec.samples):
            if u.key in done:
                skipped += 1
                continue
            plan.add(name, "target", u.item.pillar, u.est_tokens - u.max_out, u.max_out)
            if u.item.metadata.get("judge") is False:
                continue
            for _, rubric in by_source.get(f"{u.item.pillar}/{u.item.subtask}", ()):
                for judge in judges_for(cfg, rubric):
                    params = judge_params(cfg, cfg.models[judge], rubric)
                    # The judged text is at most the target's max_tokens long (~4 chars a token).
                    jitem = type(u.item)(id=u.item.id, pillar=u.item.pillar, subtask=u.item.subtask,
                                         messages=rubric.build(u.item, "x" * (4 * u.max_out),
                                                               PLAN_NONCE if rubric.hardened else None))
                    est = estimate_tokens(jitem, params, counter_for(cfg.models[judge], judge))
                    plan.add(judge, "judge", u.item.pillar, est - (params.max_tokens or 0), params.max_tokens or 0)
        plan.done[name] = skipped
    return plan


def _source(spec: RunSpec, factory: ItemFactory) -> str:
    """The plan's first line: where the items come from, and how many."""
    per_subtask: dict[str, int] = defaultdict(int)
    for w in factory():
        per_subtask[f"{w.item.pillar}/{w.item.subtask}"] += 1
    n, k = sum(per_subtask.values()), len(per_subtask)
    limit = f", --limit {spec.limit}" if spec.limit else ""
    if spec.items is not None:
        return f"items: items file {spec.items}: {n} items{limit or ' (every line)'}"
    if spec.data_dir is not None:
        return f"items: official data in {spec.data_dir}: {n} prompts over {k} subtasks{limit}"
    return (f"items: built-in demo items (bench_data/, not the paper's data; --data-dir DIR for the official "
            f"data): {n} prompts over {k} subtasks{limit}")


def render_plan(cfg: Config, plan: Plan, verbose: bool = False) -> list[str]:
    lines = [plan.source, ""]
    lines += _pivot(plan)
    if verbose:
        lines += ["", *_flat(cfg, plan)]
    lines.append("")
    per_model: dict[str, Cell] = defaultdict(Cell)
    for (model, _, _), c in plan.cells.items():
        m = per_model[model]
        m.requests += c.requests
        m.prompt_tokens += c.prompt_tokens
        m.completion_tokens += c.completion_tokens
    total_cost, unpriced, slowest = 0.0, set(), 0.0
    for model, c in sorted(per_model.items()):
        usd = cost(lane_price(cfg, model), c.prompt_tokens, c.completion_tokens)
        if usd is None:
            unpriced.add(model)
        else:
            total_cost += usd
        minutes, how = _time(cfg, plan, model, c)
        slowest = max(slowest, minutes or 0.0)
        lines.append(f"{model}: {c.requests} requests ({plan.done.get(model, 0)} already done), "
                     f"{c.prompt_tokens} prompt tokens ({plan.estimators.get(model, '')}) + at most "
                     f"{c.completion_tokens} out; " + (f"${usd:.4f}; " if usd is not None else "") + how)
    for key, n in sorted(plan.requery.items()):
        lines.append(f"{key}: an unparseable answer is re-queried up to {n} more times (not in the counts above)")
    lines += _protocol_lines(plan)
    lines.append(f"total: estimated cost ${total_cost:.4f}" + (f" (no [prices] for {', '.join(sorted(unpriced))})" if unpriced else ""))
    if slowest:
        lines.append(f"the slowest lane needs {slowest:.1f} min at best; lanes run concurrently, so that bounds the run")
    models = list(dict.fromkeys([*plan.done, *(m for m, _, _ in plan.cells)]))
    working = {m for (m, _, _), c in plan.cells.items() if c.requests}
    lines += render_placement(cfg, models, {m for m in models if m not in working})
    return lines


def _time(cfg: Config, plan: Plan, model: str, c: Cell) -> tuple[float | None, str]:
    """(minutes, how that was found): a local lane at its measured throughput, an API lane at best
    under its rate limits."""
    mc = cfg.models[model]
    if registry.entry(mc.adapter).local:
        rate = plan.rates.get(model)
        if rate is None:
            return None, "time: no throughput measured yet for this model (a run records it)"
        minutes = (c.prompt_tokens + c.completion_tokens) / rate.tokens_per_s / 60
        return minutes, (f"about {minutes:.1f} min at most at the {rate.tokens_per_s:.0f} tokens/s measured "
                         f"over {rate.requests} requests of an earlier run")
    if mc.batch:
        return None, (f"batch lane: each batch within its {mc.batch_window} completion window (usually much "
                      "sooner), one after another; rate limits do not apply")
    bounds = []
    if mc.requests_per_minute:
        bounds.append(c.requests / mc.requests_per_minute)
    if mc.tokens_per_minute:
        bounds.append((c.prompt_tokens + c.completion_tokens) / mc.tokens_per_minute)
    if not bounds:
        return None, "no rate limit configured"
    best = max(bounds)
    return best, f"rate limits allow it in {best:.1f} min ({best * 60:.0f} s) at best"


def _pivot(plan: Plan) -> list[str]:
    """Requests per model and role (rows) × pillar (columns), with a total row and column."""
    pillars = sorted({p for _, _, p in plan.cells})
    rows = sorted({(m, r) for m, r, _ in plan.cells}, key=lambda t: (t[0], t[1] != "target"))
    width = max([len(f"{m} {r}") for m, r in rows] + [8])
    cols = [max(len(p), 6) for p in pillars]
    head = f"{'requests':{width}} " + " ".join(f"{p:>{w}}" for p, w in zip(pillars, cols)) + f" {'total':>8}"
    out = [head]
    col_total = [0] * len(pillars)
    for m, r in rows:
        counts = [plan.cells[(m, r, p)].requests if (m, r, p) in plan.cells else 0 for p in pillars]
        col_total = [a + b for a, b in zip(col_total, counts)]
        out.append(f"{m + ' ' + r:{width}} " + " ".join(f"{n:>{w}}" for n, w in zip(counts, cols))
                   + f" {sum(counts):>8}")
    out.append(f"{'total':{width}} " + " ".join(f"{n:>{w}}" for n, w in zip(col_total, cols))
               + f" {sum(col_total):>8}")
    return out


def _flat(cfg: Config, plan: Plan) -> list[str]:
    """--verbose: one row per model, role and pillar, with tokens and cost."""
    lines = [f"{'model':18} {'role':7} {'pillar':18} {'requests':>9} {'prompt tok':>11} {'max out tok':>12} {'cost USD':>10}"]
    for (model, role, pillar), c in sorted(plan.cells.items()):
        usd = cost(lane_price(cfg, model), c.prompt_tokens, c.completion_tokens)
        lines.append(f"{model:18} {role:7} {pillar:18} {c.requests:>9} {c.prompt_tokens:>11} {c.completion_tokens:>12} "
                     f"{f'{usd:.4f}' if usd is not None else '-':>10}")
    return lines


def _protocol_lines(plan: Plan) -> list[str]:
    """Which subtasks send the authors' prompt templates, which the engine's own wording, and
    which are skipped for missing data."""
    lines = []
    official = [k for k, p in plan.prompts.items() if p == "official"]
    own = [k for k, p in plan.prompts.items() if p != "official"]
    if official:
        lines.append(f"prompts official (the authors' templates): {', '.join(official)}")
    if own:
        lines.append(f"prompts own (engine wording, not comparable to the paper): {', '.join(own)}")
    lines += [f"skipped {key}: {why}" for key, why in plan.skipped.items()]
    return lines
