"""Lanes: one per model, all on one event loop.

A lane walks its items lazily, skips keys the checkpoint already holds, and feeds a bounded queue
drained by `max_concurrency` workers; memory stays flat however many items there are. Each attempt
passes the lane's limits (adaptive concurrency, request pacing, token window), goes to the adapter,
and ends as a final record, a retry after backoff, or, when retries or the deadline run out, a
line in errors/ and nothing in responses/ (so the next run retries it). One item never fails the
run; repeated auth failures stop only their lane.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractAsyncContextManager
from typing import Any

from engine.checkpoint import JsonlWriter, key_int
from engine.config import ModelConfig
from engine.core.adapter import Adapter, AdapterError, HasLimitSignal, LocalServer
from engine.core.records import AttemptError, ErrorInfo, JudgmentRecord, Record, Response
from engine.core.retry import backoff_delay
from engine.costs import cost
from engine.items import ItemFactory
from engine.run.limits import AdaptiveLimit, Clock, Pacer, Sleep, TokenWindow
from engine.run.stats import LaneStats
from engine.run.units import Unit, lane_units

OpenServer = Callable[[Adapter], AbstractAsyncContextManager[Any]]


class Lane:
    def __init__(
        self,
        name: str,
        cfg: ModelConfig,
        adapter: Adapter,
        items: ItemFactory,
        *,
        samples: int,
        done: set[int],
        responses: JsonlWriter,
        errors: JsonlWriter,
        stop: asyncio.Event,
        open_server: OpenServer | None = None,
        on_record: Callable[[Record, Unit], None] | None = None,
        judge_queue: asyncio.Queue[Unit | None] | None = None,
        judgments: JsonlWriter | None = None,
        on_judgment: Callable[[JudgmentRecord, Unit], None] | None = None,
        on_judge_done: Callable[[Unit], None] | None = None,
        budget: Any = None,
        price: Any = None,
        requery: Callable[[Unit, Response], Unit | None] | None = None,
        keep: Callable[[Unit], bool] | None = None,
        clock: Clock | None = None,
        sleep: Sleep | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.name = name
        self.cfg = cfg
        self.adapter = adapter
        self._items = items
        self._samples = samples
        self._done = done
        self._responses = responses
        self._errors = errors
        self._stop = stop  # run-wide: stop dispatching (signal, budget)
        self._lane_stop = asyncio.Event()  # this lane only (auth failures)
        self._open_server = open_server
        self._on_record = on_record
        # Judge work arrives while the run goes on; None in the queue means no more will come.
        self.judge_queue = judge_queue
        self._judgments = judgments
        self._on_judgment = on_judgment
        self._on_judge_done = on_judge_done
        self._budget = budget  # engine.costs.Budget shared by all lanes, or None
        self._price = price  # this model's PriceConfig, or None (free)
        # Subtasks whose protocol re-asks on an unparseable answer (privacy ratings): the next
        # sample to send, or None. Runs in the same worker, right after the answer is written.
        self._requery = requery
        self._keep = keep  # a shard's part of this lane's units (engine/shards.py), or None: all
        self._gen_pending = 0
        self._gen_producing = True
        self.generation_done = asyncio.Event()
        loop = asyncio.get_event_loop()
        self._clock = clock or loop.time
        self._sleep = sleep or asyncio.sleep
        self._rng = rng or random.Random()
        self.stats = LaneStats()
        self.limit = AdaptiveLimit(cfg.concurrency(), self._clock)
        # Without a configured RPM the pacer has no spacing; it still holds the lane when the
        # provider's own headers say the limit is about to run out (see _heed_signal).
        self.pacer = Pacer(cfg.requests_per_minute or math.inf, self._clock, self._sleep)
        self.tokens = TokenWindow(cfg.tokens_per_minute, self._clock, self._sleep) if cfg.tokens_per_minute else None
        self._auth_failures = 0
        # Called when the lane has no generation work (complete, or a judge waiting for
        # responses) and when it ends: GPU placement (adapters/servers/gpus.py) then holds nobody back.
        self.on_idle: Callable[[], None] | None = None

    def set_record_hook(self, hook: Callable[[Record, Unit], None]) -> None:
        self._on_record = hook

    def set_judge_hooks(self, on_judgment: Callable[[JudgmentRecord, Unit], None],
                        on_done: Callable[[Unit], None]) -> None:
        self._on_judgment = on_judgment
        self._on_judge_done = on_done

    # -- work units -------------------------------------------------------------------------

    def units(self) -> Iterator[Unit]:
        units = lane_units(self.name, self.cfg, self.adapter, self._items, self._samples)
        return units if self._keep is None else filter(self._keep, units)

    def _pending(self) -> Iterator[Unit]:
        done = self._done
        for u in self.units():
            if "truncated" in u.item.metadata:
                self.stats.truncated += 1
            if key_int(u.key) in done:
                self.stats.skipped += 1
                continue
            yield u

    @property
    def stopping(self) -> bool:
        return self._stop.is_set() or self._lane_stop.is_set()

    # -- running ----------------------------------------------------------------------------

    async def run(self) -> None:
        self.stats.started = time.time()
        pending = self._pending()
        first = next(pending, None)
        try:
            if first is None:
                self.generation_done.set()
                if self.on_idle is not None:
                    self.on_idle()
                if self.judge_queue is None:
                    self.stats.state = "complete"
                    return
                first = await self.judge_queue.get()
                if first is None:
                    self.stats.state = "complete"
                    return
            if self.stopping:  # stopped (signal, budget) before this lane got going: load nothing
                self.stats.state = "interrupted"
                return
            self.stats.state = "starting"
            if self._open_server is not None:
                async with self._open_server(self.adapter) as server:
                    watch = asyncio.create_task(self._watch_server(server)) if isinstance(server, LocalServer) else None
                    try:
                        await self._dispatch(first, pending)
                    finally:
                        if watch is not None:
                            watch.cancel()
            else:
                await self._dispatch(first, pending)
            if self.stats.state == "running":
                self.stats.state = ("interrupted" if self._stop.is_set()
                                    else "incomplete" if self.stats.exhausted else "complete")

        except asyncio.CancelledError:
            self.stats.state = "interrupted"
            raise
        except Exception as exc:  # a lane that cannot start (server died, ...) must not stop the others
            self.stats.state = "failed"
            self.stats.message = f"{type(exc).__name__}: {exc}" if not str(exc).startswith(self.name) else str(exc)
        finally:
            self.generation_done.set()
            self.stats.ended = time.time()
            if self.on_idle is not None:
                self.on_idle()
            await self.adapter.aclose()

    def _heed_signal(self, unit: Unit) -> None:
        """Slow the lane before the provider's limit is hit: when its rate-limit headers say the
        requests (or the tokens this request needs) are about to run out, every worker waits until
        the provider has refilled enough for one more (LimitSignal.request_wait_s / token_wait_s).
        Configured RPM/TPM stay the hard ceiling either way."""
        sig = self.adapter.last_signal if isinstance(self.adapter, HasLimitSignal) else None
        if sig is None:
            return
        wait = sig.request_wait_s()
        if wait:
            self.pacer.push_back(wait)
            self.stats.limit_pushbacks += 1
        wait = sig.token_wait_s(unit.est_tokens)
        if wait:
            self.pacer.push_back(wait)
            self.stats.limit_pushbacks += 1

    async def _watch_server(self, server: LocalServer) -> None:
        """A managed server that dies mid-run fails its lane at once, with its last log lines,
        instead of every item burning its retries against a closed port."""
        code = await server.wait_exit()
        if server.stopping:
            return
        self.stats.state = "failed"
        self.stats.message = (f"lane {self.name}: model server exited with code {code}; "
                              f"see {server.log_path}; rerun to resume")
        self.halt()

    def halt(self) -> None:
        """Stops this lane: no new attempts; a judge forwarder waiting for work wakes up."""
        self._lane_stop.set()
        if self.judge_queue is not None:
            self.judge_queue.put_nowait(None)

    def _gen_settled(self) -> None:
        if not self._gen_producing and self._gen_pending == 0:
            self.generation_done.set()

    async def _dispatch(self, first: Unit, pending: Iterator[Unit]) -> None:
        """n workers pull units themselves: judge units waiting in the judge queue first, else the
        next generation unit from the (synchronous) item walk, else they wait for judge work. No
        producer task and no hand-off queue between it and the workers: at thousands of items per
        second, that hand-off (a task wake-up per item) was a measurable share of the engine's CPU."""
        self.stats.state = "running"
        n = self.cfg.concurrency()
        jq = self.judge_queue
        gen: Iterator[Unit] | None = pending if first.judge is not None else _chain(first, pending)
        carry: list[Unit] = [first] if first.judge is not None else []
        judge_closed = False

        def next_gen() -> Unit | None:
            nonlocal gen
            if gen is None:
                return None
            u = next(gen, None)
            if u is None:
                gen = None
                self._gen_producing = False
                self._gen_settled()
                return None
            self._gen_pending += 1
            return u

        async def worker() -> None:
            nonlocal judge_closed, gen
            while not self.stopping:
                if carry:
                    unit: Unit | None = carry.pop()
                elif jq is not None and not judge_closed and not jq.empty():
                    unit = jq.get_nowait()
                else:
                    unit = next_gen()
                    if unit is None:
                        if jq is None or judge_closed:
                            return
                        unit = await jq.get()
                if unit is None:
                    # No more judge work: wake the next worker waiting on the queue (it passes
                    # this on in turn); generation units may still be left for all of them.
                    assert jq is not None
                    judge_closed = True
                    jq.put_nowait(None)
                    continue
                await self._process(unit)
                if unit.judge is None:
                    self._gen_pending -= 1
                    self._gen_settled()
                elif self._on_judge_done is not None:
                    self._on_judge_done(unit)
            if gen is not None:  # stopped: the walk ends here
                gen = None
                self._gen_producing = False
                self._gen_settled()

        workers = [asyncio.create_task(worker()) for _ in range(n)]
        try:
            await asyncio.gather(*workers)
        finally:
            for t in workers:
                t.cancel()

    def _emit(self, unit: Unit, attempts: int, response: Response | None, error: ErrorInfo | None) -> None:
        if unit.judge is not None:
            j = unit.judge
            jrec = JudgmentRecord(key=unit.key, response_key=j.response_key, judge=self.name, rubric=j.rubric,
                                  rubric_version=j.rubric_version, model=j.model, pillar=unit.item.pillar,
                                  subtask=unit.item.subtask, item_id=unit.item.id, sample=unit.sample,
                                  try_=j.try_, attempts=attempts, response=response, error=error)
            assert self._judgments is not None
            self._judgments.put(jrec)
            self.stats.judged += 1
            if self._on_judgment is not None:
                self._on_judgment(jrec, unit)
            return
        rec = Record(key=unit.key, model=self.name, pillar=unit.item.pillar, subtask=unit.item.subtask,
                     item_id=unit.item.id, sample=unit.sample, attempts=attempts, response=response, error=error)
        self._responses.put(rec)
        self.stats.done += 1
        if self._on_record is not None:
            self._on_record(rec, unit)

    def _log_attempt(self, unit: Unit, attempt: int, err: AdapterError, final: bool) -> None:
        self._errors.put(AttemptError(
            key=unit.key, model=self.name, pillar=unit.item.pillar, subtask=unit.item.subtask,
            item_id=unit.item.id, sample=unit.sample, attempt=attempt,
            error=ErrorInfo(kind=err.kind, status=err.status, message=err.message), final=final,
            at=round(time.time(), 3)))

    async def _pause(self, delay: float) -> None:
        """Backoff that a stop request cuts short."""
        if self.stopping:
            return
        try:
            await asyncio.wait_for(self._any_stop(), timeout=delay)
        except TimeoutError:
            pass

    async def _any_stop(self) -> None:
        waits = [asyncio.ensure_future(self._stop.wait()), asyncio.ensure_future(self._lane_stop.wait())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    async def _process(self, unit: Unit) -> None:
        cfg, stats = self.cfg, self.stats
        clock = self._clock
        deadline = clock() + cfg.deadline_s
        attempt = 0
        unreachable = 0  # attempts that could not even connect
        ok_before = stats.ok
        while True:
            if self.stopping:
                return
            attempt += 1
            err: AdapterError | None = None
            resp: Response | None = None
            entry = None
            await self.limit.acquire()
            try:
                if not self.pacer.idle():
                    stats.wait_s += await self.pacer.acquire()
                if self.tokens is not None:
                    entry, waited = await self.tokens.acquire(unit.est_tokens)
                    stats.wait_s += waited
                reserved = 0.0
                if self._budget is not None and self._price is not None:
                    reserved = cost(self._price, unit.est_tokens - unit.max_out, unit.max_out) or 0.0
                    if not self._budget.reserve(reserved, f"{self.name} {unit.item.pillar}/{unit.item.subtask} {unit.item.id}"):
                        self._stop.set()  # run-wide: stop dispatching; what is done is kept
                        return
                remaining = deadline - clock()
                if remaining <= 0:
                    if reserved:
                        self._budget.settle(reserved, 0.0)
                    err = AdapterError("timeout", f"item deadline of {cfg.deadline_s:.0f} s passed")
                    self._log_attempt(unit, attempt, err, final=True)
                    stats.exhausted += 1
                    stats.errors["deadline"] += 1
                    return
                stats.sent += 1
                stats.in_flight += 1
                t0 = clock()
                try:
                    resp = await self.adapter.send(unit.body, min(cfg.timeout_s, remaining))
                except AdapterError as exc:
                    err = exc
                finally:
                    stats.in_flight -= 1
                    stats.busy_s += clock() - t0
                    self._heed_signal(unit)
                    if reserved:
                        u = resp.usage if resp is not None else None
                        self._budget.settle(reserved, cost(self._price, u.prompt_tokens, u.completion_tokens)
                                            if u is not None else None)
            finally:
                self.limit.release()

            if resp is not None:
                stats.latency(resp.latency_s)
                u = resp.usage
                if entry is not None and self.tokens is not None:
                    used = u.prompt_tokens + u.completion_tokens
                    if used:
                        self.tokens.adjust(entry, used, refund=cfg.tpm_accounting == "usage")
                stats.ok += 1
                stats.prompt_tokens += u.prompt_tokens
                stats.completion_tokens += u.completion_tokens
                stats.reasoning_tokens += u.reasoning_tokens or 0
                stats.cached_tokens += u.cached_tokens or 0
                self.limit.on_success()
                self._auth_failures = 0
                self._emit(unit, attempt, resp, None)
                if self._requery is not None and unit.judge is None:
                    again = self._requery(unit, resp)
                    if again is not None and key_int(again.key) not in self._done:
                        self.stats.requeried += 1
                        await self._process(again)
                return

            assert err is not None
            stats.errors[err.kind] += 1
            if err.kind == "rate_limited":
                stats.rate_limited += 1
                self.limit.on_rate_limited()
            if err.kind == "auth":
                # Not a final outcome: a fixed key on the next run must retry these items.
                self._log_attempt(unit, attempt, err, final=False)
                self._auth_failures += 1
                if self._auth_failures >= cfg.auth_failures_to_stop and not self._lane_stop.is_set():
                    stats.message = (f"lane {self.name} stopped after {self._auth_failures} authentication failures "
                                     f"({err.message}); check {cfg.api_key_env or 'the API key'} and rerun")
                    stats.state = "stopped"
                    self.halt()
                return
            if not err.retryable:
                self._log_attempt(unit, attempt, err, final=True)
                stats.fatal += 1
                self._emit(unit, attempt, None, ErrorInfo(kind=err.kind, status=err.status, message=err.message))
                return
            delay = backoff_delay(attempt, cfg.backoff_base_s, cfg.backoff_max_s, err.retry_after, self._rng)
            unreachable += err.unreachable
            if attempt >= cfg.max_attempts or clock() + delay >= deadline:
                self._log_attempt(unit, attempt, err, final=True)
                stats.exhausted += 1
                if unreachable == attempt and stats.ok == ok_before and not self._lane_stop.is_set():
                    # Every attempt failed to connect and nothing else got through meanwhile: the
                    # server is down or the URL is wrong; retrying every other item would take hours.
                    stats.message = (f"lane {self.name} stopped: {err.message} ({attempt} attempts, nothing "
                                     "succeeded meanwhile); start the server or fix its base_url, then rerun")
                    stats.state = "stopped"
                    self.halt()
                return
            self._log_attempt(unit, attempt, err, final=False)
            stats.retries += 1
            await self._pause(delay)


def _chain(first: Unit, rest: Iterator[Unit]) -> Iterator[Unit]:
    yield first
    yield from rest
