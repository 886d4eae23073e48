"""`report --figures DIR`: the pillar-rank heatmap and radars as SVG and PNG for a two-column paper.

Sizes (inches): each radar is one column wide (`COLUMN_WIDTH`, 3.3 in); the heatmap too for up to
`COLUMN_MODELS` models, else the full text width (`FULL_WIDTH`, 7 in, a `figure*`); fonts are 7-8 pt, as in the paper's body. matplotlib (the optional
`figures` extra) lays them out with its constrained layout, and `check_inside` proves that no text
reaches past the figure's edge. The report's HTML keeps its own inline SVG (engine/report/svg.py).

matplotlib is imported inside `_matplotlib` only: without the extra, `report` works and only
`--figures` refuses, with one line naming the extra; with it, other commands do not pay its
import time.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from engine.core.errors import EngineError
from engine.report.format import rank_colour
from engine.report.svg import PALETTE, radar_skip_reason, text_width
from engine.report.view import Radar, RankTable, Report

if TYPE_CHECKING:
    from matplotlib.figure import Figure

COLUMN_WIDTH = 3.3  # one column of a two-column paper (ACL, IEEE, ACM: 3.3-3.5 in)
FULL_WIDTH = 7.0  # both columns (figure*)
COLUMN_MODELS = 5  # a heatmap of up to this many models fits one column; more take the full width
FONT_PT = 7.5
DPI = 300
FORMATS = ("svg", "png")
MISSING = ("report --figures needs matplotlib, which is not installed: "
           "pip install 'trustmh-engine[figures]' (or pip install matplotlib), then rerun")
CAPTION = {"api": "API models", "local": "local models", "all": "all models"}


def _matplotlib() -> ModuleType:
    try:  # every part used, so a broken install fails here and not half-way through a figure
        import matplotlib
        import matplotlib.backends.backend_agg
        import matplotlib.figure
        import matplotlib.patches
        import matplotlib.text
    except ImportError:
        raise EngineError(MISSING) from None
    return matplotlib


def _label(pillar: str) -> str:
    return pillar.replace("_", "-")


def heatmap_figure(table: RankTable) -> Figure | None:
    """Pillars (rows) x models (columns), cells coloured like the report's rank table, the rank
    written in; None when no pillar is ranked."""
    mpl = _matplotlib()
    blocks = [b for b in table.blocks if b.cells]
    if not blocks:
        return None
    models = [m.name for m in table.models]
    n = len(models)
    with mpl.rc_context({"font.size": FONT_PT}):
        width = COLUMN_WIDTH if n <= COLUMN_MODELS else FULL_WIDTH
        fig = mpl.figure.Figure(figsize=(width, 0.9 + 0.24 * len(blocks)), layout="constrained")
        ax = fig.add_subplot()
        for i, b in enumerate(blocks):
            for j, c in enumerate(b.cells):
                ax.add_patch(mpl.patches.Rectangle((j, i), 0.96, 0.92, facecolor=rank_colour(c.rank, n), linewidth=0))
                ax.text(j + 0.48, i + 0.46, "–" if c.rank is None else str(c.rank), ha="center", va="center")
        ax.set_xlim(-0.04, n)
        ax.set_ylim(len(blocks), -0.08)
        ax.set_xticks([j + 0.48 for j in range(n)], models, rotation=30, ha="left", rotation_mode="anchor")
        ax.set_yticks([i + 0.46 for i in range(len(blocks))], [_label(b.pillar) for b in blocks])
        ax.xaxis.tick_top()
        ax.tick_params(length=0)
        for side in ax.spines.values():
            side.set_visible(False)
    return fig


def radar_figure(radar: Radar, colours: dict[str, str]) -> Figure:
    """One polar axis per pillar; rank 1 on the outer ring (radius n_models + 1 - rank), a model
    without a rank at the centre with a hollow marker; the legend below, in as many columns as fit."""
    mpl = _matplotlib()
    n = max(radar.n_models, 1)
    k = len(radar.axes)
    theta = [2 * math.pi * i / max(k, 1) for i in range(k)]
    # Legend columns: as many as fit across (an entry: line 1.2 em, gap 0.8 em, name, spacing 1 em).
    entry = max((text_width(s.model, FONT_PT) for s in radar.series), default=0.0) + 3.0 * FONT_PT
    cols = max(1, min(len(radar.series), 3, int((COLUMN_WIDTH * 72 - 12) // entry)))
    rows = math.ceil(len(radar.series) / cols)
    with mpl.rc_context({"font.size": FONT_PT}):
        # The circle is about 2.4 in across once the longest labels sit beside it; the legend below.
        fig = mpl.figure.Figure(figsize=(COLUMN_WIDTH, 2.9 + 0.15 * rows), layout="constrained")
        ax = fig.add_subplot(projection="polar")
        ax.set_theta_offset(math.pi / 2)  # the first pillar at the top, then clockwise, as in the report
        ax.set_theta_direction(-1)
        for s_i, s in enumerate(radar.series):
            colour = colours.get(s.model) or PALETTE[s_i % len(PALETTE)]
            r = [0.0 if x is None else float(n + 1 - x) for x in s.ranks]
            ax.fill([*theta, theta[0]], [*r, r[0]], color=colour, alpha=0.10, linewidth=0)
            ax.plot([*theta, theta[0]], [*r, r[0]], color=colour, linewidth=1.2, label=s.model)
            for t, x, rank in zip(theta, r, s.ranks):
                ax.plot([t], [x], marker="o", markersize=3, color=colour,
                        markerfacecolor="white" if rank is None else colour)
        ax.set_ylim(0, n)
        ax.set_xlim(0, 2 * math.pi)
        step = math.ceil(n / 6)  # a ring per rank; a number on rank 1 and every `step`-th after it
        ax.set_yticks(list(range(1, n + 1)), [str(n + 1 - v) if (n - v) % step == 0 else ""
                                               for v in range(1, n + 1)])
        ax.tick_params(axis="y", labelsize=FONT_PT - 1.5, labelcolor="#777777")
        ax.set_rlabel_position(360 / max(k, 1) / 2)
        ax.set_xticks(theta, [_label(a) for a in radar.axes])
        for t, lab in zip(theta, ax.get_xticklabels()):  # away from the circle: left side ends at it, right starts
            x = math.sin(t)
            lab.set_horizontalalignment("center" if abs(x) < 0.2 else "left" if x > 0 else "right")
        ax.tick_params(axis="x", pad=4)
        ax.grid(color="#cccccc", linewidth=0.5)
        ax.spines["polar"].set_color("#999999")
        fig.legend(loc="outside lower center", ncols=cols, frameon=False, handlelength=1.2, columnspacing=1.0)
    return fig


def check_inside(fig: Figure) -> list[str]:
    """Every visible text of `fig` drawn, then measured: the ones whose extent leaves the figure."""
    mpl = _matplotlib()
    canvas = mpl.backends.backend_agg.FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    w, h = fig.bbox.width, fig.bbox.height
    out = []
    for t in fig.findobj(mpl.text.Text):
        if not t.get_visible() or not t.get_text():
            continue
        e = t.get_window_extent(renderer)
        if e.x0 < -0.5 or e.y0 < -0.5 or e.x1 > w + 0.5 or e.y1 > h + 0.5:
            out.append(f"{t.get_text()!r} at [{e.x0:.0f}, {e.x1:.0f}] x [{e.y0:.0f}, {e.y1:.0f}] in {w:.0f} x {h:.0f}")
    return out


def _save(fig: Figure, path: Path) -> None:
    """Atomically (a report being looked at is never half written); reproducible bytes."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fmt = path.suffix[1:]
    metadata: dict[str, str | None] = {"Date": None} if fmt == "svg" else {"Software": None}
    try:
        with _matplotlib().rc_context({"svg.hashsalt": "trustmh"}):  # the SVG's ids: the same on every write
            fig.savefig(tmp, format=fmt, dpi=DPI, metadata=metadata, facecolor="white")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def figures(report: Report) -> tuple[list[tuple[str, Figure]], list[str]]:
    """(file stem, figure) for each figure of `report`, and a line for each one not drawn."""
    _matplotlib()
    made: list[tuple[str, Figure]] = []
    skipped: list[str] = []
    table = report.rank_table
    heat = heatmap_figure(table) if table is not None else None
    if heat is None:
        skipped.append("no figure: no pillar is ranked (no scores.json, or a custom --items run)")
    else:
        made.append(("pillar-ranks-heatmap", heat))
    colours = {m.name: PALETTE[i % len(PALETTE)] for i, m in enumerate(report.models)}
    for rd in report.radars:
        why = radar_skip_reason(rd)
        if why:
            skipped.append(f"radar ({CAPTION[rd.group]}): {why}")
        else:
            made.append((f"pillar-ranks-radar-{rd.group}", radar_figure(rd, colours)))
    return made, skipped


def write_figures(report: Report, directory: Path, formats: Sequence[str] = FORMATS) -> tuple[list[Path], list[str]]:
    """Each figure of `report` into `directory` (created) in each format: the paths written, and a
    line for each figure not drawn (a radar of one model, nothing ranked)."""
    made, skipped = figures(report)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for stem, fig in made:
        for fmt in formats:
            path = directory / f"{stem}.{fmt}"
            _save(fig, path)
            paths.append(path)
    return paths, skipped
