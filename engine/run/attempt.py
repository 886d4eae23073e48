"""One unit's attempts, the part of a lane that the backends replace: locally, limits -> adapter ->
classify -> backoff (`LocalAttempts`); with `--backend ray`, the same loop inside the lane's actor
(engine/run/ray.py). The lane around them walks, dispatches, writes and re-queries.

An attempt ends as a final outcome (a response, or a fatal error that is a result), a retry after
backoff, or, when retries or the deadline run out, a line in errors/ and nothing in responses/ (so
the next run retries it). Repeated auth failures, or a server that nothing reaches, stop only their
lane; a server failing every request the same way pauses it, and stops it unless it recovers
(engine/run/breaker.py). Every wait (pacing, token window, backoff, the breaker's probes) is on the
injected clock.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Callable
from typing import Protocol

from engine.config import ModelConfig, PriceConfig
from engine.core.adapter import Adapter, AdapterError, HasLimitSignal
from engine.core.clock import Clock
from engine.core.records import AttemptError, ErrorInfo, JudgmentRecord, Record, Response
from engine.core.retry import backoff_delay
from engine.core.secrets import redact
from engine.costs import Budget, cost
from engine.run.breaker import Breaker
from engine.run.limits import AdaptiveLimit, Pacer, TokenWindow
from engine.run.stats import LaneStats
from engine.run.units import Outcome, Unit


class Sink(Protocol):
    """Where records go: a JsonlWriter, or (in a Ray actor) a list that travels back to the driver."""

    def put(self, record: Record | JudgmentRecord | AttemptError) -> None: ...


class RunStop:
    """The run-wide stop (a signal, --budget): no new requests anywhere. Each lane's brakes follow
    it, so that a backoff in progress ends at once."""

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self._followers: list[Callable[[], None]] = []

    def set(self) -> None:
        self.event.set()
        for hook in self._followers:
            hook()

    def is_set(self) -> bool:
        return self.event.is_set()

    def follow(self, hook: Callable[[], None]) -> None:
        """Calls `hook` when the run stops (at once if it has)."""
        self._followers.append(hook)
        if self.event.is_set():
            hook()


class Brakes:
    """What stops one lane: the run-wide stop, or its own halt (auth failures, a dead server or
    actor, the circuit breaker). `wake` is set by either, so one clock wait covers both."""

    def __init__(self, run: RunStop) -> None:
        self.run = run
        self.halted = asyncio.Event()
        self.wake = asyncio.Event()
        # wake.is_set() as a plain attribute: read three times per request on the hot path, where a
        # property and Event.is_set were two calls each. Only _woken sets wake, and nothing clears it.
        self.stopping = False
        self.on_halt: list[Callable[[], None]] = []  # e.g. wake a judge worker waiting for work
        self.on_wake: list[Callable[[], None]] = []  # on halt or run stop: e.g. workers of a paused lane
        run.follow(self._woken)

    def _woken(self) -> None:
        self.stopping = True
        self.wake.set()
        for hook in self.on_wake:
            hook()

    def halt(self) -> None:
        self.halted.set()
        self._woken()
        for hook in self.on_halt:
            hook()


class Spend:
    """--budget for one priced lane: a request reserves its worst case (prompt estimate +
    max_tokens at the model's price) before it is sent and settles with the usage it reports. A
    reservation the budget cannot cover stops the run (what is done is kept)."""

    def __init__(self, budget: Budget, price: PriceConfig, lane: str, stop: RunStop) -> None:
        self.budget = budget
        self.price = price
        self.lane = lane
        self.stop = stop

    def reserve(self, unit: Unit) -> float | None:
        amount = cost(self.price, unit.est_tokens - unit.max_out, unit.max_out) or 0.0
        what = f"{self.lane} {unit.item.pillar}/{unit.item.subtask} {unit.item.id}"
        if not self.budget.reserve(amount, what):
            self.stop.set()
            return None
        return amount

    def settle(self, reserved: float, response: Response | None) -> None:
        """A failed request counts its worst case: the provider may have billed it."""
        if not reserved:
            return
        u = response.usage if response is not None else None
        self.budget.settle(reserved, cost(self.price, u.prompt_tokens, u.completion_tokens) if u is not None else None)

    def release(self, reserved: float) -> None:
        """A reservation never sent (the deadline passed first) costs nothing."""
        if reserved:
            self.budget.settle(reserved, 0.0)


class Attempts(Protocol):
    """Runs one unit to its final outcome (None: no final outcome this run, retried next run),
    counting on the lane's stats and writing failed attempts to its errors sink."""

    stats: LaneStats
    brakes: Brakes

    async def run(self, unit: Unit) -> Outcome | None: ...

    def placement(self) -> dict[str, object]:
        """run.json extras of the lane: where its requests ran ({} when here)."""
        ...

    async def aclose(self) -> None: ...


class LocalAttempts:
    """Limits -> adapter -> classify -> backoff, in this process."""

    def __init__(self, name: str, cfg: ModelConfig, adapter: Adapter, errors: Sink, brakes: Brakes, *,
                 clock: Clock, spend: Spend | None = None, rng: random.Random | None = None) -> None:
        self.name = name
        self.cfg = cfg
        self.adapter = adapter
        # Checked once: isinstance against a runtime-checkable Protocol walks its members on every
        # call (about 20 us on Python 3.11), which the profile showed as 5 % of the hot path.
        self._signals: HasLimitSignal | None = adapter if isinstance(adapter, HasLimitSignal) else None
        self.errors = errors
        self.brakes = brakes
        self.clock = clock
        self.spend = spend
        self.rng = rng or random.Random()
        self.stats = LaneStats()
        self.limit = AdaptiveLimit(cfg.concurrency(), clock.now)
        # Without a configured RPM the pacer has no spacing; it still holds the lane when the
        # provider's own headers say the limit is about to run out (see _heed_signal).
        self.pacer = Pacer(cfg.requests_per_minute or math.inf, clock.now, clock.sleep)
        self.tokens = TokenWindow(cfg.tokens_per_minute, clock.now, clock.sleep) if cfg.tokens_per_minute else None
        self._auth_failures = 0
        self.breaker = Breaker(name, cfg, clock, self.stats)
        brakes.on_wake.append(self.breaker.notify)

    def placement(self) -> dict[str, object]:
        return {}

    async def aclose(self) -> None:
        return None

    async def run(self, unit: Unit) -> Outcome | None:
        start = self.clock.now()
        deadline = start + self.cfg.deadline_s
        now: float | None = start  # also the first send's start, when nothing waits between
        attempt = 0
        unreachable = 0  # attempts that could not even connect
        ok_before = self.stats.ok
        breaker = self.breaker
        while not self.brakes.stopping:
            probe = False
            if breaker.opened_at is not None:  # paused: wait for the probe's turn or its answer
                admitted = await breaker.admit(self.brakes.wake)
                now = None
                if admitted is None:
                    return None
                probe = admitted
            attempt += 1
            sent = await self._send(unit, attempt, deadline, now)
            now = None
            if sent is None:
                breaker.settle(None, probe)
                return None
            if isinstance(sent, Response):
                self._succeeded(sent)
                if breaker.counts or probe or breaker.opened_at is not None:
                    breaker.settle(sent, probe)
                else:
                    breaker.reached = True
                return Outcome(attempts=attempt, response=sent)
            unreachable += sent.unreachable
            # Every attempt failed to connect and nothing else got through meanwhile: the server
            # is down or the URL is wrong; retrying every other item would take hours. (While
            # the breaker holds the lane, it decides when to give up.)
            down = unreachable == attempt and self.stats.ok == ok_before and breaker.opened_at is None
            step = self._failed(unit, attempt, sent, deadline, down)
            verdict = breaker.settle(sent, probe)
            if verdict is not None and not self.brakes.halted.is_set():
                self._stop_lane(verdict)
            if isinstance(step, Outcome) or step is None:
                return step
            await self.clock.wait(self.brakes.wake, step)
        return None

    async def _send(self, unit: Unit, attempt: int, deadline: float,
                    now: float | None = None) -> Response | AdapterError | None:
        """One request through the lane's limits; None when the budget, the deadline or a stop ends
        the unit. `now`: the clock's reading just before, when nothing has waited since."""
        cfg, stats, clock = self.cfg, self.stats, self.clock
        if not self.limit.try_acquire():
            await self.limit.acquire()
            now = None
        try:
            # One clock reading serves the pacer, the deadline and the send's start unless a wait
            # comes between them (the hot path reads the clock twice per attempt, not five times).
            if now is None:
                now = clock.now()
            if not self.pacer.idle(now):
                stats.wait_s += await self.pacer.acquire()
                now = clock.now()
            entry = None
            if self.tokens is not None:
                entry, waited = await self.tokens.acquire(unit.est_tokens)
                stats.wait_s += waited
                now = clock.now()
            if self.brakes.stopping:  # stopped while this attempt waited (a signal, a failed disk)
                return None
            reserved = 0.0
            if self.spend is not None:
                got = self.spend.reserve(unit)
                if got is None:
                    return None
                reserved = got
            remaining = deadline - now
            if remaining <= 0:
                if self.spend is not None:
                    self.spend.release(reserved)
                err = AdapterError("timeout", f"item deadline of {cfg.deadline_s:.0f} s passed")
                self._log_attempt(unit, attempt, err, final=True)
                stats.exhausted += 1
                stats.errors["deadline"] += 1
                return None
            resp: Response | None = None
            stats.sent += 1
            stats.in_flight += 1
            try:
                resp = await self.adapter.send(unit.body, min(cfg.timeout_s, remaining))
            except AdapterError as exc:
                return _redacted(exc)
            finally:
                stats.in_flight -= 1
                stats.busy_s += clock.now() - now
                if self._signals is not None and self._signals.last_signal is not None:
                    self._heed_signal(unit)
                if self.spend is not None:
                    self.spend.settle(reserved, resp)
            if entry is not None and self.tokens is not None:
                used = resp.usage.prompt_tokens + resp.usage.completion_tokens
                if used:
                    self.tokens.adjust(entry, used, refund=cfg.tpm_accounting == "usage")
            return resp
        finally:
            self.limit.release()

    def _succeeded(self, resp: Response) -> None:
        stats, u = self.stats, resp.usage
        stats.latency(resp.latency_s)
        stats.ok += 1
        stats.prompt_tokens += u.prompt_tokens
        stats.completion_tokens += u.completion_tokens
        stats.reasoning_tokens += u.reasoning_tokens or 0
        stats.cached_tokens += u.cached_tokens or 0
        if self.limit.limit < self.limit.maximum:  # regrowing after a cut: otherwise nothing to do
            self.limit.on_success()
        self._auth_failures = 0

    def _failed(self, unit: Unit, attempt: int, err: AdapterError, deadline: float,
                down: bool) -> Outcome | float | None:
        """Classifies a failed attempt: a final outcome, the backoff before the next attempt, or
        None (no outcome this run; the unit is retried next run)."""
        cfg, stats = self.cfg, self.stats
        stats.errors[err.kind] += 1
        if err.kind == "rate_limited":
            stats.rate_limited += 1
            self.limit.on_rate_limited()
        if err.kind == "auth":
            # Not a final outcome: a fixed key on the next run must retry these items.
            self._log_attempt(unit, attempt, err, final=False)
            self._auth_failures += 1
            if self._auth_failures >= cfg.auth_failures_to_stop and not self.brakes.halted.is_set():
                self._stop_lane(f"lane {self.name} stopped after {self._auth_failures} authentication failures "
                                f"({err.message}); check {cfg.api_key_env or 'the API key'} and rerun")
            return None
        if not err.retryable:
            self._log_attempt(unit, attempt, err, final=True)
            stats.fatal += 1
            return Outcome(attempts=attempt, error=ErrorInfo(kind=err.kind, status=err.status, message=err.message))
        delay = backoff_delay(attempt, cfg.backoff_base_s, cfg.backoff_max_s, err.retry_after, self.rng)
        if attempt >= cfg.max_attempts or self.clock.now() + delay >= deadline:
            self._log_attempt(unit, attempt, err, final=True)
            stats.exhausted += 1
            if down and not self.brakes.halted.is_set():
                self._stop_lane(f"lane {self.name} stopped: {err.message} ({attempt} attempts, nothing "
                                "succeeded meanwhile); start the server or fix its base_url, then rerun")
            return None
        self._log_attempt(unit, attempt, err, final=False)
        stats.retries += 1
        return delay

    def _stop_lane(self, message: str) -> None:
        self.stats.message = message
        self.stats.state = "stopped"
        self.brakes.halt()

    def _heed_signal(self, unit: Unit) -> None:
        """Slow the lane before the provider's limit is hit: when its rate-limit headers say the
        requests (or the tokens this request needs) are about to run out, every worker waits until
        the provider has refilled enough for one more (LimitSignal.request_wait_s / token_wait_s).
        Configured RPM/TPM stay the hard ceiling either way."""
        sig = self._signals.last_signal if self._signals is not None else None
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

    def _log_attempt(self, unit: Unit, attempt: int, err: AdapterError, final: bool) -> None:
        self.errors.put(AttemptError(
            key=unit.key, model=self.name, pillar=unit.item.pillar, subtask=unit.item.subtask,
            item_id=unit.item.id, sample=unit.sample, attempt=attempt,
            error=ErrorInfo(kind=err.kind, status=err.status, message=err.message), final=final,
            at=round(time.time(), 3)))


def _redacted(err: AdapterError) -> AdapterError:
    """The error as the lane keeps it: its message may quote an error body, a header or a reply
    that echoed the request, and it goes to errors/, run.json and stderr."""
    message = redact(err.message)
    if message == err.message:
        return err
    return AdapterError(err.kind, message, status=err.status, retry_after=err.retry_after,
                        unreachable=err.unreachable)
