"""Hand-written inline SVG: pillar-rank radars and a rank heatmap. Pure string builders; every
text is escaped. No fonts, scripts or links are referenced, so the SVG renders offline."""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

from engine.report.format import rank_colour
from engine.report.view import Radar, RankTable

# Okabe-Ito (colour-blind safe) then a few more distinct hues.
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442",
           "#882255", "#44AA99", "#999933", "#AA4499")


def _e(s: object) -> str:
    return escape(str(s), quote=True)


def radar_svg(radar: Radar, size: int = 420, label: str = "", colours: dict[str, str] | None = None) -> str:
    """One axis per pillar; radius (n_models + 1 - rank) / n_models, so rank 1 is the outer ring.
    A model without a rank on a pillar is drawn at the centre with a hollow marker. `colours`
    keeps a model's colour the same across charts (default: the palette in series order)."""
    n_axes = len(radar.axes)
    cx = cy = size / 2
    r_max = size / 2 - 70
    n = max(radar.n_models, 1)

    def point(axis: int, radius: float) -> tuple[float, float]:
        a = -math.pi / 2 + 2 * math.pi * axis / max(n_axes, 1)
        return cx + radius * math.cos(a), cy + radius * math.sin(a)

    def radius(rank: int | None) -> float:
        return 0.0 if rank is None else r_max * (n + 1 - rank) / n

    height = size - 24 + 22 * len(radar.series)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="radar" width="{size}" height="{height}" '
             f'viewBox="0 0 {size} {height}" role="img" aria-label="{_e(label)}">',
             f'<title>{_e(label)}</title>', '<rect width="100%" height="100%" fill="#ffffff"/>']
    for rank in range(1, n + 1):  # rings, labelled with the rank they stand for
        ring = " ".join(f"{x:.1f},{y:.1f}" for x, y in (point(i, radius(rank)) for i in range(max(n_axes, 3))))
        if n_axes >= 3:
            parts.append(f'<polygon points="{ring}" fill="none" stroke="#d0d0d0" stroke-width="1"/>')
        else:
            parts.append(f'<circle cx="{cx}" cy="{cy}" r="{radius(rank):.1f}" fill="none" stroke="#d0d0d0"/>')
        x, y = point(0, radius(rank))
        parts.append(f'<text x="{x + 3:.1f}" y="{y + 11:.1f}" font-size="9" fill="#888">{rank}</text>')
    for i, axis in enumerate(radar.axes):
        x, y = point(i, r_max)
        parts.append(f'<line x1="{cx}" y1="{cy}" x2="{x:.1f}" y2="{y:.1f}" stroke="#bbb" stroke-width="1"/>')
        lx, ly = point(i, r_max + 18)
        anchor = "middle" if abs(lx - cx) < 10 else ("start" if lx > cx else "end")
        parts.append(f'<text x="{lx:.1f}" y="{ly + 4:.1f}" font-size="12" text-anchor="{anchor}" '
                     f'fill="#222">{_e(axis)}</text>')
    for k, s in enumerate(radar.series):
        colour = (colours or {}).get(s.model) or PALETTE[k % len(PALETTE)]
        pts = [point(i, radius(r)) for i, r in enumerate(s.ranks)]
        ranks = ", ".join(f"{a}: {r if r is not None else 'no rank'}" for a, r in zip(radar.axes, s.ranks))
        if len(pts) >= 2:
            poly = " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)
            parts.append(f'<polygon points="{poly}" fill="{colour}" fill-opacity="0.12" stroke="{colour}" '
                         f'stroke-width="2" data-model="{_e(s.model)}">'
                         f"<title>{_e(s.model)}: {_e(ranks)}</title></polygon>")
        for (x, y), r in zip(pts, s.ranks):
            fill = "#ffffff" if r is None else colour
            parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3.5" fill="{fill}" stroke="{colour}" '
                         'stroke-width="1.5"/>')
        ly = size - 30 + 22 * k
        parts.append(f'<rect x="20" y="{ly}" width="14" height="14" fill="{colour}"/>'
                     f'<text x="40" y="{ly + 12}" font-size="12" fill="#222">{_e(s.model)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def heatmap_svg(rows: Sequence[str], cols: Sequence[str], ranks: Sequence[Sequence[int | None]], n_models: int,
                label: str = "") -> str:
    """A grid of rank cells (rows x cols), coloured like the rank table, with the rank written in."""
    cw, ch, left, top = 64, 26, max(90, 8 * max((len(r) for r in rows), default=0)), 60
    width, height = left + cw * len(cols) + 10, top + ch * len(rows) + 10
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="heatmap" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="{_e(label)}">', f'<title>{_e(label)}</title>',
             '<rect width="100%" height="100%" fill="#ffffff"/>']
    for j, c in enumerate(cols):
        x = left + cw * j + cw / 2
        parts.append(f'<text x="{x:.1f}" y="{top - 8}" font-size="11" text-anchor="start" fill="#222" '
                     f'transform="rotate(-30 {x:.1f} {top - 8})">{_e(c)}</text>')
    for i, r in enumerate(rows):
        y = top + ch * i
        parts.append(f'<text x="{left - 6}" y="{y + ch / 2 + 4:.1f}" font-size="12" text-anchor="end" '
                     f'fill="#222">{_e(r)}</text>')
        for j, c in enumerate(cols):
            rank = ranks[i][j]
            x = left + cw * j
            fill = rank_colour(rank, n_models)
            parts.append(f'<rect x="{x}" y="{y}" width="{cw - 2}" height="{ch - 2}" fill="{fill}">'
                         f'<title>{_e(r)} / {_e(c)}: {rank if rank is not None else "no rank"}</title></rect>'
                         f'<text x="{x + cw / 2 - 1:.1f}" y="{y + ch / 2 + 3:.1f}" font-size="12" text-anchor="middle" '
                         f'fill="#111">{rank if rank is not None else "–"}</text>')
    parts.append("</svg>")
    return "".join(parts)


def pillar_heatmap(table: RankTable) -> str:
    blocks = [b for b in table.blocks if b.cells]
    if not blocks:
        return ""
    return heatmap_svg([b.pillar for b in blocks], [m.name for m in table.models],
                       [[c.rank for c in b.cells] for b in blocks], len(table.models), "pillar ranks")
