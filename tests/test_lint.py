"""ruff and mypy, as configured in pyproject.toml, run by the test command itself: CI runs the
README's test command, so the linters run wherever the tests do, with the versions the `test` extra
pins. (tests/test_architecture.py checks the import direction the same way.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def run_tool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=540,
                          stdin=subprocess.DEVNULL)


def test_ruff_is_clean() -> None:
    res = run_tool("ruff", "check", "--no-cache", "--output-format", "concise", ".")
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.slow(20)  # a whole-codebase type check: ~20 s of CPU without a cache
def test_mypy_is_clean() -> None:
    res = run_tool("mypy")  # files and strictness from [tool.mypy]
    assert res.returncode == 0, res.stdout + res.stderr
