"""The load generator: sends streamed requests when they are due and records what came back.

Open loop: request i is sent at its planned offset whatever the server is doing (a slow server
builds a queue, as real traffic would); `max_concurrency` caps requests in flight (closed loop
when every request is due at once). Each outcome keeps its planned and actual send time, so the
client's own lateness is measured, not assumed. Transport and clock are injected: `send` is an
adapter's `send_streamed`, `clock` a perf_counter-like function (the adapter stamps its text
pieces and its sends with time.perf_counter, so the default clock is that one).

"Sent" is the moment the request's bytes were handed to the socket, as the adapter's transport
stamps it (`sent` of `send_streamed`); where a transport stamps nothing, the moment the request
was handed to `send`, which is earlier (that lag is then a lower bound). Between the due time and
the send lie: the wake-up, the loop turn the request's task waits for (behind whatever else is
ready, e.g. other streams' chunks) and building the HTTP request.

The wake-up is kept by a thread, not a loop timer: loop timers keep whole milliseconds (uvloop
rounds, so one can fire half a millisecond early, and then the rest of the wait costs another
tick; the selector loop rounds up), which was a p99 of 1.1 ms for a client sending nothing. The
thread sleeps to the microsecond and hands the loop the requests due (`call_soon_threadsafe`,
which wakes a waiting loop at once); it holds the GIL only for that hand-over. Spinning the loop
for the last millisecond instead would keep the same precision but cost up to a millisecond of
CPU per request, which would count as the client's own load.
"""

from __future__ import annotations

import asyncio
import math
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Sequence

from engine.bench.metrics import Outcome
from engine.core.errors import AdapterError
from engine.core.records import Response

__all__ = ["Send", "connections_needed", "drive", "warm_up"]

Send = Callable[[dict[str, object], float, list[float], list[float]], Awaitable[Response]]
SWITCH_INTERVAL_S = 0.0002  # how long the dispatcher's thread may wait for the GIL (see drive)


def _outcome(resp: Response, marks: list[float], planned: float, sent: float, woke: float) -> Outcome:
    timing = resp.timing
    tokens = resp.usage.completion_tokens or (timing.chunks if timing else 0)
    return Outcome(planned=planned, sent=sent, woke=woke, ok=True, prompt_tokens=resp.usage.prompt_tokens,
                   output_tokens=tokens, ttft_s=resp.ttft_s if resp.ttft_s is not None else resp.latency_s,
                   latency_s=resp.latency_s, itl_s=tuple(b - a for a, b in zip(marks, marks[1:], strict=False)))


def _keep_time(loop: asyncio.AbstractEventLoop, due: Sequence[float], start: Callable[[int, int], None],
               stop: threading.Event, clock: Callable[[], float]) -> None:
    """The dispatcher's thread: waits until due[i] (absolute, `clock`'s time), then has the loop
    call start(i, j) for every request due by then (i to j - 1), until all are handed over or
    `stop` is set."""
    i, n = 0, len(due)
    while i < n:
        if (wait := due[i] - clock()) > 0:
            if stop.wait(wait):
                return
            continue
        now = clock()
        j = i + 1
        while j < n and due[j] <= now:
            j += 1
        try:
            loop.call_soon_threadsafe(start, i, j)
        except RuntimeError:  # the loop has closed: nobody is waiting for the rest
            return
        i = j


async def drive(send: Send, bodies: Sequence[dict[str, object]], planned: Sequence[float], *,
                max_concurrency: int | None, timeout_s: float,
                clock: Callable[[], float] = time.perf_counter) -> tuple[list[Outcome], float]:
    """Sends bodies[i] at start + planned[i] (never before); returns the outcomes (in request
    order) and the duration from the start to the last completion."""
    if len(bodies) != len(planned):
        raise ValueError(f"{len(bodies)} bodies for {len(planned)} planned times")
    loop = asyncio.get_running_loop()
    slots = asyncio.Semaphore(max_concurrency) if max_concurrency else None
    tasks: list[asyncio.Task[Outcome]] = []
    all_started: asyncio.Future[None] = loop.create_future()
    start = clock()
    last_end = start

    async def one(body: dict[str, object], due: float, woke: float) -> Outcome:
        nonlocal last_end
        if slots is not None:
            await slots.acquire()
        try:
            marks: list[float] = []
            stamps: list[float] = []
            handed = clock()
            try:
                resp = await send(body, timeout_s, marks, stamps)
            except AdapterError as exc:
                sent = (stamps[-1] if stamps else handed) - start
                return Outcome(planned=due, sent=sent, woke=woke, ok=False, error=f"{exc.kind}: {exc.message}")
            finally:
                last_end = max(last_end, clock())
            return _outcome(resp, marks, due, (stamps[-1] if stamps else handed) - start, woke)
        finally:
            if slots is not None:
                slots.release()

    def start_due(i: int, j: int) -> None:
        if all_started.done():  # drive was cancelled: start nothing more
            return
        woke = clock() - start
        tasks.extend(loop.create_task(one(bodies[k], planned[k], woke)) for k in range(i, j))
        if j == len(planned):
            all_started.set_result(None)

    stop = threading.Event()
    if planned:
        threading.Thread(target=_keep_time, args=(loop, [start + p for p in planned], start_due, stop, clock),
                         name="bench-dispatch", daemon=True).start()
    else:
        all_started.set_result(None)
    # The woken thread needs the GIL for its hand-over, and a busy loop lets a waiting thread in
    # only every switch interval (5 ms by default): a wake lag p99 of 2.7 ms at 500 req/s. The
    # thread asks for it once per request, so a shorter interval costs nothing between.
    interval = sys.getswitchinterval()
    sys.setswitchinterval(min(interval, SWITCH_INTERVAL_S))
    try:
        await all_started
    finally:
        stop.set()
        sys.setswitchinterval(interval)
    outcomes = list(await asyncio.gather(*tasks))
    return outcomes, last_end - start


async def warm_up(send: Send, bodies: Sequence[dict[str, object]], timeout_s: float) -> tuple[int, float]:
    """Sends the warm-up requests (all at once) before the measured ones; returns how many failed
    and the slowest reply's latency (s; 0 without replies). They are never counted in the result."""
    results = await asyncio.gather(*(send(b, timeout_s, [], []) for b in bodies), return_exceptions=True)
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
