"""The README opens with two commands (the main job, the tests); CI runs the second verbatim:
these tests keep README and `.ci/run` from drifting apart."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S)][:2]


def test_readme_opens_with_the_main_job_then_the_tests() -> None:
    main_job, tests = _readme_commands()
    assert main_job.endswith(".venv/bin/python -m engine run")  # the default job: no config, no key
    assert "pip install -q '.[local]'" in main_job
    # In parallel (pytest-xdist), then the timing-sensitive tests alone.
    assert tests.endswith('.venv/bin/python -m pytest -q -n auto --maxschedchunk 1 -m "not serial" && .venv/bin/python -m pytest -q -m serial')


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    _, tests = _readme_commands()
    ci = [ln.strip() for ln in (REPO / ".ci" / "run").read_text(encoding="utf-8").splitlines()]
    commands = [ln for ln in ci if ln and not ln.startswith("#")]
    assert commands[-1] == tests
