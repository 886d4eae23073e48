"""`python -m engine run / verify` as a user drives them: the happy path, run.json, samples, model
subsets, and what a changed config on an existing output does (refuse, --fresh, extend)."""

from __future__ import annotations

from pathlib import Path

import orjson

from engine.testing.fakeserver import FakeServerProcess
from tests.conftest import check_complete, count_lines, expected_texts, fake_model, run_cli, verify_clean, write_config, write_items


def test_run_then_verify_happy_path(tmp_path: Path, fake_server: FakeServerProcess) -> None:
    items = write_items(tmp_path / "items.jsonl", 50)
    cfg = write_config(tmp_path / "c.toml", {"fake": fake_model(fake_server)})
    out = tmp_path / "out"
    res = run_cli("run", cfg, "--items", items, "--output", out)
    assert res.rc == 0, res.stderr
    assert res.stdout == ""  # progress and summaries go to stderr
    assert "fake: complete; 50 written this run" in res.stderr
    recs = check_complete(out, "fake", expected_texts(cfg, items, "fake"))
    assert [r["item_id"] for r in recs] != [] and all(r["attempts"] == 1 for r in recs)
    assert {r["pillar"] for r in recs} == {"custom"}
    assert count_lines(out / "errors" / "fake.jsonl") == 0
    doc = orjson.loads((out / "run.json").read_bytes())
    assert doc["status"] == "complete" and doc["spec"]["items"] == str(items)
    assert doc["lanes"]["fake"]["ok"] == 50 and doc["lanes"]["fake"]["state"] == "complete"
    assert doc["config"]["models"]["fake"]["base_url"] == fake_server.url
    assert len(doc["history"]) == 1
    res = verify_clean(out)
    assert "expected 50, present 50" in res.stdout
    # A second run is a no-op that says so.
    res = run_cli("run", cfg, "--items", items, "--output", out)
    assert res.rc == 0 and "50 already done" in res.stderr
    assert fake_server.stats()["requests"] == 50
    assert len(orjson.loads((out / "run.json").read_bytes())["history"]) == 2


