"""`run --backend ray` against the loopback fake server: on a local Ray instance the run starts
itself, the same records as the local backend; on the session's shared Ray head (tests/ray_head.py:
a run connects in a second instead of starting Ray), a lane's actor killed mid-run is replaced and
the run ends complete and duplicate-free, the breaker stops a lane in its actor, and a driver killed
with kill -9 resumes exactly once. Without Ray installed, one clear line naming the extra."""

from __future__ import annotations

import contextlib
import http.server
import importlib.util
import os
import re
import signal
import socketserver
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from engine.testing.fakeserver import FakeServerProcess
from tests.conftest import (
    REPO,
    EngineProc,
    check_complete,
    expected_texts,
    fake_model,
    read_jsonl,
    run_cli,
    run_engine,
    verify_clean,
    wait_for_lines,
    write_config,
    write_items,
)

# Each starts Ray, connects to it or waits out a connection deadline: 10-30 s, so they start first
# (tests/conftest.py).
pytestmark = pytest.mark.slow


def test_without_ray_one_clear_line(tmp_path: Path) -> None:
    fake = tmp_path / "noray" / "ray"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('No module named ray')\n")
    items = write_items(tmp_path / "items.jsonl", 3)
    cfg = write_config(tmp_path / "c.toml", {"a": fake_model("http://127.0.0.1:9/v1")})
    res = run_engine("run", cfg, "--items", items, "--output", tmp_path / "out", "--backend", "ray",
                     env={"PYTHONPATH": f"{fake.parent}{os.pathsep}{REPO}"})
    assert res.rc == 2
    lines = res.err_lines()
    assert len(lines) == 1 and "pip install 'trustmh-engine[ray]'" in lines[0], res.stderr
    assert not (tmp_path / "out").exists()


needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                               reason="the ray extra is not installed (pip install 'trustmh-engine[ray]')")


