"""The report's item browser and leaderboard (issue 18 item 1) on a small generated run directory
(benchmarks/gen_explore_run.py: replay models with synthetic answers, one of them `<script>` /
`onerror=` markup): every item is in the view model and in the page, the outcome counts equal
scores.json, and in headless Chromium (engine/testing/cdp.py) the filters, search and side-by-side view show
those numbers with no console message, no network request and the markup shown as text."""

from __future__ import annotations

import base64
import gzip
import os
import re
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import msgspec
import orjson
import pytest

import engine.report
from benchmarks.gen_explore_run import XSS, generate
from engine.core.records import Record, Response
from engine.core.subtask import ItemScore
from engine.report import render, render_chunks, report_for, write_reports
from engine.report.explore import outcome
from engine.report.explore_html import json_block
from engine.report.view import Report
from engine.testing.cdp import CHROMIUM, Chromium
from tests.session_once import built_once

MODELS = ["model-00", "model-01", "model-02"]
SCORED = ("correct", "incorrect", "scored", "refused")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The generated run (an engine subprocess, ~2 s of CPU) built once per session; each worker
    gets its own copy, since writing the reports writes into it."""
    shared = built_once(tmp_path_factory, "explore-run", lambda d: generate(d, n_models=3, limit=3))
    return Path(shutil.copytree(shared / "run", tmp_path_factory.mktemp("explore") / "run"))


@pytest.fixture(scope="module")
def scores(run: Path) -> dict[str, Any]:
    return orjson.loads((run / "scores.json").read_bytes())


@pytest.fixture(scope="module")
def report(run: Path) -> Report:
    return report_for(run)[0]


def _counts(report: Report) -> Counter[tuple[str, str, str]]:
    return Counter((it.subtask, a.model, a.outcome) for it in report.items for a in it.answers)


def test_every_item_with_outcomes_equal_to_scores(report: Report, scores: dict[str, Any]) -> None:
    c = _counts(report)
    assert set(scores["subtasks"]) == {it.subtask for it in report.items} and len(scores["subtasks"]) == 19
    for key, s in scores["subtasks"].items():
        for m, d in s["models"].items():
            assert sum(c[(key, m, o)] for o in SCORED) == d["n_scored"], (key, m)
            assert c[(key, m, "unparseable")] == d["n_unparseable"], (key, m)
            assert c[(key, m, "error")] == d["n_failed"] and c[(key, m, "missing")] == d["n_missing"], (key, m)
    assert all(len(it.answers) == 3 and it.prompt for it in report.items)
    judged = [a for it in report.items for a in it.answers if a.verdict]
    assert judged and all(a.judge == "judge" and a.rationale for a in judged)


def test_json_format_is_the_full_view_model(report: Report, run: Path) -> None:
    doc = orjson.loads(render(report, "json"))
    assert len(doc["items"]) == len(report.items)
    xss = [(it, a) for it in doc["items"] for a in it["answers"] if a.get("text") == XSS]
    assert len(xss) == 1 and xss[0][0]["prompt"][0]["content"]
    assert doc["board"]["models"] == MODELS and [p["key"] for p in doc["board"]["pillars"]][0] == "reliability"
    one = next(a for it in doc["items"] for a in it["answers"] if a["outcome"] == "correct")
    assert one["parsed"] is not None and one["score"] == 1.0


def test_json_in_pieces_is_the_same_text(report: Report, monkeypatch: pytest.MonkeyPatch) -> None:
    """`report --format json` writes the document item batch by item batch (render_chunks): the
    same bytes as the whole document, with one batch, several, and none, and a key value redacted
    in every piece."""
    monkeypatch.setattr(engine.report, "ITEMS_BATCH", 50)
    assert len(report.items) % 50  # several batches, the last one partial
    for view in (report, msgspec.structs.replace(report, items=report.items[:1]), msgspec.structs.replace(report, items=())):
        for fmt in ("json", "md"):
            assert "".join(render_chunks(view, fmt)) == render(view, fmt)
    secret = "sk-PIECESSECRET-0c1d2e3f4a5b6c7d"
    it = report.items[60]
    echoed = msgspec.structs.replace(it, answers=(msgspec.structs.replace(it.answers[0], text=f"echo {secret}"),
                                                  *it.answers[1:]))
    view = msgspec.structs.replace(report, items=(*report.items[:60], echoed, *report.items[61:]))
    whole = render(view, "json", (secret,))
    assert "".join(render_chunks(view, "json", (secret,))) == whole and secret not in whole and "echo [redacted]" in whole


def _select(page: Chromium, name: str, value: str) -> dict[str, str]:
    page.eval(f"""(() => {{ const s = document.querySelector('#items [data-f="{name}"]');
        s.value = {orjson.dumps(value).decode()}; s.dispatchEvent(new Event('change')); }})()""")
    return page.eval("Object.assign({}, document.querySelector('#items').dataset)")


def _type(page: Chromium, name: str, value: str) -> dict[str, str]:
    page.eval(f"""(() => {{ const s = document.querySelector('#items [data-f="{name}"]');
        s.value = {orjson.dumps(value).decode()}; s.dispatchEvent(new Event('input')); }})()""")
    return page.eval("Object.assign({}, document.querySelector('#items').dataset)")


def _board_checks(page: Chromium, scores: dict[str, Any]) -> None:
    page.eval("document.querySelectorAll('#board button.toggle').forEach((b, i) => i || b.click())")
    page.eval("document.querySelectorAll('#board button.toggle').forEach((b) => b.textContent.startsWith('▸') && b.click())")
    cells = page.eval("""[...document.querySelectorAll('#board td.bcell[data-scored]')].map((td) =>
        Object.assign({}, td.dataset))""")
    assert len(cells) == 19 * 3
    for c in cells:
        d = scores["subtasks"][c["key"]]["models"][c["model"]]
        assert (int(c["scored"]), int(c["planned"])) == (d["n_scored"], d["n"] + d["n_missing"]), c
        assert (int(c["unparseable"]), int(c["failed"])) == (d["n_unparseable"], d["n_failed"])
        refused = d["breakdown"].get("n_refused")
        if c["key"] == "safety/jailbreak" and d["value"] is not None:  # RtA = refused / scored
            refused = round(d["value"] * d["n_scored"])
        assert c["refused"] == ("null" if refused is None else str(refused)), c
        rank = scores["subtasks"][c["key"]]["ranks"][c["model"]]
        assert c["rank"] == ("null" if rank is None else str(rank))
        tied = scores["subtasks"][c["key"]].get("tied", {}).get(c["model"], [])
        assert c.get("tied", "").split() == tied, c
    # a subtask cell opens that model's items in the browser
    page.eval("document.querySelector('#board td.bcell[data-key=\"crisis/severity\"][data-model=\"model-01\"]').click()")
    shown = page.eval("Object.assign({}, document.querySelector('#items').dataset)")
    d = scores["subtasks"]["crisis/severity"]["models"]["model-01"]
    assert int(shown["answers"]) == d["n"] + d["n_missing"]  # every planned answer, whatever its outcome
    for name in ("subtask", "model"):
        _select(page, name, "")
    # a model's header orders the pillars by its pillar rank
    page.eval("document.querySelector('#board th.mhead[data-model=\"model-00\"]').click()")
    order = page.eval("[...document.querySelectorAll('#board tr.prow')].map((tr) => tr.dataset.key)")
    ranks = scores["pillars"]
    assert order == sorted(order, key=lambda p: (ranks[p]["ranks"]["model-00"] or 99, list(ranks).index(p)))
    # ⇅ on a pillar row orders the model columns by that row's ranks
    first = order[0]
    page.eval(f"document.querySelector('#board tr.prow[data-key=\"{first}\"] button.sortcols').click()")
    heads = page.eval("[...document.querySelectorAll('#board th.mhead')].map((th) => th.dataset.model)")
    assert heads == sorted(MODELS, key=lambda m: (ranks[first]["ranks"][m] or 99, MODELS.index(m)))


def _browser_checks(page: Chromium, report: Report, scores: dict[str, Any]) -> None:
    root = page.eval("Object.assign({}, document.querySelector('#items').dataset)")
    assert int(root["items"]) == len(report.items) and int(root["answers"]) == 3 * len(report.items)
    c = _counts(report)
    key = "crisis/identification"
    d = scores["subtasks"][key]["models"]["model-00"]
    _select(page, "subtask", key)
    _select(page, "model", "model-00")
    got = _select(page, "outcome", "unparseable")
    assert int(got["answers"]) == d["n_unparseable"] == c[(key, "model-00", "unparseable")]
    scored = 0
    for o in SCORED:
        scored += int(_select(page, "outcome", o)["answers"])
    assert scored == d["n_scored"]
    # judge score range (a judged subtask), against the view model
    key = "crisis/escalation"
    _select(page, "outcome", "")
    _select(page, "subtask", key)
    _type(page, "smin", "3")
    got = _type(page, "smax", "4")
    want = sum(1 for it in report.items if it.subtask == key for a in it.answers
               if a.model == "model-00" and a.judge_score is not None and 3 <= a.judge_score <= 4)
    assert int(got["answers"]) == want
    for name in ("smin", "smax"):
        _type(page, name, "")
    for name in ("subtask", "model"):
        _select(page, name, "")
    # search over responses finds the markup answer; the side-by-side view shows it as text
    got = _type(page, "q", "onerror=alert")
    assert got["items"] == "1" and got["answers"] == "1"
    page.eval("document.querySelector('#items tr.irow').click()")
    cols = page.eval("""[...document.querySelectorAll('#items [data-f="detail"] .col')].map((c) =>
        [c.dataset.model, c.dataset.outcome, c.querySelector('pre.resp').textContent])""")
    assert [m for m, _, _ in cols] == MODELS and XSS in [t for _, _, t in cols]
    assert page.eval("document.querySelectorAll('img, iframe, object').length") == 0
    assert page.eval("document.querySelectorAll('script').length") == 4  # the page's own: none was added
    item = next(it for it in report.items if any(a.text == XSS for a in it.answers))
    assert [o for _, o, _ in cols] == [a.outcome for a in item.answers]
    assert page.eval("document.querySelector('#items [data-f=\"detail\"] h3').textContent").endswith(item.id)
    # a prompt word finds the items that hold it
    _type(page, "q", "")
    word = "lithium"
    want_items = sum(1 for it in report.items if word in "\n".join(m.content for m in it.prompt or ()).lower()
                     or any(word in (a.text or "").lower() for a in it.answers))
    assert int(_type(page, "q", "LITHIUM".lower())["items"]) == want_items > 0


@pytest.mark.skipif(CHROMIUM is None, reason="needs `chromium` on PATH (Debian: apt-get install -y chromium)")
@pytest.mark.slow(10)  # starts early (tests/conftest.py): a Chromium start and the page's decode
def test_report_in_headless_chromium(run: Path, report: Report, scores: dict[str, Any]) -> None:
    page_path = write_reports(run)[1]
    html = page_path.read_text()
    assert XSS not in html and "<img" not in html  # escaped in the drill-down, compressed in the items
    with Chromium(width=1400, height=1000) as page:
        url = f"file://{page_path}"
        page.open(url)
        page.wait("document.querySelector('#items').dataset.ready")
        _board_checks(page, scores)
        _browser_checks(page, report, scores)
        assert page.console == [], page.console
        assert page.requests == [url]  # the page itself, nothing else
        if os.environ.get("TRUSTMH_REPORT_SHOT_DIR"):  # README's screenshots (committed once)
            _screenshots(page, Path(os.environ["TRUSTMH_REPORT_SHOT_DIR"]))


def _screenshots(page: Chromium, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    page.send("Emulation.setDeviceMetricsOverride", width=1200, height=860, deviceScaleFactor=1, mobile=False)
    _type(page, "q", "")
    _select(page, "subtask", "crisis/escalation")
    page.eval("document.querySelectorAll('#items tr.irow')[1].click()")
    page.eval("document.querySelector('#items').scrollIntoView()")
    (folder / "report-items.png").write_bytes(page.screenshot())


def test_data_blocks_cannot_close_their_script() -> None:
    """Model names and subtask keys go into JSON blocks as written: `<` is escaped there, and the
    items are base64, so no text ends the block early."""
    block = json_block({"model": "</script><script>alert(1)</script>"}, ident="board-data")
    assert block.count("</script>") == 1 and block.endswith("</script>") and "\\u003c/script>" in block
    assert orjson.loads(block.split(">", 1)[1].rsplit("<", 1)[0])["model"].startswith("</script>")


def test_outcome_classes() -> None:
    rec = Record(key="k", model="m", pillar="p", subtask="s", item_id="1", sample=0, attempts=1,
                 response=Response(text="x", finish_reason="stop"))
    failed = msgspec.structs.replace(rec, response=None)
    assert outcome(None, None, "higher") == "missing" and outcome(None, failed, "higher") == "error"
    assert outcome(ItemScore(item_id="1", status="unparseable"), rec, "higher") == "unparseable"
    assert outcome(ItemScore(item_id="1", value=1.0, label="refused"), rec, "higher") == "refused"
    assert outcome(ItemScore(item_id="1", value=1.0), rec, "higher") == "correct"
    assert outcome(ItemScore(item_id="1", value=1.0), rec, "lower") == "incorrect"  # e.g. a harm flag
    assert outcome(ItemScore(item_id="1", value=3.0), rec, "higher") == "scored"


def test_items_blob_has_no_api_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The compressed copy of the items is redacted before compression (a plain-text search of
    report.html could not see a key inside it)."""
    secret = "sk-EXPLORERSECRET-5b9e0c7d1a2f4e6b"
    run = tmp_path / "run"
    shutil.copytree(Path(__file__).parent / "fixtures" / "report_run", run, ignore=shutil.ignore_patterns("README.md"))
    monkeypatch.setenv("TRUSTMH_REPORT_TEST_KEY", secret)
    path = run / "responses" / "api-a.jsonl"
    lines = path.read_bytes().splitlines()
    rec = orjson.loads(lines[0])
    rec.pop("response")
    rec["error"] = {"kind": "fatal", "status": 400, "message": f"bad request for key {secret}"}
    lines[0] = orjson.dumps(rec)
    path.write_bytes(b"\n".join(lines) + b"\n")
    page = write_reports(run)[1].read_text()
    blob = re.search(r'<script type="application/json" class="items-data">([^<]*)</script>', page)
    assert blob is not None
    items = orjson.loads(gzip.decompress(base64.b64decode(blob.group(1))))
    errors = [a.get("error") for it in items for a in it["answers"] if a.get("error")]
    assert "fatal 400 bad request for key [redacted]" in errors
    assert secret not in str(items) and secret[:12] not in page
