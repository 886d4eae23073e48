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
import math
from collections import deque
from collections.abc import Awaitable, Callable

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

# Arrival jitter on the way to the server must not squeeze k+1 requests into one window.
DEFAULT_MARGIN = 0.015
# A lane's first request opens a connection and may reach the server tens of ms late; whatever
# follows it is held back this much more, once, so that it never shares the first one's window.
COLD_START_S = 0.05
# TokenWindow: the share of a window's tokens that may be admitted at once (after an idle spell).
BURST = 0.05


class Pacer:
    """Starts at most `per_minute` requests per minute, evenly spaced (60/R s apart, or
    1/floor(R/60) where R/60 is not a whole number).

    Even spacing holds the limit over every 1 s window, not just on average. Callers reserve
    consecutive slots, so concurrent callers are served in arrival order without polling. A caller
    also never leaves sooner than 60/R s after the previous one actually left: when a busy loop
    wakes several callers late at once, they go one by one instead of in a burst. The slots do not
    move, but a queue behind a late caller catches up only by the margin (1.5% of a gap per
    request), and each caller of that queue sleeps a second time, to 60/R after the previous one
    left, and can wake late again: while wake-ups are late by a varying amount (a loaded machine),
    requests go about 60/R + that lateness apart. At 2400 rpm (25 ms gaps), wake-ups late by
    U(0, 20 ms) on a virtual clock gave 35.2 req/s instead of 38.8 (slots alone: 38.8, but 41 in
    one 1 s window); the real client at load 13 on 2 cores went at 31-33 req/s.
    """

    def __init__(self, per_minute: float, clock: Clock, sleep: Sleep, margin: float = DEFAULT_MARGIN) -> None:
        # A 1 s window holds whole requests: R = 90/min allows 1 (not 1.5) in every second, so
        # evenly spaced requests go 1/floor(R/60) s apart (60/R when R < 60).
        per_s = per_minute / 60.0
        if math.isinf(per_s):  # no spacing: the pacer only holds callers after a push_back
            self._min_gap = 0.0
        else:
            whole = math.floor(per_s + 1e-9)
            self._min_gap = 1.0 / whole if whole >= 1 else 1.0 / per_s
        self.interval = self._min_gap * (1.0 + margin)
        self._clock = clock
        self._sleep = sleep
        self._next = float("-inf")
        self._last = float("-inf")  # when the latest caller actually left
        self._cold = True  # no caller yet (see COLD_START_S)

    async def acquire(self) -> float:
        """Waits for this caller's slot; returns the seconds waited."""
        start = now = self._clock()
        slot = max(now, self._next)
        cold, self._cold = self._cold, False
        self._next = slot + self.interval + (COLD_START_S if cold and self.interval > 0 else 0.0)
        while True:
            at = max(slot, self._last + self._min_gap)
            if at <= now:
                break
            await self._sleep(at - now)
            now = self._clock()
        self._last = now
        return now - start

    def idle(self, now: float | None = None) -> bool:
        """True when acquire() would return at once without spacing anything: no rate configured
        and no provider push-back pending (the lane's hot path then skips the pacer). `now`: the
        clock's reading, when the caller has one."""
        return self._min_gap == 0.0 and self._next <= (self._clock() if now is None else now)

    def push_back(self, seconds: float) -> None:
        """Provider signals (e.g. remaining requests 0 until reset) delay every later slot."""
        self._next = max(self._next, self._clock() + seconds)


class TokenWindow:
    """Admits token charges so that their sum over every window of `window` seconds stays within
    `per_minute/60 * window` tokens; a sliding log, exact rather than a bucket that allows 2x
    bursts at window edges. Charges are estimates, corrected later with `adjust`.

    Admissions are also spread out at the window's rate (a charge of c tokens holds the next one
    back by c/rate s, with a small burst allowance) instead of letting a whole window's worth go
    at once: a burst reaches the server spread over some milliseconds, and its late members would
    share a server window with the next burst.
    """

    def __init__(self, per_minute: float, clock: Clock, sleep: Sleep, margin: float = DEFAULT_MARGIN,
                 window: float = 1.0) -> None:
        self.capacity = per_minute / 60.0 * window
        self.window = window * (1.0 + margin)
        self.rate = self.capacity / self.window  # tokens per second when spread evenly
        self._burst = BURST * self.window  # seconds of admissions that may go at once
        self._clock = clock
        self._sleep = sleep
        self._log: deque[list[float]] = deque()  # [time, tokens]
        self._total = 0.0
        self._tat = float("-inf")  # spreading: the next admission not before this

    def _evict(self, now: float) -> None:
        log = self._log
        while log and log[0][0] <= now - self.window:
            self._total -= log.popleft()[1]

    async def acquire(self, tokens: float) -> tuple[list[float], float]:
        """Returns (a handle for `adjust`, seconds waited). A charge larger than the whole window
        capacity goes alone, when the window is empty, rather than never."""
        waited = 0.0
        while True:
            now = self._clock()
            self._evict(now)
            spread_ok = now >= self._tat - self._burst
            if spread_ok and (self._total + tokens <= self.capacity + 1e-9 or not self._log):
                first = self._tat == float("-inf")
                entry = [now + (COLD_START_S if first else 0.0), float(tokens)]
                self._log.append(entry)
                self._total += tokens
                self._tat = max(self._tat, now) + tokens / self.rate
                return entry, waited
            until = self._tat - self._burst
            if self._total + tokens > self.capacity + 1e-9 and self._log:
                # Wait until enough of the oldest charges leave the window.
                need = self._total + tokens - self.capacity
                freed = 0.0
                t_free = self._log[0][0]
                for t, c in self._log:
                    freed += c
                    t_free = t
                    if freed >= need - 1e-9:
                        break
                until = max(until, t_free + self.window)
            delay = max(until - now, 1e-4)
            await self._sleep(delay)
            waited += delay

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

    def try_acquire(self) -> bool:
        """A slot at once, when one is free and nobody waits: the hot path's way, no coroutine."""
        if self.active < self.limit and not self._waiters:
            self.active += 1
            return True
        return False

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
        if self._waiters:  # _wake's own test, without its call: once per request
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
