"""The command line explains itself: `--version`, help text on every argument of every command, the
three most common commands in `--help`, and a console summary that fits a terminal."""

from __future__ import annotations

import argparse
import shutil
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

from engine.cli import _parser
from tests.conftest import REPO, run_cli


def _parsers(p: argparse.ArgumentParser, name: str = "python -m engine") -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield name, p
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from _parsers(sub, f"{name} {sub_name}")


def test_every_argument_of_every_command_has_help() -> None:
    missing = [f"{name} {a.option_strings or a.dest}" for name, p in _parsers(_parser()) for a in p._actions
               if not isinstance(a, argparse._SubParsersAction) and not (a.help or "").strip()]
    assert missing == []


def test_version_and_the_epilog() -> None:
    res = run_cli("--version")
    assert res.rc == 0 and res.stdout.strip() == f"trustmh-engine {version('trustmh-engine')}"
    res = run_cli("--help")
    assert res.rc == 0
    epilog = res.stdout.split("most common commands:")[1]
    assert [line.split()[3] for line in epilog.strip().splitlines()[:3]] == ["run", "run", "verify"]


def test_the_console_summary_is_pillar_ranks_per_model(tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(REPO / "tests" / "fixtures" / "old_runs" / "plain", run)
    res = run_cli("score", run)
    assert res.rc == 0, res.stderr
    lines = res.err_lines()
    at = lines.index("pillar ranks (1 = best; * = some subtasks without a value):")
    assert lines[at + 1].split() == ["model", "reliability*", "crisis", "safety", "robustness"]
    assert [ln.split() for ln in lines[at + 2:at + 4]] == [["alpha", "1", "1", "1", "1"], ["beta", "1", "2", "2", "2"]]
    assert lines[-1].startswith("report: ") and all(len(ln) <= 100 for ln in lines[at:at + 4])
