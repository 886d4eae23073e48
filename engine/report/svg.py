"""Hand-written inline SVG: pillar-rank radars and a rank heatmap. Pure string builders; every
text is escaped. No fonts, scripts or links are referenced, so the SVG renders offline.

Nothing is clipped: each chart measures its texts with `text_width` (an upper estimate for DejaVu
Sans, the widest common sans-serif; tests/test_report_figures.py checks it against the font's real
metrics) and sizes its viewBox to hold them."""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

from engine.report.format import rank_colour
from engine.report.view import Radar, RankTable

# Okabe-Ito (colour-blind safe) then a few more distinct hues.
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442",
           "#882255", "#44AA99", "#999933", "#AA4499")
FONTS = "DejaVu Sans, Verdana, sans-serif"  # what text_width estimates for (Verdana is as wide)
MIN_RADAR_MODELS = 2
MIN_RADAR_AXES = 3
RADAR_SKIPPED = "one model: a radar of ranks needs at least two models to compare (its pillar ranks are in the table)"
_NARROW = frozenset("iljtfr.,:;'!|I()[]{} -_/")
_WIDE = frozenset("mwMW@%")


def _e(s: object) -> str:
    return escape(str(s), quote=True)


def text_width(text: str, size: float) -> float:
    """An upper estimate of `text`'s advance at font size `size` (DejaVu Sans: lowercase ~0.6 em,
    capitals ~0.7, m/w ~0.97; anything outside ASCII is taken as a full em)."""
    em = 0.0
    for ch in text:
        if ord(ch) > 0x7F:
            em += 1.0
        elif ch in _WIDE:
            em += 1.0
        elif ch in _NARROW:
            em += 0.42
        elif ch.isupper():
            em += 0.8
        else:
            em += 0.66
    return em * size


def radar_skip_reason(radar: Radar) -> str | None:
    """Why no radar is drawn for `radar` (None: draw it). One model's polygon compares nothing; on
    fewer than three axes every polygon is a line, one hiding another."""
    if len(radar.series) < MIN_RADAR_MODELS:
        return RADAR_SKIPPED
    if len(radar.axes) < MIN_RADAR_AXES:
        return (f"{len(radar.axes)} pillar{'s' if len(radar.axes) != 1 else ''} ranked: a radar needs at least "
                f"{MIN_RADAR_AXES} axes (with fewer every polygon is a line); the pillar ranks are in the table")
    return None


class _Box:
    """The extent of what a chart draws, grown by every shape and text."""

    def __init__(self) -> None:
        self.x0 = self.y0 = math.inf
        self.x1 = self.y1 = -math.inf

    def add(self, x0: float, y0: float, x1: float, y1: float) -> None:
        self.x0, self.y0 = min(self.x0, x0), min(self.y0, y0)
        self.x1, self.y1 = max(self.x1, x1), max(self.y1, y1)

    def text(self, x: float, y: float, text: str, size: float, anchor: str = "start") -> None:
        """A text drawn at baseline y: ascent 0.8 em above, descent 0.25 em below."""
        w = text_width(text, size)
        left = x - (w / 2 if anchor == "middle" else w if anchor == "end" else 0.0)
        self.add(left, y - 0.8 * size, left + w, y + 0.25 * size)

    def frame(self, pad: float) -> tuple[float, float, float, float]:
        return self.x0 - pad, self.y0 - pad, self.x1 - self.x0 + 2 * pad, self.y1 - self.y0 + 2 * pad


def _svg(cls: str, box: _Box, label: str, body: list[str], pad: float = 8.0) -> str:
    x, y, w, h = box.frame(pad)
    return (f'<svg xmlns="http://www.w3.org/2000/svg" class="{cls}" width="{w:.0f}" height="{h:.0f}" '
            f'viewBox="{x:.1f} {y:.1f} {w:.1f} {h:.1f}" font-family="{FONTS}" role="img" aria-label="{_e(label)}">'
            f'<title>{_e(label)}</title><rect x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{h:.1f}" fill="#ffffff"/>'
            + "".join(body) + "</svg>")


