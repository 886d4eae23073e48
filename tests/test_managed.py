"""ManagedServer against a trivial inline Python HTTP server: readiness, logs, stopping the whole
process group, early exit, timeout, cancellation, and no orphans when the parent dies or exits."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import aiohttp
import pytest

from adapters.servers.managed import ManagedServer, ManagedServerError, free_port, log_tail

REPO = Path(__file__).resolve().parent.parent

# Serves /health; also starts a long-lived helper in the same process group (like vLLM's workers)
# and prints its pid, so tests can check that stopping takes the whole group down.
HEALTH_SERVER = textwrap.dedent(
    """
    import http.server, subprocess, sys
    helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    print(f"helper pid {helper.pid}", flush=True)
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/health" else 404)
            self.end_headers()
            self.wfile.write(b"ok")
        def log_message(self, fmt, *args):
            sys.stderr.write("request " + (fmt % args) + "\\n")
    print("serving", flush=True)
    http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
    """
)


def health_argv() -> list[str]:
    return [sys.executable, "-c", HEALTH_SERVER, "{port}"]


def pid_alive(pid: int) -> bool:
    """True while the process exists and is not a zombie (an unreaped orphan counts as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def wait_gone(pid: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        time.sleep(0.05)
    return not pid_alive(pid)


def helper_pid(log: Path) -> int:
    for line in log.read_text().splitlines():
        if line.startswith("helper pid "):
            return int(line.split()[-1])
    raise AssertionError(f"no helper pid in {log}")


def test_free_port_is_bindable():
    import socket

    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_ready_logs_and_stop_kills_group(tmp_path):
    log = tmp_path / "logs" / "srv.log"

    async def main():
        async with ManagedServer(health_argv(), log_path=log, startup_timeout_s=20) as srv:
            assert srv.base_url == f"http://127.0.0.1:{srv.port}/v1"
            async with aiohttp.ClientSession() as http:
                async with http.get(srv.root_url + "/health") as r:
                    assert r.status == 200
            pid = srv.pid
            assert pid_alive(pid)
            helper = helper_pid(log)
            assert pid_alive(helper)
        assert srv.returncode is not None
        await srv.stop()  # idempotent
        return pid, helper

    pid, helper = asyncio.run(main())
    assert wait_gone(pid, 1.0)
    assert wait_gone(helper, 1.0)  # the whole group went, not only the leader
    text = log.read_text()
    assert "serving" in text and "request" in text and "/health" in text


def test_log_is_appended(tmp_path):
    log = tmp_path / "srv.log"
    log.write_text("previous run\n")

    async def main():
        async with ManagedServer(health_argv(), log_path=log):
            pass

    asyncio.run(main())
    text = log.read_text()
    assert text.startswith("previous run\n") and "serving" in text


def test_argv_callable_receives_port(tmp_path):
    seen = []

    def argv(port: int) -> list[str]:
        seen.append(port)
        return [sys.executable, "-c", HEALTH_SERVER, str(port)]

    async def main():
        async with ManagedServer(argv, log_path=tmp_path / "srv.log") as srv:
            return srv.port

    assert asyncio.run(main()) == seen[0]


def test_early_exit_raises_with_log_tail(tmp_path):
    script = "import sys\nfor i in range(40): print(f'line {i}')\nsys.exit(3)"
    srv = ManagedServer([sys.executable, "-c", script], log_path=tmp_path / "srv.log", startup_timeout_s=20)
    t0 = time.monotonic()
    with pytest.raises(ManagedServerError) as exc:
        asyncio.run(srv.start())
    assert time.monotonic() - t0 < 10  # noticed the exit, did not wait for the timeout
    msg = str(exc.value)
    assert "exited with code 3" in msg
    assert "line 39" in msg and "line 20" in msg and "line 19" not in msg  # the last 20 lines
    assert not pid_alive(srv.pid)


def test_timeout_raises_and_kills(tmp_path):
    script = "import time\nprint('loading forever', flush=True)\ntime.sleep(300)"
    srv = ManagedServer([sys.executable, "-c", script], log_path=tmp_path / "srv.log", startup_timeout_s=1.0)
    with pytest.raises(ManagedServerError) as exc:
        asyncio.run(srv.start())
    assert "not healthy after 1s" in str(exc.value)
    assert "loading forever" in str(exc.value)
    assert wait_gone(srv.pid, 2.0)


@pytest.mark.parametrize("supervised", [True, False])
def test_sigterm_ignored_escalates_to_sigkill(tmp_path, supervised):
    script = HEALTH_SERVER.replace(
        "import http.server", "import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN)\nimport http.server", 1
    )
    log = tmp_path / "srv.log"

    async def main():
        srv = ManagedServer(
            [sys.executable, "-c", script, "{port}"], log_path=log, stop_grace_s=0.5, pdeathsig=supervised
        )
        async with srv:
            pid = srv.pid
        return srv, pid

    t0 = time.monotonic()
    srv, pid = asyncio.run(main())
    # Unsupervised: the server itself was SIGKILLed. Supervised: the supervisor killed it and
    # reported 128+9.
    assert srv.returncode == (128 + signal.SIGKILL if supervised else -signal.SIGKILL)
    assert time.monotonic() - t0 < 10
    assert not pid_alive(pid)
    assert wait_gone(helper_pid(log), 2.0)


def test_cancellation_stops_server(tmp_path):
    log = tmp_path / "srv.log"
    pids = []

    async def body():
        async with ManagedServer(health_argv(), log_path=log) as srv:
            pids.append(srv.pid)
            await asyncio.sleep(60)

    async def main():
        task = asyncio.create_task(body())
        while not pids:
            await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert wait_gone(pids[0], 2.0)
    assert wait_gone(helper_pid(log), 2.0)


# A parent process that starts a managed child, reports its pid, then either hangs (to be
# SIGKILLed by the test) or exits without stopping it (the atexit hook must clean up).
PARENT = textwrap.dedent(
    """
    import asyncio, sys
    sys.path.insert(0, {repo!r})
    from adapters.servers.managed import ManagedServer
    async def main():
        srv = ManagedServer({argv!r}, log_path={log!r}, pdeathsig={pdeathsig!r})
        await srv.start()
        print(srv.pid, flush=True)
        if {mode!r} == "hang":
            await asyncio.sleep(300)
    asyncio.run(main())
    """
)


def run_parent(tmp_path: Path, mode: str, pdeathsig: bool) -> tuple[subprocess.Popen, int]:
    log = tmp_path / "child.log"
    code = PARENT.format(repo=str(REPO), argv=health_argv(), log=str(log), pdeathsig=pdeathsig, mode=mode)
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    line = parent.stdout.readline()
    assert line.strip().isdigit(), f"parent did not report a child pid (got {line!r})"
    return parent, int(line)


def test_parent_sigkill_kills_child(tmp_path):
    parent, child = run_parent(tmp_path, "hang", pdeathsig=True)
    try:
        assert pid_alive(child)
        parent.kill()  # no atexit, no finally: only PR_SET_PDEATHSIG can save us
        parent.wait()
        assert wait_gone(child, 5.0), "managed child survived its parent's SIGKILL"
        # ...and so did the helper the server forked (PDEATHSIG alone would not reach it).
        assert wait_gone(helper_pid(tmp_path / "child.log"), 5.0), "the server's helper survived"
    finally:
        parent.stdout.close()
        if pid_alive(child):
            os.kill(child, signal.SIGKILL)


def test_parent_exit_without_stop_kills_child_via_atexit(tmp_path):
    # pdeathsig=False, so only the atexit hook can stop the child (and its helper).
    parent, child = run_parent(tmp_path, "exit", pdeathsig=False)
    try:
        assert parent.wait(timeout=20) == 0
        assert wait_gone(child, 5.0), "managed child survived its parent's exit"
        assert wait_gone(helper_pid(tmp_path / "child.log"), 5.0)
    finally:
        parent.stdout.close()
        if pid_alive(child):
            os.kill(child, signal.SIGKILL)


def test_log_tail_reads_last_lines(tmp_path):
    p = tmp_path / "x.log"
    p.write_text("".join(f"l{i}\n" for i in range(100)))
    assert log_tail(p, 3) == "l97\nl98\nl99"
    assert log_tail(tmp_path / "missing.log") == ""
