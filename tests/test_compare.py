"""`compare RUN_A RUN_B`: two runs that differ in one model's responses list exactly the flipped
items and the metric deltas, with paired bootstrap intervals reproducible under --seed; regressions
exit 1 with one line each; the HTML is one offline page with every text escaped."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import orjson
import pytest

from engine.testing.cdp import CHROMIUM, Chromium
from engine.testing.fakeserver import FakeServerProcess
from pillars import registry
from tests.conftest import fake_model, run_cli, write_config
from tests.session_once import built_once

XSS = '<img src=x onerror="alert(1)"><script>alert(2)</script>'
# (subtask, item id) -> the answer model beta gives in run B instead of the right one
FLIPS = {("identification", "b-0"): "no_crisis", ("identification", "b-3"): "anxiety_crisis",
         ("identification", "b-5"): "violent_thoughts", ("severity", "b-user-1"): XSS}


def _replay(path: Path) -> Path:
    """Every crisis item answered right (its reference); escalation gets a plain reply."""
    with open(path, "w") as f:
        for sub in registry.select(["crisis"]):
            for item in registry.load_items(sub, None):
                text = str(item.reference) if sub.id != "escalation" else "I hear you. Please reach out to someone."
                f.write(json.dumps({"pillar": "crisis", "subtask": sub.id, "item_id": item.id, "text": text}) + "\n")
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Runs A and B, built once per session (each xdist worker built its own); tests copy them
    before changing them (compare itself writes nothing into a run)."""
    tmp = built_once(tmp_path_factory, "compare-runs", _build_runs)
    return tmp / "a", tmp / "b"


def _build_runs(tmp: Path) -> None:
    with FakeServerProcess() as judge:
        replay = _replay(tmp / "answers.jsonl")
        cfg = write_config(tmp / "c.toml", {"alpha": {"adapter": "replay", "path": str(replay)},
                                            "beta": {"adapter": "replay", "path": str(replay)},
                                            "judge": fake_model(judge)}, extra='\n[judge]\nmodels = ["judge"]\n')
        res = run_cli("run", cfg, "--models", "alpha,beta", "--pillars", "crisis", "--output", tmp / "a", "--no-progress")
        assert res.rc == 0, res.stderr
    # Run B: the same directory with beta's answers to FLIPS changed, re-scored.
    shutil.copytree(tmp / "a", tmp / "b")
    path = tmp / "b" / "responses" / "beta.jsonl"
    lines = []
    for line in path.read_bytes().splitlines():
        rec = orjson.loads(line)
        flip = FLIPS.get((rec["subtask"], rec["item_id"]))
        if flip is not None:
            rec["response"]["text"] = flip
        lines.append(orjson.dumps(rec))
    path.write_bytes(b"\n".join(lines) + b"\n")
    assert run_cli("score", tmp / "b").rc == 0


def compare_json(*args: str | Path) -> dict:
    res = run_cli("compare", *args, "--format", "json")
    assert res.rc == 0, res.stderr
    return json.loads(res.stdout)


