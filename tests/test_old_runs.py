"""Old run directories stay readable: the fixture in tests/fixtures/old_runs/ was written by the main
before the floor-plan refactor (8ec0da8; generate.py says how), and today's code must verify it clean,
score it to the same scores.json, report it to the same report.md and resume it without a request
under the protocol it was made with (a resume under today's defaults is refused, naming it).

A later protocol change (one that changes what a request looks like or how a subtask scores) may
update the expected files here, saying so in its commit.
"""

from __future__ import annotations

import fcntl
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import orjson
import pytest

from tests.conftest import EngineResult, FixedPortServer, run_cli

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "old_runs"
# Where generate.py wrote the runs: run.json and report.md name it.
WRITTEN_AT = "/tmp/trustmh-old-run-fixture"
# Both ports are in the fixture's config (and so in each model's fingerprint): a resume needs them.
PORTS = (29417, 29418)
RUNS = {
    "plain": ["--models", "alpha,beta", "--pillars", "crisis,safety,robustness", "--limit", "1", "--no-progress"],
    "sharded": ["--models", "alpha,beta", "--pillars", "crisis,safety", "--limit", "1", "--no-progress"],
}
RECORD_DIRS = ("responses", "errors", "judgments")


@contextmanager
def ports_held() -> Iterator[None]:
    """The fixed ports for this process alone: a machine-wide flock, so that parallel workers and
    other checkouts running this test on the same machine take turns instead of meeting on a port."""
    with open(Path(tempfile.gettempdir()) / "trustmh-old-runs-ports.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def copy_run(tmp_path: Path, name: str) -> Path:
    out = tmp_path / name
    shutil.copytree(FIXTURE / name, out)
    return out


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def report_lines(text: str, run_dir: Path) -> list[str]:
    return text.replace(str(run_dir), f"{WRITTEN_AT}/{run_dir.name}").splitlines()


@pytest.mark.parametrize("name", list(RUNS))
def test_verify_is_clean(tmp_path: Path, name: str) -> None:
    out = copy_run(tmp_path, name)
    res = run_cli("verify", out)
    assert res.rc == 0, res.stdout + res.stderr
    assert res.stdout == (FIXTURE / f"{name}.verify.txt").read_text()


@pytest.mark.parametrize("name", list(RUNS))
def test_score_and_report_unchanged(tmp_path: Path, name: str) -> None:
    out = copy_run(tmp_path, name)
    (out / "scores.json").unlink()
    (out / "report.md").unlink()
    res = run_cli("score", out)
    assert res.rc == 0, res.stderr
    assert orjson.loads((out / "scores.json").read_bytes()) == orjson.loads((FIXTURE / name / "scores.json").read_bytes())
    res = run_cli("report", out)
    assert res.rc == 0, res.stderr
    expected = (FIXTURE / name / "report.md").read_text()
    assert report_lines((out / "report.md").read_text(), out) == expected.splitlines()


# The protocol the fixture was asked under: every classification target with its JSON schema (the
# engine's default then; free text since constrained output became opt-in), and every judged reply
# between the fixed delimiters (nonce delimiters came later).
OLD_PROTOCOL = "".join(f'\n[pillars."{k}"]\nconstrained = true\n' for k in (
    "crisis/identification", "crisis/severity", "reliability/diagnosis", "robustness/diagnosis")) + "".join(
    f'\n[pillars."{k}"]\njudge_hardened = false\n' for k in (
        "crisis/escalation", "safety/jailbreak", "safety/antitoxic", "reliability/emotional_support",
        "robustness/emotional_support"))


def resume_all(outs: dict[str, Path], config: Path) -> tuple[dict[str, EngineResult], list[int]]:
    servers = []
    with ports_held():
        try:
            for port in PORTS:
                servers.append(FixedPortServer(port).start())
            results = {name: run_cli("run", config, "--output", out, *RUNS[name])
                       for name, out in outs.items()}
            requests = [s.stats()["requests"] for s in servers]
        finally:
            for s in servers:
                s.stop()
    return results, requests


def test_resume_under_todays_defaults_is_refused_naming_the_protocol(tmp_path: Path) -> None:
    outs = {name: copy_run(tmp_path, name) for name in RUNS}
    before = {name: files(out) for name, out in outs.items()}
    results, requests = resume_all(outs, FIXTURE / "config.toml")
    assert requests == [0, 0]
    for name, out in outs.items():
        res = results[name]
        assert res.rc == 2, res.stderr
        lines = res.err_lines()
        assert len(lines) == 1 and "another protocol" in lines[0] and "crisis/" in lines[0], lines
        assert "constrained true -> false" in lines[0] and "--fresh" in lines[0]
        # .lock names the process that last held the directory: the refused run held it too.
        assert {k: v for k, v in files(out).items() if k != ".lock"} == {
            k: v for k, v in before[name].items() if k != ".lock"}


def test_resume_under_the_old_protocol_sends_nothing_and_writes_no_record(tmp_path: Path) -> None:
    outs = {name: copy_run(tmp_path, name) for name in RUNS}
    config = tmp_path / "config.toml"
    config.write_text((FIXTURE / "config.toml").read_text() + OLD_PROTOCOL)
    before = {name: {k: v for k, v in files(out).items() if k.split("/")[0] in RECORD_DIRS or k.startswith("shards/")}
              for name, out in outs.items()}
    results, requests = resume_all(outs, config)
    assert requests == [0, 0]
    for name, out in outs.items():
        assert results[name].rc == 0, results[name].stderr
        after = files(out)
        assert {k: v for k, v in after.items() if k in before[name]} == before[name]
        assert sorted(set(after) - set(files(FIXTURE / name))) == ["report.html"]
        scores = orjson.loads((out / "scores.json").read_bytes())
        assert scores == orjson.loads((FIXTURE / name / "scores.json").read_bytes())
