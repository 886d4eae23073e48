"""Charts that say something and are never clipped: the report's inline SVG (every text's estimated
extent inside the viewBox, the estimate checked against DejaVu Sans' real metrics), a radar only
with two or more models, and `report --figures DIR` (matplotlib, the `figures` extra): SVG + PNG at
paper sizes, nothing outside the figure (measured by matplotlib and on the PNG's margins), and one
clear line with exit 2 when matplotlib is not installed."""

from __future__ import annotations

import re
import shutil
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import msgspec
import orjson
import pytest

from engine.report import build_report, load_inputs, render, report_for
from engine.report.build import radars
from engine.report.figures import COLUMN_WIDTH, DPI, FULL_WIDTH, MISSING, check_inside, figures
from engine.report.svg import RADAR_SKIPPED, heatmap_svg, radar_skip_reason, radar_svg, text_width
from engine.report.view import ModelInfo, PillarBlock, PillarCell, Radar, RadarSeries, RankTable, Report, RunInfo
from tests.conftest import run_cli

FIXTURE = Path(__file__).parent / "fixtures" / "report_run"
SVG = "{http://www.w3.org/2000/svg}"
PILLARS = ("reliability", "crisis", "safety", "fairness", "privacy", "robustness", "anti_sycophancy", "ethics")
MODELS = ("gpt-4o-mini", "claude-sonnet-4-5", "gemini-2.5-flash", "qwen-plus", "deepseek-chat", "gpt-4.1",
          "MentaLLaMA-chat-13B", "EmoLLM-internlm2", "SoulChat2.0-Llama-3.1-8B", "PsyChat", "MeChat", "CPsyCounX")


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(FIXTURE, dst, ignore=shutil.ignore_patterns("README.md"))
    return dst


def _table(models: tuple[str, ...] = MODELS, api: int = 6) -> RankTable:
    """The paper's shape: 12 models (6 API, 6 local), 8 pillars, some unranked cells."""
    infos = tuple(ModelInfo(name=m, group="api" if i < api else "local", adapter="x", model_id=m) for i, m in enumerate(models))
    blocks = tuple(PillarBlock(pillar=p, rows=(), cells=tuple(
        PillarCell(model=m, rank=None if (i + j) % 7 == 3 else 1 + (i * 5 + j) % len(models), mean_subtask_rank=1.0)
        for i, m in enumerate(models))) for j, p in enumerate(PILLARS))
    return RankTable(models=infos, blocks=blocks)


def _report(table: RankTable) -> Report:
    run = RunInfo(directory="x", status="complete", config_source=None, started_at=None, ended_at=None, data=None,
                  limit=None, samples=None, judges=())
    return Report(title="t", run=run, models=table.models, rank_table=table, radars=radars(table), subtasks=(),
                  judge_counts=(), judge_agreement=(), keyword_agreement=(), lanes=(), tokens=(), drilldown=(), notes=())


# --------------------------------------------------------------------------- inline SVG


def _text_boxes(svg: str) -> tuple[tuple[float, float, float, float], list[tuple[str, tuple[float, float, float, float]]]]:
    """The viewBox and each <text>'s estimated box (x0, y0, x1, y1), rotation included."""
    root = ET.fromstring(svg)
    vx, vy, vw, vh = (float(v) for v in root.attrib["viewBox"].split())
    out = []
    for t in root.iter(f"{SVG}text"):
        text, size = t.text or "", float(t.attrib["font-size"])
        x, y = float(t.attrib["x"]), float(t.attrib["y"])
        w = text_width(text, size)
        anchor = t.attrib.get("text-anchor", "start")
        x0 = x - (w / 2 if anchor == "middle" else w if anchor == "end" else 0.0)
        corners = [(x0, y - 0.8 * size), (x0 + w, y - 0.8 * size), (x0, y + 0.25 * size), (x0 + w, y + 0.25 * size)]
        if m := re.match(r"rotate\((-?[\d.]+) (-?[\d.]+) (-?[\d.]+)\)", t.attrib.get("transform", "")):
            import math

            a, cx, cy = math.radians(float(m[1])), float(m[2]), float(m[3])
            corners = [(cx + (px - cx) * math.cos(a) - (py - cy) * math.sin(a),
                        cy + (px - cx) * math.sin(a) + (py - cy) * math.cos(a)) for px, py in corners]
        xs, ys = [c[0] for c in corners], [c[1] for c in corners]
        out.append((text, (min(xs), min(ys), max(xs), max(ys))))
    return (vx, vy, vx + vw, vy + vh), out


