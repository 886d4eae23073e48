"""Per-lane limits: request pacing, a token window and adaptive concurrency.

Written on the event loop's clock (injectable `clock`/`sleep`) rather than asyncio-throttle:
asyncio-throttle polls every 10 ms on time.monotonic, which cannot be driven by a fake clock in
tests and whose polling granularity costs ~1-2% of a 600 rpm budget. Each limiter here computes
the exact moment a caller may go and sleeps once.

Providers enforce "R per minute" over short windows, so limits are held over every 1-second window
(R/60 per second), with a small safety margin for arrival jitter between client and server clocks.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

# Arrival jitter on the way to the server must not squeeze k+1 requests into one window.
DEFAULT_MARGIN = 0.03


class Pacer:
    """Starts at most `per_minute` requests per minute, evenly spaced (60/R s apart).

    Even spacing holds the limit over every 1 s window, not just on average. Callers go one at a
    time in arrival order (a FIFO lock), each on a grid of slots `interval` apart and never less
    than 60/R s after the previous caller actually left: when the loop wakes a caller late (a busy
    process), the callers behind it are not let through in a burst to catch up.
    """

    def __init__(self, per_minute: float, clock: Clock, sleep: Sleep, margin: float = DEFAULT_MARGIN) -> None:
        self.interval = 60.0 / per_minute * (1.0 + margin)
        self._min_gap = 60.0 / per_minute
        self._clock = clock
        self._sleep = sleep
        self._next = float("-inf")  # the next caller's slot on the grid
        self._last = float("-inf")  # when the latest caller actually left
        self._lock = asyncio.Lock()

    async def acquire(self) -> float:
        """Waits for this caller's slot; returns the seconds waited."""
        start = self._clock()
        async with self._lock:
            while True:
                now = self._clock()
                slot = max(now, self._next, self._last + self._min_gap)
                if slot <= now:
                    break
                await self._sleep(slot - now)
            self._next = slot + self.interval
            self._last = now
        return now - start

    def push_back(self, seconds: float) -> None:
        """Provider signals (e.g. remaining requests 0 until reset) delay every later slot."""
        self._next = max(self._next, self._clock() + seconds)


class TokenWindow:
    """Admits token charges so that their sum over every window of `window` seconds stays within
    `per_minute/60 * window` tokens: a sliding log, exact rather than a bucket that allows 2x
    bursts at window edges. Charges are estimates, corrected later with `adjust`.

    Admissions are also spread out at the window's rate (each charge of c tokens holds back the
    next admission by c/rate seconds) instead of letting a whole window's worth go at once: a
    burst reaches the server spread over some milliseconds, and its late members would share a
    server window with the next burst. Callers are admitted one at a time in arrival order.
    """

    def __init__(self, per_minute: float, clock: Clock, sleep: Sleep, margin: float = DEFAULT_MARGIN,
                 window: float = 1.0) -> None:
        self.capacity = per_minute / 60.0 * window
        self.window = window * (1.0 + margin)
        self.rate = self.capacity / self.window  # tokens per second when spread evenly
        self._clock = clock
        self._sleep = sleep
        self._log: deque[list[float]] = deque()  # [time, tokens]
        self._total = 0.0
        self._tat = float("-inf")  # spreading: no admission before this
        self._lock = asyncio.Lock()

    def _evict(self, now: float) -> None:
        log = self._log
        while log and log[0][0] <= now - self.window:
            self._total -= log.popleft()[1]

    def _log_free_at(self, tokens: float, now: float) -> float:
        """When enough of the oldest charges leave the window for `tokens` to fit (now if they fit).
        A charge larger than the whole window capacity goes alone, when the window is empty."""
        if self._total + tokens <= self.capacity + 1e-9 or not self._log:
            return now
        need = self._total + tokens - self.capacity
        freed = 0.0
        until = self._log[-1][0]
        for t, c in self._log:
            freed += c
            until = t
            if freed >= need - 1e-9:
                break
        return until + self.window

    async def acquire(self, tokens: float) -> tuple[list[float], float]:
        """Returns (a handle for `adjust`, seconds waited)."""
        start = self._clock()
        async with self._lock:
            while True:
                now = self._clock()
                self._evict(now)
                at = max(self._tat, self._log_free_at(tokens, now))
                if at <= now:
                    break
                await self._sleep(max(at - now, 1e-4))
            entry = [now, float(tokens)]
            self._log.append(entry)
            self._total += tokens
            self._tat = max(self._tat, now) + tokens / self.rate
        return entry, now - start

    def adjust(self, entry: list[float], actual: float, refund: bool) -> None:
        """Corrects a charge with the usage the response reported."""
        delta = actual - entry[1]
        if delta < 0 and not refund:
            return
        now = self._clock()
        self._tat += delta / self.rate
        if entry[0] > now - self.window:
            entry[1] += delta
            self._total += delta
        elif delta > 0:
            self._log.append([now, delta])
            self._total += delta


class AdaptiveLimit:
    """A concurrency limit that halves on rate-limit signals and regrows by one slot after each
    `limit` consecutive successes (AIMD), never above `maximum`. Halving happens at most once per
    `cooldown` seconds so that a burst of 429s from one window counts once."""

    def __init__(self, maximum: int, clock: Clock, cooldown: float = 1.0) -> None:
        self.maximum = maximum
        self.limit = maximum
        self.active = 0
        self._clock = clock
        self._cooldown = cooldown
        self._last_cut = float("-inf")
        self._streak = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    async def acquire(self) -> None:
        if self.active < self.limit and not self._waiters:
            self.active += 1
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut
        except BaseException:
            if fut.done() and not fut.cancelled():
                self.release()  # it was handed a slot just as it was cancelled
            else:
                try:
                    self._waiters.remove(fut)
                except ValueError:
                    pass  # _wake already popped (and skipped) the cancelled future
            raise

    def release(self) -> None:
        self.active -= 1
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self.active < self.limit:
            fut = self._waiters.popleft()
            if not fut.done():
                self.active += 1
                fut.set_result(None)

    def on_rate_limited(self) -> None:
        now = self._clock()
        self._streak = 0
        if now - self._last_cut >= self._cooldown:
            self._last_cut = now
            self.limit = max(1, self.limit // 2)

    def on_success(self) -> None:
        if self.limit >= self.maximum:
            return
        self._streak += 1
        if self._streak >= self.limit:
            self._streak = 0
            self.limit += 1
            self._wake()
