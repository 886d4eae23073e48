"""The load generator: sends streamed requests when they are due and records what came back.

Open loop: request i is sent at its planned offset whatever the server is doing (a slow server
builds a queue, as real traffic would); `max_concurrency` caps requests in flight (closed loop
when every request is due at once). Each outcome keeps its planned and actual send time, so the
client's own lateness is measured, not assumed. Transport and clock are injected: `send` is an
adapter's `stream_reply`, `clock` a perf_counter-like function (the adapter stamps its text
pieces and its sends with time.perf_counter, so the default clock is that one). The replies are
read (their pieces cut into events, parsed, timed) after the schedule, up to READ_LATER_MAX of
them: done as each stream ended, that was one loop turn of ~0.2 ms per request that a due
request could wait behind.

"Sent" is the moment the request's bytes were handed to the socket, as the adapter's transport
stamps it (`sent` of `send_streamed`); where a transport stamps nothing, the moment the request
was released (or handed to `send`, if later), which is earlier (that lag is then a lower bound).

Each request is prepared ahead and released when due: its task starts LEAD_S before the due
moment (aiohttp builds the request, takes a pooled connection and buffers the headers), and its
bytes wait for `not_before`, which the dispatcher sets at the due moment; the write is then the
next task step. Started at the due moment instead, a request went through three loop turns
before its bytes left (its task's first step, the request build, aiohttp's body-writer task: on
Python 3.11 a separate task), each behind whatever else was ready (other streams' chunks, the end
of finished streams): p99 2.5-2.7 ms at 200 req/s, with 1.5 ms of it before the hand-over ran.
Between the due time and the send there are now the wake-up, the loop turn in progress and one
task step.

The loop itself wakes at each due moment (and each preparation time): a Linux timerfd, armed for
the next one, turns readable then and the loop runs the release in its next poll. Loop timers keep
whole milliseconds (uvloop rounds, so one can fire half a millisecond early, and then the rest of
the wait costs another tick; the selector loop rounds up), which was a p99 of 1.1 ms for a client
sending nothing. Where there is no timerfd (not Linux, or an injected clock), a thread sleeps to
the microsecond and hands the loop what is due (`call_soon_threadsafe`); that costs the thread's
own wake-up and the GIL before the loop's: at 200 req/s on 2 CPUs a send lag p99 of 2.2-4.3 ms
against 0.9-1.2 ms with the timerfd (SCHED_FIFO, machine at load 4). Spinning the loop for the
last millisecond instead would keep the same precision but cost up to a millisecond of CPU per
request, which would count as the client's own load.
"""

from __future__ import annotations

import asyncio
import math
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Sequence

from engine.bench.metrics import Outcome
from engine.bench.timerfd import Timer, open_timer
from engine.core.adapter import ReadReply
from engine.core.errors import AdapterError
from engine.core.records import Response

__all__ = ["Send", "connections_needed", "drive", "warm_up"]

Send = Callable[[dict[str, object], float, list[float], "asyncio.Future[None] | None"], Awaitable[ReadReply]]
SWITCH_INTERVAL_S = 0.0002  # how long the dispatcher's thread may wait for the GIL (see drive)
LEAD_S = 0.01  # how long before its due moment a request is prepared (see the module's note)
# Replies read after the schedule, at most (the rest as they end): ~5 KB each of pieces, stamps
# and headers (16-token replies), so at most ~50 MB.
READ_LATER_MAX = 10_000
_PERF_IS_MONOTONIC = time.get_clock_info("perf_counter").implementation == "clock_gettime(CLOCK_MONOTONIC)"


def _outcome(got: Response | AdapterError, marks: list[float], planned: float, sent: float, woke: float) -> Outcome:
    if isinstance(got, AdapterError):
        return Outcome(planned=planned, sent=sent, woke=woke, ok=False, error=f"{got.kind}: {got.message}")
    timing = got.timing
    tokens = got.usage.completion_tokens or (timing.chunks if timing else 0)
    return Outcome(planned=planned, sent=sent, woke=woke, ok=True, prompt_tokens=got.usage.prompt_tokens,
                   output_tokens=tokens, ttft_s=got.ttft_s if got.ttft_s is not None else got.latency_s,
                   latency_s=got.latency_s, itl_s=tuple(b - a for a, b in zip(marks, marks[1:], strict=False)))


