"""`engine report`: every number shown equals scores.json, ties and a missing subtask render, text is
escaped, API key values never appear, and the HTML renders in headless Chromium without console
messages.

Fixture: tests/fixtures/report_run (see its README.md): 3 models (two API, one local), 2 judges,
crisis/safety/privacy/ethics with ties, a null metric, a failed model and an unscored subtask.
"""

from __future__ import annotations

import html.parser
import os
import re
import shutil
import struct
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from engine.core.rundoc import RunDoc, RunSpec
from engine.report import build_report, load_inputs, render, report_for, write_reports
from engine.report.build import breakdown_tables, cohen_kappa, judgment_label
from engine.report.format import fmt_num, rank_colour
from engine.report.view import ReportInputs
from engine.testing.cdp import CHROMIUM, Chromium
from tests.conftest import fake_model, run_cli, write_config, write_items

FIXTURE = Path(__file__).parent / "fixtures" / "report_run"
SECRET_ENV = "TRUSTMH_REPORT_TEST_KEY"
SECRET = "sk-REPORTSECRET-7f3a9c21d4e8b6051234"


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(FIXTURE, dst, ignore=shutil.ignore_patterns("README.md"))
    return dst


@pytest.fixture
def scores() -> dict[str, Any]:
    return orjson.loads((FIXTURE / "scores.json").read_bytes())


def _texts(run_dir: Path) -> tuple[str, str]:
    report, secrets = report_for(run_dir)
    return render(report, "md", secrets), render(report, "html", secrets)