def _assert_inside(svg: str) -> int:
    (vx0, vy0, vx1, vy1), boxes = _text_boxes(svg)
    for text, (x0, y0, x1, y1) in boxes:
        assert vx0 <= x0 and x1 <= vx1 and vy0 <= y0 and y1 <= vy1, (text, (x0, y0, x1, y1), (vx0, vy0, vx1, vy1))
    return len(boxes)


def test_inline_svg_texts_inside_the_viewbox() -> None:
    """The paper's 12 x 8 shape, long model names and `anti_sycophancy` (which the radar clipped)."""
    table = _table()
    rds = radars(table)
    assert [r.group for r in rds] == ["api", "local"] and all(len(r.series) == 6 for r in rds)
    for rd in rds:
        svg = radar_svg(rd, label="r")
        assert "anti_sycophancy" in svg and _assert_inside(svg) == 8 + 6 + 6  # axes, ranks 1,3,..,11, legend
    heat = heatmap_svg([b.pillar for b in table.blocks], [m.name for m in table.models],
                       [[c.rank for c in b.cells] for b in table.blocks], 12)
    assert _assert_inside(heat) == 8 + 12 + 8 * 12
    long = Radar(group="all", axes=("a" * 40, *PILLARS), n_models=2,
                 series=(RadarSeries(model="M" * 60, ranks=(1,) * 9), RadarSeries(model="m", ranks=(2,) * 9)))
    _assert_inside(radar_svg(long))


def test_text_width_is_an_upper_bound_for_dejavu_sans() -> None:
    """The estimate the layout relies on, against the real advance of every label in the charts
    (DejaVu Sans, the widest common sans-serif, ships with matplotlib)."""
    from matplotlib.font_manager import FontProperties
    from matplotlib.textpath import TextPath

    prop = FontProperties(family="DejaVu Sans")
    for s in (*PILLARS, *MODELS, "0123456789", "WWWMMM mmm", "Qwen/Qwen3-8B", "–"):
        real = TextPath((0, 0), s, size=12, prop=prop).get_extents().x1
        assert text_width(s, 12) >= real, (s, text_width(s, 12), real)


def test_radar_needs_two_models(run_dir: Path) -> None:
    """A group of one model joins the others in one radar; a run of one model gets no radar, one
    line saying why (HTML), and `--figures` says the same."""
    report, _ = report_for(run_dir)  # two API models and one local one: one radar of all three
    assert [(r.group, len(r.series)) for r in report.radars] == [("all", 3)]
    page = render(report, "html")
    assert page.count('class="radar"') == 1 and "All models" in page
    run = orjson.loads((run_dir / "run.json").read_bytes())
    run["spec"]["models"] = ["api-a"]
    scores = orjson.loads((run_dir / "scores.json").read_bytes())
    scores["models"] = ["api-a"]
    for sub in scores["subtasks"].values():
        sub["models"] = {"api-a": sub["models"]["api-a"]}
        sub["ranks"] = {"api-a": 1}
    for p in scores["pillars"].values():
        p["ranks"] = {"api-a": 1}
        p["mean_subtask_rank"] = {"api-a": 1.0}
    (run_dir / "run.json").write_bytes(orjson.dumps(run))
    (run_dir / "scores.json").write_bytes(orjson.dumps(scores))
    one = build_report(load_inputs(run_dir))
    assert [(r.group, len(r.series)) for r in one.radars] == [("api", 1)]
    page = render(one, "html")
    assert 'class="radar"' not in page and RADAR_SKIPPED in page and 'class="heatmap"' in page
    made, skipped = figures(one)
    assert [s for s, _ in made] == ["pillar-ranks-heatmap"] and skipped == [f"radar (API models): {RADAR_SKIPPED}"]


# --------------------------------------------------------------------------- --figures (matplotlib)


def _png_size_and_margin(path: Path) -> tuple[tuple[int, int], bool]:
    """(width, height) in pixels, and whether the outermost 2 pixels are white all round (nothing
    drawn reaches the edge)."""
    from matplotlib.image import imread

    img = imread(path)
    h, w = img.shape[:2]
    rgb = img[..., :3]
    edge = [rgb[:2], rgb[-2:], rgb[:, :2], rgb[:, -2:]]
    return (w, h), all(float(e.min()) > 0.99 for e in edge)


