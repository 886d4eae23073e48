"""Building a run's lanes: the adapters (before anything is written, so that a missing key fails
first), GPU placement of local models, each lane's resume scan, writers and attempts (here or in a
Ray actor), and the judge hub that joins target lanes to judge lanes.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Iterator
from pathlib import Path

import msgspec

from adapters.registry import Built, make_adapter
from adapters.servers.gpus import GpuPool, check_fits, detect_gpus, placed
from engine import shards as sharding
from engine.core.adapter import Adapter, SubmitsBatches
from engine.core.clock import LoopClock
from engine.core.records import Item, Record
from engine.core.rundoc import Completion, LaneSummary, RunDoc
from engine.costs import Budget, lane_price
from engine.gpus import needs_gpus
from engine.items import WorkItem
from engine.requery import make_requery, requery_limits
from engine.run import completion
from engine.run.attempt import Attempts, Brakes, LocalAttempts, RunStop, Spend
from engine.run.batch_job import LaneFiles
from engine.run.batching import BatchAttempts, BatchSettings
from engine.run.cache import LaneCache
from engine.run.judge import JudgeHub, judge_salt
from engine.run.lane import Lane, LaneIO, LanePolicy, OpenServer
from engine.run.options import Invocation
from engine.run.ray import RayAttempts
from engine.run.ray_connect import RayContext
from engine.spec import judge_plan, judges_for, rubrics_by_source, subtasks
from engine.store.batch_journal import BatchJournal
from engine.store.checkpoint import JsonlWriter, scan_responses
from engine.store.jsonl import key_int
from engine.store.keyset import KeySet
from engine.store.response_cache import ResponseCache


class LaneSet(msgspec.Struct):
    """A run's lanes, in config order (targets first, then judges), and what they share."""

    lanes: list[Lane]
    targets: tuple[str, ...]
    writers: list[JsonlWriter]
    adapters: dict[str, Built]
    pool: GpuPool | None = None
    ray: RayContext | None = None
    hub: JudgeHub | None = None
    servers: dict[str, dict[str, object]] = msgspec.field(default_factory=dict)  # GPU placement per local lane
    cache: ResponseCache | None = None  # run --cache / [run] cache: closed with the writers
    prior_fatal: dict[str, int] = msgspec.field(default_factory=dict)  # fatal-error responses already on disk, per lane
    # Lanes whose run.json completion record still held: not scanned, not walked (completion.py).
    completed: dict[str, Completion] = msgspec.field(default_factory=dict)

    def by_name(self) -> dict[str, Lane]:
        return {lane.name: lane for lane in self.lanes}

    def target_lanes(self) -> list[Lane]:
        return [lane for lane in self.lanes if lane.name in self.targets]

    def halt_all(self) -> None:
        for lane in self.lanes:
            lane.halt()

    def summaries(self) -> dict[str, LaneSummary]:
        """run.json `lanes`: each lane's counters (with --backend ray, where its actor ran)."""
        return {lane.name: msgspec.structs.replace(lane.stats.summary(), **lane.attempts.placement())
                for lane in self.lanes}

    def launched(self) -> dict[str, dict[str, object]]:
        """Local servers this invocation started: GPUs, timings, and what their adapter reports."""
        infos = {n: opener.info for n, (_, opener) in self.adapters.items() if opener is not None}
        return {n: {**self.servers.get(n, {}), **infos.get(n, {})}
                for n in self.adapters if self.servers.get(n) or infos.get(n)}


def make_adapters(inv: Invocation) -> dict[str, Built]:
    """Every lane's adapter (targets and judges): a missing key fails here, before DIR is touched."""
    judges = judge_plan(inv.cfg, subtasks(inv.spec))
    names = dict.fromkeys((*(() if inv.opts.judge_only else inv.spec.models), *judges))
    return {name: make_adapter(name, inv.cfg.models[name], inv.log_dir, progress=inv.log) for name in names}


