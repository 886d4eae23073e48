"""The leaderboard and the item browser as HTML blocks that the page's script (explore_js) fills.

`browser_section(items, models, ...)` takes the item view model alone, so any page (report.html,
`compare --html`) can show a list of items with it; such a page adds `explore_js.script_tag()` once
and `explore_js.script_hash()` to its Content-Security-Policy's script-src. Data goes into inert
<script type="application/json"> blocks: `<` is escaped as \\u003c inside JSON strings, and the
items are gzip + base64 (no `<` at all), so no text can close the block."""

from __future__ import annotations

import base64
import gzip
from collections.abc import Sequence
from html import escape

import msgspec

from engine.core.secrets import redact
from engine.report.explore import OUTCOMES
from engine.report.view import Board, ItemView

_encoder = msgspec.json.Encoder()


def json_block(obj: object, cls: str = "", ident: str = "") -> str:
    data = _encoder.encode(obj).replace(b"<", b"\\u003c").decode("utf-8")
    attrs = (f' id="{escape(ident, quote=True)}"' if ident else "") + (f' class="{escape(cls, quote=True)}"' if cls else "")
    return f'<script type="application/json"{attrs}>{data}</script>'


def items_blob(items: Sequence[ItemView], secrets: tuple[str, ...] = ()) -> str:
    """The items as gzip + base64 JSON (what the page decodes), API key values removed first."""
    raw = redact(_encoder.encode(items), secrets, shapes=False)
    return base64.b64encode(gzip.compress(raw, compresslevel=6, mtime=0)).decode("ascii")


def board_section(b: Board) -> str:
    return ('<section id="leaderboard"><h2>Leaderboard</h2><p>Pillar rank (small: mean subtask rank); '
            "▸ opens a pillar's subtasks (rank, value, items scored/planned; u unparseable, r refused, "
            "f failed). ≈: statistically tied with another model (scores.json `tied`: 95% intervals overlap). Click a "
            "model to order the pillars by it, ⇅ to order the models by a row.</p>"
            f'<div id="board"><p class="hl">(needs JavaScript; the rank table below has the same ranks)</p></div>'
            f"{json_block(b, ident='board-data')}</section>")


def browser_section(items: Sequence[ItemView], models: Sequence[str], secrets: tuple[str, ...] = (),
                    title: str = "Items", ident: str = "items") -> str:
    """Filters (model, pillar, subtask, outcome, judge score range), search over prompts and
    responses, a paged list of items (one badge per model) and the side-by-side view of one item."""
    subtasks = list(dict.fromkeys(it.subtask for it in items))
    meta = {"models": list(models), "subtasks": subtasks, "outcomes": list(OUTCOMES),
            "pillars": list(dict.fromkeys(s.split("/")[0] for s in subtasks))}
    selects = "".join(f'<label>{name} <select data-f="{name}"><option value="">all</option></select></label>'
                      for name in ("model", "pillar", "subtask", "outcome"))
    heads = "".join(f"<th>{escape(m)}</th>" for m in models)
    return (f'<section id="{escape(ident, quote=True)}" class="browser"><h2>{escape(title)}</h2>'
            f"<p>Every item ({len(items)}) with every model's answer: click a row for all models side by side "
            "with the reference, the parsed answer, the judge's verdict and rationale. Search looks in prompts "
            "and responses; the score range filters on the judge's score.</p>"
            f'<div class="filters">{selects}'
            '<label>judge score <input data-f="smin" type="number" step="any" size="4" placeholder="min"> – '
            '<input data-f="smax" type="number" step="any" size="4" placeholder="max"></label>'
            '<label>search <input data-f="q" type="search" size="28" placeholder="text in prompt or response">'
            '</label></div>'
            '<p><span data-f="count">loading items…</span> <button data-f="prev">‹ prev</button> '
            '<span data-f="page"></span> <button data-f="next">next ›</button></p>'
            '<div class="detail" data-f="detail" hidden></div>'
            f'<table class="list" data-f="list"><thead><tr><th>subtask</th><th>item</th><th>prompt (last message)</th>'
            f"{heads}</tr></thead><tbody></tbody></table>"
            f"{json_block(meta, cls='items-meta')}"
            f'<script type="application/json" class="items-data">{items_blob(items, secrets)}</script></section>')
