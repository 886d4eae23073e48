"""The README's main job, end to end: `python -m engine run` with the shipped default config
(every subtask on the built-in items, the embedded model as target and judge)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pillars import registry
from tests.conftest import run_engine

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


def test_default_job_completes_every_subtask(tmp_path: Path) -> None:
    out = tmp_path / "default"
    res = run_engine("run", "--output", out, timeout=1500)
    assert res.rc == 0, res.stderr[-3000:]
    scores = json.loads((out / "scores.json").read_text())
    keys = [s.key for s in registry.all_subtasks()]
    assert len(keys) == 19
    assert set(scores["subtasks"]) == set(keys)
    for key in keys:
        entry = scores["subtasks"][key]["models"]["smollm2"]
        assert entry["n"] >= 3, (key, entry)
        assert entry["n_scored"] >= 1, (key, entry)
    assert set(scores["pillars"]) == set(registry.PILLARS)
    assert all(p["ranks"]["smollm2"] == 1 for p in scores["pillars"].values())
    assert (out / "report.html").stat().st_size > 0 and (out / "report.md").stat().st_size > 0
    assert "scores:" in res.stderr and "results:" in res.stderr
    assert run_engine("verify", out).rc == 0
    # Rerunning the same command resumes: nothing left to do, no new requests.
    again = run_engine("run", "--output", out, timeout=600)
    assert again.rc == 0
    assert "0 written this run" in again.stderr
