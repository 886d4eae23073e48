"""`report` on a run that is still going: it reports what is there and says so (a banner in
Markdown and HTML, `progress` in JSON: done / planned per subtask and overall), reads past a record
line the run is still writing, and `report --watch` rewrites the files until the run ends (exit 0,
one final write) or Ctrl-C (exit 130, the last report whole, no temporary file)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgspec
import orjson
import pytest

from engine.core.errors import CheckpointError
from engine.report import is_live, render, report_for
from engine.store.checkpoint import iter_records
from engine.store.lock import OutputLock, held
from tests.conftest import EngineProc, count_lines, engine_env, fake_model, run_cli, write_config, write_items

FIXTURE = Path(__file__).parent / "fixtures" / "report_run"


def _set_status(run_dir: Path, status: str) -> None:
    """As the runner does: run.json replaced whole."""
    doc = orjson.loads((run_dir / "run.json").read_bytes())
    doc["status"] = status
    (run_dir / "run.json.tmp").write_bytes(orjson.dumps(doc))
    os.replace(run_dir / "run.json.tmp", run_dir / "run.json")


class Holder:
    """Another process holding the directory's lock, as a run does (OutputLock writes its pid)."""

    def __init__(self, directory: Path) -> None:
        code = ("import sys, time; from pathlib import Path; from engine.store.lock import OutputLock; "
                "OutputLock(Path(sys.argv[1])).acquire(); print('held', flush=True); time.sleep(600)")
        self.proc = subprocess.Popen([sys.executable, "-c", code, str(directory)], stdout=subprocess.PIPE,
                                     env=engine_env())
        assert self.proc.stdout is not None and self.proc.stdout.readline() == b"held\n"

    def release(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture
def running(tmp_path: Path) -> Any:
    """The fixture run cut short: run.json "running", api-a with only its first record and half of
    its second one being written, and another process holding the directory's lock like a run."""
    dst = tmp_path / "run"
    shutil.copytree(FIXTURE, dst, ignore=shutil.ignore_patterns("README.md"))
    _set_status(dst, "running")
    a = dst / "responses" / "api-a.jsonl"
    lines = a.read_bytes().splitlines(keepends=True)
    a.write_bytes(lines[0] + lines[1][:40])  # a write under way: no newline yet
    holder = Holder(dst)
    try:
        yield dst, holder, lines
    finally:
        holder.release()


def _planned(run_dir: Path) -> dict[str, dict[str, int]]:
    planned: dict[str, dict[str, int]] = orjson.loads((run_dir / "run.json").read_bytes())["planned"]
    return planned


def test_live_report_says_how_far(running: Any) -> None:
    run_dir, lock, lines = running
    assert held(run_dir) and is_live(run_dir)
    report, secrets = report_for(run_dir)
    p = report.progress
    assert p is not None and p.live
    planned = _planned(run_dir)
    total = sum(sum(v.values()) for v in planned.values())
    done_b = sum(1 for _ in (run_dir / "responses" / "api-b.jsonl").read_bytes().splitlines())
    done_c = sum(1 for _ in (run_dir / "responses" / "local-c.jsonl").read_bytes().splitlines())
    assert (p.done, p.planned) == (1 + done_b + done_c, total)
    models = {m.key: (m.done, m.planned) for m in p.models}
    assert models["api-a"] == (1, sum(planned["api-a"].values()))
    first = orjson.loads(lines[0])
    subs = {s.key: s for s in p.subtasks}
    assert list(subs) == list(planned["api-a"])  # plan order
    key = f"{first['pillar']}/{first['subtask']}"
    assert sum(s.done for s in p.subtasks) == p.done and subs[key].planned == sum(v[key] for v in planned.values())
    md, page = render(report, "md", secrets), render(report, "html", secrets)
    line = f"This run is still going: {p.done} of {p.planned} generations done"
    # Judging goes on after generation: the banner counts judgments too, against the run's estimate
    # (each planned unit of a judged subtask once per judge of its rubrics).
    written = sum(count_lines(f) for f in (run_dir / "judgments").glob("*.jsonl"))
    assert p.judgments_done == written and p.judgments_planned >= written > 0
    head = render(report, "md", secrets).split("## ", 1)[0]
    assert f"{written} of about {p.judgments_planned} judgments" in head and f"- run: `{run_dir}` (running)" in head
    assert md.startswith("# ") and line in md.split("## ", 1)[0]  # above the first section
    assert f"| **all** | **{p.done}** | **{p.planned}** |" in md
    assert f'id="progress" data-live="true" data-done="{p.done}" data-planned="{p.planned}"' in page and line in page
    doc = msgspec.json.decode(render(report, "json"))
    assert doc["progress"]["live"] is True and doc["progress"]["done"] == p.done
    # metrics from the records so far (scoring, too, leaves out the line being written)
    assert "still going: metrics computed from the records so far" in md and report.rank_table is not None, report.notes
    assert "scoring failed" not in md and "torn" not in md
    # the same run killed: nobody holds the lock; run.json still says running
    lock.release()
    (run_dir / "responses" / "api-a.jsonl").write_bytes(lines[0])  # as the next run would cut the torn line
    assert not is_live(run_dir)
    stopped = report_for(run_dir)[0]
    assert stopped.progress is not None and not stopped.progress.live and stopped.progress.done == p.done
    assert "stopped before it finished" in render(stopped, "md")
    # the header says what the banner says, not run.json's "running"
    assert f"- run: `{run_dir}` (stopped before it finished; run.json says running)" in render(stopped, "md")
    assert "stopped before it finished; run.json says running" in render(stopped, "html")
    # a finished run: no progress, no banner
    _set_status(run_dir, "complete")
    done = report_for(run_dir)[0]
    assert done.progress is None and "generations done" not in render(done, "md")
    assert msgspec.json.decode(render(done, "json"))["progress"] is None


def test_report_during_a_real_run_then_watch_until_it_ends(tmp_path: Path, make_server: Any) -> None:
    """A run in the background against the fake server (slow enough to look at mid-way): `report`
    sees it live with fewer done than planned; `report --watch` keeps rewriting while it runs and
    exits 0 after one final write once it has ended."""
    srv = make_server({"latency_ms": 120})
    out = tmp_path / "out"
    cfg = write_config(tmp_path / "c.toml", {"a": fake_model(srv, max_concurrency=1)}, run={"output": str(out)})
    items = write_items(tmp_path / "items.jsonl", 16)
    proc = EngineProc("run", cfg, "--items", items, "--no-progress", "--status-every", "0")
    try:
        deadline = time.monotonic() + 60
        while count_lines(out / "responses" / "a.jsonl") < 2 and proc.alive():
            assert time.monotonic() < deadline, proc.stderr()[-2000:]
            time.sleep(0.05)
        r = run_cli("report", out)
        assert r.rc == 0, r.stderr
        md = (out / "report.md").read_text()
        if proc.alive():  # the run had not ended when the report was built (120 ms a request, 16 of them)
            assert "This run is still going" in md
            doc = orjson.loads(run_cli("report", out, "--format", "json").stdout)
            assert doc["progress"]["live"] and 2 <= doc["progress"]["done"] < doc["progress"]["planned"] == 16
        w = run_cli("report", out, "--watch", "0.2")
        assert w.rc == 0, w.stderr
        # --watch returned only after the run had ended (the process may still be exiting)
        assert orjson.loads((out / "run.json").read_bytes())["status"] != "running"
        assert proc.wait().rc == 0
    finally:
        proc.close()
    md = (out / "report.md").read_text()
    assert "still going" not in md and "| a | 16 |" in md
    assert w.stdout.split() == [str(out / "report.md"), str(out / "report.html")]  # the final write, once
    assert "final report written" in w.stderr
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_watch_ctrl_c_leaves_a_whole_report(running: Any) -> None:
    run_dir, _, _ = running
    proc = EngineProc("report", run_dir, "--watch", "0.1")
    try:
        page = run_dir / "report.html"
        deadline = time.monotonic() + 60
        while not (page.is_file() and "rewritten at" in proc.stderr()):
            assert proc.alive() and time.monotonic() < deadline, proc.stderr()[-2000:]
            time.sleep(0.05)
        proc.signal(signal.SIGINT)
        r = proc.wait()
    finally:
        proc.close()
    assert r.rc == 130, r.stderr
    assert "Traceback" not in r.stderr
    text = page.read_text()
    assert text.rstrip().endswith("</html>") and 'id="progress" data-live="true"' in text
    assert (run_dir / "report.md").read_text().endswith("\n")
    assert not [p for p in run_dir.iterdir() if p.name.endswith(".tmp")]


def test_watch_bad_flags(running: Any) -> None:
    run_dir, _, _ = running
    for args, msg in ((["--watch", "0"], "a number > 0"), (["--watch", "1", "--format", "md"], "needs --output"),
                      (["--watch", "nan"], "a number > 0")):
        r = run_cli("report", run_dir, *args)
        assert r.rc == 2 and len(r.err_lines()) == 1 and msg in r.stderr, (args, r.stderr)


def test_a_torn_line_is_a_write_under_way_only_while_another_process_holds_the_lock(tmp_path: Path) -> None:
    """Read by anyone else while a run holds the lock, the unterminated last line is left out; with
    nobody holding it, or read by the holder itself (a run resuming, a merge), it is a kill's
    leftover and refused as before."""
    run_dir = tmp_path / "run"
    shutil.copytree(FIXTURE, run_dir, ignore=shutil.ignore_patterns("README.md"))
    path = run_dir / "responses" / "api-a.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:-1]) + lines[-1][:30])
    with pytest.raises(CheckpointError, match="torn last line"):
        list(iter_records(path))
    own = OutputLock(run_dir)
    own.acquire()
    try:
        assert held(run_dir) and not held(run_dir, by_another=True)
        with pytest.raises(CheckpointError, match="torn last line"):
            list(iter_records(path))
        assert len(list(iter_records(path, live=True))) == len(lines) - 1
    finally:
        own.release()
    holder = Holder(run_dir)
    try:
        assert held(run_dir, by_another=True)
        assert [r.key for r in iter_records(path)] == [orjson.loads(ln)["key"] for ln in lines[:-1]]
    finally:
        holder.release()
    assert not held(run_dir)