class _Schedule:
    """Which requests are to be prepared (due[k] - lead has come) and released (due[k] has come)
    by a given time; times absolute, in the drive's clock."""

    def __init__(self, due: Sequence[float], lead: float) -> None:
        self.due, self.lead, self.p, self.r = due, lead, 0, 0

    def next_time(self) -> float:
        """When the next preparation or release falls due (inf when every request is released)."""
        due, n = self.due, len(self.due)
        if self.r == n:
            return math.inf
        return min(due[self.p] - self.lead if self.p < n else math.inf, due[self.r])

    def advance(self, now: float) -> tuple[int, int, int, int]:
        """(p, p2, r, r2): requests p..p2-1 to prepare and r..r2-1 to release by `now`."""
        due, n, p, r = self.due, len(self.due), self.p, self.r
        p2, r2 = p, r
        while p2 < n and due[p2] - self.lead <= now:
            p2 += 1
        while r2 < n and due[r2] <= now:
            r2 += 1
        self.p, self.r = p2, r2
        return p, p2, r, r2


def _keep_time(loop: asyncio.AbstractEventLoop, schedule: _Schedule, on_time: Callable[[int, int, int, int], None],
               stop: threading.Event, clock: Callable[[], float]) -> None:
    """The dispatcher's thread, where there is no timerfd: sleeps to each of the schedule's times
    and has the loop call on_time(...) with what is due, until all are released or `stop` is set."""
    while (t := schedule.next_time()) < math.inf:
        if (wait := t - clock()) > 0:
            if stop.wait(wait):
                return
            continue
        try:
            loop.call_soon_threadsafe(on_time, *schedule.advance(clock()))
        except RuntimeError:  # the loop has closed: nobody is waiting for the rest
            return


def _keep_time_in_loop(loop: asyncio.AbstractEventLoop, timer: Timer, schedule: _Schedule,
                       on_time: Callable[[int, int, int, int], None]) -> None:
    """Arms `timer` (clock: perf_counter's, CLOCK_MONOTONIC) for each of the schedule's times; the
    loop calls on_time(...) with what is due when its fd turns readable."""
    def fire() -> None:
        if not timer.clear():
            return
        on_time(*schedule.advance(time.perf_counter()))
        if (t := schedule.next_time()) < math.inf:
            timer.at(t)

    loop.add_reader(timer.fd, fire)
    timer.at(schedule.next_time())


def _start_schedule(loop: asyncio.AbstractEventLoop, schedule: _Schedule, on_time: Callable[[int, int, int, int], None],
                    stop: threading.Event, clock: Callable[[], float]) -> Timer | None:
    """Starts keeping `schedule`: the loop's own timerfd where there is one and `clock` is
    perf_counter (returned, for the caller to close), else the dispatcher's thread (None; it
    shortens the GIL switch interval, which the caller restores)."""
    # The timerfd wakes the loop itself at the due moment; a thread needs the CPU, then the GIL,
    # and then wakes the loop as well (two wake-ups in a row where the loop was idle).
    timer = open_timer() if clock is time.perf_counter and _PERF_IS_MONOTONIC else None
    if timer is not None:
        _keep_time_in_loop(loop, timer, schedule, on_time)
    else:
        # A woken thread needs the GIL for its hand-over, and a busy loop lets a waiting thread in
        # only every switch interval (5 ms by default): a wake lag p99 of 2.7 ms at 500 req/s. The
        # thread asks for it twice per request, so a shorter interval costs nothing between (the
        # caller puts the old one back).
        sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL_S))
        threading.Thread(target=_keep_time, args=(loop, schedule, on_time, stop, clock), name="bench-dispatch",
                         daemon=True).start()
    return timer


