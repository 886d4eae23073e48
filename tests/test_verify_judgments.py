"""`verify` checks judgments/ as it checks responses/: a judgment a run owes and lacks, one written
twice and one that failed each make the directory NOT clean (exit 1), naming the item; rerunning
`run` judges what is missing and verify is clean again."""

from __future__ import annotations

from pathlib import Path

import orjson

from tests.conftest import FakeServerProcess, fake_model, read_jsonl, run_cli, write_config


def _judged_run(tmp_path: Path, fake_server: FakeServerProcess) -> tuple[Path, Path, list[str]]:
    out = tmp_path / "out"
    cfg = write_config(tmp_path / "c.toml", {"m": fake_model(fake_server)}, run={"output": str(out), "limit": 3},
                       extra='\n[judge]\nmodels = ["m"]\n')
    args = ["run", str(cfg), "--pillars", "crisis", "--no-progress"]
    assert run_cli(*args).rc == 0
    res = run_cli("verify", out)
    assert res.rc == 0, res.stdout
    judged = [ln for ln in res.stdout.splitlines() if ln.startswith("m: judgments complete: expected 3, present 3")]
    assert judged, res.stdout
    return out, cfg, args


def test_verify_reports_missing_duplicated_and_failed_judgments(tmp_path: Path, fake_server: FakeServerProcess) -> None:
    out, _, args = _judged_run(tmp_path, fake_server)
    path = out / "judgments" / "m.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    failed = orjson.loads(lines[1])
    failed["response"] = None
    failed["error"] = {"kind": "fatal", "message": "HTTP 400: scripted", "status": 400}
    path.write_bytes(lines[0] + orjson.dumps(failed) + b"\n" + lines[0])  # third missing, first twice
    res = run_cli("verify", out)
    assert res.rc == 1
    assert "m: judgments NOT clean: expected 3, present 2, missing 1, duplicated 1, failed 1" in res.stdout, res.stdout
    assert "  missing judgment crisis/escalation b-" in res.stdout
    assert "  failed judgment crisis/escalation b-" in res.stdout and "HTTP 400: scripted" in res.stdout
    assert res.stdout.rstrip().endswith("verify: NOT clean")


def test_rerunning_run_judges_what_verify_found_missing(tmp_path: Path, fake_server: FakeServerProcess) -> None:
    out, _, args = _judged_run(tmp_path, fake_server)
    path = out / "judgments" / "m.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:1]))
    res = run_cli("verify", out)
    assert res.rc == 1 and "missing 2" in res.stdout
    assert run_cli(*args).rc == 0
    res = run_cli("verify", out)
    assert res.rc == 0 and "m: judgments complete: expected 3, present 3" in res.stdout, res.stdout
    assert len(read_jsonl(path)) == 3