def test_lists_exactly_the_flipped_items_and_the_deltas(runs: tuple[Path, Path]) -> None:
    a, b = runs
    doc = compare_json(a, b)
    (c,) = doc["comparisons"]
    got = {(i["subtask"].split("/")[1], i["id"]) for i in c["items"]}
    assert got == set(FLIPS)
    assert {i["model"] for i in c["items"]} == {"beta"}
    sev = next(i for i in c["items"] if i["id"] == "b-user-1")
    assert sev["a"]["outcome"] == "correct" and sev["b"]["outcome"] == "unparseable"
    assert set(sev["changed"]) == {"outcome", "parsed", "score"}
    ident = next(i for i in c["items"] if i["id"] == "b-3")
    assert ident["b"] == {"outcome": "incorrect", "parsed": "anxiety_crisis", "score": 0.0}
    scores_a = json.loads((a / "scores.json").read_text())["subtasks"]
    scores_b = json.loads((b / "scores.json").read_text())["subtasks"]
    for d in c["metrics"]:
        va, vb = scores_a[d["subtask"]]["models"][d["model"]]["value"], scores_b[d["subtask"]]["models"][d["model"]]["value"]
        assert (d["a"], d["b"]) == (va, vb)
        if d["model"] == "alpha" or d["subtask"] == "crisis/escalation":
            assert d["delta"] == 0 and d["items_changed"] == 0 and d["ci"] == [0.0, 0.0], d
    ident_beta = next(d for d in c["metrics"] if d["subtask"] == "crisis/identification" and d["model"] == "beta")
    n = scores_a["crisis/identification"]["models"]["beta"]["n_scored"]
    assert ident_beta["delta"] == pytest.approx(-3 / n)
    assert ident_beta["items_changed"] == 3 and ident_beta["paired_items"] == n
    low, high = ident_beta["ci"]
    assert low < ident_beta["delta"] < high <= 0
    assert ident_beta["rank_a"] == 1 and ident_beta["rank_b"] == 2
    assert c["config"] == [] and c["models_only_in_a"] == [] and c["subtasks_only_in_b"] == []


def test_intervals_are_reproducible_with_the_same_seed(runs: tuple[Path, Path]) -> None:
    a, b = runs
    one = compare_json(a, b, "--seed", "7")
    assert compare_json(a, b, "--seed", "7") == one
    other = compare_json(a, b, "--seed", "8")
    cis = lambda d: [m["ci"] for m in d["comparisons"][0]["metrics"] if m["items_changed"]]
    assert cis(one) != cis(other)


def test_fail_on_regression_exits_1_with_one_line_each(runs: tuple[Path, Path]) -> None:
    a, b = runs
    res = run_cli("compare", a, b, "--fail-on-regression", "crisis/identification=0.01")
    assert res.rc == 1, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("regression: ")]
    assert len(lines) == 1 and lines[0].startswith("regression: crisis/identification beta accuracy 1.0000 -> ")
    assert run_cli("compare", a, b, "--fail-on-regression", "crisis/identification=0.5").rc == 0
    assert run_cli("compare", a, a, "--fail-on-regression", "all=0").rc == 0
    # Better is no regression: B -> A only improves.
    assert run_cli("compare", b, a, "--fail-on-regression", "crisis=0").rc == 0


def test_markdown_and_html(runs: tuple[Path, Path], tmp_path: Path) -> None:
    a, b = runs
    html = tmp_path / "cmp.html"
    res = run_cli("compare", a, b, "--html", html)
    assert res.rc == 0, res.stderr
    assert "### Changed items (4)" in res.stdout and "| crisis/identification | beta | b-3 |" in res.stdout
    page = html.read_text()
    assert "Content-Security-Policy" in page and "http://" not in page.split("</head>")[0].replace(
        'content="default-src', "")
    assert page.count('class="browser"') == 1 and "beta · A" in page and "beta · B" in page
    assert "<td>b-5</td>" in page and XSS not in page and "<img" not in page


@pytest.mark.skipif(CHROMIUM is None, reason="needs `chromium` on PATH (Debian: apt-get install -y chromium)")
def test_html_in_headless_chromium(runs: tuple[Path, Path], tmp_path: Path) -> None:
    a, b = runs
    html = tmp_path / "cmp.html"
    assert run_cli("compare", a, b, "--html", html).rc == 0
    with Chromium(width=1400, height=900) as page:
        url = f"file://{html}"
        page.open(url)
        page.wait("document.querySelector('#items-1').dataset.ready")
        got = page.eval("Object.assign({}, document.querySelector('#items-1').dataset)")
        assert got["items"] == "4" and got["answers"] == "8"  # beta in A and in B, per changed item
        page.eval("document.querySelector('#items-1 input[data-f=\"q\"]').value = 'onerror'")
        page.eval("document.querySelector('#items-1 input[data-f=\"q\"]').dispatchEvent(new Event('input'))")
        page.eval("document.querySelector('#items-1 tr.irow').click()")
        cols = page.eval("""[...document.querySelectorAll('#items-1 [data-f="detail"] .col')].map((c) =>
            [c.dataset.model, c.dataset.outcome, c.querySelector('pre.resp').textContent])""")
        assert cols[1] == ["beta · B", "unparseable", XSS]
        assert page.eval("document.querySelectorAll('img, iframe, object').length") == 0
        assert page.console == [], page.console
        assert page.requests == [url]
        if os.environ.get("TRUSTMH_REPORT_SHOT_DIR"):  # README's screenshot (committed once): the deltas, the items
            page.eval("window.scrollTo(0, 0)")
            (Path(os.environ["TRUSTMH_REPORT_SHOT_DIR"]) / "compare.png").write_bytes(page.screenshot())


