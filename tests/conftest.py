"""Shared fixtures for the engine tests.

Everything runs on 127.0.0.1 against the fault-injecting fake server (engine/testing/fakeserver.py).
The engine runs its real CLI either in this process (`run_cli`: `engine.cli.main`, no interpreter
start-up) or as a real subprocess (`run_engine`, `EngineProc`: `python -m engine`) where the process
itself is under test: signals, locks held by another process, kill -9, a module found through the
child's PYTHONPATH, files that change between two runs of one process's caches.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import orjson
import pytest

from engine.cli import main
from engine.testing.fakeserver import FakeConfig, FakeServerProcess, expected_text

# The embedded model server as a session fixture (tests/test_embedded_server.py): provided here, since
# a fixture imported into a test module is a module name its test parameters would shadow.
from tests.embedded_fixture import embedded_server  # noqa: F401

# The Ray head shared by a session's --backend ray tests (tests/ray_head.py), the same way.
from tests.ray_head import ray_head, stop_ray_head  # noqa: F401

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable


# -- fake server --------------------------------------------------------------------------------


@pytest.fixture
def fake_server() -> Iterator[FakeServerProcess]:
    """A fresh fake OpenAI server (subprocess) per test, default config (no faults, no latency)."""
    with FakeServerProcess() as srv:
        yield srv


@pytest.fixture(scope="module")
def module_fake_server() -> Iterator[FakeServerProcess]:
    """One fake server process for a whole test module (see `fresh_fake_server`)."""
    with FakeServerProcess() as srv:
        yield srv


@pytest.fixture
def fresh_fake_server(module_fake_server: FakeServerProcess) -> FakeServerProcess:
    """The module's fake server as a fresh one is: default config, empty counters and log. Each
    server start is about 0.45 s of CPU; a module whose tests each leave nothing in flight at their
    end opts in with a `fake_server` fixture that returns this one (tests/test_shards.py)."""
    module_fake_server.set_config(**msgspec.structs.asdict(FakeConfig()))
    module_fake_server.reset()
    return module_fake_server


@pytest.fixture
def make_server() -> Iterator[Any]:
    """Factory for extra servers (e.g. a second one with other settings); all stopped at teardown."""
    started: list[FakeServerProcess] = []

    def make(config: Mapping[str, Any] | None = None) -> FakeServerProcess:
        srv = FakeServerProcess(config)
        srv.start()
        started.append(srv)
        return srv

    try:
        yield make
    finally:
        for s in started:
            s.stop()


# -- files ----------------------------------------------------------------------------------------


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return orjson.dumps(v).decode()  # a JSON string is a valid TOML basic string
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(f"no TOML for {v!r}")


def write_config(path: Path, models: Mapping[str, Mapping[str, Any]], run: Mapping[str, Any] | None = None,
                 extra: str = "") -> Path:
    """A TOML config: [run] from `run`, one [models.<name>] per entry (None values are left out)."""
    lines: list[str] = []
    if run:
        lines.append("[run]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in run.items() if v is not None]
        lines.append("")
    for name, body in models.items():
        lines.append(f"[models.{name}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in body.items() if v is not None]
        lines.append("")
    path.write_text("\n".join(lines) + extra)
    return path


def fake_model(srv: FakeServerProcess | str, **kw: Any) -> dict[str, Any]:
    """A [models.x] body for the fake server, with fast retries unless overridden."""
    url = srv if isinstance(srv, str) else srv.url
    body: dict[str, Any] = {"adapter": "openai", "base_url": url, "model": "fake-model",
                            "backoff_base_s": 0.05, "backoff_max_s": 1.0}
    body.update(kw)
    return body


def item_prompt(i: int) -> str:
    return f"question number {i}: how are you today?"


def write_items(path: Path, n: int, start: int = 0) -> Path:
    with open(path, "wb") as f:
        for i in range(start, start + n):
            f.write(orjson.dumps({"id": f"q{i}", "prompt": item_prompt(i)}) + b"\n")
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def count_lines(path: Path) -> int:
    try:
        with open(path, "rb") as f:
            return sum(block.count(b"\n") for block in iter(lambda: f.read(1 << 20), b""))
    except FileNotFoundError:
        return 0


# -- running the engine -----------------------------------------------------------------------------


def engine_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop("NO_COLOR", None)
    if extra:
        env.update(extra)
    return env


@dataclass
class EngineResult:
    rc: int
    stdout: str
    stderr: str

    def err_lines(self) -> list[str]:
        return [ln for ln in self.stderr.splitlines() if ln.strip()]


def run_engine(*args: str | Path, timeout: float = 120.0, env: Mapping[str, str] | None = None) -> EngineResult:
    """`python -m engine ARGS` to completion; a hang is a test failure, never a stuck suite."""
    cmd = [PY, "-m", "engine", *map(str, args)]
    try:
        p = subprocess.run(cmd, cwd=str(REPO), env=engine_env(env), capture_output=True, timeout=timeout,
                           stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"engine did not finish within {timeout} s: {cmd}\nstderr: "
                             f"{(exc.stderr or b'').decode(errors='replace')[-3000:]}") from None
    return EngineResult(p.returncode, p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace"))


def run_cli(*args: str | Path, env: Mapping[str, str | None] | None = None) -> EngineResult:
    """`python -m engine ARGS` in this process: `engine.cli.main` with the same argv, working directory
    and environment variables as `run_engine` (a None in `env` unsets that variable), its stdout and
    stderr captured, its exit code returned.
    The parser, the command, the run and its files are the real ones; only the interpreter start-up
    (about half a second of CPU per call here) is saved. For what a command does, writes and says; a
    test of a signal, kill -9, a hang or how the process itself exits keeps `run_engine` or `EngineProc`."""
    argv = [str(a) for a in args]
    changes: dict[str, str | None] = {"NO_COLOR": None, **(env or {})}
    saved = {k: os.environ.get(k) for k in changes}
    saved_argv, saved_cwd = sys.argv, os.getcwd()
    out, err = io.StringIO(), io.StringIO()
    try:
        for k, v in changes.items():
            _set_env(k, v)
        sys.argv = [str(REPO / "engine" / "__main__.py"), *argv]
        os.chdir(REPO)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                rc = main(argv)
            except SystemExit as exc:  # argparse's usage errors
                rc = exc.code if isinstance(exc.code, int) else 1
    finally:
        for k, v in saved.items():
            _set_env(k, v)
        sys.argv = saved_argv
        os.chdir(saved_cwd)
    return EngineResult(rc, out.getvalue(), err.getvalue())


def _set_env(key: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(key, None)
    else:
        os.environ[key] = value


class EngineProc:
    """A background `python -m engine` (for signals and kill -9); output goes to temp files."""

    def __init__(self, *args: str | Path, env: Mapping[str, str] | None = None) -> None:
        self._out = tempfile.TemporaryFile()
        self._err = tempfile.TemporaryFile()
        self.proc = subprocess.Popen([PY, "-m", "engine", *map(str, args)], cwd=str(REPO), env=engine_env(env),
                                     stdout=self._out, stderr=self._err, stdin=subprocess.DEVNULL)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def kill9(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def wait(self, timeout: float = 120.0) -> EngineResult:
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill9()
            raise AssertionError(f"engine did not exit within {timeout} s; stderr: {self.stderr()[-3000:]}") from None
        return EngineResult(rc, self._read(self._out), self._read(self._err))

    def stderr(self) -> str:
        return self._read(self._err)

    @staticmethod
    def _read(f: Any) -> str:
        f.seek(0)
        return f.read().decode(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> None:
        if self.proc.poll() is None:
            self.kill9()
        self._out.close()
        self._err.close()


@pytest.fixture
def engine_procs() -> Iterator[Any]:
    """Factory of background engine processes; any left running are killed at teardown."""
    procs: list[EngineProc] = []

    def start(*args: str | Path, env: Mapping[str, str] | None = None) -> EngineProc:
        p = EngineProc(*args, env=env)
        procs.append(p)
        return p

    try:
        yield start
    finally:
        for p in procs:
            p.close()


def wait_for_lines(path: Path, n: int, proc: EngineProc | None = None, timeout: float = 60.0,
                   poll: float = 0.005) -> int:
    """Polls until `path` holds at least n lines; returns the count seen."""
    deadline = time.monotonic() + timeout
    while True:
        c = count_lines(path)
        if c >= n:
            return c
        if proc is not None and not proc.alive():
            raise AssertionError(f"engine exited (rc {proc.proc.returncode}) with {c} < {n} lines in {path}: "
                                 f"{proc.stderr()[-2000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} reached only {c} of {n} lines within {timeout} s")
        time.sleep(poll)


# -- expectations --------------------------------------------------------------------------------


def expected_texts(config: Path, items: Path, model: str, samples: int = 1) -> dict[str, str]:
    """key -> the exact text the fake server answers, recomputed from the request body the
    adapter builds (independent of anything the engine wrote)."""
    from adapters.registry import make_adapter
    from engine.config import load_config
    from engine.items import custom_source
    from engine.run.units import lane_units

    cfg = load_config(config)
    adapter, _ = make_adapter(model, cfg.models[model], Path(tempfile.gettempdir()), with_secrets=False)
    return {u.key: expected_text(u.body) for u in lane_units(model, cfg.models[model], adapter,
                                                             custom_source(items, 0), samples)}


def check_complete(out: Path, model: str, expected: Mapping[str, str]) -> list[dict[str, Any]]:
    """responses/<model>.jsonl holds exactly one successful record per expected key, with the
    server's text; returns the records."""
    recs = read_jsonl(out / "responses" / f"{model}.jsonl")
    keys = [r["key"] for r in recs]
    dupes = {k for k in keys if keys.count(k) > 1} if len(set(keys)) != len(keys) else set()
    assert not dupes, f"duplicate keys: {sorted(dupes)[:5]}"
    assert set(keys) == set(expected), (f"missing {len(set(expected) - set(keys))}, "
                                        f"unexpected {len(set(keys) - set(expected))}")
    for r in recs:
        assert r.get("error") is None, r
        assert r["response"]["text"] == expected[r["key"]], r
    return recs


