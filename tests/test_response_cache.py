"""The response cache shared across runs (`run --cache DIR`, `[run] cache`;
engine/store/response_cache.py, engine/run/cache.py): a second output directory pays for nothing
already answered, errors are never stored, kill -9 mid-write and concurrent runs leave a usable
cache and exact runs, and `cache stats | prune`."""

from __future__ import annotations

import random
import sqlite3
import time
from pathlib import Path
from typing import Any

import orjson

from engine.core.config import ModelConfig
from engine.run.cache import cache_scope
from engine.store.response_cache import FILE, cache_key, cache_stats, prune
from engine.testing.fakeserver import FakeServerProcess
from tests.conftest import (
    ThreadServer,
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


def _lane(out: Path, name: str) -> dict[str, Any]:
    lanes: dict[str, dict[str, Any]] = orjson.loads((out / "run.json").read_bytes())["lanes"]
    return lanes[name]


def test_key_is_the_request_not_the_models_key_or_item() -> None:
    """Same adapter, endpoint, model id, shaping options, body and sample: one address, whatever
    the models key; limits and retries are not part of it; any of the others is."""
    base = ModelConfig(adapter="openai", model="gpt-x", base_url="http://h/v1")
    body = {"model": "gpt-x", "messages": [{"role": "user", "content": "hi"}], "temperature": 0.0}
    k = cache_key(cache_scope("a", base), body, 0)
    assert k == cache_key(cache_scope("other-key", ModelConfig(adapter="openai", model="gpt-x", base_url="http://h/v1",
                                                               requests_per_minute=5, max_attempts=2)),
                          dict(reversed(body.items())), 0)
    assert k != cache_key(cache_scope("a", base), body, 1)
    assert k != cache_key(cache_scope("a", ModelConfig(adapter="openai", model="gpt-x", base_url="http://g/v1")), body, 0)
    assert k != cache_key(cache_scope("a", ModelConfig(adapter="anthropic", model="gpt-x", base_url="http://h/v1")), body, 0)
    assert k != cache_key(cache_scope("a", base), {**body, "temperature": 0.5}, 0)
    # Without `model` the models key is the id the requests carry, so then it does count.
    assert cache_scope("a", ModelConfig(adapter="openai")) != cache_scope("b", ModelConfig(adapter="openai"))


def test_hit_across_two_output_directories_sends_nothing(tmp_path: Path) -> None:
    n = 12
    items = write_items(tmp_path / "items.jsonl", n)
    srv = ThreadServer()
    try:
        cfg = write_config(tmp_path / "c.toml", {"fake": fake_model(srv.url)},
                           run={"cache": str(tmp_path / "cache")})
        a = run_cli("run", cfg, "--items", items, "--output", tmp_path / "a")
        assert a.rc == 0, a.stderr
        assert srv.stats()["requests"] == n
        # Another directory, another models key and a 1-per-minute limit: every unit is a hit,
        # and a hit spends no limit (at 1 RPM the run would otherwise take minutes).
        b = run_cli("run", "--model", "openai:fake-model", "--model-arg", f"base_url={srv.url}",
                       "--model-arg", "key=again", "--model-arg", "requests_per_minute=1",
                       "--items", items, "--output", tmp_path / "b", "--cache", tmp_path / "cache")
        assert b.rc == 0, b.stderr
        stats = srv.stats()
        assert stats["requests"] == n and stats["duplicates_ok"] == 0
    finally:
        srv.stop()
    assert "response cache" in b.stderr and f"{n} hits, 0 misses" in b.stderr
    la, lb = _lane(tmp_path / "a", "fake"), _lane(tmp_path / "b", "again")
    assert (la["cache_hits"], la["cache_misses"], la["sent"]) == (0, n, n)
    assert (lb["cache_hits"], lb["cache_misses"], lb["sent"], lb["wait_s"]) == (n, 0, 0, 0.0)
    ra = {r["item_id"]: r for r in read_jsonl(tmp_path / "a" / "responses" / "fake.jsonl")}
    rb = {r["item_id"]: r for r in read_jsonl(tmp_path / "b" / "responses" / "again.jsonl")}
    assert {k: r["response"] for k, r in ra.items()} == {k: r["response"] for k, r in rb.items()}
    assert {r["attempts"] for r in rb.values()} == {0}  # answered from the cache: no attempt made
    for out in (tmp_path / "a", tmp_path / "b"):
        verify_clean(out)


def test_shards_reuse_what_an_earlier_run_paid_for(tmp_path: Path) -> None:
    n = 10
    items = write_items(tmp_path / "items.jsonl", n)
    srv = ThreadServer()
    try:
        cfg = write_config(tmp_path / "c.toml", {"fake": fake_model(srv.url)})
        args = ("--items", items, "--cache", tmp_path / "cache")
        assert run_cli("run", cfg, *args, "--output", tmp_path / "whole").rc == 0
        for i in (1, 2):
            res = run_cli("run", cfg, *args, "--output", tmp_path / "sharded", "--shard", f"{i}/2")
            assert res.rc == 0, res.stderr
        assert srv.stats()["requests"] == n
    finally:
        srv.stop()
    assert run_cli("merge", tmp_path / "sharded").rc == 0
    lane = _lane(tmp_path / "sharded", "fake")
    assert (lane["cache_hits"], lane["cache_misses"], lane["sent"]) == (n, 0, 0)
    verify_clean(tmp_path / "sharded")


def test_errors_are_never_cached(tmp_path: Path) -> None:
    items = write_items(tmp_path / "items.jsonl", 6)
    srv = ThreadServer()
    try:
        srv.fail_with = b"number 3:"  # a 400 for item q3: a fatal error is its outcome
        cfg = write_config(tmp_path / "c.toml", {"fake": fake_model(srv.url)})
        args = ("--items", items, "--cache", tmp_path / "cache")
        # q3 ends without a response: exit 1 (issue 16); the runs are otherwise whole.
        assert run_cli("run", cfg, *args, "--output", tmp_path / "a").rc == 1
        assert (srv.stats()["requests"], srv.fatal_sent) == (5, 1)  # the 400s are answered before the server counts
        assert run_cli("run", cfg, *args, "--output", tmp_path / "b", "--allow-failures").rc == 0
        assert (srv.stats()["requests"], srv.fatal_sent) == (5, 2)  # only the item whose outcome was an error
    finally:
        srv.stop()
    assert cache_stats(tmp_path / "cache").entries == 5
    assert _lane(tmp_path / "b", "fake")["cache_hits"] == 5


def _integrity(cache: Path) -> str:
    db = sqlite3.connect(cache / FILE)
    try:
        return str(db.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        db.close()


def test_kill9_during_cache_writes_leaves_a_usable_cache_and_an_exact_run(
        tmp_path: Path, fake_server: FakeServerProcess, engine_procs: Any) -> None:
    rng = random.Random(7)
    n = 200
    fake_server.set_config(latency_ms=10, latency_jitter_ms=10, seed=7)
    items = write_items(tmp_path / "items.jsonl", n)
    cache = tmp_path / "cache"
    cfg = write_config(tmp_path / "c.toml", {"fake": fake_model(fake_server, max_concurrency=8)})
    expected = expected_texts(cfg, items, "fake")
    out = tmp_path / "out"
    path = out / "responses" / "fake.jsonl"
    for frac in (0.2, 0.5, 0.8):
        p = engine_procs("run", cfg, "--items", items, "--output", out, "--cache", cache)
        wait_for_lines(path, int(n * frac), p, timeout=60)
        time.sleep(rng.uniform(0, 0.02))
        p.kill9()
        assert _integrity(cache) == "ok"
    killed_at = count_lines(path)
    assert killed_at < n
    res = run_cli("run", cfg, "--items", items, "--output", out, "--cache", cache)
    assert res.rc == 0, res.stderr
    check_complete(out, "fake", expected)
    verify_clean(out)
    stored = cache_stats(cache).entries
    assert stored <= n and _integrity(cache) == "ok"
    # A new directory pays only for what the killed runs wrote to responses/ but not to the cache.
    before = fake_server.stats()["requests"]
    fresh = run_cli("run", cfg, "--items", items, "--output", tmp_path / "fresh", "--cache", cache)
    assert fresh.rc == 0, fresh.stderr
    assert fake_server.stats()["requests"] - before == n - stored
    check_complete(tmp_path / "fresh", "fake", expected)


def test_concurrent_runs_share_one_cache(tmp_path: Path, fake_server: FakeServerProcess, engine_procs: Any) -> None:
    n = 150
    fake_server.set_config(latency_ms=5, latency_jitter_ms=5, seed=3)
    items = write_items(tmp_path / "items.jsonl", n)
    cache = tmp_path / "cache"
    cfg = write_config(tmp_path / "c.toml", {"fake": fake_model(fake_server, max_concurrency=8)})
    expected = expected_texts(cfg, items, "fake")
    procs = [engine_procs("run", cfg, "--items", items, "--output", tmp_path / f"o{i}", "--cache", cache)
             for i in range(3)]
    for p in procs:
        res = p.wait(120)
        assert res.rc == 0, res.stderr[-2000:]
    for i in range(3):
        check_complete(tmp_path / f"o{i}", "fake", expected)
        verify_clean(tmp_path / f"o{i}")
    assert cache_stats(cache).entries == n and _integrity(cache) == "ok"
    before = fake_server.stats()["requests"]
    assert run_cli("run", cfg, "--items", items, "--output", tmp_path / "last", "--cache", cache).rc == 0
    assert fake_server.stats()["requests"] == before
    assert _lane(tmp_path / "last", "fake")["cache_hits"] == n


def test_cache_stats_and_prune(tmp_path: Path) -> None:
    items = write_items(tmp_path / "items.jsonl", 4)
    srv = ThreadServer()
    try:
        cfg = write_config(tmp_path / "c.toml", {"fake": fake_model(srv.url)})
        assert run_cli("run", cfg, "--items", items, "--output", tmp_path / "a", "--cache", tmp_path / "c").rc == 0
    finally:
        srv.stop()
    res = run_cli("cache", "stats", tmp_path / "c")
    assert res.rc == 0 and "4 responses" in res.stdout and "openai:fake-model" in res.stdout
    assert prune(tmp_path / "c", older_than_s=3600) == 0
    size = cache_stats(tmp_path / "c").value_bytes
    assert prune(tmp_path / "c", max_bytes=size - 1) == 1  # the oldest one goes
    assert prune(tmp_path / "c", older_than_s=0, now=time.time() + 1) == 3
    res = run_cli("cache", "prune", tmp_path / "c", "--older-than", "2d")
    assert res.rc == 0 and "deleted 0 entries" in res.stdout and "0 responses" in res.stdout
    for argv, msg in ((("cache", "prune", tmp_path / "c"), "give --older-than AGE and/or --max-size SIZE"),
                      (("cache", "prune", tmp_path / "c", "--max-size", "lots"), "--max-size lots: expected a number"),
                      (("cache", "stats", tmp_path / "none"), "no response cache here")):
        bad = run_cli(*argv)
        assert bad.rc == 2 and msg in bad.stderr and "Traceback" not in bad.stderr
