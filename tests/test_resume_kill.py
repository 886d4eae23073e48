"""Interruptions: kill -9 at random points and resume; SIGINT / SIGTERM with a grace period; a
second signal. The end state is always that of an uninterrupted run. The interrupted runs are real
processes; the reference and the resumes, whose process is not under test, run in this one
(tests/conftest.run_cli)."""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from engine.testing.fakeserver import FakeServerProcess
from tests.conftest import (
    check_complete,
    count_lines,
    expected_texts,
    fake_model,
    read_jsonl,
    run_cli,
    verify_clean,
    wait_for_lines,
    write_config,
    write_items,
)


@pytest.fixture
def fake_server(fresh_fake_server: FakeServerProcess) -> FakeServerProcess:
    """One fake server process for the module, reset before each test (tests/conftest.py): every
    test here ends with its interrupted runs gone and a finished run, nothing left in flight."""
    return fresh_fake_server


def _records_by_key(out: Path, model: str) -> dict[str, dict[str, Any]]:
    recs = read_jsonl(out / "responses" / f"{model}.jsonl")
    by = {r["key"]: r for r in recs}
    assert len(by) == len(recs), "duplicate keys"
    return by


@pytest.mark.slow(5)  # ~3 s alone, 4-8 s beside two other workers: among the first to start
@pytest.mark.parametrize("seed", [1, 2])
def test_kill9_at_random_points_then_resume_equals_uninterrupted(tmp_path: Path, fake_server: FakeServerProcess,
                                                                 engine_procs: Any, seed: int) -> None:
    rng = random.Random(seed)
    # 200 units: the three kills land at ~20, ~70 and ~140 lines, each with 8 requests in flight and
    # lines being written, which is the race under test; more units only lengthen every run.
    n = 200
    items = write_items(tmp_path / "items.jsonl", n)
    cfg = write_config(tmp_path / "c.toml", {"fake": fake_model(fake_server, max_concurrency=8)},
                       run={"samples": 1})
    expected = expected_texts(cfg, items, "fake")

    ref = tmp_path / "ref"  # the uninterrupted run: the fake's answers do not depend on its latency
    assert run_cli("run", cfg, "--items", items, "--output", ref).rc == 0
    fake_server.set_config(latency_ms=15, latency_jitter_ms=15, seed=seed)

    out = tmp_path / "out"
    path = out / "responses" / "fake.jsonl"
    kills = []
    for frac in (0.10, 0.35, 0.70):
        target = int(n * (frac + rng.uniform(-0.05, 0.05)))
        p = engine_procs("run", cfg, "--items", items, "--output", out)
        wait_for_lines(path, target, p, timeout=60)
        time.sleep(rng.uniform(0, 0.03))
        p.kill9()
        kills.append(count_lines(path))
    assert kills == sorted(kills) and kills[-1] < n, kills
    res = run_cli("run", cfg, "--items", items, "--output", out)
    assert res.rc == 0, res.stderr
    assert f"{kills[-1]} already done" in res.stderr or "already done" in res.stderr

    got = _records_by_key(out, "fake")
    want = _records_by_key(ref, "fake")
    assert set(got) == set(want) == set(expected)
    for k, r in got.items():
        assert r["response"]["text"] == want[k]["response"]["text"] == expected[k]
        assert (r["item_id"], r["sample"]) == (want[k]["item_id"], want[k]["sample"])
    check_complete(out, "fake", expected)
    verify_clean(out)