def gpu_pool(inv: Invocation) -> GpuPool | None:
    """The run's GpuPool with every local lane registered (config order), or None when no lane
    needs GPUs. Raises ConfigError when a model cannot fit."""
    cfg = inv.cfg
    judges = judge_plan(cfg, subtasks(inv.spec))
    names = list(dict.fromkeys((*inv.targets, *judges)))
    needs = {n: needs_gpus(cfg, n, inv.opts.backend) for n in names}
    needs = {n: k for n, k in needs.items() if k}
    if not needs:
        return None
    gpus, source = detect_gpus(cfg.run.gpus)
    check_fits(needs, gpus, source, holders=[j for j in judges if j in needs])
    pool = GpuPool(gpus)
    for n, k in needs.items():
        pool.register(n, k)
    inv.log(f"GPU placement: {len(gpus)} GPU(s) {','.join(gpus)} ({source}) for {len(needs)} local model(s)")
    return pool


def _no_items() -> Iterator[WorkItem]:
    return iter(())


def _unit_count(lane: Lane) -> int:
    return sum(1 for _ in lane.units())


class LaneBuilder:
    """Builds the lanes of one invocation, in order: targets, then judges not among them."""

    def __init__(self, inv: Invocation, adapters: dict[str, Built], pool: GpuPool | None, budget: Budget | None,
                 stop: RunStop, ray: RayContext | None = None, *, prev: RunDoc | None = None) -> None:
        self.inv = inv
        self.prev = prev  # the run.json this invocation continues: its completion records
        self.budget = budget
        self.stop = stop
        self.subs = subtasks(inv.spec)
        self.judge_names = judge_plan(inv.cfg, self.subs)
        self.requery_n = requery_limits(self.subs, inv.spec.options)
        self.by_key = {s.key: s for s in self.subs}
        self.judge_done: dict[str, KeySet] = {}
        self.done: dict[str, KeySet] = {}  # each lane's keys already written (its resume scan)
        self.clock = LoopClock()
        self.set = LaneSet([], inv.targets, [], adapters, pool, ray)

    async def build(self) -> LaneSet:
        inv = self.inv
        names = list(dict.fromkeys((*self.set.targets, *self.judge_names)))
        # Every resume scan before any writer opens a file: a corrupt line refuses with nothing created.
        # --retry-errors rewrites the files it drops errors from, so those go last, once every plain
        # scan (the one that can refuse) has passed.
        for name in self.set.targets:
            self._shortcut(name)
        dropping = [n for n in names if inv.opts.retry_errors and n in self.set.targets and n not in self.set.completed]
        for name in names:
            if name in self.set.completed:
                self.done[name] = KeySet()
                continue
            self.done[name] = await self._done("responses", name, drop_errors=False)
            if name in self.judge_names:
                self.judge_done[name] = await self._done("judgments", name, drop_errors=False)
        for name in dropping:
            self.done[name] = await self._done("responses", name, drop_errors=True)
            self.set.prior_fatal.pop(name, None)  # its fatal records are gone: they are sent again
        for name in names:  # a batch journal that cannot be read refuses too, before any writer opens a file
            if inv.cfg.models[name].batch:
                await asyncio.to_thread(self._journal(name).load)
        if inv.cfg.run.cache:
            self.set.cache = ResponseCache(Path(inv.cfg.run.cache))
            await self.set.cache.open()
        for name in names:
            self.set.lanes.append(await self._lane(name, name in self.set.targets))
        if self.judge_names:
            self._judge_estimates()
            self.set.hub = await self._hub()
        return self.set

    def _shortcut(self, name: str) -> None:
        """Takes the lane's completion record when it still holds: the lane then walks nothing and
        reports the counts a full walk would (every unit already done)."""
        inv = self.inv
        adapter = self.set.adapters[name][0] if name in self.set.adapters else None
        path = inv.out / "responses" / f"{name}{inv.suffix}.jsonl"
        c = completion.usable(inv, self.prev, name, adapter, path) if adapter is not None else None
        if c is None:
            return
        self.set.completed[name] = c
        self.set.prior_fatal[name] = c.fatal
        inv.log(f"{name}: nothing left to do: run.json's completion record matches the checkpoint and the "
                "inputs; not walked again")

    def _judge_estimates(self) -> None:
        """Each judge lane's expected judgments, for progress: every planned unit of a judged
        subtask, once per target and judge of its rubrics."""
        by_name = self.set.by_name()
        by_source = rubrics_by_source(self.subs)
        for key, units in self.inv.planned_units.items():
            for _, rubric in by_source.get(key, ()):
                for judge in judges_for(self.inv.cfg, rubric):
                    if judge in by_name:
                        by_name[judge].stats.judge_planned += units * len(self.set.targets)

    async def _lane(self, name: str, target: bool) -> Lane:
        inv, cfg, spec = self.inv, self.inv.cfg, self.inv.spec
        if name not in self.set.adapters:
            self.set.adapters[name] = make_adapter(name, cfg.models[name], inv.log_dir, progress=inv.log)
        done = self.done[name]
        io = LaneIO(self._writer("responses", name), self._writer("errors", name))
        if name in self.judge_names:
            io = LaneIO(io.responses, io.errors, self._writer("judgments", name), asyncio.Queue())
        adapter, server = self.set.adapters[name]
        open_server: OpenServer | None = server
        pool = self.set.pool
        if pool is not None and name in pool.need and server is not None:
            self.set.servers[name] = {}
            open_server = placed(server, pool, name, self.set.servers[name])
        part, shard = inv.partition, inv.shard
        keep = part.keep(name, shard.index) if part is not None and shard is not None else None
        requery = make_requery(name, self.by_key, self.requery_n, spec.samples) if target else None
        attempts = self._attempts(name, adapter, io)
        lane_cfg = cfg.models[name]
        if isinstance(attempts, BatchAttempts):  # a worker per unit of a batch: each waits for its batch
            lane_cfg = msgspec.structs.replace(lane_cfg, max_concurrency=attempts.settings.max_requests)
        if self.set.cache is not None:
            io = msgspec.structs.replace(io, cache=LaneCache(self.set.cache, name, cfg.models[name], attempts.stats))
        walk = inv.factory if target and name not in self.set.completed else _no_items
        lane = Lane(name, lane_cfg, adapter, walk, io, attempts,
                    policy=LanePolicy(samples=spec.samples, done=done, keep=keep, requery=requery),
                    open_server=None if self.set.ray is not None else open_server)  # Ray: the server runs by the actor
        lane.stats.planned = sum(inv.planned_units.values()) if target else 0
        lane.stats.judge_resumed = len(self.judge_done.get(name, ()))
        if (c := self.set.completed.get(name)) is not None:  # what the walk would have counted
            lane.stats.skipped, lane.stats.truncated = c.units, c.truncated
        if pool is not None and name in self.set.servers:
            lane.hooks.on_idle = functools.partial(pool.withdraw, name)
        if target and keep is not None:
            lane.stats.planned = await asyncio.to_thread(_unit_count, lane)
        return lane

    def _attempts(self, name: str, adapter: Adapter, io: LaneIO) -> Attempts:
        cfg = self.inv.cfg
        brakes = Brakes(self.stop)
        price = lane_price(cfg, name)
        spend = Spend(self.budget, price, name, self.stop) if self.budget is not None and price is not None else None
        model = cfg.models[name]
        if model.batch and isinstance(adapter, SubmitsBatches):  # the journal stays with the driver under Ray
            return self._batch_attempts(name, adapter, io, brakes, spend)
        if self.set.ray is not None:
            return RayAttempts(name, cfg.models[name], io.errors, brakes, self.set.ray, spend=spend, clock=self.clock)
        return LocalAttempts(name, cfg.models[name], adapter, io.errors, brakes, clock=self.clock, spend=spend)

    def _batch_attempts(self, name: str, adapter: SubmitsBatches, io: LaneIO, brakes: Brakes,
                        spend: Spend | None) -> BatchAttempts:
        inv = self.inv
        writers = [w for w in (io.responses, io.errors, io.judgments) if isinstance(w, JsonlWriter)]

        async def flush() -> None:
            for w in writers:
                await w.sync()

        stem = f"{name}{inv.suffix}"
        settings = BatchSettings.of(inv.cfg.models[name], adapter, inv.out / "batches" / stem)
        files = LaneFiles(self._journal(name), flush,
                          (self.done[name], self.judge_done.get(name, KeySet())), spend)
        return BatchAttempts(name, inv.cfg.models[name], adapter, io.errors, brakes, files, settings, clock=self.clock)

    def _journal(self, name: str) -> BatchJournal:
        """A batch lane's journal; a shard's also reads the merged one (engine/store/batch_journal.py)."""
        batches = self.inv.out / "batches"
        merged = batches / f"{name}.jsonl" if self.inv.shard is not None else None
        return BatchJournal(batches / f"{name}{self.inv.suffix}.jsonl", merged)

    def _writer(self, folder: str, name: str) -> JsonlWriter:
        w = JsonlWriter(self.inv.out / folder / f"{name}{self.inv.suffix}.jsonl")
        self.set.writers.append(w)
        return w

    async def _done(self, folder: str, name: str, *, drop_errors: bool) -> KeySet:
        """Keys already written (the resume scan); a torn last line is cut. A shard counts the
        merged file's keys too."""
        inv = self.inv
        path = inv.out / folder / f"{name}{inv.suffix}.jsonl"
        scan = await asyncio.to_thread(scan_responses, path, drop_errors=drop_errors)
        if folder == "responses" and not drop_errors:  # --retry-errors sends them again instead
            self.set.prior_fatal[name] = scan.errors
        if scan.torn_bytes:
            inv.log(f"{path}: cut a torn last line ({scan.torn_bytes} bytes) left by an interrupted run")
        if inv.shard is not None:
            scan.done |= await asyncio.to_thread(sharding.merged_done, inv.out / folder / f"{name}.jsonl",
                                                 drop_errors=drop_errors)
        return scan.done

    async def _hub(self) -> JudgeHub:
        inv, by_name = self.inv, self.set.by_name()
        hub = JudgeHub(inv.cfg, self.subs, {n: by_name[n] for n in self.judge_names}, self.judge_done, b"")
        if hub.hardened:  # a run whose rubrics all go unfenced (an old run resumed) needs no salt
            hub.salt = await asyncio.to_thread(judge_salt, inv.out)
        for lane in self.set.lanes:
            if lane.name in self.set.targets:
                lane.hooks.gate = hub.gate
                lane.hooks.on_record = hub.on_record
                if isinstance(lane.io.responses, JsonlWriter):  # judged once durably written
                    lane.hooks.on_record = hub.hold_record
                    lane.io.responses.on_durable = hub.on_durable
            if lane.name in self.judge_names:
                lane.hooks.on_judgment = hub.on_judgment
                lane.hooks.on_judge_done = hub.on_judge_done
                lane.hooks.on_end = functools.partial(hub.judge_ended, lane.name)
        suffixes = ("", inv.suffix) if inv.shard is not None else ("",)
        await asyncio.to_thread(hub.load_retries, inv.out / "judgments", suffixes)
        owed, hub.earlier = await asyncio.to_thread(_unjudged, inv, hub)  # fed as the backlog allows
        if owed:
            inv.log(f"judging {owed} earlier responses that have no judgment yet")
        return hub