def verify_clean(out: Path, *, process: bool = False) -> EngineResult:
    """`verify OUT` is clean (in this process; `process=True`: a fresh `python -m engine`)."""
    res = run_engine("verify", out, timeout=60) if process else run_cli("verify", out)
    assert res.rc == 0 and "verify: clean" in res.stdout, f"verify failed rc={res.rc}:\n{res.stdout}\n{res.stderr}"
    return res


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FixedPortServer(FakeServerProcess):
    """A fake server on a chosen port, so that a config's base_url survives a server restart."""

    def __init__(self, port: int, config: Mapping[str, Any] | None = None) -> None:
        super().__init__(config, port=port)


class ThreadServer:
    """The fake server's app in a background thread with one extra trick: while `fail_with` is
    set, chat requests whose body contains it get a 400 (a fatal error for the engine) — the
    subprocess server has no way to fail only some items with a non-retryable status."""

    def __init__(self, config: Mapping[str, Any] | None = None, middleware: Any = None) -> None:
        import asyncio
        import threading

        from aiohttp import web

        from engine.testing.fakeserver import SERVER_KEY, make_app

        self.fail_with: bytes | None = None
        self.fatal_sent = 0
        app = make_app(config)
        self.server = app[SERVER_KEY]

        @web.middleware
        async def fail_some(request: web.Request, handler: Any) -> web.StreamResponse:
            if self.fail_with is not None and request.path.endswith("/chat/completions"):
                raw = await request.read()  # cached: the handler reads it again
                if self.fail_with in raw:
                    self.fatal_sent += 1
                    return web.json_response({"error": {"message": "this item is not allowed", "type": "invalid_request_error",
                                                        "param": None, "code": None}}, status=400)
            return await handler(request)

        app.middlewares.append(fail_some)
        if middleware is not None:
            app.middlewares.append(middleware)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

        async def start() -> tuple[Any, str]:
            runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            return runner, f"http://127.0.0.1:{runner.addresses[0][1]}/v1"

        self._runner, self.url = asyncio.run_coroutine_threadsafe(start(), self._loop).result(10)

    def stats(self) -> dict[str, Any]:
        import asyncio

        async def get() -> dict[str, Any]:
            return self.server.stats()

        return asyncio.run_coroutine_threadsafe(get(), self._loop).result(10)

    def stop(self) -> None:
        import asyncio

        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


