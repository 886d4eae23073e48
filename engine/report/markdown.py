"""The report as Markdown (terminals, READMEs): rank table with values in parentheses, per-subtask
tables, judge reliability and run performance. The drill-down (long texts) is HTML-only."""

from __future__ import annotations

from collections.abc import Sequence

from engine.report.format import (
    TIED,
    fmt_batch_cost,
    fmt_ci,
    fmt_cost,
    fmt_num,
    fmt_policy,
    fmt_protocol,
    fmt_span,
    responses_counts,
    responses_intro,
)
from engine.report.live import banner_md, status_words
from engine.report.view import BreakdownTable, RankCell, Report, SubtaskDetail

ARROW = {"higher": "↑", "lower": "↓"}


def _c(v: object) -> str:
    """A table cell: numbers formatted, pipes and newlines neutralised."""
    s = v if isinstance(v, str) else fmt_num(v)
    return s.replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def table(head: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    out = ["| " + " | ".join(_c(h) for h in head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(_c(x) for x in r) + " |" for r in rows]
    return out + [""]


def rank_cell(c: RankCell) -> str:
    """"2 (0.500)"; "– (null)" for no value; "not scored" when scores.json has no entry."""
    if not c.scored:
        return "not scored"
    return f"{c.rank if c.rank is not None else '–'}{TIED if c.tied else ''} ({fmt_num(c.value)})"


def _rank_table(r: Report) -> list[str]:
    t = r.rank_table
    if t is None:
        return []
    groups = [(g, [m.name for m in t.models if m.group == g]) for g in ("api", "local")]
    out = ["## Rank table", "",
           "1 = most trustworthy; ties share a rank; cells are `rank (value)`; pillar rank = re-rank of the mean "
           "subtask rank (in parentheses); "
           f"{TIED} marks a model statistically tied with another in that subtask (their 95% intervals overlap; the "
           "rank beside it is the paper's, unchanged).", "",
           " · ".join(f"{'API' if g == 'api' else 'local'}: {', '.join(ms)}" for g, ms in groups if ms), ""]
    rows = []
    for b in t.blocks:
        for row in b.rows:
            head = f"{row.subtask} · {row.headline} {ARROW.get(row.direction or '', '')}".strip() if row.scored \
                else f"{row.subtask} (not scored)"
            rows.append([b.pillar, head, *(rank_cell(c) for c in row.cells)])
        if b.cells:
            rows.append([f"**{b.pillar}**", "**pillar rank**",
                         *(f"**{c.rank if c.rank is not None else '–'}** ({fmt_num(c.mean_subtask_rank)})"
                           for c in b.cells)])
    return out + table(["pillar", "subtask", *(m.name for m in t.models)], rows)


def breakdown(bt: BreakdownTable) -> list[str]:
    labelled = any(r.label for r in bt.rows)
    head = (["row"] if labelled else []) + ["model", *bt.columns]
    rows, last = [], None
    for r in bt.rows:
        first = [] if not labelled else [r.label if r.label != last else ""]
        last = r.label
        rows.append([*first, r.model, *(r.cells.get(c, "") for c in bt.columns)])
    return [f"*{bt.title}*", "", *table(head, rows)]


def _subtask(d: SubtaskDetail) -> list[str]:
    out = [f"### {d.key}", "",
           f"headline `{d.headline}` ({'higher' if d.direction == 'higher' else 'lower'} is better), "
           f"version {d.version or '?'}" + (f", judge `{d.judge}`" if d.judge else "")
           + (f"; {fmt_policy(d.unparseable, d.tie_break)}" if fmt_policy(d.unparseable, d.tie_break) else "")
           + (f"; {proto}" if (proto := fmt_protocol(d.prompts, d.constrained, d.judge_constrained,
                                                     d.judge_hardened)) else ""), ""]
    judged = any(m.judge for m in d.metrics)
    head = ["model", "rank", "value", "n", "n_scored", "n_unparseable", "n_failed", "n_missing", "interval"]
    head += ["judged", "judge unparseable", "not judged", "judge retried"] if judged else []
    rows = []
    for m in d.metrics:
        row = [m.model, m.rank if m.rank is not None else "–", m.value, m.n, m.n_scored, m.n_unparseable, m.n_failed,
               m.n_missing, fmt_ci(m.ci, m.ci_reason)]
        if judged:
            j = m.judge
            row += [j.judged, j.unparseable, j.not_judged, j.retried] if j is not None else ["", "", "", ""]
        rows.append(row)
    out += table(head, rows)
    reasons = [f"- {m.model}: {m.reason}" for m in d.metrics if m.reason]
    if reasons:
        out += ["Undefined metrics:", *reasons, ""]
    for bt in d.breakdown:
        out += breakdown(bt)
    return out


def _judges(r: Report) -> list[str]:
    if not (r.judge_counts or r.judge_agreement or r.keyword_agreement):
        return []
    out = ["## Judge reliability", ""]
    if r.judge_counts:
        out += ["Ranked judge, summed over models (from scores.json):", ""]
        out += table(["subtask", "judge", "judged", "unparseable", "not judged", "retried"],
                     [[c.subtask, c.judge, c.judged, c.unparseable, c.not_judged, c.retried] for c in r.judge_counts])
    if r.judge_agreement:
        out += ["Agreement between judges on the same responses (Cohen's kappa on the parsed scores):", ""]
        out += table(["subtask", "ranked judge", "other judge", "n", "agree", "kappa"],
                     [[a.subtask, a.judge_a, a.judge_b, a.n, a.share_agree, a.kappa] for a in r.judge_agreement])
    if r.keyword_agreement:
        out += ["Keyword detector vs judge (refusals):", ""]
        out += table(["subtask", "model", "n", "agree", "kappa", "keyword RtA", "judge RtA"],
                     [[k.subtask, k.model, k.n, k.share_agree, k.kappa, k.keyword_rta, k.judge_rta]
                      for k in r.keyword_agreement])
    return out


def _perf(r: Report) -> list[str]:
    out = []
    if r.lanes:
        merged = any(ln.invocations for ln in r.lanes)
        out += ["## Run performance", "", "Per lane, over every invocation of this run (wall s: their summed "
                "running time; rates over it):" if merged
                else "Per lane, this run's process (a resumed run counts from its restart):", ""]
        out += table(["lane", "state", "done", "judged", "req/s", "out tok/s", "p50 s", "p95 s", "p99 s", "retries",
                      "429s", "errors", "wait s", "busy s", "wall s", "cost"],
                     [[ln.model, ln.state or "", ln.done, ln.judged, ln.requests_per_s, ln.output_tokens_per_s,
                       ln.latency_p50, ln.latency_p95, ln.latency_p99, ln.retries, ln.rate_limited,
                       ", ".join(f"{k}: {v}" for k, v in ln.errors.items()) or "0", ln.wait_s, ln.busy_s, ln.wall_s,
                       fmt_cost(ln.cost)] for ln in r.lanes])
    if r.tokens:
        out += ["Tokens per model, all records:", ""] if out else ["## Tokens", ""]
        out += table(["model", "responses", "prompt", "completion", "judgments", "judge prompt", "judge completion",
                      "cost"],
                     [[t.model, t.responses, t.prompt_tokens, t.completion_tokens, t.judgments, t.judge_prompt_tokens,
                       t.judge_completion_tokens, fmt_batch_cost(t.cost, t.batch_saved)] for t in r.tokens])
    return out


def _responses(r: Report) -> list[str]:
    """A custom --items run: prompt x model."""
    if not r.responses:
        return []
    models = [c.model for c in r.responses[0].cells]
    head, counts = responses_counts(r.responses_shown)
    out = ["## Responses", ""]
    if counts:
        out += ["Every item's records, per model:", "", *table(head, counts)]
    out += [responses_intro(r.responses_shown), ""]
    return out + table(["item", "prompt", *models],
                       [[f"{row.item_id}" + (f" #{row.sample}" if row.sample else ""), row.prompt or "",
                         *(c.text if c.text is not None else f"({c.status})" for c in row.cells)]
                        for row in r.responses])


def render_markdown(r: Report) -> str:
    run = r.run
    span = fmt_span(run.started_at, run.ended_at)
    out = [f"# {r.title}", "",
           f"- run: `{run.directory}` ({status_words(run.status, r.progress)})" + (f", {span}" if span else ""),
           f"- data: {run.data}; limit {run.limit}; samples {run.samples}; judges: {', '.join(run.judges) or 'none'}",
           "- models: " + ", ".join(f"`{m.name}` ({m.group}, {m.adapter}, `{m.model_id}`)" for m in r.models), ""]
    out += banner_md(r.progress)
    out += [f"> {n}" for n in r.notes] + ([""] if r.notes else [])
    out += _rank_table(r)
    if r.subtasks:
        out += ["## Subtasks", ""]
        for d in r.subtasks:
            out += _subtask(d)
    out += _responses(r)
    out += _judges(r)
    out += _perf(r)
    if r.drilldown:
        out += ["Item-level drill-down (prompts, responses, judge outputs): see report.html.", ""]
    return "\n".join(out).rstrip() + "\n"
