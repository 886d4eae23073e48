"""Managed local server processes: start, wait until healthy, and always stop.

`ManagedServer` runs one HTTP server command (our embedded llama.cpp launcher, later `vllm serve`)
on a free loopback port, in its own process group, with its output appended to a log file. It is an
async context manager: the group is stopped on normal exit, on errors and on cancellation.

Orphans are prevented three ways:
  * PR_SET_PDEATHSIG(SIGTERM) (Linux) makes the server side die with this process, even when it is
    SIGKILLed. Commands run under the small supervisor of adapters/servers/supervisor.py
    (`python adapters/servers/supervisor.py --pdeathsig -- CMD...`), which holds the setting and,
    when it fires, stops CMD and SIGKILLs everything left in the group (PDEATHSIG alone would only
    reach one process, not the workers it forked). Our own launcher sets it itself instead;
  * `stop()` ends with SIGKILL to the whole process group (servers that fork workers);
  * an `atexit` hook kills any group still registered when the interpreter exits.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from adapters.servers import supervisor
from adapters.servers.supervisor import PARENT_PID_ENV
from engine.core.errors import ServerError


class ManagedServerError(ServerError):
    """The managed server exited early or never became healthy; the message ends with its log tail."""


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (the OS picks it; a race with another binder is possible)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def log_tail(path: Path, lines: int = 20, max_bytes: int = 64 * 1024) -> str:
    """The last `lines` lines of a log file (reads at most `max_bytes` from its end)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read()
    except OSError:
        return ""
    tail = collections.deque(data.decode("utf-8", "replace").splitlines(), maxlen=lines)
    return "\n".join(tail)


# pgid -> leader pid of every group started and not yet stopped; the atexit hook kills these.
_LIVE_GROUPS: dict[int, int] = {}


def _kill_group(pgid: int, sig: int) -> bool:
    """Signal a process group; False if it no longer exists."""
    try:
        os.killpg(pgid, sig)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return False


def kill_all() -> None:
    """Stops every managed server of this process now (the run's second-signal exit path)."""
    _kill_live_groups()


@atexit.register
def _kill_live_groups() -> None:
    # Sync on purpose: the event loop is gone by now. TERM first so servers can release resources,
    # then KILL whatever is left after a short grace.
    groups = list(_LIVE_GROUPS)
    _LIVE_GROUPS.clear()
    alive = [g for g in groups if _kill_group(g, signal.SIGTERM)]
    deadline = time.monotonic() + 2.0
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [g for g in alive if _group_alive(g)]
    for g in alive:
        _kill_group(g, signal.SIGKILL)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    # A zombie leader still counts as a member. Only called from the atexit hook, where no event
    # loop reaps children any more, so reap it here if it is ours.
    try:
        pid, _ = os.waitpid(pgid, os.WNOHANG)
        if pid == pgid:
            return _group_alive(pgid)
    except ChildProcessError:
        pass
    return True


ArgvSpec = Sequence[str] | Callable[[int], Sequence[str]]


