"""The load generator: sends streamed requests when they are due and records what came back.

Open loop: request i is sent at its planned offset whatever the server is doing (a slow server
builds a queue, as real traffic would); `max_concurrency` caps requests in flight (closed loop
when every request is due at once). Each outcome keeps its planned and actual send time, so the
client's own lateness is measured, not assumed. Transport and clock are injected: `send` is an
adapter's `send_streamed`, `clock` a perf_counter-like function (the adapter stamps its text
pieces with time.perf_counter, so the default clock is that one).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence

from engine.bench.metrics import Outcome
from engine.core.errors import AdapterError
from engine.core.records import Response

__all__ = ["Send", "drive", "warm_up"]

Send = Callable[[dict[str, object], float, list[float]], Awaitable[Response]]


def _outcome(resp: Response, marks: list[float], planned: float, sent: float) -> Outcome:
    timing = resp.timing
    tokens = resp.usage.completion_tokens or (timing.chunks if timing else 0)
    return Outcome(planned=planned, sent=sent, ok=True, prompt_tokens=resp.usage.prompt_tokens,
                   output_tokens=tokens, ttft_s=resp.ttft_s if resp.ttft_s is not None else resp.latency_s,
                   latency_s=resp.latency_s, itl_s=tuple(b - a for a, b in zip(marks, marks[1:], strict=False)))


async def drive(send: Send, bodies: Sequence[dict[str, object]], planned: Sequence[float], *,
                max_concurrency: int | None, timeout_s: float,
                clock: Callable[[], float] = time.perf_counter) -> tuple[list[Outcome], float]:
    """Sends bodies[i] at start + planned[i]; returns the outcomes (in request order) and the
    duration from the start to the last completion."""
    slots = asyncio.Semaphore(max_concurrency) if max_concurrency else None
    start = clock()
    last_end = start

    async def one(body: dict[str, object], due: float) -> Outcome:
        nonlocal last_end
        if slots is not None:
            await slots.acquire()
        try:
            marks: list[float] = []
            sent = clock() - start
            try:
                resp = await send(body, timeout_s, marks)
            except AdapterError as exc:
                return Outcome(planned=due, sent=sent, ok=False, error=f"{exc.kind}: {exc.message}")
            finally:
                last_end = max(last_end, clock())
            return _outcome(resp, marks, due, sent)
        finally:
            if slots is not None:
                slots.release()

    tasks: list[asyncio.Task[Outcome]] = []
    for body, due in zip(bodies, planned, strict=True):
        # uvloop's timers round to whole milliseconds, so a sleep may end up to half a millisecond
        # early: sleep again for the rest (a zero-delay sleep is one loop turn), never send early.
        while (delay := start + due - clock()) > 0:  # noqa: ASYNC110  # waiting for a time, not an event
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(body, due)))
    outcomes = list(await asyncio.gather(*tasks))
    return outcomes, last_end - start


async def warm_up(send: Send, bodies: Sequence[dict[str, object]], timeout_s: float) -> int:
    """Sends the warm-up requests (all at once) before the measured ones; returns how many failed.
    They are never counted in the result."""
    results = await asyncio.gather(*(send(b, timeout_s, []) for b in bodies), return_exceptions=True)
    failed = [r for r in results if isinstance(r, BaseException)]
    for r in failed:
        if not isinstance(r, AdapterError):
            raise r
    return len(failed)