def radar_svg(radar: Radar, size: int = 420, label: str = "", colours: dict[str, str] | None = None) -> str:
    """One axis per pillar; radius (n_models + 1 - rank) / n_models, so rank 1 is the outer ring.
    A model without a rank on a pillar is drawn at the centre with a hollow marker. `colours`
    keeps a model's colour the same across charts (default: the palette in series order). The
    plot is `size` across; the viewBox grows to hold the axis labels and the legend."""
    n_axes = len(radar.axes)
    r_max = size / 2 - 70
    n = max(radar.n_models, 1)
    box = _Box()
    box.add(-r_max, -r_max, r_max, r_max)

    def point(axis: int, radius: float) -> tuple[float, float]:
        a = -math.pi / 2 + 2 * math.pi * axis / max(n_axes, 1)
        return radius * math.cos(a), radius * math.sin(a)

    def radius(rank: int | None) -> float:
        return 0.0 if rank is None else r_max * (n + 1 - rank) / n

    parts = []
    step = math.ceil(n / 6)  # a number on rank 1 and every step-th ring: 12 numbers crowd the centre
    for rank in range(1, n + 1):  # rings, labelled with the rank they stand for
        ring = " ".join(f"{x:.1f},{y:.1f}" for x, y in (point(i, radius(rank)) for i in range(max(n_axes, 3))))
        if n_axes >= 3:
            parts.append(f'<polygon points="{ring}" fill="none" stroke="#d0d0d0" stroke-width="1"/>')
        else:
            parts.append(f'<circle cx="0" cy="0" r="{radius(rank):.1f}" fill="none" stroke="#d0d0d0"/>')
        if (rank - 1) % step == 0:
            x, y = point(0, radius(rank))
            parts.append(f'<text x="{x + 3:.1f}" y="{y + 11:.1f}" font-size="9" fill="#888">{rank}</text>')
            box.text(x + 3, y + 11, str(rank), 9)
    for i, axis in enumerate(radar.axes):
        x, y = point(i, r_max)
        parts.append(f'<line x1="0" y1="0" x2="{x:.1f}" y2="{y:.1f}" stroke="#bbb" stroke-width="1"/>')
        lx, ly = point(i, r_max + 14)
        anchor = "middle" if abs(lx) < 10 else ("start" if lx > 0 else "end")
        base = ly + 4 + (8 if ly > 10 else -4 if ly < -10 else 0)  # above the top axis, below the bottom one
        parts.append(f'<text x="{lx:.1f}" y="{base:.1f}" font-size="12" text-anchor="{anchor}" '
                     f'fill="#222">{_e(axis)}</text>')
        box.text(lx, base, axis, 12, anchor)
    legend_top = box.y1 + 14
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
        ly, lx = legend_top + 22 * k, -r_max
        parts.append(f'<rect x="{lx:.1f}" y="{ly:.1f}" width="14" height="14" fill="{colour}"/>'
                     f'<text x="{lx + 20:.1f}" y="{ly + 12:.1f}" font-size="12" fill="#222">{_e(s.model)}</text>')
        box.add(lx, ly, lx + 14, ly + 14)
        box.text(lx + 20, ly + 12, s.model, 12)
    return _svg("radar", box, label, parts)


def heatmap_svg(rows: Sequence[str], cols: Sequence[str], ranks: Sequence[Sequence[int | None]], n_models: int,
                label: str = "") -> str:
    """A grid of rank cells (rows x cols), coloured like the rank table, with the rank written in.
    Column labels are turned 30 degrees; the viewBox holds the longest of them."""
    cw, ch = 64, 26
    box = _Box()
    box.add(0, 0, cw * len(cols), ch * len(rows))
    parts = []
    slope = math.radians(30)
    for j, c in enumerate(cols):
        x = cw * j + cw / 2
        parts.append(f'<text x="{x:.1f}" y="-8" font-size="11" text-anchor="start" fill="#222" '
                     f'transform="rotate(-30 {x:.1f} -8)">{_e(c)}</text>')
        w = text_width(c, 11)  # the turned text's corners: along the slope, plus its height across it
        box.add(x - 11 * math.sin(slope), -8 - w * math.sin(slope) - 11 * math.cos(slope),
                x + w * math.cos(slope) + 3 * math.sin(slope), -8 + 3)
    for i, r in enumerate(rows):
        y = ch * i
        parts.append(f'<text x="-6" y="{y + ch / 2 + 4:.1f}" font-size="12" text-anchor="end" '
                     f'fill="#222">{_e(r)}</text>')
        box.text(-6, y + ch / 2 + 4, r, 12, "end")
        for j, c in enumerate(cols):
            rank = ranks[i][j]
            x = cw * j
            fill = rank_colour(rank, n_models)
            parts.append(f'<rect x="{x}" y="{y}" width="{cw - 2}" height="{ch - 2}" fill="{fill}">'
                         f'<title>{_e(r)} / {_e(c)}: {rank if rank is not None else "no rank"}</title></rect>'
                         f'<text x="{x + cw / 2 - 1:.1f}" y="{y + ch / 2 + 3:.1f}" font-size="12" text-anchor="middle" '
                         f'fill="#111">{rank if rank is not None else "–"}</text>')
    return _svg("heatmap", box, label, parts)


def pillar_heatmap(table: RankTable) -> str:
    blocks = [b for b in table.blocks if b.cells]
    if not blocks:
        return ""
    return heatmap_svg([b.pillar for b in blocks], [m.name for m in table.models],
                       [[c.rank for c in b.cells] for b in blocks], len(table.models), "pillar ranks")
