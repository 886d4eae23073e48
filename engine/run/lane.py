"""Lanes: one per model, all on one event loop.

A lane walks its items lazily, skips keys the checkpoint already holds, and hands units to
`max_concurrency` workers; memory stays flat however many items there are. What one unit's
attempts do is the lane's `Attempts` (engine/run/attempt.py: here, or in a Ray actor); the lane
writes the outcome, asks for a protocol re-query, and feeds the judge stage. One item never fails
the run; repeated auth failures stop only their lane.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractAsyncContextManager

import msgspec

from engine.config import ModelConfig
from engine.core.adapter import Adapter, LocalServer
from engine.core.records import Item, JudgmentRecord, Record, Response
from engine.core.secrets import redact
from engine.items import ItemFactory
from engine.run.attempt import Attempts, Sink
from engine.run.cache import LaneCache
from engine.run.taskgroup import task_group
from engine.run.units import Outcome, Unit, lane_units
from engine.store.keyset import KeySet

OpenServer = Callable[[Adapter], AbstractAsyncContextManager[object]]
Requery = Callable[[Unit, Response], "Unit | None"]


class LaneIO(msgspec.Struct, frozen=True):
    """Where a lane's records go (one writer per file), and its judge work comes from."""

    responses: Sink
    errors: Sink
    judgments: Sink | None = None  # a judge lane's judgments/<judge>.jsonl
    # Judge work arrives while the run goes on; None in the queue means no more will come.
    judge_queue: asyncio.Queue[Unit | None] | None = None
    cache: LaneCache | None = None  # the response cache shared across runs (run --cache), or None


class LanePolicy(msgspec.Struct, frozen=True):
    """Which units a lane sends."""

    samples: int = 1
    done: KeySet = msgspec.field(default_factory=KeySet)  # keys the checkpoint already holds
    keep: Callable[[Unit], bool] | None = None  # a shard's part of the units (engine/shards.py), or None: all
    # Subtasks whose protocol re-asks on an unparseable answer (privacy ratings): the next sample
    # to send, or None. Runs in the same worker, right after the answer is written.
    requery: Requery | None = None


class LaneHooks(msgspec.Struct):
    """What others hear from a lane; the judge hub and the GPU pool set them once the lanes exist."""

    on_record: Callable[[Record, Unit], None] | None = None
    on_judgment: Callable[[JudgmentRecord, Unit], None] | None = None
    on_judge_done: Callable[[Unit], None] | None = None
    # Called when the lane has no generation work (complete, or a judge waiting for responses)
    # and when it ends: GPU placement (adapters/servers/gpus.py) then holds nobody back.
    on_idle: Callable[[], None] | None = None
    # When the lane has ended (complete, failed, stopped): the judge hub stops waiting for it.
    on_end: Callable[[], None] | None = None
    # Cleared while the judges are behind (engine.run.judge.JudgeHub.gate): generation waits, judge
    # work a lane also does goes on. None: generation never waits.
    gate: asyncio.Event | None = None