def test_messages_items_and_samples(tmp_path: Path, fake_server: FakeServerProcess) -> None:
    items = tmp_path / "items.jsonl"
    items.write_bytes(b"".join(orjson.dumps(row) + b"\n" for row in [
        {"id": 1, "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "hi"}]},
        {"id": "two", "prompt": "hello", "system": "be kind", "reference": "x", "metadata": {"k": 1}},
    ]))
    cfg = write_config(tmp_path / "c.toml", {"fake": fake_model(fake_server, temperature=0.7)}, run={"samples": 3})
    out = tmp_path / "out"
    res = run_cli("run", cfg, "--items", items, "--output", out)
    assert res.rc == 0, res.stderr
    recs = check_complete(out, "fake", expected_texts(cfg, items, "fake", samples=3))
    assert sorted((r["item_id"], r["sample"]) for r in recs) == [(i, s) for i in ("1", "two") for s in range(3)]
    verify_clean(out)


def test_two_models_and_models_subset(tmp_path: Path, fake_server: FakeServerProcess) -> None:
    items = write_items(tmp_path / "items.jsonl", 20)
    cfg = write_config(tmp_path / "c.toml", {"a": fake_model(fake_server), "b": fake_model(fake_server, model="other")})
    out = tmp_path / "out"
    res = run_cli("run", cfg, "--items", items, "--output", out, "--models", "b")
    assert res.rc == 0, res.stderr
    assert not (out / "responses" / "a.jsonl").exists()
    check_complete(out, "b", expected_texts(cfg, items, "b"))
    res = run_cli("run", cfg, "--items", items, "--output", out)
    assert res.rc == 0, res.stderr
    check_complete(out, "a", expected_texts(cfg, items, "a"))
    check_complete(out, "b", expected_texts(cfg, items, "b"))
    assert "b: complete; 0 written this run" in res.stderr
    verify_clean(out)


def test_changed_request_settings_refused_then_fresh_moves_aside(tmp_path: Path,
                                                                 fake_server: FakeServerProcess) -> None:
    items = write_items(tmp_path / "items.jsonl", 10)
    cfg = write_config(tmp_path / "c.toml", {"fake": fake_model(fake_server, temperature=0.0)})
    out = tmp_path / "out"
    assert run_cli("run", cfg, "--items", items, "--output", out).rc == 0
    before = (out / "responses" / "fake.jsonl").read_bytes()
    run_json = (out / "run.json").read_bytes()

    changed = write_config(tmp_path / "c2.toml", {"fake": fake_model(fake_server, temperature=0.5)})
    res = run_cli("run", changed, "--items", items, "--output", out)
    assert res.rc != 0
    lines = res.err_lines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert "`fake`" in lines[0] and "--fresh" in lines[0]
    assert (out / "responses" / "fake.jsonl").read_bytes() == before
    assert (out / "run.json").read_bytes() == run_json

    # Changed items are other data: refused too.
    other = write_items(tmp_path / "other.jsonl", 10, start=100)
    res = run_cli("run", cfg, "--items", other, "--output", out)
    assert res.rc != 0 and "different data" in res.stderr

    # Limits and concurrency do not shape requests: no refusal.
    relaxed = write_config(tmp_path / "c3.toml", {"fake": fake_model(fake_server, temperature=0.0, max_concurrency=3,
                                                                     requests_per_minute=6000, timeout_s=30)})
    res = run_cli("run", relaxed, "--items", items, "--output", out)
    assert res.rc == 0, res.stderr

    res = run_cli("run", changed, "--items", items, "--output", out, "--fresh")
    assert res.rc == 0, res.stderr
    moved = list((out / "superseded").glob("*/responses/fake.jsonl"))
    assert len(moved) == 1 and moved[0].read_bytes() == before
    check_complete(out, "fake", expected_texts(changed, items, "fake"))
    verify_clean(out)
    assert len(orjson.loads((out / "run.json").read_bytes())["history"]) == 1


def test_adding_a_model_or_raising_limit_extends_the_run(tmp_path: Path, fake_server: FakeServerProcess) -> None:
    items = write_items(tmp_path / "items.jsonl", 30)
    one = write_config(tmp_path / "c1.toml", {"a": fake_model(fake_server)})
    out = tmp_path / "out"
    res = run_cli("run", one, "--items", items, "--output", out, "--limit", "10")
    assert res.rc == 0, res.stderr
    assert count_lines(out / "responses" / "a.jsonl") == 10
    before = (out / "responses" / "a.jsonl").read_bytes()
    verify_clean(out)

    res = run_cli("run", one, "--items", items, "--output", out, "--limit", "20")
    assert res.rc == 0, res.stderr
    assert "10 already done" in res.stderr
    assert (out / "responses" / "a.jsonl").read_bytes().startswith(before)
    assert count_lines(out / "responses" / "a.jsonl") == 20

    two = write_config(tmp_path / "c2.toml", {"a": fake_model(fake_server), "b": fake_model(fake_server, model="m2")})
    res = run_cli("run", two, "--items", items, "--output", out)
    assert res.rc == 0, res.stderr
    full_a = expected_texts(two, items, "a")
    check_complete(out, "a", full_a)
    check_complete(out, "b", expected_texts(two, items, "b"))
    res = verify_clean(out)
    assert "a: complete: expected 30" in res.stdout and "b: complete: expected 30" in res.stdout
    assert fake_server.stats()["duplicates_ok"] == 0  # nothing was asked twice


def test_verify_reports_missing_and_duplicated(tmp_path: Path, fake_server: FakeServerProcess) -> None:
    items = write_items(tmp_path / "items.jsonl", 12)
    cfg = write_config(tmp_path / "c.toml", {"fake": fake_model(fake_server)})
    out = tmp_path / "out"
    assert run_cli("run", cfg, "--items", items, "--output", out).rc == 0
    path = out / "responses" / "fake.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:9]) + lines[0])  # 3 missing, 1 duplicated
    res = run_cli("verify", out)
    assert res.rc == 1
    assert "verify: NOT clean" in res.stdout and "missing 3" in res.stdout and "duplicated 1" in res.stdout
    res = run_cli("verify", tmp_path)
    assert res.rc != 0 and "no run.json" in res.stderr and "Traceback" not in res.stderr


def test_no_command_prints_help() -> None:
    res = run_cli()
    assert res.rc == 2 and "run" in res.stdout and "verify" in res.stdout
