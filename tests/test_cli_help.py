"""The command line explains itself: `--version`, help text on every argument of every command, and
the three most common commands in `--help`."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from importlib.metadata import version

from engine.cli import _parser
from tests.conftest import run_cli


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