class Cells(html.parser.HTMLParser):
    """Collects every element with data-* attributes, and the text inside each <td>."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict[str, str | None], list[str]]] = []
        self._open: list[list[str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "td":
            text: list[str] = []
            self._open.append(text)
            if any(k.startswith("data-") for k in a):
                self.elements.append((tag, a, text))
        elif any(k.startswith("data-") for k in a):
            self.elements.append((tag, a, []))

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._open:
            self._open.pop()

    def handle_data(self, data: str) -> None:
        for t in self._open:
            t.append(data)


def _parse(html_text: str) -> Cells:
    p = Cells()
    p.feed(html_text)
    return p


def _num(attr: str | None) -> float | None:
    assert attr is not None
    return None if attr == "null" else float(attr)


# --------------------------------------------------------------------------- numbers


def test_html_rank_table_numbers_equal_scores(run_dir: Path, scores: dict[str, Any]) -> None:
    _, page = _texts(run_dir)
    cells = {(a["data-subtask"], a["data-model"]): (a, "".join(t)) for tag, a, t in _parse(page).elements
             if tag == "td" and "data-rank" in a and "data-subtask" in a}
    checked = 0
    for key, sub in scores["subtasks"].items():
        for model, d in sub["models"].items():
            a, text = cells[(key, model)]
            assert _num(a["data-value"]) == d["value"], (key, model)
            rank = sub["ranks"][model]
            assert a["data-rank"] == ("null" if rank is None else str(rank)), (key, model)
            assert _num(a["data-n"]) == d["n"]
            if d["ci"] is not None:
                assert [_num(a["data-ci-low"]), _num(a["data-ci-high"])] == d["ci"]
            # the visible text: the rank, then the value as printed
            shown = f"{rank if rank is not None else '–'}{fmt_num(d['value'])}"
            assert text.strip() == shown, (key, model, text)
            if d["value"] is not None:
                assert abs(float(fmt_num(d["value"])) - d["value"]) <= 5e-4
            checked += 1
    assert checked == 3 * len(scores["subtasks"])
    pillar_cells = {(a["data-pillar"], a["data-model"]): a for tag, a, _ in _parse(page).elements
                    if tag == "td" and "data-pillar" in a}
    for pillar, p in scores["pillars"].items():
        for model, rank in p["ranks"].items():
            a = pillar_cells[(pillar, model)]
            assert a["data-rank"] == ("null" if rank is None else str(rank))
            assert _num(a["data-mean"]) == p["mean_subtask_rank"][model]


def test_html_subtask_tables_equal_scores(run_dir: Path, scores: dict[str, Any]) -> None:
    _, page = _texts(run_dir)
    p = _parse(page)
    # walk elements in document order: a subtask <section>, then its metric rows and cells
    current_sub, current_model, seen = None, None, set()
    for tag, a, text in p.elements:
        if tag == "section" and "data-subtask" in a:
            current_sub = a["data-subtask"]
        elif tag == "tr" and current_sub and "data-model" in a:
            current_model = a["data-model"]
        elif tag == "td" and "data-field" in a and current_sub and current_model:
            d = scores["subtasks"][current_sub]["models"][current_model]
            field = a["data-field"] or ""
            shown = "".join(text)
            if field == "value":
                assert _num(a["data-value"]) == d["value"]
                assert shown == fmt_num(d["value"])
            elif field in ("n", "n_scored", "n_unparseable", "n_failed", "n_missing"):
                assert int(shown) == d[field], (current_sub, current_model, field)
            elif field.startswith("judge."):
                assert int(shown) == d["judge"][field.split(".", 1)[1]]
            elif field == "ci" and d["ci"] is not None:
                lo, hi = (float(x) for x in shown.strip("[]").split(","))
                assert abs(lo - d["ci"][0]) <= 5e-4 and abs(hi - d["ci"][1]) <= 5e-4
            seen.add((current_sub, current_model, field))
    expected = {(k, m) for k, s in scores["subtasks"].items() for m in s["models"]}
    assert {(s, m) for s, m, f in seen if f == "n_missing"} == expected


def _md_rank_rows(md: str) -> dict[str, list[str]]:
    section = md.split("## Rank table", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        if line.startswith("| ") and not line.startswith("| pillar"):
            cols = [c.strip() for c in line.strip("|").split(" | ")]
            label = cols[1].split(" ")[0].strip("*")
            rows[f"{cols[0].strip('*')}/{label}"] = cols[2:]
    return rows


def test_markdown_numbers_equal_scores(run_dir: Path, scores: dict[str, Any]) -> None:
    md, _ = _texts(run_dir)
    header = next(ln for ln in md.splitlines() if ln.startswith("| pillar | subtask |"))
    models = [c.strip() for c in header.strip("|").split("|")][2:]
    assert models == ["api-a", "api-b", "local-c"]  # API first, then local
    rows = _md_rank_rows(md)
    for key, sub in scores["subtasks"].items():
        for model, cell in zip(models, rows[key]):
            m = re.fullmatch(r"(\d+|–) \(([^)]*)\)", cell)
            assert m, (key, model, cell)
            rank, value = sub["ranks"][model], sub["models"][model]["value"]
            assert m.group(1) == (str(rank) if rank is not None else "–")
            if value is None:
                assert m.group(2) == "null"
            else:
                assert abs(float(m.group(2)) - value) <= 5e-4, (key, model, cell)
    for pillar, p in scores["pillars"].items():
        for model, cell in zip(models, rows[f"{pillar}/pillar"]):
            m = re.fullmatch(r"\*\*(\d+|–)\*\* \(([^)]*)\)", cell)
            assert m, cell
            rank, mean = p["ranks"][model], p["mean_subtask_rank"][model]
            assert m.group(1) == (str(rank) if rank is not None else "–")
            assert (m.group(2) == "null") if mean is None else abs(float(m.group(2)) - mean) <= 5e-4
    # per-subtask tables: n, n_scored, ... in the model's row under "### <key>"
    for key, sub in scores["subtasks"].items():
        block = md.split(f"### {key}\n", 1)[1].split("\n### ", 1)[0]
        head = next(ln for ln in block.splitlines() if ln.startswith("| model | rank |"))
        cols = [c.strip() for c in head.strip("|").split("|")]
        for model, d in sub["models"].items():
            line = next(ln for ln in block.splitlines() if ln.startswith(f"| {model} |"))
            vals = dict(zip(cols, (c.strip() for c in line.strip("|").split("|"))))
            for f in ("n", "n_scored", "n_unparseable", "n_failed", "n_missing"):
                assert int(vals[f]) == d[f], (key, model, f)
            assert vals["value"] == fmt_num(d["value"])


def test_ties_missing_subtask_and_null_metric(run_dir: Path) -> None:
    md, page = _texts(run_dir)
    rows = _md_rank_rows(md)
    assert rows["crisis/identification"] == ["1 (1.000)", "3 (0.500)", "1 (1.000)"]  # tie at 1, next is 3
    assert rows["safety/jailbreak"] == ["1 (1.000)", "2 (0.500)", "2 (0.500)"]
    assert rows["crisis/pillar"][:2] == ["**1** (1.667)", "**1** (1.667)"]  # tied pillar ranks
    assert rows["privacy/leakage"] == ["not scored"] * 3  # in the run, absent from scores.json
    assert rows["crisis/escalation"][2] == "– (null)"
    cells = [a for tag, a, _ in _parse(page).elements if tag == "td" and a.get("data-subtask") == "privacy/leakage"]
    assert len(cells) == 3 and all(a["data-scored"] == "false" for a in cells)
    assert "no scored items" in page and "no scored items" in md  # the reason of the null metric
    assert "reliability" not in _md_rank_rows(md)  # pillars not in the run are not shown
    # a tie_break that does not separate equal values leaves the tie (ethics: equal judge means)
    assert rows["ethics/ethical_reasoning"][:2] == ["2 (0.500)", "2 (0.500)"]
    assert "equal values ordered by judge_mean" in md and "equal values ordered by judge_mean" in page


def test_radars_and_groups(run_dir: Path) -> None:
    report, _ = report_for(run_dir)
    # two API models and one local one: a radar of the local model alone would compare nothing, so
    # one radar holds all three (tests/test_report_figures.py has the per-group and one-model cases)
    groups = {r.group: r for r in report.radars}
    assert set(groups) == {"all"}
    assert groups["all"].axes == ("crisis", "safety", "privacy", "ethics")
    api_b = next(s for s in groups["all"].series if s.model == "api-b")
    assert api_b.ranks == (1, 2, None, 2)
    assert [m.group for m in report.models] == ["api", "api", "local"]
    page = render(report, "html")
    assert page.count('<svg xmlns="http://www.w3.org/2000/svg" class="radar"') == 1


def test_judges_performance_and_drilldown(run_dir: Path) -> None:
    report, _ = report_for(run_dir)
    counts = {c.subtask: c for c in report.judge_counts}
    assert counts["crisis/escalation"].judged == 4 and counts["crisis/escalation"].judge == "api-a"
    agree = {a.subtask: a for a in report.judge_agreement}
    # api-b gave one escalation response a 4 where api-a gave 1: 5 of 6 agree
    assert agree["crisis/escalation"].n == 6 and agree["crisis/escalation"].share_agree == pytest.approx(5 / 6)
    assert "privacy/leakage" not in agree  # free-text proxy answers: nothing numeric to compare
    assert {k.model for k in report.keyword_agreement} == {"api-a", "api-b", "local-c"}
    lanes = {ln.model: ln for ln in report.lanes}
    assert lanes["api-b"].errors == {"rate_limited": 3, "timeout": 1} and lanes["api-a"].cost == 0.0123
    tokens = {t.model: t for t in report.tokens}
    assert tokens["api-a"].cost is not None and tokens["api-b"].cost is None
    drills = {d.subtask: d for d in report.drilldown}
    assert set(drills) == {"crisis/identification", "crisis/severity", "crisis/escalation", "safety/jailbreak",
                           "safety/antitoxic", "privacy/awareness", "privacy/leakage", "ethics/ethical_reasoning"}
    first = drills["crisis/escalation"].items[0]
    assert first.prompt and {r.model: r.status for r in first.responses}["local-c"] == "failed"
    assert all(len(d.items) <= 5 for d in drills.values())
    assert len(drills["privacy/leakage"].items) == 5 and drills["privacy/leakage"].total == 8


def test_text_is_escaped_and_self_contained(run_dir: Path) -> None:
    _, page = _texts(run_dir)
    assert "&lt;script&gt;alert(&quot;pwned&quot;)&lt;/script&gt;" in page
    # the only scripts: inert JSON data blocks and the one inline script the CSP allows by its hash
    assert re.findall(r"<script[^>]*>", page, re.I) == [
        '<script type="application/json" id="board-data">', '<script type="application/json" class="items-meta">',
        '<script type="application/json" class="items-data">', "<script>"]
    assert "<script>alert" not in page and "<img" not in page.lower()
    assert "script-src 'sha256-" in page and "unsafe-inline'; img" in page and "script-src 'unsafe" not in page
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page, re.I)
    assert "<link" not in page and "@import" not in page and "url(" not in page
    assert "Content-Security-Policy" in page


def test_json_format(run_dir: Path, scores: dict[str, Any]) -> None:
    doc = orjson.loads(render(report_for(run_dir)[0], "json"))
    rows = {r["key"]: r for b in doc["rank_table"]["blocks"] for r in b["rows"]}
    for key, sub in scores["subtasks"].items():
        for c in rows[key]["cells"]:
            assert c["value"] == sub["models"][c["model"]]["value"] and c["rank"] == sub["ranks"][c["model"]]
    assert rows["privacy/leakage"]["scored"] is False


def test_api_key_values_never_appear(run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = orjson.loads((run_dir / "run.json").read_bytes())
    assert run["config"]["models"]["api-a"]["api_key_env"] == SECRET_ENV  # the name only
    monkeypatch.setenv(SECRET_ENV, SECRET)
    # a server that echoed the key into an error message: the report must not pass it on
    lines = (run_dir / "responses" / "api-a.jsonl").read_bytes().splitlines()
    rec = orjson.loads(lines[0])
    rec.pop("response")
    rec["error"] = {"kind": "fatal", "status": 400, "message": f"bad request for key {SECRET}"}
    lines[0] = orjson.dumps(rec)
    (run_dir / "responses" / "api-a.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    outputs = [*_texts(run_dir), render(report_for(run_dir)[0], "json", report_for(run_dir)[1])]
    for fmt in ("md", "html", "json"):
        res = run_cli("report", run_dir, "--format", fmt, env={SECRET_ENV: SECRET})
        assert res.rc == 0, res.stderr
        outputs += [res.stdout, res.stderr]
    res = run_cli("report", run_dir, env={SECRET_ENV: SECRET})
    assert res.rc == 0, res.stderr
    outputs += [res.stdout, res.stderr, (run_dir / "report.md").read_text(), (run_dir / "report.html").read_text()]
    for text in outputs:
        assert SECRET not in text and SECRET[:12] not in text
    assert "bad request for key [redacted]" in outputs[1]


def test_absent_inputs_render_gracefully() -> None:
    run = RunDoc(spec=RunSpec(output="x", models=("m",)), config={"models": {"m": {"adapter": "vllm"}}})
    inputs = ReportInputs(directory="x", run=run,
                          scores=None, records={}, judgments={}, items=None, notes=("items could not be rebuilt",))
    report = build_report(inputs)
    assert report.rank_table is None and report.models[0].group == "local"
    md, page = render(report, "md"), render(report, "html")
    assert "Rank table" not in md and "no scores.json" in md
    assert 'id="ranks"' not in page and "items could not be rebuilt" in page


def test_cli_errors(run_dir: Path, tmp_path: Path) -> None:
    res = run_cli("report", tmp_path / "nope")
    assert res.rc == 2 and "no run.json" in res.stderr
    res = run_cli("report", run_dir, "--output", tmp_path / "x.md")
    assert res.rc == 2 and "--output needs --format" in res.stderr
    res = run_cli("report", run_dir, "--format", "md", "--output", tmp_path / "x.md", "--drill", "0")
    assert res.rc == 0 and (tmp_path / "x.md").read_text().startswith("# TrustMH-Bench report")


# --------------------------------------------------------------------------- pure helpers


def test_helpers() -> None:
    assert cohen_kappa([1, 0, 1, 0], [1, 0, 1, 0]) == 1.0
    assert cohen_kappa([1, 1], [1, 1]) is None
    assert judgment_label({"refused": True}) == 1.0
    assert judgment_label({"a": 1, "b": 2, "explanation": "x"}) == 2.0  # the rounded mean
    assert judgment_label({"answer": "text"}) is None
    assert rank_colour(1, 3) == "#66bd63" and rank_colour(3, 3) == "#f46d43" and rank_colour(None, 3) == "#e5e5e5"
    tables = breakdown_tables([("a", {"macro_f1": 0.5, "share": {"value": 1.0, "n": 2},
                                      "by_x": {"p": {"value": 0.1, "n": 1}, "q": {"value": 0.2, "n": 1}}}),
                               ("b", {"macro_f1": None, "by_x": {"p": {"value": 0.3, "n": 1}}})])
    by = {t.title: t for t in tables}
    assert [r.cells for r in by["summary"].rows] == [{"macro_f1": 0.5}, {"macro_f1": None}]
    assert by["entries"].columns == ("value", "n")
    assert [(r.label, r.model) for r in by["by_x"].rows] == [("p", "a"), ("p", "b"), ("q", "a")]


# --------------------------------------------------------------------------- the run writes the report


def test_run_writes_reports(tmp_path: Path, fake_server: Any) -> None:
    models = {"a": fake_model(fake_server), "b": fake_model(fake_server, temperature=0.5)}
    cfg = write_config(tmp_path / "c.toml", models,
                       extra='\n[judge]\nmodels = ["a"]\n')
    out = tmp_path / "out"
    res = run_cli("run", cfg, "--output", out, "--limit", "1", "--pillars", "crisis")
    assert res.rc == 0, res.stderr
    assert (out / "report.md").is_file() and (out / "report.html").is_file()
    scores = orjson.loads((out / "scores.json").read_bytes())
    cells = [a for tag, a, _ in _parse((out / "report.html").read_text()).elements
             if tag == "td" and "data-rank" in a and "data-subtask" in a]
    assert len(cells) == 2 * len(scores["subtasks"])
    for a in cells:
        assert _num(a["data-value"]) == scores["subtasks"][a["data-subtask"]]["models"][a["data-model"]]["value"]


# --------------------------------------------------------------------------- headless Chromium


def _png_stats(png: bytes) -> tuple[int, int, int, float]:
    """(width, height, distinct byte values, share of the most common one) of the decompressed
    image data. A blank page is one repeated byte (its colour, or 0 after PNG's row filters): a
    blank 1400x1000 screenshot has 4 distinct values and 99.98 % one byte; this report has 256."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, width, height = 8, b"", 0, 0
    while pos < len(png):
        (length,) = struct.unpack(">I", png[pos:pos + 4])
        kind, data = png[pos + 4:pos + 8], png[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height = struct.unpack(">II", data[:8])
        elif kind == b"IDAT":
            idat += data
        pos += 12 + length
    counts = Counter(zlib.decompress(idat))
    return width, height, len(counts), counts.most_common(1)[0][1] / sum(counts.values())


@pytest.mark.skipif(CHROMIUM is None, reason="headless check needs `chromium` on PATH (Debian: apt-get install -y chromium)")
def test_html_in_headless_chromium(run_dir: Path, scores: dict[str, Any]) -> None:
    """One browser (engine/testing/cdp.py) for the screenshot and the DOM: each Chromium start is
    about a second of CPU."""
    page = write_reports(run_dir)[1]
    url = f"file://{page}"
    with Chromium(width=1400, height=1000) as browser:
        browser.open(url)
        shot = browser.screenshot()
        dom = str(browser.eval("document.documentElement.outerHTML"))
        assert browser.console == [], "console messages:\n" + "\n".join(browser.console)
        assert browser.requests == [url]  # the page itself, nothing else
    width, height, distinct, top_share = _png_stats(shot)
    assert (width, height) == (1400, 1000)
    assert distinct >= 64 and top_share < 0.995, f"screenshot looks blank ({distinct} byte values, {top_share:.2%} one)"
    cells = [a for tag, a, _ in _parse(dom).elements if tag == "td" and "data-rank" in a and "data-subtask" in a]
    assert 'class="ranks"' in dom and len(cells) == 3 * (len(scores["subtasks"]) + 1)  # + the unscored row
    if os.environ.get("TRUSTMH_REPORT_SHOT"):  # keep a screenshot to look at
        Path(os.environ["TRUSTMH_REPORT_SHOT"]).write_bytes(shot)


def test_items_report_is_bounded_and_counts_every_item(tmp_path: Path, fake_server: Any) -> None:
    """An --items run with more items than the Responses table shows: the first ones in file order,
    a line that says how many of how many and where the rest are, and counts over every item; the
    loader keeps only the shown items' records (a 1M-item run's report held every one)."""
    items, out = write_items(tmp_path / "items.jsonl", 12), tmp_path / "out"
    cfg = write_config(tmp_path / "c.toml", {"a": fake_model(fake_server), "b": fake_model(fake_server)},
                       run={"output": str(out)})
    assert run_cli("run", cfg, "--items", items).rc == 0
    a, b = out / "responses" / "a.jsonl", out / "responses" / "b.jsonl"
    lines = a.read_bytes().splitlines()
    failed = next(i for i, ln in enumerate(lines) if orjson.loads(ln)["item_id"] == "q9")
    rec = orjson.loads(lines[failed])
    rec.update(response=None, error={"kind": "server", "status": 500, "message": "boom", "retryable": False})
    lines[failed] = orjson.dumps(rec)
    a.write_bytes(b"\n".join(lines) + b"\n")
    b.write_bytes(b"".join(ln + b"\n" for ln in b.read_bytes().splitlines() if orjson.loads(ln)["item_id"] != "q1"))
    inputs = load_inputs(out, response_rows=5)
    assert {m: sorted(r.item_id for r in rs) for m, rs in inputs.records.items()} == {
        "a": ["q0", "q1", "q2", "q3", "q4"], "b": ["q0", "q2", "q3", "q4"]}
    write_reports(out, response_rows=5)
    md = (out / "report.md").read_text()
    section = md.split("## Responses", 1)[1].split("\n## ", 1)[0]
    assert [ln.split(" | ")[0] for ln in section.splitlines() if ln.startswith("| q")] == [f"| q{i}" for i in range(5)]
    assert "| q1 | question number 1: how are you today? | reply:" in section and section.count("(missing)") == 1
    assert f"Showing 5 of 12 items (the first, in file order); every response is in {out / 'responses'}/*.jsonl" in section
    assert "| a | 11 | 1 | 0 |" in section and "| b | 11 | 0 | 1 |" in section
    assert re.search(r"^\| a \| 12 \| 110 \| ", md, re.M) and re.search(r"^\| b \| 11 \| 110 \| ", md, re.M)
    page = (out / "report.html").read_text()
    assert "Showing 5 of 12 items" in page and len(re.findall(r"<td>q\d+</td>", page)) == 5
    report = report_for(out, response_rows=50)[0]
    assert len(report.responses) == 12 and report.responses_shown and not report.responses_shown.truncated
    # the item browser lists the same items, each model's answer unscored (custom items have no metric)
    assert [it.id for it in report.items] == [f"q{i}" for i in range(12)]
    outcomes = {(it.id, a.model): a.outcome for it in report.items for a in it.answers}
    assert outcomes[("q9", "a")] == "error" and outcomes[("q1", "b")] == "missing" and outcomes[("q0", "a")] == "answered"


def test_the_unparseable_policy_said_is_the_one_the_value_used(run_dir: Path) -> None:
    """Ethics' own unreadable = "wrong" (the default) counts unparseable answers wrong whatever
    [pillars] unparseable = "exclude" says: the header says what the value did."""
    doc = orjson.loads((run_dir / "scores.json").read_bytes())
    ethics = doc["subtasks"]["ethics/ethical_reasoning"]
    md, page = _texts(run_dir)
    assert "unparseable answers excluded" in md.split("### ethics/ethical_reasoning")[1].split("\n\n")[1]
    for m in ethics["models"].values():
        m["breakdown"]["unreadable"] = "wrong"
    (run_dir / "scores.json").write_bytes(orjson.dumps(doc))
    md, page = _texts(run_dir)
    header = md.split("### ethics/ethical_reasoning")[1].split("\n\n")[1]
    assert "unparseable answers count as wrong" in header and "excluded" not in header
    assert "unparseable answers count as wrong" in page


def test_json_items_leave_defaults_out_as_readme_says(run_dir: Path) -> None:
    """README "The report": `sample` is absent when 0 and null fields are absent, not null."""
    doc = orjson.loads(render(report_for(run_dir)[0], "json"))
    assert doc["items"] and all("sample" not in i or i["sample"] > 0 for i in doc["items"])
    assert all(v is not None for i in doc["items"] for a in i["answers"] for v in a.values())
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    assert "`sample` when it is 0 (read a missing `sample` as 0)" in readme