@pytest.mark.slow(15)  # starts early (tests/conftest.py): matplotlib's first import and layout dominate
def test_figures_paper_sizes_and_nothing_clipped(tmp_path: Path) -> None:
    from engine.report.figures import write_figures

    table = _table()
    made, skipped = figures(_report(table))
    assert [s for s, _ in made] == ["pillar-ranks-heatmap", "pillar-ranks-radar-api", "pillar-ranks-radar-local"]
    assert skipped == []
    for stem, fig in made:
        assert check_inside(fig) == [], stem
        width = fig.get_size_inches()[0]
        assert width == (FULL_WIDTH if stem.endswith("heatmap") else COLUMN_WIDTH)
    paths, _ = write_figures(_report(table), tmp_path / "figs")
    assert sorted(p.name for p in paths) == sorted(f"{s}.{x}" for s, _ in made for x in ("svg", "png"))
    for p in paths:
        if p.suffix == ".png":
            (w, _), clear = _png_size_and_margin(p)
            assert clear, f"{p.name}: something touches the edge"
            assert w == round((FULL_WIDTH if "heatmap" in p.name else COLUMN_WIDTH) * DPI)
        else:
            root = ET.fromstring(p.read_bytes())
            assert root.attrib["width"].endswith("pt") and float(root.attrib["width"][:-2]) == pytest.approx(
                (FULL_WIDTH if "heatmap" in p.name else COLUMN_WIDTH) * 72)
    assert not list((tmp_path / "figs").glob(".*"))  # no temporary file left
    # reproducible: the same report gives the same SVG bytes
    again, _ = write_figures(_report(table), tmp_path / "again", formats=("svg",))
    assert [a.read_bytes() for a in again if a.suffix == ".svg"] == [p.read_bytes() for p in paths if p.suffix == ".svg"]


def test_report_figures_cli(run_dir: Path, tmp_path: Path) -> None:
    figs = tmp_path / "figs"
    r = run_cli("report", run_dir, "--figures", figs)
    assert r.rc == 0, r.stderr
    names = sorted(p.name for p in figs.iterdir())
    assert names == ["pillar-ranks-heatmap.png", "pillar-ranks-heatmap.svg", "pillar-ranks-radar-all.png",
                     "pillar-ranks-radar-all.svg"]
    assert str(figs / "pillar-ranks-radar-all.svg") in r.stdout and (run_dir / "report.html").is_file()
    # a small run's heatmap fits one column
    (w, _), clear = _png_size_and_margin(figs / "pillar-ranks-heatmap.png")
    assert clear and w == round(COLUMN_WIDTH * DPI)


def test_report_figures_without_matplotlib(run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the extra: one line naming it, exit 2, nothing written into FIGDIR; the report
    without --figures is unaffected."""
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises ImportError
    r = run_cli("report", run_dir, "--figures", tmp_path / "figs")
    assert r.rc == 2
    assert r.stderr.strip().splitlines() == [f"error: {MISSING}"]
    assert "[figures]" in MISSING and not (tmp_path / "figs").exists()
    assert run_cli("report", run_dir).rc == 0


def test_radar_view_json_keeps_the_group(run_dir: Path) -> None:
    doc = msgspec.json.decode(render(report_for(run_dir)[0], "json"))
    assert [r["group"] for r in doc["radars"]] == ["all"]


def test_radar_needs_three_pillars() -> None:
    """Two pillars make every polygon a line (one model's hid another's): no radar, one line saying
    why, in the HTML and from --figures; three pillars draw it."""
    full = _table()
    two = RankTable(models=full.models, blocks=full.blocks[:2])
    report = _report(two)
    why = "2 pillars ranked: a radar needs at least 3 axes (with fewer every polygon is a line); the pillar ranks are in the table"
    assert report.radars and all(radar_skip_reason(rd) == why for rd in report.radars)
    page = render(report, "html")
    assert 'class="radar"' not in page and why in page and 'class="heatmap"' in page
    made, skipped = figures(report)
    assert [s for s, _ in made] == ["pillar-ranks-heatmap"] and skipped == [
        f"radar (API models): {why}", f"radar (local models): {why}"]
    three = _report(RankTable(models=full.models, blocks=full.blocks[:3]))
    assert all(radar_skip_reason(rd) is None for rd in three.radars)
