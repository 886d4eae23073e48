"""The report as ONE self-contained HTML file: inline CSS and SVG, one inline script (the leaderboard
and the item browser, explore_js; allowed by its hash), no external request (a Content-Security-
Policy forbids any). Every text is escaped (the script inserts text only). Numeric cells carry
data-* attributes (exact values) so tests and tools can read the numbers back."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from engine.report.explore_html import board_section, browser_section
from engine.report.explore_js import CSS as EXPLORE_CSS
from engine.report.explore_js import script_hash, script_tag
from engine.report.format import (
    TIED,
    fmt_batch_cost,
    fmt_ci,
    fmt_cost,
    fmt_num,
    fmt_policy,
    fmt_protocol,
    fmt_span,
    rank_colour,
    responses_counts,
    responses_intro,
)
from engine.report.live import banner_html, status_words
from engine.report.svg import PALETTE, pillar_heatmap, radar_skip_reason, radar_svg
from engine.report.view import BreakdownTable, Drill, DrillItem, RankCell, Report, SubtaskDetail

ARROW = {"higher": "↑", "lower": "↓"}
CSP = ("default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'; "
       f"script-src {script_hash()}")

CSS = """
:root { color-scheme: light; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; color: #1b1b1b;
       margin: 0 auto; padding: 16px 24px 48px; max-width: 1500px; background: #fff; }
h1 { font-size: 22px; margin: 4px 0 8px; } h2 { font-size: 18px; margin: 28px 0 8px; border-bottom: 1px solid #ddd; }
h3 { font-size: 15px; margin: 18px 0 4px; } h4 { font-size: 13px; margin: 10px 0 4px; }
nav a { margin-right: 14px; } .meta { color: #444; margin: 0; padding-left: 18px; }
.note { background: #fff8e1; border-left: 4px solid #f0b400; padding: 6px 10px; margin: 6px 0; }
table { border-collapse: collapse; margin: 6px 0 12px; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #d6d6d6; padding: 3px 7px; text-align: left; vertical-align: top; }
thead th { background: #f3f3f3; position: sticky; top: 0; }
td.num, th.num { text-align: right; }
table.ranks td.rank { text-align: center; min-width: 56px; }
table.ranks td.rank b { font-size: 15px; display: block; }
table.ranks td.rank small { color: #333; font-size: 11px; }
table.ranks td.none { color: #777; } table.ranks td.unscored { color: #999; font-style: italic; background: #fafafa; }
table.ranks tr.pillar-rank td, table.ranks tr.pillar-rank th { border-bottom: 2px solid #999; }
table.ranks tr.pillar-rank th { background: #f7f7f7; }
table.ranks th.pillar { background: #f7f7f7; text-transform: capitalize; }
th.group { text-align: center; } .hl { color: #555; font-size: 12px; }
.legend span { display: inline-block; width: 26px; text-align: center; font-size: 11px; border: 1px solid #ccc; }
.charts { display: flex; flex-wrap: wrap; gap: 24px; align-items: flex-start; }
.charts figure { margin: 0; } figcaption { font-weight: 600; margin-bottom: 4px; }
details { margin: 4px 0; } summary { cursor: pointer; }
pre { white-space: pre-wrap; word-break: break-word; background: #f7f7f7; border: 1px solid #e3e3e3; padding: 6px 8px;
      margin: 4px 0; max-height: 360px; overflow: auto; font: 12px/1.4 ui-monospace, "DejaVu Sans Mono", monospace; }
.msg b, .resp b { font-size: 12px; } .resp { border-left: 3px solid #bbb; padding-left: 8px; margin: 8px 0; }
.st-failed, .st-unparseable { border-left-color: #d73027; } .st-scored { border-left-color: #66bd63; }
.reason { color: #8a1c1c; }
"""


def _e(v: object) -> str:
    return escape(v if isinstance(v, str) else fmt_num(v), quote=True)


def _attr(v: object) -> str:
    """An exact value for a data-* attribute: repr() of floats, "null" for None."""
    if v is None:
        return "null"
    return escape(repr(v) if isinstance(v, float) else str(v), quote=True)


def _anchor(key: str) -> str:
    return "s-" + "".join(ch if ch.isalnum() else "-" for ch in key)


def table(head: Sequence[str], rows: Sequence[Sequence[object]], cls: str = "") -> str:
    h = "".join(f"<th>{_e(x)}</th>" for x in head)
    def td(x: object) -> str:
        num = isinstance(x, (int, float)) and not isinstance(x, bool)
        return f'<td class="num">{_e(x)}</td>' if num else f"<td>{_e(x)}</td>"

    body = "".join("<tr>" + "".join(td(x) for x in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{h}</tr></thead><tbody>{body}</tbody></table>'


def _cell(c: RankCell, key: str, n_models: int) -> str:
    attrs = (f'data-model="{_attr(c.model)}" data-subtask="{_attr(key)}" data-rank="{_attr(c.rank)}" '
             f'data-value="{_attr(c.value)}" data-n="{_attr(c.n)}"')
    if not c.scored:
        return f'<td class="rank unscored" {attrs} data-scored="false" title="not scored">not scored</td>'
    tip = f"value {fmt_num(c.value)} · n={fmt_num(c.n)}"
    if c.ci is not None:
        tip += f" · interval {fmt_ci(c.ci)}"
        attrs += f' data-ci-low="{_attr(c.ci[0])}" data-ci-high="{_attr(c.ci[1])}"'
    if c.tied:
        tip += f" · statistically tied with {', '.join(c.tied)} (95% intervals overlap)"
        attrs += f' data-tied="{_attr(" ".join(c.tied))}"'
    if c.reason:
        tip += f" · {c.reason}"
    rank = (str(c.rank) if c.rank is not None else "–") + (TIED if c.tied else "")
    cls = "rank" if c.rank is not None else "rank none"
    return (f'<td class="{cls}" style="background:{rank_colour(c.rank, n_models)}" {attrs} title="{_e(tip)}">'
            f"<b>{rank}</b><small>{_e(fmt_num(c.value))}</small></td>")


def rank_table(r: Report) -> str:
    t = r.rank_table
    if t is None:
        return ""
    n = len(t.models)
    groups = [(g, sum(1 for m in t.models if m.group == g)) for g in ("api", "local")]
    head1 = '<tr><th rowspan="2">pillar</th><th rowspan="2">subtask</th>' + "".join(
        f'<th class="group" colspan="{k}">{"API models" if g == "api" else "local models"}</th>'
        for g, k in groups if k) + "</tr>"
    head2 = "<tr>" + "".join(
        f'<th data-model="{_attr(m.name)}" title="{_e(m.adapter)} · {_e(m.model_id)}">{_e(m.name)}</th>'
        for m in t.models) + "</tr>"
    rows = []
    for b in t.blocks:
        span = len(b.rows) + (1 if b.cells else 0)
        for i, row in enumerate(b.rows):
            first = f'<th class="pillar" rowspan="{span}">{_e(b.pillar)}</th>' if i == 0 else ""
            sub = (f'<a href="#{_anchor(row.key)}">{_e(row.subtask)}</a> <span class="hl">{_e(row.headline or "")} '
                   f'{ARROW.get(row.direction or "", "")}</span>') if row.scored \
                else f'{_e(row.subtask)} <span class="hl">(not scored)</span>'
            rows.append(f'<tr data-subtask="{_attr(row.key)}">{first}<td class="sub">{sub}</td>'
                        + "".join(_cell(c, row.key, n) for c in row.cells) + "</tr>")
        if b.cells:
            first = f'<th class="pillar" rowspan="{span}">{_e(b.pillar)}</th>' if not b.rows else ""
            cells = "".join(
                f'<td class="rank{" none" if c.rank is None else ""}" style="background:{rank_colour(c.rank, n)}" '
                f'data-model="{_attr(c.model)}" data-pillar="{_attr(b.pillar)}" data-rank="{_attr(c.rank)}" '
                f'data-mean="{_attr(c.mean_subtask_rank)}" '
                f'title="mean subtask rank {_e(fmt_num(c.mean_subtask_rank))}">'
                f'<b>{c.rank if c.rank is not None else "–"}</b><small>{_e(fmt_num(c.mean_subtask_rank))}</small></td>'
                for c in b.cells)
            rows.append(f'<tr class="pillar-rank" data-pillar="{_attr(b.pillar)}">{first}<th>pillar rank</th>'
                        f"{cells}</tr>")
    legend = "".join(f'<span style="background:{rank_colour(k, n)}">{k}</span>' for k in range(1, n + 1))
    return (f'<section id="ranks"><h2>Rank table</h2><p>1 = most trustworthy; ties share a rank. Small print: the '
            f'metric value (hover for n and interval); {TIED}: statistically tied with another model (their 95% '
            f'intervals overlap; the rank beside it is the paper\'s, unchanged); pillar rows: the re-ranked mean '
            f'subtask rank. '
            f'<span class="legend">{legend}</span></p>'
            f'<table class="ranks"><thead>{head1}{head2}</thead><tbody>{"".join(rows)}</tbody></table></section>')


def charts(r: Report) -> str:
    if not r.radars:
        return ""
    colours = {m.name: PALETTE[i % len(PALETTE)] for i, m in enumerate(r.models)}
    caption = {"api": "API models", "local": "Local models", "all": "All models"}
    figs = "".join(
        f'<figure><figcaption>{caption[rd.group]}: pillar rank (1 = outermost)</figcaption>'
        + (f'<p class="hl radar-skipped">{_e(why)}</p>' if (why := radar_skip_reason(rd))
           else radar_svg(rd, label=f"{rd.group} models pillar ranks", colours=colours)) + "</figure>"
        for rd in r.radars)
    heat = pillar_heatmap(r.rank_table) if r.rank_table else ""
    if heat:
        figs += f"<figure><figcaption>Pillar ranks, all models</figcaption>{heat}</figure>"
    return f'<section id="radar"><h2>Pillar ranks</h2><div class="charts">{figs}</div></section>'


def breakdown(bt: BreakdownTable) -> str:
    labelled = any(r.label for r in bt.rows)
    head = (["row"] if labelled else []) + ["model", *bt.columns]
    rows = [([r.label] if labelled else []) + [r.model, *(r.cells.get(c, "") for c in bt.columns)]
            for r in bt.rows]
    return f"<h4>{_e(bt.title)}</h4>" + table(head, rows, "breakdown")


def subtask(d: SubtaskDetail) -> str:
    judged = any(m.judge for m in d.metrics)
    head = ["model", "rank", "value", "n", "n_scored", "n_unparseable", "n_failed", "n_missing", "interval"]
    head += ["judged", "judge unparseable", "not judged", "judge retried"] if judged else []
    rows = []
    for m in d.metrics:
        cells = [f'<td data-field="model">{_e(m.model)}</td>',
                 f'<td class="num" data-field="rank">{_e(m.rank if m.rank is not None else "–")}</td>',
                 f'<td class="num" data-field="value" data-value="{_attr(m.value)}">{_e(m.value)}</td>']
        for f in ("n", "n_scored", "n_unparseable", "n_failed", "n_missing"):
            cells.append(f'<td class="num" data-field="{f}">{_e(getattr(m, f))}</td>')
        cells.append(f'<td data-field="ci">{_e(fmt_ci(m.ci, m.ci_reason))}</td>')
        if judged:
            j = m.judge
            counts = (j.judged, j.unparseable, j.not_judged, j.retried) if j is not None else ("", "", "", "")
            cells += [f'<td class="num" data-field="judge.{f}">{_e(v)}</td>'
                      for f, v in zip(("judged", "unparseable", "not_judged", "retried"), counts)]
        rows.append(f'<tr data-model="{_attr(m.model)}">{"".join(cells)}</tr>')
    hrow = "".join(f"<th>{_e(h)}</th>" for h in head)
    reasons = "".join(f'<li class="reason">{_e(m.model)}: {_e(m.reason)}</li>' for m in d.metrics if m.reason)
    bd = "".join(breakdown(b) for b in d.breakdown)
    policy = fmt_policy(d.unparseable, d.tie_break)
    proto = fmt_protocol(d.prompts, d.constrained, d.judge_constrained, d.judge_hardened)
    return (f'<section class="subtask" id="{_anchor(d.key)}" data-subtask="{_attr(d.key)}"><h3>{_e(d.key)}</h3>'
            f'<p>headline <code>{_e(d.headline)}</code> '
            f'({"higher" if d.direction == "higher" else "lower"} is better), '
            f'version {_e(d.version or "?")}{", judge <code>" + _e(d.judge) + "</code>" if d.judge else ""}'
            f'{"; " + _e(policy) if policy else ""}{"; " + _e(proto) if proto else ""}</p>'
            f'<table class="metrics"><thead><tr>{hrow}</tr></thead><tbody>{"".join(rows)}</tbody></table>'
            + (f"<ul>{reasons}</ul>" if reasons else "")
            + (f"<details><summary>Breakdown ({len(d.breakdown)} table{'s' if len(d.breakdown) > 1 else ''})</summary>"
               f"{bd}</details>" if bd else "")
            + "</section>")


def judges(r: Report) -> str:
    if not (r.judge_counts or r.judge_agreement or r.keyword_agreement):
        return ""
    out = ['<section id="judges"><h2>Judge reliability</h2>']
    if r.judge_counts:
        out.append("<p>Ranked judge, summed over models (from scores.json):</p>")
        out.append(table(["subtask", "judge", "judged", "unparseable", "not judged", "retried"],
                         [[c.subtask, c.judge, c.judged, c.unparseable, c.not_judged, c.retried]
                          for c in r.judge_counts]))
    if r.judge_agreement:
        out.append("<p>Agreement between judges on the same responses (Cohen's kappa on the parsed scores; "
                   "several fields: their rounded mean):</p>")
        out.append(table(["subtask", "ranked judge", "other judge", "n", "agree", "kappa"],
                         [[a.subtask, a.judge_a, a.judge_b, a.n, a.share_agree, a.kappa] for a in r.judge_agreement]))
    if r.keyword_agreement:
        out.append("<p>Keyword refusal detector vs judge:</p>")
        out.append(table(["subtask", "model", "n", "agree", "kappa", "keyword RtA", "judge RtA"],
                         [[k.subtask, k.model, k.n, k.share_agree, k.kappa, k.keyword_rta, k.judge_rta]
                          for k in r.keyword_agreement]))
    return "".join(out) + "</section>"


def performance(r: Report) -> str:
    if not (r.lanes or r.tokens):
        return ""
    out = ['<section id="performance"><h2>Run performance</h2>']
    if r.lanes:
        out.append("<p>Per lane, from run.json, over every invocation of this run (wall s: their summed running "
                   "time; rates over it):</p>" if any(ln.invocations for ln in r.lanes) else
                   "<p>Per lane, from run.json (this run's process; a resumed run counts from its restart):</p>")
        out.append(table(
            ["lane", "state", "done", "judged", "req/s", "out tok/s", "p50 s", "p95 s", "p99 s", "retries", "429s",
             "errors", "wait s", "busy s", "wall s", "prompt tok", "completion tok", "cost"],
            [[ln.model, ln.state or "", ln.done, ln.judged, ln.requests_per_s, ln.output_tokens_per_s, ln.latency_p50,
              ln.latency_p95, ln.latency_p99, ln.retries, ln.rate_limited,
              ", ".join(f"{k}: {v}" for k, v in ln.errors.items()) or "0", ln.wait_s, ln.busy_s, ln.wall_s,
              ln.tokens.get("prompt", ""), ln.tokens.get("completion", ""), fmt_cost(ln.cost)]
             for ln in r.lanes]))
    if r.tokens:
        out.append("<p>Tokens per model over all records (cost from [prices.&lt;model&gt;] where set):</p>")
        out.append(table(["model", "responses", "prompt", "completion", "judgments", "judge prompt",
                          "judge completion", "cost"],
                         [[t.model, t.responses, t.prompt_tokens, t.completion_tokens, t.judgments,
                           t.judge_prompt_tokens, t.judge_completion_tokens, fmt_batch_cost(t.cost, t.batch_saved)]
                          for t in r.tokens]))
    return "".join(out) + "</section>"


def _item(it: DrillItem) -> str:
    worst = next((x.status for x in it.responses if x.status in ("failed", "unparseable")), "")
    parts = [f'<details class="item" data-item="{_attr(it.item_id)}"><summary><code>{_e(it.item_id)}</code>'
             f'{f" (sample {it.sample})" if it.sample else ""}{f" — {worst}" if worst else ""}</summary>']
    if it.prompt is None:
        parts.append("<p><i>prompt not available (items could not be rebuilt)</i></p>")
    else:
        parts += [f'<div class="msg"><b>{_e(m.role)}</b><pre>{_e(m.content)}</pre></div>' for m in it.prompt]
    if it.reference is not None:
        parts.append(f"<p>reference: <code>{_e(str(it.reference))}</code></p>")
    for x in it.responses:
        head = f"{_e(x.model)} — {_e(x.status)}"
        if x.score is not None:
            head += f", score {_e(x.score)}"
        if x.label is not None:
            head += f", label <code>{_e(x.label)}</code>"
        if x.finish_reason and x.finish_reason != "stop":
            head += f", finish {_e(x.finish_reason)}"
        body = f"<pre>{_e(x.text)}</pre>" if x.text is not None else ""
        if x.error:
            body += f'<p class="reason">error: {_e(x.error)}</p>'
        if x.judgments:
            js = "".join(f'<div class="msg"><b>{_e(j.judge)}{" (retry)" if j.try_ else ""}</b>'
                         f'<pre>{_e(j.text if j.text is not None else "error: " + (j.error or "?"))}</pre></div>'
                         for j in x.judgments)
            body += f"<details><summary>judge outputs ({len(x.judgments)})</summary>{js}</details>"
        parts.append(f'<div class="resp st-{_e(x.status)}" data-model="{_attr(x.model)}"><b>{head}</b>{body}</div>')
    return "".join(parts) + "</details>"


def drill(d: Drill) -> str:
    items = "".join(_item(it) for it in d.items)
    return (f'<details class="drill" data-subtask="{_attr(d.subtask)}"><summary><b>{_e(d.subtask)}</b>: '
            f"{len(d.items)} of {d.total} items</summary><p class=\"hl\">{_e(d.order)}</p>{items}</details>")


def render_html(r: Report, secrets: tuple[str, ...] = ()) -> str:
    run = r.run
    title = f"{r.title} — {run.directory}"
    span = fmt_span(run.started_at, run.ended_at)
    meta = [f"run <code>{_e(run.directory)}</code>: {_e(status_words(run.status, r.progress))}"
            + (f", {_e(span)}" if span else ""),
            f"data {_e(run.data)}; limit {_e(run.limit)}; samples {_e(run.samples)}; judges: "
            f"{_e(', '.join(run.judges) or 'none')}",
            "models: " + ", ".join(f"<code>{_e(m.name)}</code> ({_e(m.group)}, {_e(m.adapter)}, {_e(m.model_id)})"
                                   for m in r.models)]
    nav = [("leaderboard", "Leaderboard", r.board), ("ranks", "Rank table", r.rank_table), ("radar", "Pillar ranks", r.radars),
           ("subtasks", "Subtasks", r.subtasks), ("responses", "Responses", r.responses), ("items", "Items", r.items),
           ("judges", "Judges", r.judge_counts or r.judge_agreement or r.keyword_agreement),
           ("performance", "Performance", r.lanes or r.tokens), ("drilldown", "Drill-down", r.drilldown)]
    body = [f"<header><h1>{_e(r.title)}</h1><ul class=\"meta\">" + "".join(f"<li>{m}</li>" for m in meta) + "</ul>",
            "<nav>" + "".join(f'<a href="#{a}">{t}</a>' for a, t, present in nav if present) + "</nav></header>",
            banner_html(r.progress), *(f'<p class="note">{_e(n)}</p>' for n in r.notes),
            board_section(r.board) if r.board else "", rank_table(r), charts(r)]
    if r.subtasks:
        body.append('<section id="subtasks"><h2>Subtasks</h2>' + "".join(subtask(d) for d in r.subtasks) + "</section>")
    if r.responses:
        models = [c.model for c in r.responses[0].cells]
        head, counts = responses_counts(r.responses_shown)
        body.append('<section id="responses"><h2>Responses</h2>'
                    + (f"<p>Every item's records, per model:</p>{table(head, counts)}" if counts else "")
                    + f"<p>{escape(responses_intro(r.responses_shown), quote=False)}</p>" + table(
                        ["item", "prompt", *models],
                        [[row.item_id + (f" #{row.sample}" if row.sample else ""), row.prompt or "",
                          *(c.text if c.text is not None else f"({c.status})" for c in row.cells)]
                         for row in r.responses]) + "</section>")
    if r.items:
        body.append(browser_section(r.items, [m.name for m in r.models], secrets))
    body += [judges(r), performance(r)]
    if r.drilldown:
        body.append('<section id="drilldown"><h2>Drill-down</h2><p>Per subtask, a sample of items with every '
                    "model's response and the judge outputs.</p>" + "".join(drill(d) for d in r.drilldown)
                    + "</section>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{_e(title)}</title><style>{CSS}{EXPLORE_CSS}</style></head><body>\n"
            + "\n".join(b for b in body if b) + f"\n{script_tag()}\n</body></html>\n")
