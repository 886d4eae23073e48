"""`run`: resolve the work, take the output directory, resume from the checkpoint, run every lane
on one loop, and leave run.json saying what happened.

Signals: the first SIGINT/SIGTERM stops dispatching and gives in-flight requests
`run.grace_period_s` to finish; what finished is written, the rest is retried next run. A second
signal exits at once; the files stay consistent because every write is a whole batch of lines.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from adapters.registry import make_adapter
from adapters.servers.gpus import GpuPool, check_fits, detect_gpus, placed
from adapters.servers.managed import kill_all
from engine.checkpoint import JsonlWriter, scan_responses
from engine.config import Config
from engine.core.adapter import ReplaysItems
from engine.core.errors import EngineError
from engine.core.rundoc import RunDoc, RunSpec
from engine.costs import Budget
from engine.gpus import needs_gpus
from engine.items import ItemFactory, plan_counts
from engine.run import document
from engine.run.judge import JudgeHub, close_when_generated
from engine.run.lane import Lane, OpenServer
from engine.runstate import data_fingerprint, model_fingerprint
from engine.spec import item_factory, judge_plan, subtasks
from engine.store.rundoc_io import read_run_if_any

Log = Callable[[str], None]


def _check_resume(prev: RunDoc, cfg: Config, spec: RunSpec, data_fp: str, out: Path) -> None:
    old = prev.fingerprint
    if old.data not in (None, data_fp):
        raise EngineError(f"{out} holds a run over different data (items file or data dir changed); "
                          "use another --output, or --fresh to start over there")
    for name, fp in old.models.items():
        if name in cfg.models and name in spec.models and fp != model_fingerprint(cfg.models[name]):
            raise EngineError(f"{out} holds a run where model `{name}` had other request settings "
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


class Interrupt:
    """First signal: stop dispatching and start the grace timer. Second: leave now."""

    def __init__(self, stop: asyncio.Event, grace: float, cancel: Callable[[], None], log: Log,
                 on_stop: Callable[[], None] | None = None) -> None:
        self.on_stop = on_stop
        self.stop = stop
        self.grace = grace
        self.cancel = cancel
        self.log = log
        self.signum: int | None = None

    def __call__(self, signum: int) -> None:
        code = 128 + signum
        if self.signum is not None:
            self.log(f"second signal: exiting now (exit {code}); records written so far are kept")
            kill_all()
            os._exit(code)
        self.signum = signum
        self.stop.set()
        if self.on_stop is not None:
            self.on_stop()
        self.log(f"{signal.Signals(signum).name}: no new requests; waiting up to {self.grace:.0f} s for "
                 "those in flight (send again to exit at once)")
        asyncio.get_running_loop().call_later(self.grace, self.cancel)


async def run(cfg: Config, spec: RunSpec, *, fresh: bool = False, retry_errors: bool = False,
              progress: bool = False, log: Log = lambda s: None, config_source: str = "",
              judge_only: bool = False, budget_usd: float | None = None, shard: Any = None,
              backend: str = "local", ray_address: str | None = None) -> int:
    """shard: an engine.shards.Shard (this invocation runs that part of the work, in its own files);
    backend "ray": each lane's requests run in a Ray actor (engine/run/ray.py)."""
    from engine import shards as sharding

    out = Path(spec.output)
    loop = asyncio.get_running_loop()
    judge_plan(cfg, subtasks(spec))  # a judged subtask without a judge: refuse before DIR is touched
    factory = item_factory(spec)
    try:
        planned_units = await asyncio.to_thread(plan_counts, factory, spec.samples)
    except (OSError, ValueError, KeyError) as exc:
        # Loaders name the file and what is wrong; show that one line, not a traceback.
        raise EngineError(str(exc.args[0]) if exc.args else str(exc)) from None
    data_fp = await asyncio.to_thread(
        data_fingerprint, Path(spec.items) if spec.items else None,
        Path(spec.data_dir) if spec.data_dir else None, cfg.pillars)

    lock = sharding.make_lock(out, shard)
    lock.acquire()
    try:
        sharding.check_layout(out, shard)
        # A shard keeps its own state file; the merged run.json (an earlier merge) must agree too.
        prev = read_run_if_any(out) if shard is None else sharding.read_state(out, shard)
        merged = read_run_if_any(out) if shard is not None else None
        for p in (prev, merged):
            if p is not None and not fresh:
                _check_resume(p, cfg, spec, data_fp, out)
        if fresh:
            moved = _supersede(out) if shard is None else sharding.supersede_shard(out, shard)
            if moved:
                log(f"--fresh: earlier results moved to {moved}")
            prev = None
        return await _run_locked(cfg, spec, out, prev, factory, planned_units, data_fp,
                                 retry_errors=retry_errors, progress=progress, log=log,
                                 config_source=config_source, loop=loop, judge_only=judge_only,
                                 budget_usd=budget_usd, shard=shard, backend=backend, ray_address=ray_address)
    finally:
        lock.release()


