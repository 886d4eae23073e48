"""`--backend ray` on a real multi-node Ray cluster on this machine: a head and worker nodes started
with `ray start --block` (each its own temp dir and ports, one CPU), so that a node is lost by
killing its processes. Opt in with --run-ray-cluster (a cluster of three nodes takes a minute to
start on a busy two-core machine).

Every process is found and killed by PID (each node's `ray start --block` and its descendants),
never with `ray stop`: that stops every Ray process on the machine, other users' included."""

from __future__ import annotations

import json
import secrets
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from engine.run.ray_connect import probe
from engine.testing.fakeserver import FakeServerProcess
from tests.conftest import (
    EngineProc,
    check_complete,
    expected_texts,
    fake_model,
    free_port,
    run_engine,
    verify_clean,
    wait_for_lines,
    write_config,
    write_items,
)
from tests.ray_head import RAY, kill_pids, node_pids, ray_env

pytestmark = pytest.mark.ray_cluster


class Node:
    """One `ray start --block` and everything it started (found through the process tree)."""

    def __init__(self, root: Path, name: str, env: dict[str, str], *args: str) -> None:
        self.temp = root / name
        self.temp.mkdir()
        self.log_path = root / f"{name}.log"
        self.log = open(self.log_path, "wb")  # closed in kill()
        ports = [f"--{k}={free_port()}" for k in ("node-manager-port", "object-manager-port", "metrics-export-port",
                                                  "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                                                  "runtime-env-agent-port")]
        base = 20000 + secrets.randbelow(200) * 200  # each raylet its own range of worker ports
        cmd = [RAY, "start", "--block", "--num-cpus=1", f"--temp-dir={self.temp}", "--disable-usage-stats",
               f"--min-worker-port={base}", f"--max-worker-port={base + 199}", *ports, *args]
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)

    def holds(self, pid: int) -> bool:
        return pid in node_pids(self.proc.pid, f"--temp-dir={self.temp} ")

    def kill(self) -> None:
        """SIGKILL to the node's every process at once: the machine it stands for is gone."""
        kill_pids(node_pids(self.proc.pid, f"--temp-dir={self.temp} "))
        self.proc.wait(timeout=30)
        self.log.close()


@pytest.fixture
def cluster_root() -> Iterator[Path]:
    # Short: Ray's unix socket paths under the temp dir must stay under 108 bytes.
    with tempfile.TemporaryDirectory(prefix="trh", dir="/tmp") as d:
        yield Path(d)


def _wait_alive(address: str, n: int, nodes: list[Node], timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        got = probe(address)
        if (got.error is None and len(got.alive) >= n) or got.error == "auth":  # auth: it answers, to its own
            return
        for node in nodes:
            assert node.proc.poll() is None, f"ray start exited: {node.log_path.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"{n} Ray nodes not alive within {timeout} s: {got}"
        time.sleep(1)


def _start_cluster(root: Path, env: dict[str, str], workers: int, resources: str, nodes: list[Node]) -> str:
    """A head and `workers` worker nodes (each offering `resources`), appended to `nodes` as they
    start (the caller kills them, whatever happens here); returns the GCS address."""
    port = free_port()
    address = f"127.0.0.1:{port}"
    nodes.append(Node(root, "head", env, "--head", f"--port={port}", "--include-dashboard=false"))
    _wait_alive(address, 1, nodes)
    for i in range(workers):  # one at a time: a busy machine's GCS times out nodes that start together
        nodes.append(Node(root, f"w{i}", env, f"--address={address}", f"--resources={resources}"))
        _wait_alive(address, 2 + i, nodes)
    return address


def test_a_lost_node_is_survived_in_run(tmp_path: Path, cluster_root: Path, fake_server: FakeServerProcess) -> None:
    """The lane's actor runs on a worker node (it asks for a resource only workers have); that
    node's processes are killed mid-run; the lane gets a new actor on the other worker, re-sends
    what was in flight, and the run ends complete: exit 0, every key once, verify clean, the
    replacement counted with its cause."""
    env = ray_env()
    nodes: list[Node] = []
    try:
        address = _start_cluster(cluster_root, env, 2, json.dumps({"lane_slot": 1}), nodes)
        workers = nodes[1:]
        fake_server.set_config(latency_ms=50)
        items = write_items(tmp_path / "items.jsonl", 300)
        cfg = write_config(tmp_path / "c.toml", {"fake": fake_model(fake_server, max_concurrency=4,
                                                                      ray_resources={"lane_slot": 1})})
        out = tmp_path / "out"
        p = EngineProc("run", cfg, "--items", items, "--output", out, "--backend", "ray", "--no-progress",
                       env={**env, "RAY_ADDRESS": address})
        try:
            deadline = time.monotonic() + 120
            while "Ray actor on node" not in p.stderr():
                assert p.alive() and time.monotonic() < deadline, p.stderr()
                time.sleep(0.1)
            pid = int(p.stderr().split("Ray actor on node", 1)[1].split("pid ", 1)[1].split(")")[0].split(",")[0])
            lost = [w for w in workers if w.holds(pid)]
            assert len(lost) == 1, f"actor pid {pid} on no worker node"
            wait_for_lines(out / "responses" / "fake.jsonl", 40, p, timeout=120)
            lost[0].kill()
            res = p.wait(timeout=300)
        finally:
            p.close()
        assert res.rc == 0, res.stderr
        assert "Ray actor lost" in res.stderr, res.stderr
        check_complete(out, "fake", expected_texts(cfg, items, "fake"))
        doc = orjson.loads((out / "run.json").read_bytes())
        lane = doc["lanes"]["fake"]
        assert lane["state"] == "complete" and lane["actor_restarts"] >= 1, lane
        assert sum(lane["restart_causes"].values()) == lane["actor_restarts"]
        assert len(doc["backend"]["nodes"]) == 3 and doc["backend"]["version"]
        assert "\n" not in (lane["message"] or "")
        verify_clean(out)
        assert (out / "logs" / "ray.log").read_text().count("Ray actor lost") == lane["actor_restarts"]
    finally:
        for node in reversed(nodes):
            node.kill()


def test_token_authentication_is_named_in_one_line(tmp_path: Path, cluster_root: Path) -> None:
    """A cluster with token authentication: a driver without RAY_AUTH_MODE=token, or with a wrong
    token, exits 2 in one line that says what to set; an earlier run.json stays byte-identical."""
    token = secrets.token_hex(16)
    nodes: list[Node] = []
    try:
        address = _start_cluster(cluster_root, ray_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token), 0, "{}", nodes)
        items = write_items(tmp_path / "items.jsonl", 3)
        cfg = write_config(tmp_path / "c.toml", {"a": fake_model("http://127.0.0.1:9/v1")})
        out = tmp_path / "out"
        out.mkdir()
        (out / "run.json").write_bytes(b'{"format": 1, "status": "complete", "config": {}, "spec": {}}\n')
        before = sorted(out.rglob("*")), (out / "run.json").read_bytes()
        for env, want in ((ray_env(), "set RAY_AUTH_MODE=token"),
                          (ray_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN="0" * 32), "refused this driver's token")):
            res = run_engine("run", cfg, "--items", items, "--output", out, "--backend", "ray", "--no-progress",
                             env={**env, "RAY_ADDRESS": address}, timeout=30)
            assert res.rc == 2 and len(res.err_lines()) == 1 and want in res.stderr, res.stderr
            assert (sorted(out.rglob("*")), (out / "run.json").read_bytes()) == before
    finally:
        for node in nodes:
            node.kill()
