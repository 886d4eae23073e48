"""Time as an injectable dependency: the limits, retry backoff and every timer take a `Clock`, so
async tests run on virtual time (no real sleeps, exact instants) and production on the loop's clock.

`VirtualClock` moves only when every task is blocked: `sleep` parks the caller on a heap, and `run`
advances time to the earliest wake-up once the loop has settled (trio's MockClock with
autojump_threshold=0, in asyncio).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Awaitable
from typing import Protocol, TypeVar

T = TypeVar("T")


class Clock(Protocol):
    def now(self) -> float: ...

    async def sleep(self, delay: float) -> None: ...

    async def wait(self, event: asyncio.Event, timeout: float) -> bool:
        """True when `event` is set within `timeout` seconds, False when the time ran out."""
        ...


class LoopClock:
    """The running event loop's monotonic clock."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None

    def now(self) -> float:
        # asyncio.get_running_loop() makes a getpid() system call on Python 3.11 (0.6 us on the
        # 2-core benchmark machine; read twice per request): the loop is looked up again only once
        # the one found last has stopped.
        loop = self._loop
        if loop is None or not loop.is_running():
            loop = self._loop = asyncio.get_running_loop()
        return loop.time()

    async def sleep(self, delay: float) -> None:
        await asyncio.sleep(delay)

    async def wait(self, event: asyncio.Event, timeout: float) -> bool:
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except TimeoutError:
            return False
        return True


class VirtualClock:
    """Virtual time for tests: `now` starts at 0 and jumps to the next sleeper's wake-up whenever
    every task driven by `run` is blocked."""

    def __init__(self) -> None:
        self._now = 0.0
        self._heap: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self._now

    async def sleep(self, delay: float) -> None:
        if delay < 0:
            raise ValueError(f"negative sleep {delay}")
        self.sleeps.append(delay)
        fut = asyncio.get_running_loop().create_future()
        heapq.heappush(self._heap, (self._now + delay, next(self._seq), fut))
        await fut

    async def wait(self, event: asyncio.Event, timeout: float) -> bool:
        if event.is_set():
            return True
        waiter = asyncio.ensure_future(event.wait())
        timer = asyncio.ensure_future(self.sleep(timeout))
        done, pending = await asyncio.wait({waiter, timer}, return_when=asyncio.FIRST_COMPLETED)
        for t in pending:
            t.cancel()
        return waiter in done

    def next_wakeup(self) -> float | None:
        """When the earliest sleeper wakes (None: nobody sleeps): for a driver that mixes virtual
        time with real I/O and may only jump while no request is in flight."""
        live = [at for at, _, fut in self._heap if not fut.done()]
        return min(live) if live else None

    async def settle(self) -> None:
        for _ in range(50):
            await asyncio.sleep(0)

    def _wake_due(self) -> None:
        while self._heap and self._heap[0][0] <= self._now:
            _, _, fut = heapq.heappop(self._heap)
            if not fut.done():
                fut.set_result(None)

    async def run(self, *aws: Awaitable[T], until: float = float("inf")) -> list[T]:
        """Drives `aws` to completion on virtual time; returns [] if `until` comes first."""
        tasks = [asyncio.ensure_future(a) for a in aws]
        while True:
            await self.settle()
            if all(t.done() for t in tasks):
                return [t.result() for t in tasks]
            self._heap = [e for e in self._heap if not e[2].done()]
            heapq.heapify(self._heap)
            if not self._heap:
                raise AssertionError("deadlock: tasks blocked with no sleeper to wake")
            t = self._heap[0][0]
            if t > until:
                return []
            self._now = max(self._now, t)
            self._wake_due()

    async def advance(self, seconds: float) -> None:
        """Moves time forward, waking sleepers on the way."""
        target = self._now + seconds
        while self._heap and self._heap[0][0] <= target:
            self._now = max(self._now, self._heap[0][0])
            self._wake_due()
            await self.settle()
        self._now = target
        await self.settle()