def _owed_records(inv: Invocation, hub: JudgeHub) -> Iterator[Record]:
    """Responses on disk that still owe a judgment; a shard reads its own file and the merged
    records it owns."""
    for name in inv.spec.models:
        for rec in sharding.iter_sources(sharding.response_sources(inv.out, name, inv.shard, inv.partition)):
            if rec.response is not None and hub.needs_judging(rec.pillar, rec.subtask) and hub.owes(rec):
                yield rec


def _unjudged(inv: Invocation, hub: JudgeHub) -> tuple[int, Iterator[tuple[Record, Item]]]:
    """How many responses already on disk owe a judgment (a resumed or re-judged run), and an
    iterator that reads them again with their items. Nothing per record is held: a resumed run of
    a million judged responses keeps the item identities it needs, not the records."""
    needed: set[tuple[str, str, str]] = set()
    owed = 0
    for rec in _owed_records(inv, hub):
        needed.add((rec.pillar, rec.subtask, rec.item_id))
        owed += 1
    if not owed:
        return 0, iter(())
    items: dict[tuple[str, str, str], Item] = {}
    for w in inv.factory():
        k = (w.item.pillar, w.item.subtask, w.item.id)
        if k in needed:
            items[k] = w.item

    def again() -> Iterator[tuple[Record, Item]]:
        sent: set[int] = set()  # a shard's sources may hold a key twice (its file and the merged one)
        for rec in _owed_records(inv, hub):
            item = items.get((rec.pillar, rec.subtask, rec.item_id))
            if item is not None and (k := key_int(rec.key)) not in sent:
                sent.add(k)
                yield rec, item

    return owed, again()