class Lane:
    def __init__(self, name: str, cfg: ModelConfig, adapter: Adapter, items: ItemFactory, io: LaneIO,
                 attempts: Attempts, *, policy: LanePolicy | None = None, open_server: OpenServer | None = None,
                 hooks: LaneHooks | None = None) -> None:
        self.name = name
        self.cfg = cfg
        self.adapter = adapter
        self.io = io
        self.judge_queue = io.judge_queue
        self.attempts = attempts
        self.policy = policy or LanePolicy()
        self.hooks = hooks or LaneHooks()
        self.stats = attempts.stats
        self.brakes = attempts.brakes
        self.brakes.on_halt.append(self._wake_judge_workers)
        self._items = items
        self._open_server = open_server
        self.generation_done = asyncio.Event()

    @property
    def label(self) -> str:
        """The name on progress bars: lane@node once its Ray actor runs."""
        node = self.attempts.placement().get("node")
        return f"{self.name}@{node}" if node else self.name

    # -- work units -------------------------------------------------------------------------

    def units(self) -> Iterator[Unit]:
        units = lane_units(self.name, self.cfg, self.adapter, self._items, self.policy.samples)
        keep = self.policy.keep
        return units if keep is None else filter(keep, units)

    def _pending(self) -> Iterator[Unit]:
        done = self.policy.done if self.policy.done else None  # a fresh run looks nothing up
        stats = self.stats
        if done is not None and self.policy.keep is None:  # done units never become Units
            def skipped(item: Item) -> None:
                stats.skipped += 1
                if "truncated" in item.metadata:
                    stats.truncated += 1

            units = lane_units(self.name, self.cfg, self.adapter, self._items, self.policy.samples, done=done,
                               skipped=skipped)
            done = None
        else:
            units = self.units()
        for u in units:
            if "truncated" in u.item.metadata:
                stats.truncated += 1
            if done is not None and u.key in done:
                stats.skipped += 1
                continue
            yield u

    @property
    def stopping(self) -> bool:
        return self.brakes.stopping

    def halt(self) -> None:
        """Stops this lane: no new attempts; a judge worker waiting for work wakes up."""
        self.brakes.halt()

    def _wake_judge_workers(self) -> None:
        if self.judge_queue is not None:
            self.judge_queue.put_nowait(None)

    def _idle(self) -> None:
        if self.hooks.on_idle is not None:
            self.hooks.on_idle()

    # -- running ----------------------------------------------------------------------------

    async def run(self) -> None:
        self.stats.started = time.time()
        try:
            await self._run()
        except asyncio.CancelledError:
            self.stats.state = "interrupted"
            raise
        except Exception as exc:  # a lane that cannot start (server died, ...) must not stop the others
            self.stats.state = "failed"
            text = f"{type(exc).__name__}: {exc}" if not str(exc).startswith(self.name) else str(exc)
            self.stats.message = redact(text)
        finally:
            self.generation_done.set()
            self.stats.ended = time.time()
            self._idle()
            if self.hooks.on_end is not None:
                self.hooks.on_end()
            await self.adapter.aclose()
            await self.attempts.aclose()

    async def _run(self) -> None:
        pending = self._pending()
        first = next(pending, None)
        if first is None:
            self.generation_done.set()
            self._idle()
            first = await self.judge_queue.get() if self.judge_queue is not None else None
            if first is None:
                self.stats.state = "complete"
                return
        if self.stopping:  # stopped (signal, budget) before this lane got going: load nothing
            self.stats.state = "interrupted"
            return
        self.stats.state = "starting"
        if self._open_server is None:
            await self._dispatch(first, pending)
        else:
            async with self._open_server(self.adapter) as server, task_group() as tg:
                watch = tg.create_task(self._watch_server(server)) if isinstance(server, LocalServer) else None
                try:
                    await self._dispatch(first, pending)
                finally:
                    if watch is not None:
                        watch.cancel()
        if self.stats.state == "running":
            self.stats.state = ("interrupted" if self.brakes.run.is_set()
                                else "incomplete" if self.stats.exhausted else "complete")

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

    async def _dispatch(self, first: Unit, pending: Iterator[Unit]) -> None:
        """n workers pull units themselves (see _Feed): no producer task and no hand-off queue
        between it and the workers: at thousands of items per second, that hand-off (a task
        wake-up per item) was a measurable share of the engine's CPU."""
        self.stats.state = "running"
        feed = _Feed(self, first, pending)
        n = self.cfg.concurrency()
        if self.judge_queue is None and self.stats.planned > 0:
            n = min(n, self.stats.planned)  # no more workers than units: each idle one only costs memory
        async with task_group() as tg:
            for _ in range(n):
                tg.create_task(self._worker(feed))

    async def _worker(self, feed: _Feed) -> None:
        # Without a cache or re-queries, _process is the attempts and _emit: called here, without
        # its coroutine, which every resume of the request below would pass through.
        run = self.attempts.run if self.io.cache is None and self.policy.requery is None else None
        while (unit := feed.take()) is not None or (unit := await feed.next()) is not None:
            if run is None:
                await self._process(unit)
            elif (outcome := await run(unit)) is not None:
                self._emit(unit, outcome)
            if unit.judge is None:
                feed.generated()
            elif self.hooks.on_judge_done is not None:
                self.hooks.on_judge_done(unit)
        feed.end_walk()

    async def _process(self, unit: Unit) -> None:
        cache = self.io.cache
        outcome = await cache.lookup(unit) if cache is not None else None
        if outcome is None:
            outcome = await self.attempts.run(unit)
            if outcome is None:
                return
            if cache is not None:
                cache.keep(unit, outcome)
        self._emit(unit, outcome)
        requery = self.policy.requery
        if outcome.response is not None and requery is not None and unit.judge is None:
            again = requery(unit, outcome.response)
            if again is not None and again.key not in self.policy.done:
                self.stats.requeried += 1
                await self._process(again)

    def _emit(self, unit: Unit, outcome: Outcome) -> None:
        if unit.judge is not None:
            j = unit.judge
            jrec = JudgmentRecord(key=unit.key, response_key=j.response_key, judge=self.name, rubric=j.rubric,
                                  rubric_version=j.rubric_version, model=j.model, pillar=unit.item.pillar,
                                  subtask=unit.item.subtask, item_id=unit.item.id, sample=unit.sample,
                                  try_=j.try_, attempts=outcome.attempts, response=outcome.response,
                                  error=outcome.error)
            assert self.io.judgments is not None
            self.io.judgments.put(jrec)
            self.stats.judged += 1
            if self.hooks.on_judgment is not None:
                self.hooks.on_judgment(jrec, unit)
            return
        rec = Record(key=unit.key, model=self.name, pillar=unit.item.pillar, subtask=unit.item.subtask,
                     item_id=unit.item.id, sample=unit.sample, attempts=outcome.attempts,
                     response=outcome.response, error=outcome.error)
        self.io.responses.put(rec)
        self.stats.done += 1
        if self.hooks.on_record is not None:
            self.hooks.on_record(rec, unit)