async def drive(send: Send, bodies: Sequence[dict[str, object]], planned: Sequence[float], *,
                max_concurrency: int | None, timeout_s: float,
                clock: Callable[[], float] = time.perf_counter) -> tuple[list[Outcome], float]:
    """Sends bodies[i] at start + planned[i] (never before); returns the outcomes (in request
    order) and the duration from the start to the last completion."""
    if len(bodies) != len(planned):
        raise ValueError(f"{len(bodies)} bodies for {len(planned)} planned times")
    loop = asyncio.get_running_loop()
    slots = asyncio.Semaphore(max_concurrency) if max_concurrency else None
    tasks: list[asyncio.Task[tuple[Response | AdapterError | ReadReply, list[float], list[float], float]]] = []
    unread = 0
    holds = [loop.create_future() for _ in planned]
    woke = [0.0] * len(planned)
    all_released: asyncio.Future[None] = loop.create_future()
    start = clock()
    last_end = start

    async def one(k: int) -> tuple[Response | AdapterError | ReadReply, list[float], list[float], float]:
        nonlocal last_end, unread
        if slots is not None:
            await slots.acquire()
        try:
            marks: list[float] = []
            stamps: list[float] = []
            handed = clock()
            try:
                reader = await send(bodies[k], timeout_s, stamps, holds[k])
            except AdapterError as exc:
                return exc, marks, stamps, handed
            finally:
                last_end = max(last_end, clock())
            if unread < READ_LATER_MAX:
                unread += 1
                return reader, marks, stamps, handed
            return _read(reader, marks), marks, stamps, handed
        finally:
            if slots is not None:
                slots.release()

    def on_time(p: int, p2: int, r: int, r2: int) -> None:
        if all_released.done():  # drive was cancelled: start nothing more
            return
        tasks.extend(loop.create_task(one(k)) for k in range(p, p2))
        now = clock() - start
        for k in range(r, r2):
            woke[k] = now
            _release(holds[k])
        if r2 == len(planned):
            all_released.set_result(None)

    stop = threading.Event()
    interval = sys.getswitchinterval()  # the thread shortens it (_start_schedule)
    if planned:
        timer = _start_schedule(loop, _Schedule([start + p for p in planned], LEAD_S), on_time, stop, clock)
    else:
        timer = None
        all_released.set_result(None)
    try:
        await all_released
    except BaseException:
        for t in tasks:  # held requests would otherwise wait for a release that never comes
            t.cancel()
        raise
    finally:
        stop.set()
        sys.setswitchinterval(interval)
        if timer is not None:
            loop.remove_reader(timer.fd)
            timer.close()
    done = await asyncio.gather(*tasks)
    outcomes = []
    for k, (got, marks, stamps, handed) in enumerate(done):
        # Where the transport stamps nothing, the release (or the call, if later) stands in: a lower bound.
        sent = (stamps[-1] if stamps else max(handed, start + woke[k])) - start
        outcomes.append(_outcome(got if isinstance(got, Response | AdapterError) else _read(got, marks), marks,
                                 planned[k], sent, woke[k]))
    return outcomes, last_end - start


def _release(hold: asyncio.Future[None]) -> None:
    # A hold is cancelled with its request when the request's own timeout fires while it is held
    # (a loop stalled past it): set_result would raise in the timer's callback, and drive would
    # wait forever for the rest of the schedule.
    if not hold.done():
        hold.set_result(None)


def _read(reader: ReadReply, marks: list[float]) -> Response | AdapterError:
    try:
        return reader(marks)
    except AdapterError as exc:
        return exc


async def warm_up(send: Send, bodies: Sequence[dict[str, object]], timeout_s: float) -> tuple[int, float]:
    """Sends the warm-up requests (all at once) before the measured ones; returns how many failed
    and the slowest reply's latency (s; 0 without replies). They are never counted in the result."""
    async def one(body: dict[str, object]) -> Response:
        return (await send(body, timeout_s, [], None))(None)

    results = await asyncio.gather(*(one(b) for b in bodies), return_exceptions=True)
    failed = [r for r in results if isinstance(r, BaseException)]
    for r in failed:
        if not isinstance(r, AdapterError):
            raise r
    return len(failed), max((r.latency_s for r in results if isinstance(r, Response)), default=0.0)


def connections_needed(rate: float, max_concurrency: int | None, n: int, slowest_s: float) -> int:
    """How many connections to open before a point's schedule: the requests that will be in
    flight at once, i.e. rate x the slowest warm-up reply (1 s without one) x 1.5 + 8 for the
    Poisson bursts, at most C and n. Every request at once (rate inf) opens them itself, except
    that a closed loop (C) holds C."""
    cap = min(n, max_concurrency or n)
    if math.isinf(rate):
        return cap if max_concurrency else 0
    return min(cap, math.ceil(rate * (slowest_s or 1.0) * 1.5) + 8)
