"""`--backend ray`: the connection to Ray, made before the output directory is touched.

The order matters: a run that cannot reach its cluster must leave DIR as it was (an existing
run.json byte-identical), and it must not hang. So the runner connects before it takes the lock or
writes run.json, and the connection is checked in a child process under a deadline first
(engine/run/ray_probe.py: one GCS call for the cluster's nodes): a closed port, a service that is
not Ray, a cluster with token authentication the driver is not set up for, each give one line and
exit 2 within seconds. Only then does `ray.init` run in this process.

An engine-started local Ray (no address) is Ray's own: it writes `/tmp/ray/session_*` and, with
Ray's default token authentication for local clusters, `~/.ray/auth_token` (README, "Ray").
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import msgspec

from engine.core.errors import EngineError
from engine.core.rundoc import BackendDoc, RayNode
from engine.run.options import Log
from engine.run.ray_probe import Probe, ProbeNode

EXTRA = "pip install 'trustmh-engine[ray]'"
CONNECT_S = 6  # --ray-connect-timeout's default: the GCS client's three waits (connect, pubsub, the call)
PROBE_DEADLINE_S = 25.0  # the child is killed past this (Python and Ray imports included)


def require_ray() -> None:
    try:
        import ray  # noqa: F401
    except ImportError:
        raise EngineError(f"--backend ray needs Ray, an optional extra: {EXTRA}") from None


def preflight(address: str | None, timeout: float = 5.0) -> None:
    """What can be told without Ray's protocol: Ray is installed, the address has a form Ray
    takes, and something listens there."""
    require_ray()
    if not address or address in ("auto", "local"):
        return
    client = address.startswith("ray://")
    if client and importlib.util.find_spec("grpc") is None:
        raise EngineError(f"--ray-address {address}: a ray:// (Ray Client) address needs "
                          "`pip install 'ray[client]'`, which the engine's ray extra leaves out; or give "
                          "the head node's GCS address HOST:PORT (port 6379 unless changed; `ray status` there)")
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit() or ("://" in address and not client):
        raise EngineError(f"--ray-address {address}: expected the head node's GCS address HOST:PORT "
                          "(e.g. 10.0.0.1:6379), auto or local")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise EngineError(f"--ray-address {address}: no Ray cluster answers there ({exc.strerror or exc}); "
                          "check the address (ray status on the head node) or RAY_ADDRESS") from None


def probe(address: str, connect_s: int = CONNECT_S) -> Probe:
    """One GCS call to the cluster at `address`, in a child process killed at PROBE_DEADLINE_S.
    `connect_s` is split over the GCS client's three waits, whole seconds each (Ray's setting is an int)."""
    wait_s = max(1, connect_s // 3)
    src = str(Path(__file__).resolve().parents[2])
    env = {"RAY_gcs_rpc_server_connect_timeout_s": str(wait_s), **os.environ,
           "PYTHONPATH": os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p)}
    cmd = [sys.executable, "-m", "engine.run.ray_probe", address, str(wait_s * 1000)]
    try:
        done = subprocess.run(cmd, capture_output=True, timeout=PROBE_DEADLINE_S, env=env, check=False)
    except subprocess.TimeoutExpired:
        raise EngineError(f"--ray-address {address}: no answer from a Ray cluster within {PROBE_DEADLINE_S:.0f} s; "
                          "check the address (ray status on the head node) or RAY_ADDRESS") from None
    lines = done.stdout.decode(errors="replace").strip().splitlines()
    try:
        return msgspec.json.decode(lines[-1], type=Probe)
    except (IndexError, msgspec.DecodeError):
        tail = done.stderr.decode(errors="replace").strip().splitlines()
        raise EngineError(f"--ray-address {address}: the Ray connection check failed ({tail[-1] if tail else done.returncode})"
                          ) from None


def refusal(address: str, got: Probe, connect_s: int = CONNECT_S) -> str | None:
    """The one line for a probe that did not find a usable cluster (None: it did)."""
    if got.error == "auth":
        if os.environ.get("RAY_AUTH_MODE", "").lower() == "token":
            return (f"--ray-address {address}: the Ray cluster there refused this driver's token; set the cluster's "
                    "token in RAY_AUTH_TOKEN (or a file named by RAY_AUTH_TOKEN_PATH, default ~/.ray/auth_token; "
                    "`ray get-auth-token` on the head node prints it)")
        return (f"--ray-address {address}: the Ray cluster there uses token authentication; set RAY_AUTH_MODE=token "
                "and the cluster's token in RAY_AUTH_TOKEN (or a file named by RAY_AUTH_TOKEN_PATH, default "
                "~/.ray/auth_token; `ray get-auth-token` on the head node prints it)")
    if got.error == "timeout":
        return (f"--ray-address {address}: something listens there but no Ray cluster answered within "
                f"{connect_s} s (--ray-connect-timeout); give the head node's GCS address (port 6379 unless changed; "
                "`ray status` there prints it) or set RAY_ADDRESS")
    if got.error is not None:
        return f"--ray-address {address}: could not ask the Ray cluster for its nodes ({got.message}); check the address"
    if not got.alive:
        return f"--ray-address {address}: the Ray cluster there has no alive node ({got.dead} dead)"
    return None


class RayContext:
    """The connection to Ray for one run: made before the output directory is touched, shut down
    after the lanes. `nodes`: the alive nodes when it connected (run.json `backend.nodes`)."""

    def __init__(self, address: str | None, log: Log, log_dir: Path, connect_s: int = CONNECT_S) -> None:
        self.address = address
        self.connect_s = connect_s
        self.log = log
        self.log_dir = log_dir
        self.started_here = False
        self.version = ""
        self.nodes: list[ProbeNode] = []

    def connect(self) -> None:
        preflight(self.address)
        import logging

        import ray

        address = self.address
        if address and address != "local" and not address.startswith("ray://"):
            got = probe(address, self.connect_s)
            line = refusal(address, got, self.connect_s)
            if line is not None:
                raise EngineError(line)
        if not ray.is_initialized():
            try:
                if address:
                    ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
                else:  # "local": a new instance, never a stale `ray start` cluster found on this machine
                    ray.init(address="local", include_dashboard=False, logging_level=logging.ERROR,
                             log_to_driver=False)
            except Exception as exc:
                where = f"the Ray cluster at {address}" if address else "a local Ray instance"
                raise EngineError(f"--backend ray: could not connect to {where} ({type(exc).__name__}: "
                                  f"{str(exc).splitlines()[0] if str(exc) else ''}); check --ray-address / "
                                  "RAY_ADDRESS") from None
            self.started_here = True
        self.version = ray.__version__
        self.nodes = alive_nodes()
        where = address or "a local Ray instance"
        self.log(f"backend ray: {where}, {len(self.nodes)} node(s) alive, Ray {self.version}")

    def doc(self) -> BackendDoc:
        """run.json `backend`."""
        return BackendDoc(kind="ray", address=self.address, version=self.version,
                          nodes=[RayNode(id=n.id, ip=n.ip) for n in self.nodes])

    def note(self, text: str) -> None:
        """Ray's full text of a lost actor, to DIR/logs/ray.log (the lane's message keeps one line)."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_dir / "ray.log", "a", encoding="utf-8") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text.rstrip()}\n")

    def close(self) -> None:
        if self.started_here:
            import ray

            ray.shutdown()
            self.started_here = False


def pick_node(need: Mapping[str, float], avoid: set[str]) -> str | None:
    """An alive node that is not in `avoid` and has `need` ({resource: amount}, Ray's names: CPU,
    GPU, custom) in its totals; None: no such node (Ray places the actor as it likes). A node whose
    actor was just lost may still be listed alive: Ray declares a node dead only after its health
    checks fail, seconds later."""
    import ray

    for n in ray.nodes():
        have = n.get("Resources", {})
        if n.get("Alive") and n["NodeID"] not in avoid and all(have.get(k, 0) >= v for k, v in need.items()):
            return str(n["NodeID"])
    return None


def alive_nodes() -> list[ProbeNode]:
    import ray

    return [ProbeNode(str(n["NodeID"]), str(n.get("NodeManagerAddress", ""))) for n in ray.nodes() if n.get("Alive")]
