"""`run --shard I/N` and `merge DIR`: N shard runs (parallel processes, or one after another in this
process) followed by a merge give exactly the records of one unsharded run; missing and overlapping shards are reported by merge and
verify; shards do not block each other; a killed shard resumes. Everything against the loopback
fake server, two API models and an API judge."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import orjson
import pytest

from engine.core.config import ModelConfig
from engine.shards import Partition, parse_shard
from engine.testing.fakeserver import FakeServerProcess
from tests.conftest import (
    EngineProc,
    count_lines,
    fake_model,
    read_jsonl,
    run_cli,
    verify_clean,
    wait_for_lines,
    write_config,
    write_items,
)

N = 3
MODELS = ("a", "b")


@pytest.fixture
def fake_server(fresh_fake_server: FakeServerProcess) -> FakeServerProcess:
    """One fake server process for the module, reset before each test (tests/conftest.py)."""
    return fresh_fake_server


def _config(tmp_path: Path, srv: FakeServerProcess, **kw: Any) -> Path:
    models = {"a": fake_model(srv, model="model-a", **kw), "b": fake_model(srv, model="model-b", **kw),
              "judge": fake_model(srv, model="judge-model")}
    return write_config(tmp_path / "c.toml", models, run={"grace_period_s": 2},
                        extra='\n[judge]\nmodels = ["judge"]\n')


def _pillar_args(cfg: Path, limit: int = 4) -> list[Any]:
    return ["run", cfg, "--models", "a,b", "--pillars", "crisis", "--limit", str(limit), "--no-progress"]


def _run_shards(args: list[Any], out: Path, shards: tuple[int, ...] = tuple(range(1, N + 1)),
                n: int = N) -> None:
    procs = [EngineProc(*args, "--output", out, "--shard", f"{i}/{n}") for i in shards]
    try:
        for i, p in zip(shards, procs):
            res = p.wait(timeout=120)
            assert res.rc == 0, f"shard {i}: {res.stderr}"
            assert f"merge {out}" in res.stderr
    finally:
        for p in procs:
            p.close()


def _run_shards_here(args: list[Any], out: Path, shards: tuple[int, ...] = tuple(range(1, N + 1)),
                     n: int = N) -> None:
    """The shards one after another in this process (`run_cli`): the same runs and files as
    `_run_shards` without three interpreter start-ups, for tests of what shards leave behind rather
    than of shard processes running side by side (that is `_run_shards`, kept in the `items` case
    of the equality test and in the lock test)."""
    for i in shards:
        res = run_cli(*args, "--output", out, "--shard", f"{i}/{n}")
        assert res.rc == 0, f"shard {i}: {res.stderr}"
        assert f"merge {out}" in res.stderr


def _by_key(path: Path) -> dict[str, str]:
    recs = read_jsonl(path)
    keys = [r["key"] for r in recs]
    assert len(keys) == len(set(keys)), f"duplicate keys in {path}"
    return {r["key"]: orjson.dumps(r.get("response", {}).get("text") if r.get("response") else r.get("error")).decode()
            for r in recs}


def _share_salt(src: Path, dst: Path) -> None:
    """The judge nonces of `dst` as in `src` (the fake judge answers by request body, and a run
    directory's judge_salt is its own): so that two runs' judgments compare byte for byte."""
    dst.mkdir(parents=True, exist_ok=True)
    (dst / "judge_salt").write_bytes((src / "judge_salt").read_bytes())


def _same_records(out: Path, ref: Path, judged: bool) -> None:
    for m in MODELS:
        got, want = _by_key(out / "responses" / f"{m}.jsonl"), _by_key(ref / "responses" / f"{m}.jsonl")
        assert want and got == want, m
    got, want = _by_key(out / "judgments" / "judge.jsonl"), _by_key(ref / "judgments" / "judge.jsonl")
    assert got == want
    assert bool(want) == judged


def _tree(out: Path) -> dict[str, bytes]:
    """Every file but the lock files (which hold the last holder's pid)."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and not p.name.startswith(".lock")}


# -- the partition --------------------------------------------------------------------------------


def test_shard_argument_and_partition() -> None:
    assert (parse_shard("2/8").index, parse_shard(" 2 / 8 ").count) == (2, 8)
    local = {f"m{i}": ModelConfig(adapter="embedded") for i in range(5)}
    api = {"x": ModelConfig(adapter="openai", base_url="http://127.0.0.1:1/v1")}
    p = Partition({**api, **local}, 3)
    # Local models are dealt round-robin by name: balanced, independent of dict order.
    assert p.local == {"m0": 1, "m1": 2, "m2": 3, "m3": 1, "m4": 2}
    assert Partition({**local, **api}, 3).local == p.local
    assert [p.has_model("m1", i) for i in (1, 2, 3)] == [False, True, False]
    assert all(p.has_model("x", i) for i in (1, 2, 3)) and p.keep("m1", 2) is None
    keys = [f"{i:08x}" + "0" * 24 for i in range(0, 3000, 7)]
    owners = [p.owner("x", k) for k in keys]
    assert owners == [int(k[:8], 16) % 3 + 1 for k in keys]
    for i in (1, 2, 3):
        keep = p.keep("x", i)
        assert keep is not None
        assert [k for k in keys if keep(type("U", (), {"key": k}))] == [k for k, o in zip(keys, owners) if o == i]


@pytest.mark.parametrize("bad", ["0/3", "4/3", "3", "a/b", "1/0"])
def test_bad_shard_is_one_clear_line(tmp_path: Path, bad: str) -> None:
    items = write_items(tmp_path / "items.jsonl", 3)
    cfg = write_config(tmp_path / "c.toml", {"a": fake_model("http://127.0.0.1:9/v1")})
    res = run_cli("run", cfg, "--items", items, "--output", tmp_path / "out", "--shard", bad)
    assert res.rc == 2
    lines = res.err_lines()
    assert len(lines) == 1 and lines[0].startswith("error: --shard")
    assert "I/N" in lines[0] or "between 1 and N" in lines[0]
    assert not (tmp_path / "out").exists()


# -- shards + merge == one unsharded run ---------------------------------------------------------


@pytest.mark.parametrize("source", ["pillars", "items"])
def test_parallel_shards_then_merge_equal_one_unsharded_run(tmp_path: Path, fake_server: FakeServerProcess,
                                                           source: str) -> None:
    cfg = _config(tmp_path, fake_server)
    if source == "pillars":
        args = _pillar_args(cfg)
    else:
        args = ["run", cfg, "--models", "a,b", "--items", write_items(tmp_path / "items.jsonl", 30), "--no-progress"]
    ref, out = tmp_path / "ref", tmp_path / "out"
    res = run_cli(*args, "--output", ref)
    assert res.rc == 0, res.stderr
    requests_ref = fake_server.stats()["requests"]
    if source == "pillars":
        _share_salt(ref, out)

    # The items case runs the shards as parallel processes; the pillars case (the same partition,
    # with a judge) one after another in this process.
    (_run_shards if source == "items" else _run_shards_here)(args, out)
    assert fake_server.stats()["requests"] == 2 * requests_ref  # each unit asked once across the shards
    # Each shard wrote only its own files, and only units it owns.
    assert not (out / "run.json").exists() and not (out / "responses" / "a.jsonl").exists()
    for i in range(1, N + 1):
        state = orjson.loads((out / f"run.shard-{i}-of-{N}.json").read_bytes())
        assert state["status"] == "complete" and state["shard"]["index"] == i
        for m in MODELS:
            recs = read_jsonl(out / "responses" / f"{m}.shard-{i}-of-{N}.jsonl")
            assert all(int(r["key"][:8], 16) % N + 1 == i for r in recs)
        for j in read_jsonl(out / "judgments" / f"judge.shard-{i}-of-{N}.jsonl"):
            assert int(j["response_key"][:8], 16) % N + 1 == i
    res = verify_clean(out)  # verify reads the shard files
    assert "a: complete" in res.stdout and "in two shard files 0" in res.stdout

    res = run_cli("merge", out)
    assert res.rc == 0, res.stdout + res.stderr
    assert "merged 3 shards" in res.stdout
    _same_records(out, ref, judged=source == "pillars")
    assert not list(out.glob("run.shard-*")) and not list((out / "responses").glob("*.shard-*"))
    assert len(list((out / "shards").glob("*/responses/a.shard-*-of-3.jsonl"))) == N
    doc = orjson.loads((out / "run.json").read_bytes())
    assert doc["status"] == "complete" and doc["shards"]["count"] == N
    assert doc["spec"]["models"] == ["a", "b"]
    assert sum(doc["lanes"][m]["done"] for m in MODELS) == 2 * (12 if source == "pillars" else 30)
    res = verify_clean(out)
    assert "in two shard files" not in res.stdout
    if source == "pillars":
        sub = lambda d: {k: {m: v["value"] for m, v in s["models"].items()} for k, s in d["subtasks"].items()}
        assert sub(orjson.loads((out / "scores.json").read_bytes())) == sub(orjson.loads((ref / "scores.json").read_bytes()))
    # A rerun of a shard after the merge finds its work done (it reads the merged files).
    before = fake_server.stats()["requests"]
    res = run_cli(*args, "--output", out, "--shard", f"2/{N}")
    assert res.rc == 0, res.stderr
    assert fake_server.stats()["requests"] == before
    assert all(count_lines(p) == 0 for p in (out / "responses").glob("*.shard-2-of-3.jsonl"))


# -- missing and overlapping shards ----------------------------------------------------------------


def test_missing_shard_reported_by_merge_and_verify(tmp_path: Path, fake_server: FakeServerProcess) -> None:
    cfg = _config(tmp_path, fake_server)
    args = _pillar_args(cfg)
    out = tmp_path / "out"
    _run_shards_here(args, out, shards=(1, 3))
    before = _tree(out)
    res = run_cli("merge", out)
    assert res.rc == 1
    assert "missing shard 2/3" in res.stdout and "nothing changed" in res.stdout
    assert _tree(out) == before
    res = run_cli("verify", out)
    assert res.rc == 1 and "verify: NOT clean" in res.stdout
    assert "missing shard 2/3" in res.stdout
    assert "a: NOT clean" in res.stdout and "missing 0" not in res.stdout.split("a: NOT clean")[1].split("\n")[0]
    # An unsharded run would redo the shards' work: refused until merged.
    res = run_cli(*args, "--output", out)
    assert res.rc == 2 and "merge" in res.stderr and len(res.err_lines()) == 1
    # So is a shard of another N.
    res = run_cli(*args, "--output", out, "--shard", "1/2")
    assert res.rc == 2 and "N = 3" in res.stderr
    _run_shards_here(args, out, shards=(2,))
    res = run_cli("merge", out)
    assert res.rc == 0, res.stdout + res.stderr
    ref = tmp_path / "ref"
    _share_salt(out, ref)
    assert run_cli(*args, "--output", ref).rc == 0
    _same_records(out, ref, judged=True)
    verify_clean(out)


def test_overlapping_shards_reported_by_merge_and_verify(tmp_path: Path, fake_server: FakeServerProcess) -> None:
    cfg = _config(tmp_path, fake_server)
    args = _pillar_args(cfg)
    out = tmp_path / "out"
    _run_shards_here(args, out)
    one = out / "responses" / "a.shard-1-of-3.jsonl"
    two = out / "responses" / "a.shard-2-of-3.jsonl"
    line = one.read_bytes().splitlines(keepends=True)[0]
    key = orjson.loads(line)["key"]
    two.write_bytes(two.read_bytes() + line)  # the same unit in two shards
    before = _tree(out)
    res = run_cli("merge", out)
    assert res.rc == 1, res.stdout
    assert "refused, nothing changed" in res.stdout
    assert "in shard 1/3 and shard 2/3" in res.stdout and key[:12] in res.stdout
    assert _tree(out) == before
    res = run_cli("verify", out)
    assert res.rc == 1 and "verify: NOT clean" in res.stdout
    assert "in two shard files 1" in res.stdout and f"overlapping key {key}" in res.stdout
    # Judgments overlap is reported too.
    jone = out / "judgments" / "judge.shard-1-of-3.jsonl"
    jtwo = out / "judgments" / "judge.shard-2-of-3.jsonl"
    two.write_bytes(two.read_bytes()[: -len(line)])
    src, dst = (jone, jtwo) if count_lines(jone) else (jtwo, jone)
    jline = src.read_bytes().splitlines(keepends=True)[0]
    dst.write_bytes(dst.read_bytes() + jline)
    res = run_cli("merge", out)
    assert res.rc == 1 and "judgments/judge: 1 keys in more than one file" in res.stdout
    res = run_cli("verify", out)
    assert res.rc == 1 and "judgments/judge: 1 keys in more than one file" in res.stdout
    dst.write_bytes(dst.read_bytes()[: -len(jline)])
    assert run_cli("merge", out).rc == 0
    verify_clean(out)


# -- locks -----------------------------------------------------------------------------------------


def test_a_shard_lock_does_not_block_another_shard(tmp_path: Path, fake_server: FakeServerProcess) -> None:
    # Shard 1 (its own process, holding its lock) must still run while the three refusals below are
    # tried: at 150 ms a unit it once finished first on a loaded 2-core machine, when each refusal was
    # a new interpreter, and the unsharded run got in. They run in this process now (no start-up),
    # and 600 ms a unit gives shard 1 about 4 s more than they take, in the parallel phase too.
    fake_server.set_config(latency_ms=600)
    cfg = _config(tmp_path, fake_server, max_concurrency=1)
    items = write_items(tmp_path / "items.jsonl", 24)
    args = ["run", cfg, "--models", "a,b", "--items", items, "--no-progress"]
    out = tmp_path / "out"
    one = EngineProc(*args, "--output", out, "--shard", "1/3")
    try:
        wait_for_lines(out / "responses" / "a.shard-1-of-3.jsonl", 1, one, timeout=30)
        assert one.alive()
        # While shard 1 runs: the same shard is refused, an unsharded run and a merge are refused,
        # and another shard runs to completion.
        res = run_cli(*args, "--output", out, "--shard", "1/3")
        assert res.rc == 2 and "shard 1/3 is in use" in res.stderr, res.stderr
        res = run_cli(*args, "--output", out)
        assert res.rc == 2 and "in use" in res.stderr
        res = run_cli("merge", out)
        assert res.rc == 2 and "in use" in res.stderr
        fake_server.set_config(latency_ms=0)
        res = run_cli(*args, "--output", out, "--shard", "2/3")
        assert res.rc == 0, res.stderr
        assert one.alive() or one.proc.returncode == 0
        assert one.wait(timeout=60).rc == 0
    finally:
        one.close()
    _run_shards_here(args, out, shards=(3,))
    assert run_cli("merge", out).rc == 0
    verify_clean(out)


# -- a killed shard resumes ---------------------------------------------------------------------------


def test_killed_shard_resumes_and_merge_equals_unsharded(tmp_path: Path, fake_server: FakeServerProcess) -> None:
    cfg = _config(tmp_path, fake_server, max_concurrency=1)
    args = _pillar_args(cfg, limit=8)
    ref, out = tmp_path / "ref", tmp_path / "out"
    assert run_cli(*args, "--output", ref).rc == 0
    _share_salt(ref, out)
    _run_shards_here(args, out, shards=(1, 2))
    fake_server.set_config(latency_ms=120)
    p = EngineProc(*args, "--output", out, "--shard", "3/3")
    try:
        path = out / "responses" / "a.shard-3-of-3.jsonl"
        wait_for_lines(path, 2, p, timeout=60)
        p.kill9()
    finally:
        p.close()
    killed = count_lines(path)
    state = orjson.loads((out / "run.shard-3-of-3.json").read_bytes())
    assert state["status"] == "running"  # never finished
    res = run_cli("verify", out)
    assert res.rc == 1 and "shard 3/3 is killed or still running" in res.stdout
    res = run_cli("merge", out)  # merges what is there and says what to rerun
    assert res.rc == 1 and "shard 3/3: killed" in res.stdout and "--shard 3/3" in res.stdout
    fake_server.set_config(latency_ms=0)
    res = run_cli(*args, "--output", out, "--shard", "3/3")
    assert res.rc == 0, res.stderr
    assert "already done" in res.stderr
    assert killed >= 2
    res = run_cli("merge", out)
    assert res.rc == 0, res.stdout + res.stderr
    _same_records(out, ref, judged=True)
    verify_clean(out)
    # Merging again: nothing to merge.
    res = run_cli("merge", out)
    assert res.rc == 2 and "no shard files" in res.stderr
    shutil.rmtree(out / "shards")


# -- local models go whole to one shard ------------------------------------------------------------


def test_a_shard_starts_only_its_own_local_models(tmp_path: Path, fake_server: FakeServerProcess) -> None:
    # Two embedded models whose files do not exist: the shard that owns one tries to start its
    # server (and its lane fails, naming the file); the other shard never touches it.
    models = {"m0": {"adapter": "embedded", "model_path": str(tmp_path / "m0.gguf")},
              "m1": {"adapter": "embedded", "model_path": str(tmp_path / "m1.gguf")},
              "api": fake_model(fake_server)}
    cfg = write_config(tmp_path / "c.toml", models)
    items = write_items(tmp_path / "items.jsonl", 12)
    out = tmp_path / "out"
    for i, own, other in ((1, "m0", "m1"), (2, "m1", "m0")):
        res = run_cli("run", cfg, "--items", items, "--output", out, "--shard", f"{i}/2", "--no-progress")
        assert res.rc == 1, res.stderr  # the owned local lane failed: work left undone
        state = orjson.loads((out / f"run.shard-{i}-of-2.json").read_bytes())
        assert state["lanes"][own]["state"] == "failed" and f"{own}.gguf" in state["lanes"][own]["message"]
        assert other not in state["lanes"] and f"{other}.gguf" not in res.stderr
        assert state["lanes"]["api"]["state"] == "complete"
        assert not (out / "responses" / f"{other}.shard-{i}-of-2.jsonl").exists()
    res = run_cli("merge", out)  # merged as they are, and reported: both left work undone
    assert res.rc == 1 and "shard 1/2: incomplete" in res.stdout and "merged 2 shards" in res.stdout, res.stdout
    api = read_jsonl(out / "responses" / "api.jsonl")
    assert len(api) == 12 and len({r["key"] for r in api}) == 12
    res = run_cli("verify", out)
    assert res.rc == 1 and "m0: NOT clean: expected 12, present 0" in res.stdout


# -- --retry-errors across a merge ---------------------------------------------------------------------


def test_retry_errors_in_shards_replaces_merged_failures(tmp_path: Path, thread_server: Any) -> None:
    items = write_items(tmp_path / "items.jsonl", 18)
    models = {"a": fake_model(thread_server.url, model="model-a"), "b": fake_model(thread_server.url, model="model-b")}
    cfg = write_config(tmp_path / "c.toml", models)
    args = ["run", cfg, "--items", items, "--no-progress"]
    out = tmp_path / "out"
    thread_server.fail_with = b"question number 1"  # items 1, 10-17: a fatal 400 (a final outcome)
    _run_shards_here([*args, "--allow-failures"], out)  # failures expected: exit 0 (without it, 1)
    assert run_cli("merge", out).rc == 0
    res = run_cli("verify", out)
    assert res.rc == 1 and "failed 9" in res.stdout
    thread_server.fail_with = None
    _run_shards_here([*args, "--retry-errors"], out)
    res = run_cli("merge", out)
    assert res.rc == 0, res.stdout
    verify_clean(out)
    ref = tmp_path / "ref"
    assert run_cli(*args, "--output", ref).rc == 0
    for m in MODELS:
        assert _by_key(out / "responses" / f"{m}.jsonl") == _by_key(ref / "responses" / f"{m}.jsonl")