class ManagedServer:
    """One local HTTP server process on a free loopback port.

    argv: the command, either a callable receiving the port or a list where "{port}" is replaced
        (plain text substitution, so JSON arguments with braces are safe).
    log_path: where stdout and stderr go (appended; parent dirs created). The child writes the file
        directly, so the event loop does no log work and a slow loop can never stall the server on
        a full pipe, and the log survives a crash of this process.
    env: overrides on top of os.environ (a None value removes the variable).
    pdeathsig: run the command under the supervisor (`python adapters/servers/supervisor.py
        --pdeathsig -- CMD`), which dies with this process and takes the whole group along. `pid`
        is then the supervisor's. Pass False for commands that set PR_SET_PDEATHSIG themselves and
        fork nothing (adapters.servers.embedded_server).
    """

    def __init__(
        self,
        argv: ArgvSpec,
        *,
        log_path: Path | str,
        env: Mapping[str, str | None] | None = None,
        health_path: str = "/health",
        startup_timeout_s: float = 60.0,
        stop_grace_s: float = 10.0,
        pdeathsig: bool = True,
        port: int | None = None,
        cwd: Path | str | None = None,
        poll_interval_s: float = 0.1,
    ) -> None:
        self._argv_spec = argv
        self.log_path = Path(log_path)
        self._env = dict(env or {})
        self.health_path = health_path if health_path.startswith("/") else "/" + health_path
        self.startup_timeout_s = startup_timeout_s
        self.stop_grace_s = stop_grace_s
        self._pdeathsig = pdeathsig
        self._port = port
        self._cwd = cwd
        self._poll_interval_s = poll_interval_s
        self._proc: asyncio.subprocess.Process | None = None
        self._stopped = False
        self._stopping = False
        self._supervised = False
        self.argv: list[str] = []

    # -- addresses ---------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("ManagedServer not started")
        return self._port

    @property
    def root_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """OpenAI-compatible base URL (ends in /v1)."""
        return f"{self.root_url}/v1"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode if self._proc is not None else None

    # -- lifecycle ---------------------------------------------------------------------------

    def _build_argv(self, port: int) -> list[str]:
        spec = self._argv_spec
        cmd = list(spec(port)) if callable(spec) else [a.replace("{port}", str(port)) for a in spec]
        if not cmd:
            raise ValueError("empty command")
        self._supervised = self._pdeathsig and sys.platform.startswith("linux")
        if self._supervised:
            # Run the supervisor by path, not `-m`: no dependency on the package being importable
            # from the child's cwd, and no PYTHONPATH leaking into the command.
            cmd = [sys.executable, os.path.abspath(supervisor.__file__), "--pdeathsig",
                   "--grace", f"{self.stop_grace_s:g}", "--", *cmd]  # fmt: skip
        return cmd

    def _build_env(self) -> dict[str, str]:
        env = dict(os.environ)
        for k, v in self._env.items():
            if v is None:
                env.pop(k, None)
            else:
                env[k] = v
        env[PARENT_PID_ENV] = str(os.getpid())
        return env

    async def start(self) -> ManagedServer:
        if self._proc is not None:
            raise RuntimeError("ManagedServer already started")
        if self._port is None:
            self._port = free_port()
        self.argv = self._build_argv(self._port)
        await asyncio.to_thread(self.log_path.parent.mkdir, parents=True, exist_ok=True)
        log_fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *self.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log_fd,
                stderr=log_fd,
                env=self._build_env(),
                cwd=self._cwd,
                start_new_session=True,  # own process group: stop() signals the whole group
            )
        finally:
            os.close(log_fd)  # the child holds its own copy
        # With start_new_session the child is a session and group leader: pgid == pid.
        _LIVE_GROUPS[self._proc.pid] = self._proc.pid
        try:
            await self._wait_ready()
        except BaseException:
            await self.stop()
            raise
        return self

    async def _wait_ready(self) -> None:
        import aiohttp  # lazy: not needed to read a config (adapters.http says why)

        assert self._proc is not None
        proc = self._proc
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.startup_timeout_s
        url = self.root_url + self.health_path
        exited = asyncio.ensure_future(proc.wait())
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2.0)) as http:
                while True:
                    if exited.done():
                        raise ManagedServerError(
                            await self._describe(f"server exited with code {proc.returncode} before it was ready")
                        )
                    try:
                        async with http.get(url) as r:
                            if r.status == 200:
                                return
                    except (TimeoutError, aiohttp.ClientError, OSError):
                        pass  # not listening yet / still loading (llama.cpp answers 503 while loading)
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        raise ManagedServerError(
                            await self._describe(f"server not healthy after {self.startup_timeout_s:g}s")
                        )
                    await asyncio.wait({exited}, timeout=min(self._poll_interval_s, remaining))
        finally:
            if not exited.done():
                exited.cancel()

    async def wait_exit(self) -> int:
        """Returns when the server process exits (a lane watches this to fail fast on a crash)."""
        assert self._proc is not None
        return await self._proc.wait()

    @property
    def stopping(self) -> bool:
        return self._stopping

    async def describe_exit(self) -> str:
        return await self._describe(f"server exited unexpectedly with code {self.returncode}")

    async def _describe(self, what: str) -> str:
        tail = await asyncio.to_thread(log_tail, self.log_path, 20)
        cmd = " ".join(self.argv)
        return f"{what}: {cmd}\n--- last lines of {self.log_path} ---\n{tail}"

    async def stop(self) -> None:
        """SIGTERM, wait up to stop_grace_s, then SIGKILL the group. Idempotent."""
        proc = self._proc
        if proc is None or self._stopped:
            return
        pgid = proc.pid
        self._stopping = True
        try:
            if proc.returncode is None:
                if self._supervised:
                    # The supervisor forwards it to the command and runs its own grace + sweep;
                    # signalling the group too would deliver SIGTERM twice to the command.
                    grace = self.stop_grace_s + 2.0
                    try:
                        os.kill(pgid, signal.SIGTERM)
                    except ProcessLookupError:
                        pass
                else:
                    grace = self.stop_grace_s
                    _kill_group(pgid, signal.SIGTERM)
                try:
                    await asyncio.wait_for(proc.wait(), grace)
                except TimeoutError:
                    _kill_group(pgid, signal.SIGKILL)
                    await proc.wait()
            # The leader is gone; sweep helpers it may have left in the group (e.g. vLLM workers).
            _kill_group(pgid, signal.SIGKILL)
        except BaseException:
            # Cancelled (or anything else) mid-stop: never leave the group running.
            _kill_group(pgid, signal.SIGKILL)
            raise
        finally:
            if proc.returncode is not None:
                _LIVE_GROUPS.pop(pgid, None)
                self._stopped = True

    async def __aenter__(self) -> ManagedServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