class _Feed:
    """What a lane's workers pull from: judge units waiting in the judge queue first, else the next
    generation unit from the (synchronous) item walk, else they wait for judge work. Counts the
    generation units in flight, so the lane says when its generation is done."""

    def __init__(self, lane: Lane, first: Unit, pending: Iterator[Unit]) -> None:
        self.lane = lane
        self.jq = lane.judge_queue
        self.walk: Iterator[Unit] | None = pending if first.judge is not None else itertools.chain((first,), pending)
        self.carry: list[Unit] = [first] if first.judge is not None else []
        self.judge_closed = False
        self.in_flight = 0  # generation units taken and not yet finished

    def take(self) -> Unit | None:
        """The next generation unit when one is at hand (a lane with no judge work and no gate,
        not stopping): what `next` would return, without a coroutine per unit. None: ask `next`."""
        if self.jq is None and not self.carry and self.walk is not None and self.lane.hooks.gate is None \
                and not self.lane.brakes.stopping:
            return self._next_walk()
        return None

    async def next(self) -> Unit | None:
        """The next unit for a worker; None: that worker is done."""
        jq = self.jq
        while not self.lane.stopping:
            if self.carry:
                return self.carry.pop()
            if jq is not None and not self.judge_closed and not jq.empty():
                unit = jq.get_nowait()
            elif self.walk is not None and (gate := self.lane.hooks.gate) is not None and not gate.is_set():
                got = await self._paused(gate)
                if isinstance(got, _Again):
                    continue
                unit = got
            else:
                unit = self._next_walk()
                if unit is not None:
                    return unit
                if jq is None or self.judge_closed:
                    return None
                unit = await jq.get()
            if unit is not None or jq is None:
                return unit
            # No more judge work: wake the next worker waiting on the queue (it passes this on in
            # turn); generation units may still be left for all of them.
            self.judge_closed = True
            jq.put_nowait(None)
        return None

    async def _paused(self, gate: asyncio.Event) -> Unit | None | _Again:
        """Generation waits for the judges to catch up: back when the gate opens or the lane stops
        (_AGAIN), or with a judge unit (or None: no more judge work) when this lane judges too."""
        jq = self.jq
        get = asyncio.ensure_future(jq.get()) if jq is not None and not self.judge_closed else None
        waits = {asyncio.ensure_future(gate.wait()), asyncio.ensure_future(self.lane.brakes.wake.wait())}
        try:
            await asyncio.wait(waits | ({get} if get is not None else set()), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
        if get is None:
            return _AGAIN
        if get.done():
            return get.result()
        get.cancel()  # a Queue.get cancelled before it returned leaves the item in the queue
        return _AGAIN

    def _next_walk(self) -> Unit | None:
        if self.walk is None:
            return None
        u = next(self.walk, None)
        if u is None:
            self.end_walk()
            return None
        self.in_flight += 1
        return u

    def generated(self) -> None:
        self.in_flight -= 1
        if self.walk is None and self.in_flight == 0:  # _settled, inline: once per unit
            self.lane.generation_done.set()

    def end_walk(self) -> None:
        """The walk is over (or stopped here): no more generation units."""
        self.walk = None
        self._settled()

    def _settled(self) -> None:
        if self.walk is None and self.in_flight == 0:
            self.lane.generation_done.set()


class _Again:
    """_Feed._paused's "look again"."""


_AGAIN = _Again()