def _gpu_pool(cfg: Config, spec: RunSpec, shard: Any, partition: Any, backend: str, judge_only: bool,
              log: Log) -> Any:
    """The run's GpuPool with every local lane registered (config order), or None when no lane
    needs GPUs. Raises ConfigError when a model cannot fit."""
    targets = () if judge_only else spec.models
    if partition is not None:
        targets = tuple(n for n in targets if partition.has_model(n, shard.index))
    judges = judge_plan(cfg, subtasks(spec))
    names = list(dict.fromkeys((*targets, *judges)))
    needs = {n: needs_gpus(cfg, n, backend) for n in names}
    needs = {n: k for n, k in needs.items() if k}
    if not needs:
        return None
    gpus, source = detect_gpus(cfg.run.gpus)
    check_fits(needs, gpus, source, holders=[j for j in judges if j in needs])
    pool = GpuPool(gpus)
    for n, k in needs.items():
        pool.register(n, k)
    log(f"GPU placement: {len(gpus)} GPU(s) {','.join(gpus)} ({source}) for {len(needs)} local model(s)")
    return pool


def _unjudged(out: Path, spec: RunSpec, factory: ItemFactory, hub: JudgeHub, shard: Any = None,
              partition: Any = None) -> list[tuple[Any, Any]]:
    """Responses already on disk whose judgments are missing (a resumed or re-judged run); a shard
    reads its own file and the merged records it owns."""
    from engine.shards import iter_sources, response_sources

    wanted: dict[tuple[str, str], Any] = {}
    items: dict[tuple[str, str, str], Any] = {}
    for name in spec.models:
        for rec in iter_sources(response_sources(out, name, shard, partition)):
            if rec.response is not None and hub.needs_judging(rec.pillar, rec.subtask):
                wanted[(rec.key, name)] = rec
    if not wanted:
        return []
    needed = {(r.pillar, r.subtask, r.item_id) for r in wanted.values()}
    for w in factory():
        k = (w.item.pillar, w.item.subtask, w.item.id)
        if k in needed:
            items[k] = w.item
    return [(r, items[(r.pillar, r.subtask, r.item_id)]) for r in wanted.values()
            if (r.pillar, r.subtask, r.item_id) in items]


def _unit_count(lane: Lane) -> int:
    return sum(1 for _ in lane.units())