def _interrupt_setup(tmp_path: Path, srv: FakeServerProcess, latency_ms: float, grace: float,
                     n: int = 60) -> tuple[Path, Path, Path]:
    srv.set_config(latency_ms=latency_ms)
    items = write_items(tmp_path / "items.jsonl", n)
    cfg = write_config(tmp_path / "c.toml", {"fake": fake_model(srv, max_concurrency=4)},
                       run={"grace_period_s": grace})
    return items, cfg, tmp_path / "out"


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_finishes_in_flight_within_grace_and_exits_128_plus_n(tmp_path: Path, fake_server: FakeServerProcess,
                                                                     engine_procs: Any, sig: int, code: int) -> None:
    items, cfg, out = _interrupt_setup(tmp_path, fake_server, latency_ms=400, grace=5.0)
    p = engine_procs("run", cfg, "--items", items, "--output", out)
    path = out / "responses" / "fake.jsonl"
    wait_for_lines(path, 4, p)
    t0 = time.monotonic()
    p.signal(sig)
    res = p.wait(timeout=30)
    elapsed = time.monotonic() - t0
    assert res.rc == code, res.stderr
    assert elapsed < 5.0  # in-flight requests (0.4 s) finished well within the grace period
    assert signal.Signals(sig).name in res.stderr
    assert "Traceback" not in res.stderr
    recs = read_jsonl(path)  # every line whole
    assert len({r["key"] for r in recs}) == len(recs)
    st = fake_server.stats()
    # Nothing in flight was abandoned: every answer the server gave is on disk, and nothing new
    # was sent after the signal.
    assert st["in_flight"] == 0
    assert st["ok"] == len(recs) == st["requests"]
    assert len(recs) < 60
    doc = orjson.loads((out / "run.json").read_bytes())
    assert doc["status"] == "interrupted"
    fake_server.set_config(latency_ms=0)
    res = run_cli("run", cfg, "--items", items, "--output", out)
    assert res.rc == 0, res.stderr
    check_complete(out, "fake", expected_texts(cfg, items, "fake"))
    verify_clean(out)


def test_grace_period_expiry_cancels_in_flight(tmp_path: Path, fake_server: FakeServerProcess,
                                               engine_procs: Any) -> None:
    items, cfg, out = _interrupt_setup(tmp_path, fake_server, latency_ms=0, grace=0.5)
    fake_server.set_config(p_hang=1.0, hang_s=60)
    p = engine_procs("run", cfg, "--items", items, "--output", out)
    deadline = time.monotonic() + 30
    while fake_server.stats()["in_flight"] < 4:
        assert time.monotonic() < deadline and p.alive()
        time.sleep(0.02)
    t0 = time.monotonic()
    p.signal(signal.SIGINT)
    res = p.wait(timeout=30)
    assert res.rc == 130, res.stderr
    assert time.monotonic() - t0 < 5.0  # gave up on the hung requests after the grace period
    assert "Traceback" not in res.stderr
    assert count_lines(out / "responses" / "fake.jsonl") == 0
    fake_server.reset()
    fake_server.set_config(p_hang=0.0)
    assert run_cli("run", cfg, "--items", items, "--output", out).rc == 0
    verify_clean(out)


def test_second_sigint_exits_at_once(tmp_path: Path, fake_server: FakeServerProcess, engine_procs: Any) -> None:
    items, cfg, out = _interrupt_setup(tmp_path, fake_server, latency_ms=0, grace=60.0)
    fake_server.set_config(latency_ms=150)
    p = engine_procs("run", cfg, "--items", items, "--output", out)
    path = out / "responses" / "fake.jsonl"
    wait_for_lines(path, 4, p)
    # What is sent from now on hangs for 20 s (a hang, not a latency: shutdown and reset release
    # it, so the server does not sit out its 2 s shutdown timeout on handlers left behind).
    fake_server.set_config(p_hang=1.0, hang_s=20)
    time.sleep(0.4)
    p.signal(signal.SIGINT)
    time.sleep(0.3)
    assert p.alive()  # the first signal waits for in-flight requests
    t0 = time.monotonic()
    p.signal(signal.SIGINT)
    res = p.wait(timeout=10)
    assert res.rc == 130, res.stderr
    assert time.monotonic() - t0 < 3.0
    assert "second signal" in res.stderr
    recs = read_jsonl(path)  # consistent: whole lines, no duplicates
    assert len({r["key"] for r in recs}) == len(recs) >= 4
    fake_server.reset()
    fake_server.set_config(latency_ms=0, p_hang=0.0)
    res = run_cli("run", cfg, "--items", items, "--output", out)
    assert res.rc == 0, res.stderr
    check_complete(out, "fake", expected_texts(cfg, items, "fake"))
    verify_clean(out)
