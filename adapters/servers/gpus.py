"""GPU placement and rotation of local model lanes: the run's GPUs and the pool lanes take them from.

The run's GPUs (`[run] gpus`, else `CUDA_VISIBLE_DEVICES`, else `nvidia-smi -L`) form one
`GpuPool`. A local lane acquires the GPUs its adapter's registry entry says it needs just before it
starts its server and releases them when its lane is done (or its server failed); the next waiting
model starts on the freed GPUs. A lane with no pending work never acquires. API and judge lanes run
throughout.

Grant order: larger tensor-parallel size first, then config order; a lane that has not yet said
whether it has work holds back the lanes after it (so the first placement really is largest first),
and a waiting lane that does not fit lets smaller ones behind it use what is free (backfill).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from engine.core.adapter import Adapter, ServerOpener
from engine.core.errors import ConfigError

UNDECIDED, WAITING, HOLDING, IDLE, DONE = "undecided", "waiting", "holding", "idle", "done"


def detect_gpus(run_gpus: Sequence[int] | None) -> tuple[list[str], str]:
    """The GPU ids to place on, and where they came from."""
    if run_gpus is not None:
        return [str(g) for g in run_gpus], "[run] gpus"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = [g.strip() for g in visible.split(",") if g.strip() and g.strip() != "-1"]
        return ids, "CUDA_VISIBLE_DEVICES"
    exe = shutil.which("nvidia-smi")
    if exe:
        try:
            out = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=20, check=False).stdout
        except (OSError, subprocess.SubprocessError):
            out = ""
        n = sum(1 for line in out.splitlines() if line.startswith("GPU "))
        return [str(i) for i in range(n)], "nvidia-smi -L"
    return [], "no GPU found (no [run] gpus, CUDA_VISIBLE_DEVICES or nvidia-smi)"


def check_fits(needs: dict[str, int], gpus: Sequence[str], source: str, holders: Sequence[str] = ()) -> None:
    """One clear error before anything is written: a model needs more GPUs than there are, or the
    local lanes that hold their GPUs for the whole run (judges) leave too few for the others."""
    for name, n in needs.items():
        if n > len(gpus):
            have = f"{len(gpus)} GPU{'s' if len(gpus) != 1 else ''} ({source})" if gpus else f"no GPU: {source}"
            raise ConfigError(f"models.{name}: tensor_parallel_size {n} needs {n} GPUs, but this run has {have}; "
                              "set [run] gpus / CUDA_VISIBLE_DEVICES, lower tensor_parallel_size, "
                              "or use base_url for a server running elsewhere"
                              + ("" if gpus else " (vLLM's CPU build on a machine without GPUs: [run] gpus = [0], "
                                 "one placement slot)"))
    held = sum(needs.get(h, 0) for h in holders)
    others = [n for name, n in needs.items() if name not in holders]
    if held and others and held + max(others) > len(gpus):
        raise ConfigError(f"local judge models {', '.join(h for h in holders if needs.get(h))} keep {held} GPU(s) for "
                          f"the whole run, leaving too few of the {len(gpus)} GPUs for the other local models; "
                          "add GPUs, judge with an API model or a base_url server, or run the judge afterwards "
                          "(`python -m engine judge DIR`)")


class GpuPool:
    """Pure allocation state on one event loop (no I/O). Participants register up front."""

    def __init__(self, gpus: Sequence[str]) -> None:
        self.gpus = list(gpus)
        self.free = list(gpus)
        self.need: dict[str, int] = {}
        self.state: dict[str, str] = {}
        self.held: dict[str, list[str]] = {}
        self._order: list[str] = []
        self._futures: dict[str, asyncio.Future[list[str]]] = {}
        self.events: list[tuple[str, str, tuple[str, ...]]] = []  # (event, model, gpus) in order
        self.closed = False

    def register(self, name: str, need: int) -> None:
        self.need[name] = need
        self.state[name] = UNDECIDED
        self._order.append(name)
        self._order.sort(key=lambda n: -self.need[n])  # stable: config order among equals

    async def acquire(self, name: str) -> list[str]:
        if self.closed:
            raise asyncio.CancelledError
        fut: asyncio.Future[list[str]] = asyncio.get_running_loop().create_future()
        self._futures[name] = fut
        self.state[name] = WAITING
        self._grant()
        try:
            return await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release(name)
            elif self.state.get(name) == WAITING:
                self.state[name] = DONE
                self._grant()
            raise

    def withdraw(self, name: str) -> None:
        """No work now (complete, or a judge waiting for responses): hold nobody back."""
        if self.state.get(name) in (UNDECIDED, WAITING):
            self.state[name] = IDLE
            self._grant()

    def release(self, name: str) -> None:
        gpus = self.held.pop(name, [])
        if gpus:
            self.free.extend(gpus)
            self.free.sort(key=self.gpus.index)
            self.events.append(("release", name, tuple(gpus)))
        self.state[name] = DONE
        self._grant()

    def close(self) -> None:
        """The run is stopping (signal): no model starts any more; waiting lanes are cancelled."""
        self.closed = True
        for fut in self._futures.values():
            fut.cancel()
        self._futures.clear()

    def _grant(self) -> None:
        if self.closed:
            return
        for name in self._order:
            st = self.state[name]
            if st == UNDECIDED:
                break
            if st != WAITING or self.need[name] > len(self.free):
                continue
            take, self.free = self.free[: self.need[name]], self.free[self.need[name]:]
            self.held[name] = take
            self.state[name] = HOLDING
            self.events.append(("acquire", name, tuple(take)))
            fut = self._futures.pop(name)
            if not fut.done():
                fut.set_result(take)


def placed(open_server: ServerOpener, pool: GpuPool, name: str,
           info: dict[str, object]) -> Callable[[Adapter], AbstractAsyncContextManager[object]]:
    """Wraps a lane's open_server: acquire GPUs, start the server on them, release when done."""

    @asynccontextmanager
    async def wrapper(adapter: Adapter) -> AsyncIterator[object]:
        t0 = time.time()
        gpus = await pool.acquire(name)
        if pool.closed:  # granted just before the run stopped: give the GPUs back, start nothing
            pool.release(name)
            raise asyncio.CancelledError
        info.update({"gpus": gpus, "waited_s": round(time.time() - t0, 3), "started_at": time.time()})
        try:
            async with open_server(adapter, gpus if open_server.takes_gpus else None) as server:
                info["ready_at"] = time.time()
                yield server
        finally:
            info["stopped_at"] = time.time()
            pool.release(name)

    return wrapper


def initial_placement(needs: dict[str, int], gpus: Sequence[str]) -> list[tuple[str, int, list[str] | None]]:
    """What the pool does first when every lane has work: (model, need, GPUs or None = queued)."""
    free = list(gpus)
    rows: list[tuple[str, int, list[str] | None]] = []
    for name in sorted(needs, key=lambda n: -needs[n]):
        n = needs[name]
        if n <= len(free):
            rows.append((name, n, free[:n]))
            free = free[n:]
        else:
            rows.append((name, n, None))
    return rows