async def _run_locked(cfg: Config, spec: RunSpec, out: Path, prev: RunDoc | None, factory: ItemFactory,
                      planned_units: dict[str, int], data_fp: str, *, retry_errors: bool, progress: bool,
                      log: Log, config_source: str, loop: asyncio.AbstractEventLoop,
                      judge_only: bool = False, budget_usd: float | None = None, shard: Any = None,
                      backend: str = "local", ray_address: str | None = None) -> int:
    from engine import shards as sharding

    sfx = sharding.suffix(shard)
    partition = sharding.Partition.of(cfg, shard.count) if shard is not None else None

    (out / "responses").mkdir(parents=True, exist_ok=True)
    (out / "judgments").mkdir(parents=True, exist_ok=True)
    (out / "errors").mkdir(parents=True, exist_ok=True)
    log_dir = out / "logs" if shard is None else out / "logs" / shard.tag

    # Adapters first: a missing key or unknown adapter fails before anything is written.
    adapters = {name: make_adapter(name, cfg.models[name], log_dir, progress=log)
                for name in (() if judge_only else spec.models)}
    # GPU placement of local lanes; a model that cannot fit is an error before anything is written.
    gpu_pool = _gpu_pool(cfg, spec, shard, partition, backend, judge_only, log)
    servers: dict[str, dict[str, Any]] = {}

    doc = document.started(prev, cfg, spec, config_source=config_source, data_fp=data_fp,
                           planned_units=planned_units, shard=shard, partition=partition)
    sharding.write_state(out, shard, doc)

    stop = asyncio.Event()
    budget = Budget(budget_usd) if budget_usd is not None else None
    if budget is not None:
        free = [n for n in dict.fromkeys((*spec.models, *cfg.judge.models)) if n not in cfg.prices]
        if free:
            log(f"--budget: no [prices] for {', '.join(free)}; their requests are not counted against the budget")
    lanes: list[Lane] = []
    writers: list[JsonlWriter] = []
    subs = subtasks(spec)
    from engine.requery import make_requery, requery_limits

    requery_n = requery_limits(subs, spec.options)
    by_key = {s.key: s for s in subs}
    judge_names = judge_plan(cfg, subs)
    targets = () if judge_only else spec.models
    if partition is not None:  # a shard runs only its own local models (and its part of the others)
        targets = tuple(n for n in targets if partition.has_model(n, shard.index))
    empty: ItemFactory = lambda: iter(())
    judge_done: dict[str, set[int]] = {}
    by_name: dict[str, Lane] = {}
    lane_cls: Any = Lane
    ray_ctx = None
    if backend == "ray":  # each lane's requests run in a Ray actor; records still come here
        import functools

        from engine.run.ray import RayContext, RemoteLane

        ray_ctx = RayContext(ray_address, log, log_dir)
        ray_ctx.connect()
        lane_cls = functools.partial(RemoteLane, ray_ctx=ray_ctx)
    for name in dict.fromkeys((*targets, *judge_names)):
        if name not in adapters:
            adapters[name] = make_adapter(name, cfg.models[name], log_dir, progress=log)
        path = out / "responses" / f"{name}{sfx}.jsonl"
        scan = await asyncio.to_thread(scan_responses, path, drop_errors=retry_errors and name in targets)
        if scan.torn_bytes:
            log(f"{path}: cut a torn last line ({scan.torn_bytes} bytes) left by an interrupted run")
        if shard is not None:
            scan.done |= await asyncio.to_thread(sharding.merged_done, out / "responses" / f"{name}.jsonl",
                                                 drop_errors=retry_errors and name in targets)
        resp_w = JsonlWriter(path)
        err_w = JsonlWriter(out / "errors" / f"{name}{sfx}.jsonl")
        writers += [resp_w, err_w]
        judge_kw: dict[str, Any] = {}
        if name in judge_names:
            jpath = out / "judgments" / f"{name}{sfx}.jsonl"
            jscan = await asyncio.to_thread(scan_responses, jpath)
            if jscan.torn_bytes:
                log(f"{jpath}: cut a torn last line ({jscan.torn_bytes} bytes) left by an interrupted run")
            if shard is not None:
                jscan.done |= await asyncio.to_thread(sharding.merged_done, out / "judgments" / f"{name}.jsonl",
                                                      drop_errors=False)
            judge_done[name] = jscan.done
            jw = JsonlWriter(jpath)
            writers.append(jw)
            judge_kw = {"judge_queue": asyncio.Queue(), "judgments": jw}
        adapter, server = adapters[name]
        open_server: OpenServer | None = server
        if gpu_pool is not None and name in gpu_pool.need and server is not None:
            servers[name] = {}
            open_server = placed(server, gpu_pool, name, servers[name])
        lane = lane_cls(name, cfg.models[name], adapter, factory if name in targets else empty,
                    samples=spec.samples, done=scan.done, responses=resp_w, errors=err_w, stop=stop,
                    open_server=open_server, budget=budget, price=cfg.prices.get(name),
                    requery=make_requery(name, by_key, requery_n, spec.samples) if name in targets else None,
                    keep=partition.keep(name, shard.index) if partition is not None else None,
                    **judge_kw)
        lane.stats.planned = sum(planned_units.values()) if name in targets else 0
        if name in servers:
            assert gpu_pool is not None
            lane.on_idle = (lambda p=gpu_pool, n=name: p.withdraw(n))
        if partition is not None and name in targets and partition.keep(name, shard.index) is not None:
            lane.stats.planned = await asyncio.to_thread(_unit_count, lane)
        lanes.append(lane)
        by_name[name] = lane
    hub: JudgeHub | None = None
    if judge_names:
        hub = JudgeHub(cfg, subs, {n: by_name[n] for n in judge_names}, judge_done)
        for lane in lanes:
            if lane.name in targets:
                lane.set_record_hook(hub.on_record)
            if lane.name in judge_names:
                lane.set_judge_hooks(hub.on_judgment, hub.on_judge_done)
        await asyncio.to_thread(hub.load_retries, out / "judgments", ("", sfx) if shard is not None else ("",))
        backlog = await asyncio.to_thread(_unjudged, out, spec, factory, hub, shard, partition)
        for rec, item in backlog:
            hub.submit_record(rec, item)
        if backlog:
            log(f"judging {hub.submitted} earlier responses that have no judgment yet")
    for w in writers:
        w.start()

    tasks = [asyncio.create_task(lane.run(), name=f"lane:{lane.name}") for lane in lanes]
    closer = None
    if hub is not None:
        closer = asyncio.create_task(close_when_generated(hub, [by_name[n] for n in targets]))

    def cancel_all() -> None:
        for t in tasks:
            t.cancel()

    def halt_all() -> None:
        for lane in lanes:
            lane.halt()

    interrupt = Interrupt(stop, cfg.run.grace_period_s, cancel_all, log, on_stop=halt_all)
    pool_closer = None
    if gpu_pool is not None:
        async def close_pool_on_stop() -> None:
            # Any run-wide stop (a signal, --budget) means queued local models must not load now.
            await stop.wait()
            gpu_pool.close()

        pool_closer = asyncio.create_task(close_pool_on_stop())
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, interrupt, sig)
    bars = None
    if progress:
        from engine.run.progress import Bars

        bars = Bars(lanes)
        bars.start()
    try:
        await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        if closer is not None:
            closer.cancel()
        if pool_closer is not None:
            pool_closer.cancel()
        if bars is not None:
            await bars.stop()
        for w in writers:
            await w.close()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        if ray_ctx is not None:
            ray_ctx.close()

    # With --backend ray, where each lane's actor ran (node, pid, restarts).
    lane_stats = {lane.name: msgspec.structs.replace(lane.stats.summary(), **getattr(lane, "placement", {}))
                  for lane in lanes}
    interrupted = interrupt.signum is not None
    over_budget = budget is not None and budget.exhausted
    incomplete = [lane.name for lane in lanes if lane.stats.state != "complete" or lane.stats.exhausted]
    status = ("interrupted" if interrupted else "budget" if over_budget
              else "incomplete" if incomplete else "complete")
    infos = {n: opener.info for n, (_, opener) in adapters.items() if opener is not None}
    launched = {n: {**servers.get(n, {}), **infos.get(n, {})} for n in adapters if servers.get(n) or infos.get(n)}
    doc = document.finished(doc, status=status, lanes=lane_stats, budget=budget, ray_address=ray_address,
                            backend=backend, servers=document.servers_doc(gpu_pool, launched))
    sharding.write_state(out, shard, doc)

    for lane in lanes:
        s = lane.stats
        judged = f" + {s.judged} judgments" if s.judged else ""  # ok/fatal count both kinds of request
        line = (f"{lane.name}: {s.state}; {s.done} written this run{judged} ({s.ok} ok, {s.fatal} fatal), "
                f"{s.skipped} already done, {s.exhausted} out of retries, {s.retries} retries, {s.rate_limited} rate-limited")
        log(line)
        if s.message:
            log(f"  {s.message}")
        if isinstance(lane.adapter, ReplaysItems):
            for note in lane.adapter.notes(complete=s.state == "complete"):
                log(f"  {note}")
    if over_budget and not interrupted:
        assert budget is not None
        log(f"stopped: {budget.message}")
        return 3
    if interrupted:
        assert interrupt.signum is not None
        log(f"interrupted: rerun the same command to resume ({out})")
        return 128 + interrupt.signum
    if incomplete:
        log(f"incomplete: lanes {', '.join(incomplete)} left work undone; rerun the same command to retry it")
        return 1
    return 0
