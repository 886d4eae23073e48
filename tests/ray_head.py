"""A Ray head node on this machine, started once per pytest session for the `--backend ray` tests
that need a cluster but not one of their own (tests/test_ray_backend.py), and the process-tree
helpers that find and kill a node's processes by PID (tests/test_ray_cluster.py too).

Why shared: a Ray instance started for a run costs ~5 CPU-seconds on this machine (GCS, raylet,
dashboard and runtime-env agents, monitors, a prestarted worker) before the lane's actor starts;
a run connected to a running head pays only its driver and its actors. The killed-actor, breaker
and killed-driver tests each start their runs against the one head (`--ray-address`): a killed
actor or a driver killed with kill -9 ends that job only, as on any cluster. The records test
keeps the run's own local Ray (no address), the default a user gets.

One head per session: the first test that asks starts it under a file lock and leaves its address
in a directory named after the session's controller (the xdist workers' parent process); the
others read it; the last test that asks for it stops it (`stop_ray_head`, tests/conftest.py, stops
it at the session's end if the session was cut short). Its processes are killed by PID, never with
`ray stop`, which stops every Ray process on the machine, other users' included. The head is
`ray start` without `--block`, so no test process holds it as a child it must wait for.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

RAY = str(Path(sys.executable).parent / "ray")


def processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of every process."""
    out: dict[int, tuple[int, str]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
            cmd = Path(f"/proc/{d}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        out[int(d)] = (int(stat.rsplit(")", 1)[1].split()[1]), cmd)
    return out


def node_pids(root: int | None, marker: str) -> list[int]:
    """`root` and every process whose command line names `marker` (the node's temp dir: its raylet
    and agents, which outlive a `ray start` that failed), with all their descendants (the workers)."""
    procs = processes()
    found = {p for p, (_, cmd) in procs.items() if p == root or marker in cmd}
    grew = True
    while grew:
        more = {p for p, (pp, _) in procs.items() if pp in found} - found
        found |= more
        grew = bool(more)
    return sorted(found)


def kill_pids(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):  # gone, or not ours
            pass


def ray_env(**extra: str) -> dict[str, str]:
    """This environment without token authentication: a test cluster and its drivers agree on it
    without a token file (a local Ray started by the engine may have written ~/.ray/auth_token)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    return {**env, "RAY_AUTH_MODE": "disabled", **extra}


def _session_dir() -> Path:
    """One per pytest session, short (Ray's unix socket paths under it must stay under 108 bytes):
    named after the xdist controller (a worker's parent) or, without xdist, this process."""
    session = os.getppid() if os.environ.get("PYTEST_XDIST_WORKER") else os.getpid()
    return Path("/tmp") / f"trh-ray-{session}"  # not TMPDIR, which may be long


def _marker(temp: Path) -> str:
    return f"{temp}{os.sep}"  # every head process names a path under it (session dir, logs, sockets)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_head(d: Path) -> str:
    temp = d / "t"
    temp.mkdir()
    port = _free_port()
    ports = [f"--{k}={_free_port()}" for k in ("node-manager-port", "object-manager-port", "metrics-export-port",
                                               "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                                               "runtime-env-agent-port")]
    base = 20000 + int.from_bytes(os.urandom(2), "big") % 200 * 200  # its own range of worker ports
    # No log monitor: the drivers run with log_to_driver off (engine/run/ray_connect.py).
    # No autoscaler monitor (`--no-monitor`, hidden in Ray's CLI): a fixed one-node head has nothing to
    # scale, and the monitor process cost ~0.75 CPU-s of its start.
    cmd = [RAY, "start", "--head", f"--port={port}", "--num-cpus=1", "--include-dashboard=false",
           "--include-log-monitor=false", "--no-monitor", f"--temp-dir={temp}", "--disable-usage-stats", f"--min-worker-port={base}",
           f"--max-worker-port={base + 199}", *ports]
    with open(d / "head.log", "wb") as log:
        done = subprocess.run(cmd, env=ray_env(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                              timeout=120, check=False)
    if done.returncode != 0:
        kill_pids(node_pids(None, _marker(temp)))
        raise AssertionError(f"ray start --head exited {done.returncode}: {(d / 'head.log').read_text()[-3000:]}")
    return f"127.0.0.1:{port}"


@contextlib.contextmanager
def _locked(d: Path) -> Iterator[None]:
    d.mkdir(exist_ok=True)
    with open(d / "lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _stop(d: Path) -> None:
    kill_pids(node_pids(None, _marker(d / "t")))
    shutil.rmtree(d / "t", ignore_errors=True)
    (d / "address").unlink(missing_ok=True)


def _stop_stale() -> None:
    """The heads of sessions that were killed before they could stop theirs (their controller is gone)."""
    for d in Path("/tmp").glob("trh-ray-*"):
        pid = d.name.rsplit("-", 1)[1]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            _stop(d)
            shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def ray_head(request: pytest.FixtureRequest) -> Iterator[str]:
    """The GCS address of this session's shared Ray head: started by the first test that asks,
    stopped when the last test of the session that asks for it is done (the head costs ~1.5% of a
    core while it idles), by whichever worker ran it."""
    users = sum("ray_head" in item.fixturenames for item in request.session.items)
    d = _session_dir()
    with _locked(d):
        address = d / "address"
        if not address.exists() or not node_pids(None, _marker(d / "t")):  # none yet, stopped, or stale
            _stop(d)
            _stop_stale()
            address.write_text(_start_head(d))
        got = address.read_text()
    try:
        yield got
    finally:
        with _locked(d):
            done = d / "done"
            n = int(done.read_text()) + 1 if done.exists() else 1
            done.write_text(str(n))
            if n >= users:
                _stop(d)


def stop_ray_head() -> None:
    """Kills this session's shared head if it still runs (a session cut short) and removes its
    directory."""
    d = _session_dir()
    if d.exists():
        _stop(d)
        shutil.rmtree(d, ignore_errors=True)
