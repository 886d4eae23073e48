"""`compare`'s output: Markdown (the default, on stdout), JSON (`--format json`: the CompareDoc as is)
and one offline HTML page (`--html FILE`): the report's styles and Content-Security-Policy, every
text escaped, the changed items in the report's item browser (engine/report/explore_html.py)."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from pathlib import Path

import msgspec

from engine import compare
from engine.compare import CompareDoc, Comparison, MetricDelta
from engine.core.secrets import redact
from engine.report import secrets_for
from engine.report.explore_html import browser_section
from engine.report.explore_js import CSS as EXPLORE_CSS
from engine.report.explore_js import script_tag
from engine.report.format import fmt_ci
from engine.report.html import CSP, CSS, table
from engine.store.rundoc_io import read_run_if_any

__all__ = ["compare", "render_markdown", "render_json", "render_html", "secrets_of", "redact"]


def secrets_of(dirs: Sequence[Path]) -> tuple[str, ...]:
    """The API key values the runs' api_key_env names hold here: removed from what compare writes
    (it quotes model answers), as the report does."""
    out: list[str] = []
    for d in dirs:
        run = read_run_if_any(d)
        if run is not None:
            out += secrets_for(run)
    return tuple(dict.fromkeys(out))

ITEM_COLUMNS = ["subtask", "model", "item", "changed", "A outcome", "A parsed", "A score", "B outcome", "B parsed", "B score"]
METRIC_COLUMNS = ["subtask", "model", "headline", "A", "B", "Δ (B − A)", "paired 95% interval", "paired items",
                  "rank A → B", "items changed"]


def _num(v: float | None) -> str:
    return "–" if v is None else f"{v:.4f}"


def _rank(a: int | None, b: int | None) -> str:
    return f"{a if a is not None else '–'} → {b if b is not None else '–'}"


def _value(v: object) -> str:
    return "–" if v is None else msgspec.json.encode(v).decode() if not isinstance(v, str) else v


def metric_rows(c: Comparison) -> list[list[object]]:
    def row(d: MetricDelta) -> list[object]:
        delta = "–" if d.delta is None else f"{d.delta:+.4f}"
        return [d.subtask, d.model, d.headline, _num(d.a), _num(d.b), delta, fmt_ci(d.ci, d.ci_reason), d.paired_items,
                _rank(d.rank_a, d.rank_b), d.items_changed]
    return [row(d) for d in c.metrics]


def item_rows(c: Comparison) -> list[list[object]]:
    return [[i.subtask, i.model, i.id + (f" #{i.sample}" if i.sample else ""), ", ".join(i.changed),
             i.a.outcome, _value(i.a.parsed), _num(i.a.score), i.b.outcome, _value(i.b.parsed), _num(i.b.score)]
            for i in c.items]


def _summary(c: Comparison) -> list[tuple[str, str]]:
    out = []
    for what, got in (("models only in A", c.models_only_in_a), ("models only in B", c.models_only_in_b),
                      ("subtasks only in A", c.subtasks_only_in_a), ("subtasks only in B", c.subtasks_only_in_b)):
        if got:
            out.append((what, ", ".join(got)))
    return out


def _md_table(head: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    def cell(x: object) -> str:
        return str(x).replace("|", "\\|").replace("\n", " ")
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head),
            *("| " + " | ".join(cell(x) for x in r) + " |" for r in rows), ""]


def render_markdown(doc: CompareDoc) -> str:
    out = ["# Compare", "", f"Baseline A = `{doc.runs[0]}`; bootstrap seed {doc.seed}. Δ = B − A; the interval is a "
           "paired bootstrap over the base items both runs scored.", ""]
    out += [f"> **Incomplete:** {line}" for line in doc.incomplete] + ([""] if doc.incomplete else [])
    for c in doc.comparisons:
        out += [f"## B = `{c.b}`", ""]
        out += [f"- {what}: {names}" for what, names in _summary(c)] + ([""] if _summary(c) else [])
        out += ["### Changed config", ""]
        out += _md_table(["path", "A", "B"], [[ch.path, _value(ch.a), _value(ch.b)] for ch in c.config]) if c.config \
            else ["none", ""]
        out += ["### Subtask metrics", ""] + _md_table(METRIC_COLUMNS, metric_rows(c))
        if c.pillars:
            out += ["### Pillar ranks", ""] + _md_table(["pillar", "model", "rank A → B", "mean subtask rank A → B"], [
                [p.pillar, p.model, _rank(p.rank_a, p.rank_b), f"{_num(p.mean_rank_a)} → {_num(p.mean_rank_b)}"]
                for p in c.pillars])
        out += [f"### Changed items ({len(c.items)})", ""]
        out += _md_table(ITEM_COLUMNS, item_rows(c)) if c.items else ["none", ""]
    return "\n".join(out)


def render_json(doc: CompareDoc) -> str:
    """The CompareDoc without the HTML's item views (the items are in `items`)."""
    plain = msgspec.structs.replace(doc, comparisons=tuple(msgspec.structs.replace(c, views=()) for c in doc.comparisons))
    return msgspec.json.format(msgspec.json.encode(plain).decode(), indent=2) + "\n"


def _e(v: object) -> str:
    return escape(str(v), quote=True)


def _section(c: Comparison, n: int, secrets: tuple[str, ...]) -> str:
    parts = [f'<section id="cmp-{n}"><h2>B = <code>{_e(c.b)}</code></h2>']
    summary = _summary(c)
    if summary:
        parts.append("<ul>" + "".join(f"<li>{_e(w)}: {_e(names)}</li>" for w, names in summary) + "</ul>")
    parts.append("<h3>Changed config</h3>" + (table(["path", "A", "B"], [[ch.path, _value(ch.a), _value(ch.b)]
                                                                          for ch in c.config]) if c.config else "<p>none</p>"))
    parts.append("<h3>Subtask metrics</h3>" + table(METRIC_COLUMNS, metric_rows(c), "metrics"))
    if c.pillars:
        parts.append("<h3>Pillar ranks</h3>" + table(
            ["pillar", "model", "rank A → B", "mean subtask rank A → B"],
            [[p.pillar, p.model, _rank(p.rank_a, p.rank_b), f"{_num(p.mean_rank_a)} → {_num(p.mean_rank_b)}"] for p in c.pillars]))
    parts.append(f"<h3>Changed items ({len(c.items)})</h3>"
                 + (table(ITEM_COLUMNS, item_rows(c), "changed") if c.items else "<p>none</p>"))
    if c.views:
        models = list(dict.fromkeys(a.model for v in c.views for a in v.answers))
        parts.append(browser_section(c.views, models, secrets, title="Changed items, side by side", ident=f"items-{n}"))
    return "".join(parts) + "</section>"


def render_html(doc: CompareDoc, secrets: tuple[str, ...] = ()) -> str:
    head = (f"<header><h1>Compare</h1><p>Baseline A = <code>{_e(doc.runs[0])}</code>; bootstrap seed {_e(doc.seed)}. "
            "Δ = B − A; the interval is a paired bootstrap over the base items both runs scored. An item is "
            "changed when its outcome class, parsed answer or item score differs.</p></header>")
    notes = [f'<div class="note"><b>Incomplete:</b> {_e(line)}</div>' for line in doc.incomplete]
    body = [head, *notes, *(_section(c, i, secrets) for i, c in enumerate(doc.comparisons, 1))]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>Compare — {_e(doc.runs[0])}</title><style>{CSS}{EXPLORE_CSS}</style></head><body>\n"
            + "\n".join(body) + f"\n{script_tag()}\n</body></html>\n")
