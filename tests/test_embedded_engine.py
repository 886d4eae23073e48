"""The engine against the embedded real model (llama.cpp serving SmolLM2-135M on CPU).

These assert shape and reproducibility, never that a 135M model is right. The engine starts and
stops its own managed server: in this process where nothing is killed (`run_cli`), as the real
`python -m engine run` subprocess where the engine or its server is killed.

Every prompt and generated token costs about 12 ms of one CPU here (prompt tokens as much as
generated ones), so the items carry a short system message (SmolLM2's chat template otherwise
adds its ~25-token default one) and the tests generate only as many items and tokens as what they
assert needs.
"""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import pytest

from tests.conftest import EngineProc, read_jsonl, run_cli, wait_for_lines, write_config

pytestmark = pytest.mark.slow(20)

SMOKE = Path(__file__).resolve().parents[1] / "bench_data" / "smoke.jsonl"


def _need_local() -> None:
    import importlib.util

    if importlib.util.find_spec("xllamacpp") is None:
        pytest.fail("xllamacpp (the 'local' extra) is not installed; install '.[local]' to run these tests")


def embedded_model(**kw: object) -> dict[str, object]:
    body: dict[str, object] = {"adapter": "embedded", "model": "smollm2-135m", "slots": 4, "ctx_per_slot": 1024,
                               "threads": 1, "max_tokens": 16, "temperature": 0.0, "seed": 0,
                               "backoff_base_s": 0.05, "backoff_max_s": 0.5, "max_attempts": 3}
    body.update(kw)
    return body


def items_file(tmp: Path, n: int) -> Path:
    import orjson

    topics = ["sleep", "stress at work", "a friend moving away", "exam nerves", "feeling lonely",
              "a long week", "a hard conversation", "starting therapy", "missing home", "a busy schedule"]
    path = tmp / "items.jsonl"
    with open(path, "wb") as f:
        for i in range(n):
            f.write(orjson.dumps({"id": f"e{i}", "system": "Be brief.",
                                  "prompt": f"One tip about {topics[i % len(topics)]} (#{i})?"}) + b"\n")
    return path


def server_pids(engine_pid: int) -> list[int]:
    """Pids of the embedded servers that the engine process `engine_pid` started (their
    environment names it as the managed parent), so other test runs' servers are never touched."""
    pids = []
    mine = f"TRUSTMH_MANAGED_PARENT_PID={engine_pid}".encode()
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "adapters.servers.embedded_server" in cmd:
            try:
                if mine in (d / "environ").read_bytes().split(b"\0"):
                    pids.append(int(d.name))
            except OSError:
                continue
    return pids


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return "Z" not in Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0]
    except OSError:
        return False


def test_real_generations_checkpointed_and_deterministic(tmp_path: Path) -> None:
    _need_local()
    items = items_file(tmp_path, 5)  # one more than the 4 slots: a slot serves a second item mid-run
    texts = []
    for name in ("a", "b"):
        cfg = write_config(tmp_path / f"{name}.toml", {"smollm2": embedded_model()}, run={"output": str(tmp_path / name)})
        res = run_cli("run", cfg, "--items", items)
        assert res.rc == 0, res.stderr
        recs = read_jsonl(tmp_path / name / "responses" / "smollm2.jsonl")
        assert len(recs) == 5
        assert all(r["response"]["text"] and r["response"]["usage"]["completion_tokens"] > 0 for r in recs)
        assert all(r["response"]["server_model"] == "smollm2-135m" for r in recs)
        assert (tmp_path / name / "logs" / "smollm2.log").stat().st_size > 0
        texts.append({r["key"]: r["response"]["text"] for r in recs})
        assert run_cli("verify", tmp_path / name).rc == 0
    # Same config, same requests: same keys and byte-identical greedy outputs.
    assert texts[0] == texts[1]
    # The lane found its records complete and did not start a server.
    res = run_cli("run", tmp_path / "a.toml", "--items", items)
    assert res.rc == 0
    assert "5 already done" in res.stderr


def test_kill9_and_resume_against_real_model(tmp_path: Path) -> None:
    _need_local()
    items = items_file(tmp_path, 6)  # killed after 1 with at most 4 in flight: the resume still has work to do
    out = tmp_path / "run"
    cfg = write_config(tmp_path / "c.toml", {"smollm2": embedded_model()}, run={"output": str(out)})
    resp = out / "responses" / "smollm2.jsonl"
    p = EngineProc("run", cfg, "--items", items)
    try:
        wait_for_lines(resp, 1, p, timeout=240)
        servers = server_pids(p.pid)
        assert servers, "no embedded server process found"
        p.kill9()
    finally:
        p.close()
    # The managed server dies with its parent: no orphan keeps the port or the CPU.
    deadline = time.monotonic() + 15
    while any(alive(pid) for pid in servers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(alive(pid) for pid in servers)
    res = run_cli("run", cfg, "--items", items)
    assert res.rc == 0, res.stderr
    assert re.search(r"smollm2: complete; [1-9]\d* written this run", res.stderr), res.stderr  # it had work
    recs = read_jsonl(resp)
    keys = [r["key"] for r in recs]
    assert len(keys) == len(set(keys)) == 6
    assert run_cli("verify", out).rc == 0


def test_server_killed_mid_run_fails_lane_then_rerun_completes(tmp_path: Path) -> None:
    _need_local()
    items = items_file(tmp_path, 8)  # killed after 2 with 4 in flight (4 slots): 2 never sent
    out = tmp_path / "run"
    cfg = write_config(tmp_path / "c.toml", {"smollm2": embedded_model(max_tokens=32)}, run={"output": str(out)})
    resp = out / "responses" / "smollm2.jsonl"
    p = EngineProc("run", cfg, "--items", items)
    try:
        wait_for_lines(resp, 2, p, timeout=240)
        pids = [pid for pid in server_pids(p.pid) if alive(pid)]
        assert pids, "no embedded server process found"
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        res = p.wait(timeout=120)
    finally:
        p.close()
    assert res.rc == 1, res.stderr
    assert "model server exited" in res.stderr
    assert "smollm2: failed" in res.stderr
    errors = read_jsonl(out / "errors" / "smollm2.jsonl")
    assert errors, "in-flight requests of the dead server should leave error lines"
    done_before = len(read_jsonl(resp))
    assert done_before < 8
    res = run_cli("run", cfg, "--items", items)
    assert res.rc == 0, res.stderr
    assert len(read_jsonl(resp)) == 8
    assert run_cli("verify", out).rc == 0
    assert not any(alive(pid) for pid in pids)
