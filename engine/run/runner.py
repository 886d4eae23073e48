"""`run`: resolve the work, take the output directory, resume from the checkpoint, run every lane
on one loop, and leave run.json saying what happened.

The parts: engine/spec.py says what the work is; lanes.py builds the lanes; lane.py and
attempt.py run them; document.py writes run.json; signals.py handles SIGINT/SIGTERM. This module
holds the lock, the resume check, the one task group and the exit code.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import NamedTuple

import msgspec

from adapters.registry import Built
from adapters.servers.gpus import GpuPool
from engine import shards as sharding
from engine import throughput
from engine.config import Config
from engine.core.adapter import ReplaysItems
from engine.core.clock import Clock, LoopClock
from engine.core.errors import EngineError, StorageError
from engine.core.rundoc import RunDoc, RunSpec, UnsetType
from engine.costs import Budget
from engine.items import ItemFactory, plan_counts
from engine.run import completion, document
from engine.run.attempt import RunStop
from engine.run.judge import close_when_generated
from engine.run.lane import Lane
from engine.run.lanes import LaneBuilder, LaneSet, gpu_pool, make_adapters
from engine.run.options import Invocation, Log, RunOptions
from engine.run.progress import Bars, StatusLines
from engine.run.ray_connect import RayContext, preflight
from engine.run.signals import Interrupt, handled
from engine.run.storage import StorageFailure
from engine.run.taskgroup import task_group
from engine.runstate import data_fingerprint, model_fingerprint
from engine.spec import item_factory, judge_plan, protocol_change, protocol_of, protocols, subtasks
from engine.store.rundoc_io import read_run_if_any

__all__ = ["RunOptions", "RunResult", "run"]  # the command line builds the options and calls run

def _quiet(line: str) -> None:
    return None


class RunResult(NamedTuple):
    code: int  # the exit code
    line: str  # how it ended, with the counts: the command's last line


async def run(cfg: Config, spec: RunSpec, opts: RunOptions | None = None, log: Log = _quiet) -> RunResult:
    """Runs `spec` (or, with opts.shard, that part of it) into spec.output. A disk that fails
    ends it with StorageError (exit 4) once run.json says so."""
    opts = opts or RunOptions()
    if opts.backend == "ray":  # Ray is installed and the cluster answers, before DIR is touched
        await asyncio.to_thread(preflight, opts.ray_address)
    judge_plan(cfg, subtasks(spec))  # a judged subtask without a judge: refuse before DIR is touched
    factory = item_factory(spec)
    # A completion record of the same plan already says how many units there are (completion.py).
    early = await asyncio.to_thread(completion.early, cfg, spec, opts)
    planned_units = early.planned if early is not None and early.planned else await _planned(factory, spec.samples)
    data_fp = early.data if early is not None and early.data else await asyncio.to_thread(
        data_fingerprint, Path(spec.items) if spec.items else None,
        Path(spec.data_dir) if spec.data_dir else None, cfg.pillars, protocol_of(spec))
    protocol = await asyncio.to_thread(protocols, spec)
    inv = Invocation(cfg, spec, opts, factory, planned_units, data_fp, log, protocol, early)
    _check_output(inv.out)
    # Adapters first: a missing key or unknown adapter fails before the directory is touched; then
    # GPU placement of local lanes: a model that cannot fit is an error before anything is written.
    adapters = make_adapters(inv)
    pool = gpu_pool(inv)
    ray = RayContext(opts.ray_address, log, inv.log_dir, opts.ray_connect_s) if opts.backend == "ray" else None
    if ray is not None:  # connected (or refused in one line) before DIR is touched
        ray.connect()
    try:
        lock = sharding.make_lock(inv.out, opts.shard)
        try:
            lock.acquire()
        except OSError as exc:
            raise EngineError(f"cannot use output directory {inv.out}: {exc.strerror or exc}; "
                              "pass a writable --output (or run.output)") from None
        try:
            prev = _resume(inv)
            return await _run_locked(inv, prev, adapters, pool, ray)
        finally:
            lock.release()
    finally:
        if ray is not None:
            ray.close()


def _check_output(out: Path) -> None:
    """The output path names a directory (or nothing yet) under directories: refused before the lock
    would create anything."""
    if not str(out).strip():
        raise EngineError("--output / run.output is empty; pass the run's output directory")
    for p in (out, *out.parents):
        if p.exists():
            if not p.is_dir():
                what = "--output" if p == out else f"--output {out}: its parent"
                raise EngineError(f"{what} {p} exists and is not a directory; pass a directory (new or an earlier run's)")
            break


async def _planned(factory: ItemFactory, samples: int) -> dict[str, int]:
    try:
        return await asyncio.to_thread(plan_counts, factory, samples)
    except (OSError, ValueError, KeyError) as exc:
        # Loaders name the file and what is wrong; show that one line, not a traceback.
        raise EngineError(str(exc.args[0]) if exc.args else str(exc)) from None


def _resume(inv: Invocation) -> RunDoc | None:
    """The run.json this invocation continues (None: a fresh start), once it is known to be the
    same work; --fresh moves earlier results aside."""
    out, shard = inv.out, inv.shard
    sharding.check_layout(out, shard)
    # A shard keeps its own state file; the merged run.json (an earlier merge) must agree too.
    prev = read_run_if_any(out) if shard is None else sharding.read_state(out, shard)
    merged = read_run_if_any(out) if shard is not None else None
    if inv.opts.fresh:
        moved = _supersede(out) if shard is None else sharding.supersede_shard(out, shard)
        if moved:
            inv.log(f"--fresh: earlier results moved to {moved}")
        return None
    for p in (prev, merged):
        if p is not None:
            _check_resume(p, inv)
    return prev


def _check_resume(prev: RunDoc, inv: Invocation) -> None:
    old = prev.fingerprint
    if old.data not in (None, inv.data_fp):
        raise EngineError(f"{inv.out} holds a run over different data (items file, data dir, subtask options "
                          "or prompt protocol changed); use another --output, or --fresh to start over there")
    # A run.json from before the protocol was recorded was asked with every JSON schema on.
    was = old.protocol if not isinstance(old.protocol, UnsetType) else protocols(inv.spec, legacy=True)
    change = protocol_change(was, inv.protocol)
    if change is not None:
        raise EngineError(f"{inv.out} holds a run made under another protocol ({change}); "
                          "use another --output, or --fresh to start over there")
    for name, fp in old.models.items():
        cfg = inv.cfg.models.get(name)
        if cfg is not None and name in inv.spec.models and fp != model_fingerprint(cfg):
            raise EngineError(f"{inv.out} holds a run where model `{name}` had other request settings "
                              "(model id, endpoint or generation parameters changed); use another --output, or --fresh")


def _supersede(out: Path) -> Path | None:
    """--fresh: move earlier results aside instead of deleting them."""
    names = [n for n in ("responses", "errors", "judgments", "run.json", "scores.json") if (out / n).exists()]
    if not names:
        return None
    dest = out / "superseded" / time.strftime("%Y%m%d-%H%M%S")
    dest.mkdir(parents=True, exist_ok=True)
    for n in names:
        shutil.move(str(out / n), str(dest / n))
    return dest


async def _run_locked(inv: Invocation, prev: RunDoc | None, adapters: dict[str, Built], pool: GpuPool | None,
                      ray: RayContext | None) -> RunResult:
    cfg, out = inv.cfg, inv.out
    stop = RunStop()
    budget = _budget(inv)
    # The lanes' resume scans can still refuse (a corrupt record line): run.json is rewritten and
    # the folders made only once they have passed.
    lanes = await LaneBuilder(inv, adapters, pool, budget, stop, ray, prev=prev).build()
    for folder in ("responses", "judgments", "errors"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    doc = document.started(prev, cfg, inv.spec, config_source=inv.opts.config_source, data_fp=inv.data_fp,
                           protocol=inv.protocol, planned_units=inv.planned_units, shard=inv.shard, partition=inv.partition)
    sharding.write_state(out, inv.shard, doc)

    def stop_run() -> None:
        stop.set()
        lanes.halt_all()

    interrupt = Interrupt(stop_run, cfg.run.grace_period_s, inv.log)
    storage = StorageFailure(stop_run, cfg.run.grace_period_s, inv.log)
    for w in lanes.writers:
        w.on_error = storage
    _start_line(inv, lanes)
    with handled(interrupt):
        await _drive(lanes, Watchers(interrupt, storage, stop), LoopClock(), _display(inv, lanes))
    if ray is not None:
        ray.close()  # before run.json says the run ended: its actors are gone by then

    failure = storage.final(lanes.writers) if storage.error is not None else None
    end = Ending(interrupt.signum, budget, lanes.lanes, lanes.prior_fatal, failure)
    done = (completion.completions(inv, lanes.target_lanes(), lanes.completed, lanes.prior_fatal)
            if failure is None and interrupt.signum is None else {})
    doc = document.finished(doc, status=end.status, lanes=lanes.summaries(), budget=budget,
                            backend=ray.doc() if ray is not None else None,
                            servers=document.servers_doc(pool, lanes.launched()),
                            failure=str(failure) if failure is not None else None, completion=done)
    try:
        sharding.write_state(out, inv.shard, doc)
    except StorageError:
        if failure is None:
            raise
    try:
        throughput.record(cfg, doc.lane_map)
    except OSError:
        pass  # only `plan`'s time estimate reads it: a read-only cache never fails a run
    _summarize(lanes.lanes, inv.log)
    if lanes.cache is not None:
        _cache_line(lanes, inv.log)
    if failure is not None:
        raise failure
    return end.result(out, inv.opts.allow_failures)


def _budget(inv: Invocation) -> Budget | None:
    if inv.opts.budget_usd is None:
        return None
    cfg = inv.cfg
    free = [n for n in dict.fromkeys((*inv.spec.models, *cfg.judge.models)) if n not in cfg.prices]
    if free:
        inv.log(f"--budget: no [prices] for {', '.join(free)}; their requests are not counted against the budget")
    return Budget(inv.opts.budget_usd)


def _start_line(inv: Invocation, lanes: LaneSet) -> None:
    """What this invocation is about to do, in one line (a batch log's first)."""
    targets = lanes.target_lanes()
    planned = sum(lane.stats.planned for lane in targets)
    resumed = sum(len(lane.policy.done) or (c.records if (c := lanes.completed.get(lane.name)) else 0)
                  for lane in targets)
    # Judge-only (`judge DIR`): no estimate, but the earlier responses already queued for judging.
    judged = sum(max(lane.stats.judge_planned, lane.stats.judge_queued) for lane in lanes.lanes)
    source = inv.opts.config_source or "default"
    every = inv.opts.status_every
    work = [f"{len(targets)} model(s), {planned} generation requests ({min(resumed, planned)} already in the output)"
            if targets else "", f"about {judged} judgments" if judged else ""]
    inv.log(f"run: config {source}; output {inv.out}; " + (", ".join(w for w in work if w) or "nothing to send")
            + ("" if inv.opts.progress or every <= 0 else f"; a status line every {every:g} s"))


def _display(inv: Invocation, lanes: LaneSet) -> Callable[[Clock], Bars | StatusLines | None]:
    """Bars (a terminal, or --progress), else status lines every --status-every seconds."""
    opts = inv.opts

    def make(clock: Clock) -> Bars | StatusLines | None:
        if opts.progress:
            return Bars(lanes.lanes, clock)
        return StatusLines(lanes.lanes, clock, opts.status_every, inv.log) if opts.status_every > 0 else None
    return make


class Watchers(msgspec.Struct, frozen=True):
    """What stops a run: a signal, a failed disk (each with its grace timer), any run-wide stop."""

    interrupt: Interrupt
    storage: StorageFailure
    stop: RunStop


async def _drive(lanes: LaneSet, watch: Watchers, clock: Clock,
                 display: Callable[[Clock], Bars | StatusLines | None]) -> None:
    """Every lane on this loop, beside what watches them: the grace timer after a signal or a failed
    write, the judge hub's close, the GPU pool's close on a run-wide stop, the progress bars or
    status lines. The watchers end with the lanes; a lane still running when the grace period ends
    is cancelled."""
    bars = display(clock)
    running: list[asyncio.Task[None]] = []

    def cancel_lanes() -> None:
        for t in running:
            t.cancel()

    for w in lanes.writers:
        w.start()
    try:
        async with task_group() as tg:
            watchers = [tg.create_task(watch.interrupt.enforce_grace(clock, cancel_lanes)),
                        tg.create_task(watch.storage.enforce_grace(clock, cancel_lanes))]
            if lanes.hub is not None:
                watchers.append(tg.create_task(close_when_generated(lanes.hub, lanes.target_lanes())))
            if lanes.pool is not None:
                watchers.append(tg.create_task(_close_pool_on_stop(watch.stop, lanes.pool)))
            if bars is not None:
                watchers.append(tg.create_task(bars.run()))
            try:
                async with task_group() as lane_tg:
                    running.extend(lane_tg.create_task(lane.run(), name=f"lane:{lane.name}")
                                   for lane in lanes.lanes)
            finally:
                for watcher in watchers:
                    watcher.cancel()
    finally:
        if bars is not None:
            bars.close()
        for w in lanes.writers:
            await w.close()
        if lanes.cache is not None:
            await lanes.cache.aclose()


async def _close_pool_on_stop(stop: RunStop, pool: GpuPool) -> None:
    # Any run-wide stop (a signal, --budget) means queued local models must not load now.
    await stop.event.wait()
    pool.close()


def _summarize(lanes: list[Lane], log: Log) -> None:
    for lane in lanes:
        s = lane.stats
        judged = f" + {s.judged} judgments" if s.judged else ""  # ok/fatal count both kinds of request
        log(f"{lane.name}: {s.state}; {s.done} written this run{judged} ({s.ok} ok, {s.fatal} fatal), "
            f"{s.skipped} already done, {s.exhausted} out of retries, {s.retries} retries, {s.rate_limited} rate-limited")
        if s.message:
            log(f"  {s.message}")
        if isinstance(lane.adapter, ReplaysItems):
            for note in lane.adapter.notes(complete=s.state == "complete"):
                log(f"  {note}")


def _cache_line(lanes: LaneSet, log: Log) -> None:
    assert lanes.cache is not None
    hits = sum(lane.stats.cache_hits for lane in lanes.lanes)
    misses = sum(lane.stats.cache_misses for lane in lanes.lanes)
    log(f"response cache {lanes.cache.directory}: {hits} hits, {misses} misses"
        + (f"; a cache operation failed ({lanes.cache.failed}): those responses were paid for, not stored"
           if lanes.cache.failed else ""))


class Ending(msgspec.Struct, frozen=True):
    """How the run ended: run.json's status and the exit code with its line (a failed disk first,
    then a signal, the budget, lanes that stopped with work left, and items without a response)."""

    signum: int | None
    budget: Budget | None
    lanes: list[Lane]
    prior_fatal: Mapping[str, int]  # fatal-error records already in the checkpoint, per lane
    storage: StorageError | None = None

    @property
    def over_budget(self) -> bool:
        return self.budget is not None and self.budget.exhausted

    @property
    def undone(self) -> list[str]:
        """Lanes that stopped before their work was through (auth, a dead server, a stop)."""
        return [lane.name for lane in self.lanes if lane.stats.state not in ("complete", "incomplete")]

    @property
    def fatal(self) -> int:
        return sum(lane.stats.fatal for lane in self.lanes) + sum(self.prior_fatal.values())

    @property
    def exhausted(self) -> int:
        return sum(lane.stats.exhausted for lane in self.lanes)

    @property
    def status(self) -> str:
        if self.storage is not None:
            return "storage_failed"
        if self.signum is not None:
            return "interrupted"
        if self.over_budget:
            return "budget"
        return "incomplete" if self.undone or self.exhausted else "complete"

    def counts(self) -> str:
        done = sum(lane.stats.done + lane.stats.judged for lane in self.lanes)
        skipped = sum(lane.stats.skipped for lane in self.lanes)
        return (f"{self.fatal} fatal error(s), {self.exhausted} out of retries; "
                f"{done} written this run, {skipped} already done")

    def result(self, out: Path, allow_failures: bool) -> RunResult:
        counts = self.counts()
        if self.over_budget and self.signum is None:
            assert self.budget is not None
            return RunResult(3, f"stopped: {self.budget.message} ({counts})")
        if self.signum is not None:
            return RunResult(128 + self.signum, f"interrupted: rerun the same command to resume ({out}) ({counts})")
        if self.undone:
            return RunResult(1, f"incomplete: lanes {', '.join(self.undone)} left work undone; rerun the same "
                                f"command to retry it ({counts})")
        if self.fatal or self.exhausted:
            todo = "rerun the same command to retry those out of retries, with --retry-errors the fatal ones"
            if allow_failures:
                return RunResult(0, f"finished with failures, allowed by --allow-failures ({counts}); {todo}")
            return RunResult(1, f"finished with failures ({counts}): exit 1; {todo}; "
                                "--allow-failures exits 0 when some failures are expected")
        return RunResult(0, f"complete ({counts})")
