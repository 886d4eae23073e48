"""Pre-flight plan vs what a run really sends; budget stop and resume; usage and cost sums."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.conftest import fake_model, read_jsonl, run_cli, write_config

JUDGE = '\n[judge]\nmodels = ["fake"]\n[prices.fake]\ninput_per_mtok = 2.5\noutput_per_mtok = 10\n'


def _plan_requests(stdout: str) -> dict[tuple[str, str, str], int]:
    out = {}
    for line in stdout.splitlines():
        m = re.match(r"^(\S+)\s+(target|judge)\s+([a-z_]+)\s+(\d+)\s", line)  # --verbose rows, not the pivot
        if m:
            out[(m[1], m[2], m[3])] = int(m[4])
    return out


def test_plan_matches_the_requests_a_run_makes(tmp_path: Path, fake_server) -> None:
    out = tmp_path / "run"
    cfg = write_config(tmp_path / "c.toml", {"fake": fake_model(fake_server, requests_per_minute=6000)},
                       run={"output": str(out), "limit": 3}, extra=JUDGE)
    res = run_cli("plan", cfg, "--pillars", "crisis,safety,privacy", "--verbose")
    assert res.rc == 0, res.stderr
    planned = _plan_requests(res.stdout)
    assert "rate limits allow it in" in res.stdout and "estimated cost $" in res.stdout
    assert run_cli("run", cfg, "--pillars", "crisis,safety,privacy").rc == 0
    made: dict[tuple[str, str, str], int] = {}
    targets = read_jsonl(out / "responses" / "fake.jsonl")
    for r in targets:
        if r["sample"] == 0:  # extra samples are protocol re-queries of unparseable ratings
            made[("fake", "target", r["pillar"])] = made.get(("fake", "target", r["pillar"]), 0) + 1
    assert any(r["sample"] > 0 for r in targets) and "re-queried up to 10" in res.stdout
    for j in read_jsonl(out / "judgments" / "fake.jsonl"):
        if j.get("try", 0) == 0:  # the plan cannot know which judge outputs will need the retry
            made[("fake", "judge", j["pillar"])] = made.get(("fake", "judge", j["pillar"]), 0) + 1
    assert made == planned
    # Usage and cost are summed per model, role and pillar in scores.json.
    usage = json.loads((out / "scores.json").read_text())["usage"]["fake"]
    judgments = read_jsonl(out / "judgments" / "fake.jsonl")
    assert usage["total"]["requests"] == len(targets) + len(judgments)
    assert usage["total"]["cost_usd"] > 0
    assert set(usage["target"]) == {"crisis", "safety", "privacy"}
    # After the run, the plan shows nothing left to do.
    again = _plan_requests(run_cli("plan", cfg, "--pillars", "crisis,safety,privacy", "--verbose").stdout)
    assert sum(v for (m, role, p), v in again.items() if role == "target") == 0


def test_budget_stops_cleanly_and_resumes(tmp_path: Path, fake_server) -> None:
    out = tmp_path / "run"
    cfg = write_config(tmp_path / "c.toml", {"fake": fake_model(fake_server, max_concurrency=2)},
                       run={"output": str(out), "limit": 3}, extra=JUDGE)
    res = run_cli("run", cfg, "--pillars", "crisis", "--budget", "0.01")
    assert res.rc == 3, res.stderr
    assert "budget of $0.0100 reached" in res.stderr and "rerun with a larger --budget" in res.stderr
    run_json = json.loads((out / "run.json").read_text())
    assert run_json["budget"]["exhausted"] and run_json["budget"]["spent_usd"] <= 0.01
    first = read_jsonl(out / "responses" / "fake.jsonl")
    assert 0 < len(first) < 9
    res = run_cli("run", cfg, "--pillars", "crisis", "--budget", "5")
    assert res.rc == 0, res.stderr
    assert len(read_jsonl(out / "responses" / "fake.jsonl")) == 9
    assert run_cli("verify", out).rc == 0