def _snapshot(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


@contextlib.contextmanager
def _listener(kind: str) -> Iterator[int]:
    """A loopback service that is not Ray: an HTTP server, or a TCP server that never answers."""
    if kind == "http":
        srv: socketserver.TCPServer = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    else:
        class Silent(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                self.request.recv(1 << 16)  # reads what the client says and never answers

        srv = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Silent)
        srv.daemon_threads = True
    with srv:
        t = threading.Thread(target=srv.serve_forever, daemon=True)
        t.start()
        try:
            yield srv.server_address[1]
        finally:
            srv.shutdown()
            t.join()


@needs_ray
@pytest.mark.parametrize("case", ["closed-port", "http", "silent-tcp", "ray-client", "bad-form"])
def test_a_failed_connection_exits_2_in_one_line_and_leaves_the_directory_as_it_was(
        tmp_path: Path, case: str) -> None:
    """The connection is made before DIR is touched (an earlier run.json stays byte-identical) and
    never hangs: a closed port, a service that is not Ray, a ray:// address without Ray Client."""
    from tests.conftest import free_port

    items = write_items(tmp_path / "items.jsonl", 3)
    cfg = write_config(tmp_path / "c.toml", {"a": fake_model("http://127.0.0.1:9/v1")})
    out = tmp_path / "out"
    (out / "responses").mkdir(parents=True)
    (out / "run.json").write_bytes(b'{"format": 1, "status": "complete", "config": {}, "spec": {}}\n')
    before = _snapshot(out)
    client = "ray[client]" if importlib.util.find_spec("grpc") is None else "no Ray cluster answers"
    want = {"closed-port": "no Ray cluster answers", "http": "no Ray cluster answered within 3 s",
            "silent-tcp": "no Ray cluster answered within 3 s", "ray-client": client, "bad-form": "expected the head"}[case]
    with contextlib.ExitStack() as stack:
        port = free_port() if case in ("closed-port", "ray-client", "bad-form") else \
            stack.enter_context(_listener(case.split("-")[0]))
        address = {"ray-client": f"ray://127.0.0.1:{port}", "bad-form": f"http://127.0.0.1:{port}"}.get(
            case, f"127.0.0.1:{port}")
        # the shortest wait the flag takes: a listener that is not Ray is given up on in ~3 s, not 6
        res = run_engine("run", cfg, "--items", items, "--output", out, "--backend", "ray", "--no-progress",
                         "--ray-connect-timeout", "3", env={"RAY_ADDRESS": address}, timeout=30)
    assert res.rc == 2 and len(res.err_lines()) == 1 and want in res.stderr, res.stderr
    assert _snapshot(out) == before
    res = run_cli("run", cfg, "--items", items, "--output", out, "--ray-address", "x:1")
    assert res.rc == 2 and "--ray-address needs --backend ray" in res.stderr
    res = run_cli("run", cfg, "--items", items, "--output", out, "--backend", "ray", "--ray-connect-timeout", "2")
    assert res.rc == 2 and "--ray-connect-timeout must be at least 3" in res.stderr


def _on_head(address: str) -> tuple[list[str], dict[str, str]]:
    """The arguments and environment of a run on the shared head (started with token authentication
    off: tests/ray_head.py)."""
    return ["--backend", "ray", "--ray-address", address], {"RAY_AUTH_MODE": "disabled"}


def _records(path: Path) -> dict[str, str]:
    recs = read_jsonl(path)
    assert len({r["key"] for r in recs}) == len(recs), f"duplicate keys in {path}"
    return {r["key"]: r["response"]["text"] for r in recs}


@needs_ray
@pytest.mark.slow(15)  # starts a local Ray
def test_ray_backend_gives_the_records_of_the_local_backend(tmp_path: Path, fake_server: FakeServerProcess) -> None:
    models = {"a": fake_model(fake_server, model="model-a"), "b": fake_model(fake_server, model="model-b"),
              "judge": fake_model(fake_server, model="judge-model")}
    cfg = write_config(tmp_path / "c.toml", models, extra='\n[judge]\nmodels = ["judge"]\n')
    args = ["run", cfg, "--models", "a,b", "--pillars", "crisis", "--limit", "4", "--no-progress"]
    local, remote = tmp_path / "local", tmp_path / "ray"
    assert run_cli(*args, "--output", local).rc == 0
    remote.mkdir()  # the same judge nonces (engine/run/judge.py): the same judge requests, so the same replies
    (remote / "judge_salt").write_bytes((local / "judge_salt").read_bytes())
    res = run_engine(*args, "--output", remote, "--backend", "ray", timeout=120)
    assert res.rc == 0, res.stderr
    for m in ("a", "b", "judge"):
        assert f"lane {m}: Ray actor on node" in res.stderr
    for f in ("responses/a.jsonl", "responses/b.jsonl", "judgments/judge.jsonl"):
        got, want = _records(remote / f), _records(local / f)
        assert want and got == want, f
    doc = orjson.loads((remote / "run.json").read_bytes())
    assert doc["backend"]["kind"] == "ray" and doc["status"] == "complete"
    import ray

    assert doc["backend"]["version"] == doc["packages"]["ray"] == ray.__version__
    assert len(doc["backend"]["nodes"]) == 1 and len(doc["backend"]["nodes"][0]["id"]) == 56
    for m in ("a", "b", "judge"):
        lane = doc["lanes"][m]
        assert lane["node"] and lane["pid"] > 0 and lane["actor_restarts"] == 0
    assert doc["lanes"]["a"]["ok"] == doc["lanes"]["a"]["done"] == 12
    assert doc["lanes"]["judge"]["judged"] == 8
    verify_clean(remote)
    assert (remote / "scores.json").exists()


@needs_ray
@pytest.mark.slow(15)  # connects to Ray
def test_killed_actor_is_replaced_and_records_are_complete(tmp_path: Path, fake_server: FakeServerProcess,
                                                           ray_head: str) -> None:
    fake_server.set_config(latency_ms=60)
    items = write_items(tmp_path / "items.jsonl", 80)
    cfg = write_config(tmp_path / "c.toml", {"fake": fake_model(fake_server, max_concurrency=4)})
    out = tmp_path / "out"
    ray_args, env = _on_head(ray_head)
    p = EngineProc("run", cfg, "--items", items, "--output", out, *ray_args, "--no-progress", env=env)
    try:
        deadline = time.monotonic() + 90
        while "Ray actor on node" not in p.stderr():
            assert p.alive() and time.monotonic() < deadline, p.stderr()
            time.sleep(0.05)
        m = re.search(r"lane fake: Ray actor on node \S+ \(.*, pid (\d+)\)", p.stderr())
        assert m, p.stderr()
        pid = int(m.group(1))
        wait_for_lines(out / "responses" / "fake.jsonl", 12, p, timeout=60)
        os.kill(pid, signal.SIGKILL)
        res = p.wait(timeout=120)
    finally:
        p.close()
    assert res.rc == 0, res.stderr
    assert "Ray actor lost" in res.stderr and "starting another (1/3)" in res.stderr
    pids = [int(x) for x in re.findall(r"lane fake: Ray actor on node \S+ \(.*, pid (\d+)\)", res.stderr)]
    assert len(pids) == 2 and pids[0] == pid != pids[1]
    check_complete(out, "fake", expected_texts(cfg, items, "fake"))
    doc = orjson.loads((out / "run.json").read_bytes())
    assert doc["lanes"]["fake"]["actor_restarts"] == 1 and doc["lanes"]["fake"]["done"] == 80
    assert sum(doc["lanes"]["fake"]["restart_causes"].values()) == 1
    verify_clean(out)


@needs_ray
@pytest.mark.slow(15)  # connects to Ray
def test_the_breaker_stops_a_ray_lane_and_the_other_lane_completes(tmp_path: Path, fake_server: FakeServerProcess,
                                                                   make_server: Any, ray_head: str) -> None:
    """The circuit breaker runs in the lane's actor (LocalAttempts there); its stop line reaches the
    driver's run.json and stderr, and the other lane finishes."""
    bad = make_server({"p_5xx": 1.0})
    items = write_items(tmp_path / "items.jsonl", 10)
    breaker = {"breaker_failures": 3, "breaker_probe_s": 0.2, "breaker_max_pause_s": 1.0}
    cfg = write_config(tmp_path / "c.toml", {
        "bad": fake_model(bad, max_concurrency=1, max_attempts=100, backoff_base_s=0.01, backoff_max_s=0.02,
                          **breaker),
        "good": fake_model(fake_server)})
    out = tmp_path / "out"
    ray_args, env = _on_head(ray_head)
    res = run_engine("run", cfg, "--items", items, "--output", out, *ray_args, "--no-progress", env=env, timeout=120)
    assert res.rc == 1 and "Traceback" not in res.stderr, res.stderr
    stop = [ln for ln in res.err_lines() if "lane bad stopped" in ln]
    assert len(stop) == 1 and bad.url in stop[0] and "failed 3 times in a row (5xx)" in stop[0], res.stderr
    # 3 failures open it; probes at +0.2 and +0.6 s; the next (+1.4 s) would pass 1 s: stop.
    assert bad.stats()["requests"] == 5
    doc = orjson.loads((out / "run.json").read_bytes())
    assert doc["lanes"]["bad"]["state"] == "stopped" and "Last error: HTTP 50" in doc["lanes"]["bad"]["message"]
    assert doc["lanes"]["good"]["state"] == "complete" and doc["lanes"]["good"]["done"] == 10
    assert not (out / "responses" / "bad.jsonl").exists() or not read_jsonl(out / "responses" / "bad.jsonl")


@needs_ray
@pytest.mark.slow(15)  # connects to Ray, twice
def test_driver_killed_then_resumed_completes_exactly_once(tmp_path: Path, fake_server: FakeServerProcess,
                                                           ray_head: str) -> None:
    """kill -9 of the driver takes the lane's actor with it (the driver owns it; the cluster stays
    up); the same command again resumes from the checkpoint: every key once, verify clean (README,
    "What survives")."""
    fake_server.set_config(latency_ms=60)
    items = write_items(tmp_path / "items.jsonl", 80)
    cfg = write_config(tmp_path / "c.toml", {"fake": fake_model(fake_server, max_concurrency=4)})
    out = tmp_path / "out"
    ray_args, env = _on_head(ray_head)
    args = ("run", cfg, "--items", items, "--output", out, *ray_args, "--no-progress")
    p = EngineProc(*args, env=env)
    try:
        wait_for_lines(out / "responses" / "fake.jsonl", 12, p, timeout=90)
        p.kill9()
    finally:
        p.close()
    res = run_engine(*args, env=env, timeout=120)
    assert res.rc == 0, res.stderr
    check_complete(out, "fake", expected_texts(cfg, items, "fake"))
    verify_clean(out)
