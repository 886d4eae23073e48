"""What a run shows when stderr is not a terminal (Slurm, CI, nohup): a start line, a status line
every --status-every seconds, the summary at the end; and what the bars count when it is."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from engine.run import progress
from engine.run.progress import Stage, StatusLines, fmt_duration
from engine.run.stats import LaneStats
from tests.conftest import REPO, engine_env, fake_model, run_cli, write_config, write_items

STATUS = re.compile(r"^\[\d+(s|m\d\ds)\] generation \d+/\d+; [\d.]+ req/s; in flight \d+; retries \d+; "
                    r"429s \d+; errors \d+; ETA \S+$")


def test_stderr_to_a_file_gets_start_status_and_summary_lines(tmp_path: Path, make_server: Any) -> None:
    srv = make_server({"latency_ms": 200})
    items = write_items(tmp_path / "items.jsonl", 12)
    cfg = write_config(tmp_path / "c.toml", {"slow": fake_model(srv, max_concurrency=2)})
    # In this process (`run_cli`): its stderr is a captured stream that, like a file a batch system
    # redirects it to, is not a terminal; the process start-up is not what is under test here.
    res = run_cli("run", cfg, "--items", items, "--output", tmp_path / "out", "--status-every", "0.25")
    lines = res.stderr.splitlines()
    assert res.rc == 0, lines
    assert lines[0].startswith(f"run: config {cfg}; output {tmp_path / 'out'}; 1 model(s), 12 generation requests "
                               "(0 already in the output); a status line every 0.25 s")
    status = [ln for ln in lines if STATUS.match(ln)]
    assert status, lines  # 12 requests at 200 ms, two at a time: about 1.2 s
    assert any(ln.startswith("slow: complete; 12 written this run") for ln in lines)
    assert not any("\r" in ln for ln in lines)


class _Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def now(self) -> float:
        return self.t

    async def sleep(self, delay: float) -> None:
        self.t += delay

    async def wait(self, event: Any, timeout: float) -> bool:
        return False


@dataclass
class _Lane:
    stats: LaneStats


def test_status_line_counts_both_stages_and_leaves_resumed_work_out_of_the_rate() -> None:
    clock = _Clock()
    stats = LaneStats(planned=100, skipped=40, done=20, judged=10, judge_planned=60, judge_resumed=30,
                      judge_queued=15, in_flight=3, retries=2, rate_limited=1, fatal=1)
    lines = StatusLines([_Lane(stats)], clock, 30.0, lambda _: None)
    clock.t = 10.0
    text = lines.line()
    assert text.startswith("[10s] generation 60/100; judging 40/60; 3.00 req/s; in flight 3; retries 2; 429s 1; "
                           "errors 1; ETA ")
    # 40 + 20 requests left at the 30 done in 10 s of this process (the 70 resumed are not counted)
    assert text.endswith("ETA 20s")


def test_bars_count_resumed_work_as_initial_and_fall_back_to_a_fixed_width(monkeypatch: Any) -> None:
    with open(os.devnull, "w") as sink:
        bar = tqdm(total=0, file=sink)
        progress._show(bar, Stage(planned=50, resumed=20, done=5))
        assert (bar.total, bar.initial, bar.n) == (50, 20, 25)
        bar.close()
    monkeypatch.setattr(os, "get_terminal_size", lambda fd: os.terminal_size((0, 0)))
    assert progress._shape() == (progress.FALLBACK_COLUMNS, progress.FALLBACK_ROWS)
    monkeypatch.setattr(os, "get_terminal_size", lambda fd: os.terminal_size((120, 40)))
    assert progress._shape() is None


def test_bars_are_drawn_on_a_pty_that_reports_no_size(tmp_path: Path, make_server: Any) -> None:
    """`script` gives the run a pty of 0 x 0 (as some CI runners do): the bars still show."""
    if shutil.which("script") is None:
        raise AssertionError("util-linux `script` is needed for this test")
    srv = make_server({"latency_ms": 50})
    items = write_items(tmp_path / "items.jsonl", 8)
    cfg = write_config(tmp_path / "c.toml", {"fake": fake_model(srv, max_concurrency=2)})
    cmd = shlex.join([sys.executable, "-m", "engine", "run", str(cfg), "--items", str(items), "--output",
                      str(tmp_path / "out"), "--progress"])
    res = subprocess.run(["script", "-qec", f"stty cols 0 rows 0; {cmd}", "/dev/null"], cwd=str(REPO), env=engine_env(),
                         capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert res.returncode == 0, res.stdout
    assert re.search(r"total: 100%\|.*\| 8/8", res.stdout), res.stdout
    assert re.search(r"fake: 100%\|.*\| 8/8", res.stdout), res.stdout


def test_durations() -> None:
    assert [fmt_duration(s) for s in (0.2, 59, 61, 3725)] == ["0s", "59s", "1m01s", "1h02m"]


def test_a_failed_batch_call_counts_as_an_error_when_it_happens() -> None:
    """A batch lane whose submit or poll fails (a rejected key, a 5xx) has no unit outcome yet: the
    failed call itself shows in errors, not 0 until the lane gives up."""
    clock = _Clock()
    stats = LaneStats(planned=9, batch_failures=1)
    stats.batches["submitting"] = 1
    text = StatusLines([_Lane(stats)], clock, 30.0, lambda _: None).line()
    assert "; errors 1; batches submitting 1 (0/0 requests); ETA" in text