@pytest.fixture
def thread_server() -> Iterator[ThreadServer]:
    srv = ThreadServer()
    try:
        yield srv
    finally:
        srv.stop()


# -- the processes the tests start ----------------------------------------------------------------------


def pytest_configure(config: pytest.Config) -> None:
    """Every engine, fake server and model server the tests start talks plain HTTP on 127.0.0.1, so
    none needs the system's CA bundle; yet importing aiohttp loads it twice (aiohttp.connector makes
    its verified and unverified SSL contexts at import), about 0.1 s of CPU per process on a 2-core
    machine, and a suite starts hundreds of processes. They inherit an empty bundle instead: TLS stays
    verified (nothing is trusted), and a test that reached for HTTPS would fail, not pass."""
    empty = Path(tempfile.mkdtemp(prefix="trustmh-tests-no-ca-"))
    config.add_cleanup(lambda: empty.rmdir())
    os.environ["SSL_CERT_FILE"] = os.devnull
    os.environ["SSL_CERT_DIR"] = str(empty)


# -- opt-in real vLLM tests ------------------------------------------------------------------------


def pytest_sessionfinish(session: pytest.Session) -> None:
    # The shared Ray head outlives the tests that use it, and any one xdist worker: the controller
    # (or the only process) stops it once every worker is done.
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        stop_ray_head()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-vllm", action="store_true", default=False,
                     help="run tests marked `vllm` (they need vLLM installed and a GPU)")
    parser.addoption("--run-ray-cluster", action="store_true", default=False,
                     help="run tests marked `ray_cluster` (a multi-node Ray cluster started on this machine)")


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """`-n auto`: half as many workers again as the CPUs this process may use (3 on 2 cores). Many
    tests spend much of their time waiting on a server's latency, a backoff, a child process starting
    or a deadline; with one worker per CPU a core sat idle whenever both workers waited (the parallel
    phase used ~75% of two quiet cores). PYTEST_XDIST_AUTO_NUM_WORKERS still sets the count."""
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS", "").isdigit():
        return int(os.environ["PYTEST_XDIST_AUTO_NUM_WORKERS"])
    cpus = len(os.sched_getaffinity(0))
    return cpus + max(1, cpus // 2)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # The long tests (marked `slow`) first, longest first (`slow(SECONDS)`: about how long it takes
    # alone on two quiet cores; 10 unless given): with `--maxschedchunk 1` (the README's command) each
    # worker takes the next test when it is free, so the long ones start at once on different workers
    # and the phase ends on short tests, not on one long test left alone.
    def rank(item: pytest.Item) -> float:
        mark = item.get_closest_marker("slow")
        return 0.0 if mark is None else -float(mark.args[0] if mark.args else 10)

    items.sort(key=rank)
    opt_in = {"vllm": ("--run-vllm", "needs real vLLM"),
              "ray_cluster": ("--run-ray-cluster", "starts a multi-node Ray cluster (a minute on two cores)")}
    for marker, (flag, why) in opt_in.items():
        if config.getoption(flag):
            continue
        skip = pytest.mark.skip(reason=f"{why}: opt in with {flag}")
        for item in items:
            if marker in item.keywords:
                item.add_marker(skip)