def test_mismatched_subtasks_and_models_only_in_one_run(runs: tuple[Path, Path], tmp_path: Path) -> None:
    a, _ = runs
    other = tmp_path / "other"
    shutil.copytree(a, other)
    doc = json.loads((other / "scores.json").read_text())
    doc["subtasks"] = {k: v for k, v in doc["subtasks"].items() if k != "crisis/severity"}
    (other / "scores.json").write_text(json.dumps(doc))
    (c,) = compare_json(a, other)["comparisons"]
    assert c["subtasks_only_in_a"] == ["crisis/severity"]


def test_a_run_without_scores_json_is_scored_in_memory(runs: tuple[Path, Path], tmp_path: Path) -> None:
    a, b = runs
    bare = tmp_path / "bare"
    shutil.copytree(b, bare)
    (bare / "scores.json").unlink()
    one, two = compare_json(a, b)["comparisons"][0], compare_json(a, bare)["comparisons"][0]
    assert one["metrics"] == two["metrics"] and one["items"] == two["items"]
    assert not (bare / "scores.json").exists()  # compare writes nothing into a run


def test_three_runs_each_against_the_first(runs: tuple[Path, Path]) -> None:
    a, b = runs
    doc = compare_json(a, b, a)
    assert doc["runs"] == [str(a), str(b), str(a)]
    first, second = doc["comparisons"]
    assert (first["b"], len(first["items"])) == (str(b), 4)
    assert (second["b"], second["items"]) == (str(a), [])


def _lose_identification(src: Path, dst: Path) -> Path:
    """A copy of `src` where beta answered no identification item readably: its value is undefined."""
    shutil.copytree(src, dst)
    path = dst / "responses" / "beta.jsonl"
    lines = []
    for line in path.read_bytes().splitlines():
        rec = orjson.loads(line)
        if rec["subtask"] == "identification":
            rec["response"]["text"] = "I would rather not say."
        lines.append(orjson.dumps(rec))
    path.write_bytes(b"\n".join(lines) + b"\n")
    assert run_cli("score", dst).rc == 0
    return dst


def test_a_value_lost_in_b_is_a_regression(runs: tuple[Path, Path], tmp_path: Path) -> None:
    a, _ = runs
    lost = _lose_identification(a, tmp_path / "lost")
    res = run_cli("compare", a, lost, "--fail-on-regression", "all=0.01")
    assert res.rc == 1, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("regression: ")]
    assert lines == [f"regression: crisis/identification beta accuracy 1.0000 -> none, the value is lost "
                     f"(undefined in B: no scored items) in {lost} vs {a}"]
    assert "none (undefined in B: no scored items)" in res.stdout
    # Gained (undefined in A) is no regression; undefined in both says so.
    assert run_cli("compare", lost, a, "--fail-on-regression", "all=0").rc == 0
    both = run_cli("compare", lost, lost, "--fail-on-regression", "all=0")
    assert both.rc == 0 and "none (undefined in both runs (A: no scored items; B: no scored items))" in both.stdout
    # A threshold on another subtask does not see it.
    assert run_cli("compare", a, lost, "--fail-on-regression", "crisis/severity=0").rc == 0


