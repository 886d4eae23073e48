"""`plan CONFIG.toml`: before any call, what a run will send: requests and estimated tokens and
cost per model × pillar, judge included, and how long the rate limits make it at best.

Estimates are upper bounds of the same kind the limiter charges: prompt ≈ characters / 4, and a
completion of the full max_tokens. Requests already answered in `--output` are left out, so the
plan of a resumed run shows what is left.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from adapters.registry import make_adapter
from engine.config import Config
from engine.core.fence import PLAN_NONCE
from engine.core.rundoc import RunSpec
from engine.costs import cost
from engine.gpus import render_placement
from engine.requery import requery_limits
from engine.run.judge import judge_params
from engine.run.units import estimate_tokens, lane_units
from engine.spec import item_factory, judges_for, rubrics_by_source, subtasks
from engine.store.checkpoint import scan_responses
from engine.store.jsonl import key_int


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
    by_source = rubrics_by_source(subs)
    for name in spec.models:
        adapter, _ = make_adapter(name, cfg.models[name], Path("."), with_secrets=False)
        done: set[int] = set()
        if out is not None:
            done = scan_responses(out / "responses" / f"{name}.jsonl").done
        skipped = 0
        for u in lane_units(name, cfg.models[name], adapter, factory, spec.samples):
            if key_int(u.key) in done:
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
                    est = estimate_tokens(jitem, params)
                    plan.add(judge, "judge", u.item.pillar, est - (params.max_tokens or 0), params.max_tokens or 0)
        plan.done[name] = skipped
    return plan


def render_plan(cfg: Config, plan: Plan) -> list[str]:
    lines = [f"{'model':18} {'role':7} {'pillar':18} {'requests':>9} {'prompt tok':>11} {'max out tok':>12} {'cost USD':>10}"]
    per_model: dict[str, Cell] = defaultdict(Cell)
    total_cost = 0.0
    unpriced: set[str] = set()
    for (model, role, pillar), c in sorted(plan.cells.items()):
        price = cfg.prices.get(model)
        usd = cost(price, c.prompt_tokens, c.completion_tokens)
        if usd is None:
            unpriced.add(model)
        else:
            total_cost += usd
        lines.append(f"{model:18} {role:7} {pillar:18} {c.requests:>9} {c.prompt_tokens:>11} {c.completion_tokens:>12} "
                     f"{f'{usd:.4f}' if usd is not None else '-':>10}")
        m = per_model[model]
        m.requests += c.requests
        m.prompt_tokens += c.prompt_tokens
        m.completion_tokens += c.completion_tokens
    lines.append("")
    slowest = 0.0
    for model, c in sorted(per_model.items()):
        mc = cfg.models[model]
        bounds = []
        if mc.requests_per_minute:
            bounds.append(c.requests / mc.requests_per_minute)
        if mc.tokens_per_minute:
            bounds.append((c.prompt_tokens + c.completion_tokens) / mc.tokens_per_minute)
        best = max(bounds) if bounds else None
        if best is not None:
            slowest = max(slowest, best)
        done = plan.done.get(model, 0)
        lines.append(f"{model}: {c.requests} requests ({done} already done), "
                     f"{c.prompt_tokens + c.completion_tokens} tokens at most; "
                     + (f"rate limits allow it in {best:.1f} min ({best * 60:.0f} s) at best" if best is not None else "no rate limit configured"))
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