def _drop(src: Path, dst: Path, *, model: str | None = None, subtask: str | None = None) -> Path:
    shutil.copytree(src, dst)
    doc = json.loads((dst / "scores.json").read_text())
    if subtask:
        del doc["subtasks"][subtask]
    if model:
        doc["models"] = [m for m in doc["models"] if m != model]
        for s in doc["subtasks"].values():
            s["models"].pop(model, None)
            s["ranks"].pop(model, None)
    (dst / "scores.json").write_text(json.dumps(doc))
    return dst


def test_a_model_or_subtask_lost_in_b_is_a_regression(runs: tuple[Path, Path], tmp_path: Path) -> None:
    a, _ = runs
    no_beta = _drop(a, tmp_path / "no-beta", model="beta")
    res = run_cli("compare", a, no_beta, "--fail-on-regression", "crisis=0.5")
    assert res.rc == 1, res.stderr
    assert [ln for ln in res.stderr.splitlines() if ln.startswith("regression: ")] == [
        f"regression: model beta is not in B (A has it) in {no_beta} vs {a}"]
    no_sev = _drop(a, tmp_path / "no-sev", subtask="crisis/severity")
    res = run_cli("compare", a, no_sev, "--fail-on-regression", "crisis/severity=0.5")
    assert res.rc == 1 and [ln for ln in res.stderr.splitlines() if ln.startswith("regression: ")] == [
        f"regression: subtask crisis/severity is not in B (A has it) in {no_sev} vs {a}"]
    assert run_cli("compare", a, no_sev, "--fail-on-regression", "crisis/identification=0").rc == 0
    assert run_cli("compare", no_sev, a, "--fail-on-regression", "all=0").rc == 0  # gained, not lost


def test_an_incomplete_or_unscored_run_is_said(runs: tuple[Path, Path], tmp_path: Path) -> None:
    a, _ = runs
    stopped = tmp_path / "stopped"
    shutil.copytree(a, stopped)
    doc = json.loads((stopped / "run.json").read_text())
    (stopped / "run.json").write_text(json.dumps({**doc, "status": "interrupted"}))
    res = run_cli("compare", a, stopped)
    assert res.rc == 0
    line = f"{stopped} is incomplete (run.json status 'interrupted'): its values cover only what it did"
    assert f"compare: {line}" in res.stderr.splitlines() and f"> **Incomplete:** {line}" in res.stdout
    (stopped / "run.json").write_text(json.dumps({**doc, "status": "running"}))
    assert "stopped before it finished" in run_cli("compare", a, stopped).stderr
    unscored = tmp_path / "unscored"
    shutil.copytree(a, unscored)
    (unscored / "scores.json").unlink()
    res = run_cli("compare", unscored, a, "--format", "json")
    assert json.loads(res.stdout)["incomplete"] == [
        f"{unscored} is unscored (no scores.json): its values are computed here from its records; "
        f"`python -m engine score {unscored}` saves them"]
    assert "incomplete" not in run_cli("compare", a, a).stderr


def test_a_model_in_one_run_only_is_one_config_line(runs: tuple[Path, Path], tmp_path: Path) -> None:
    a, _ = runs
    more = tmp_path / "more"
    shutil.copytree(a, more)
    doc = json.loads((more / "run.json").read_text())
    doc["config"]["models"]["gamma"] = {**doc["config"]["models"]["alpha"], "temperature": 0.5}
    doc["fingerprint"]["models"]["gamma"] = doc["fingerprint"]["models"]["alpha"]
    (more / "run.json").write_text(json.dumps(doc))
    (c,) = compare_json(a, more)["comparisons"]
    assert c["config"] == [{"path": "config.models.gamma", "a": None, "b": "model only in B"}]
    (c,) = compare_json(more, a)["comparisons"]
    assert c["config"] == [{"path": "config.models.gamma", "a": "model only in A", "b": None}]
