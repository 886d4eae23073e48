"""`run --backend ray`: each lane's requests run in a Ray actor; the driver keeps everything that
makes a run exactly-once.

Design. The driver (this process) keeps what it has with the local backend: item iteration, the
resume scan, the workers of each lane, the judge hub, the budget, re-queries and the single
checkpoint writer per file. What moves into the lane's actor is the lane's `Attempts`: the
adapter (and, for local models, the model server), the lane's limits (adaptive concurrency,
request pacing, token window) and its retries (`LocalAttempts`, unchanged, inside the actor). A
driver worker hands its unit over and gets back that unit's outcome and failed attempts (the
units of one turn of the driver's loop travel in one actor call, `BATCH_MAX` at most, with the
actor's counters coming back once per call); the driver writes them. So the files, the keys and resume are exactly
those of the local backend.

A lost actor (its process killed, its node lost: `ActorDiedError`, `ActorUnavailableError`, ...)
is replaced and the units it held are sent again: their records were never written, so nothing is
duplicated; at worst a request is made twice. Other lanes go on meanwhile. Replacing is retried
until an actor answers, up to `ray_max_restarts` tries per lane, each after a short backoff on the
lane's clock: when a node is lost, the first error comes at once but Ray declares the node dead
only after its health checks fail (~15 s here), so a replacement placed by Ray alone can land on
the dead node and die before it answers. Each replacement is steered (a soft node affinity) to an
alive node where none of this lane's actors was lost; every loss and its cause count in run.json.

Resources: API lanes ask for no CPU or GPU (they wait on the network); embedded lanes ask for
`threads` CPUs; vLLM lanes for `tensor_parallel_size` GPUs. Every node needs this package
installed (`pip install 'trustmh-engine[ray]'`); an API lane's key goes to its actor with the
actor's arguments (the variable named by `api_key_env`, read on the driver).

run.json `lanes.<model>` gains `node` (IP), `node_id` (Ray's), `pid`, `actor_restarts` and
`restart_causes`; progress bars name the node; Ray's full text of each loss goes to logs/ray.log.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import os
import socket
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import msgspec

from adapters import registry
from adapters.registry import make_adapter
from engine.core.clock import Clock, LoopClock
from engine.core.config import ModelConfig
from engine.core.errors import EngineError
from engine.core.records import AttemptError, JudgmentRecord, Record
from engine.core.secrets import api_key
from engine.run.attempt import Brakes, LocalAttempts, RunStop, Sink, Spend
from engine.run.ray_connect import RayContext, pick_node
from engine.run.stats import LaneStats
from engine.run.units import Outcome, Unit

# Units of one lane that are ready in the same turn of the driver's loop go to the actor in one
# call, at most this many: a Ray call costs far more CPU than a unit, and what frees a lane's
# workers (a batch's answers) frees them together, so batches form by themselves. The batch's
# answers come back together: a slow unit holds its batch's workers (at most BATCH_MAX - 1) until
# it ends.
BATCH_MAX = 16
RESTART_BACKOFF_S = (0.5, 1.0, 2.0, 4.0)  # before the 1st, 2nd, ... replacement (the last repeats)
# Ray has no type stubs: an actor class and its handles are typed as what they are, opaque.
ActorHandle = Any


def _actor_errors() -> tuple[type[BaseException], ...]:
    import ray.exceptions as rex

    errs: list[type[BaseException]] = [rex.RayActorError]
    for name in ("ActorUnavailableError", "ActorDiedError", "WorkerCrashedError", "NodeDiedError"):
        cls = getattr(rex, name, None)
        if isinstance(cls, type):
            errs.append(cls)
    return tuple(errs)


# -- inside the actor --------------------------------------------------------------------------------

_sink: contextvars.ContextVar[list[AttemptError]] = contextvars.ContextVar("trustmh_lane_sink")


class _Sink:
    """Stands in for the lane's errors writer inside the actor: the failed attempts of one unit go
    back to the driver with that unit's outcome (each actor call runs in its own task and context)."""

    def put(self, record: Record | JudgmentRecord | AttemptError) -> None:
        assert isinstance(record, AttemptError)
        _sink.get().append(record)


class Snapshot(msgspec.Struct, frozen=True):
    """The actor's attempt counters after one unit (seq orders snapshots that cross on the way)."""

    seq: int
    stats: LaneStats
    halted: bool


class LaneActor:
    """One lane's attempts (wrapped with ray.remote at run time: Ray stays optional)."""

    def __init__(self, name: str, cfg: ModelConfig, log_dir: str, env: dict[str, str]) -> None:
        os.environ.update(env)
        self.name = name
        self.cfg = cfg
        self.log_dir = Path(log_dir)
        self._attempts: LocalAttempts | None = None
        self._server_cm: AbstractAsyncContextManager[object] | None = None
        self._opening: asyncio.Lock | None = None
        self._seq = 0

    def where(self) -> dict[str, object]:
        node, node_id = None, ""
        with contextlib.suppress(Exception):  # placement is informational
            import ray

            node = ray.util.get_node_ip_address()
            node_id = ray.get_runtime_context().get_node_id()
        return {"node": node or socket.gethostname(), "node_id": node_id, "host": socket.gethostname(),
                "pid": os.getpid()}

    async def _ready(self) -> LocalAttempts:
        if self._attempts is not None:
            return self._attempts
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            if self._attempts is not None:
                return self._attempts
            adapter, open_server = make_adapter(self.name, self.cfg, self.log_dir)
            attempts = LocalAttempts(self.name, self.cfg, adapter, _Sink(), Brakes(RunStop()), clock=LoopClock())
            if open_server is not None:
                cm = open_server(adapter)
                await cm.__aenter__()
                self._server_cm = cm
            self._attempts = attempts
            return attempts

    async def process(self, units: list[Unit]) -> tuple[list[tuple[list[AttemptError], Outcome | None]], Snapshot]:
        """Each unit's failed attempts and outcome (the units run at once, each in its own task),
        and the counters after them."""
        attempts = await self._ready()

        async def one(unit: Unit) -> tuple[list[AttemptError], Outcome | None]:
            out: list[AttemptError] = []
            _sink.set(out)  # this task's own context
            return out, await attempts.run(unit)

        results = await asyncio.gather(*(one(u) for u in units))
        self._seq += 1
        return list(results), Snapshot(self._seq, attempts.stats.copy(), attempts.brakes.halted.is_set())

    def halt(self) -> None:
        if self._attempts is not None:
            self._attempts.brakes.halt()

    async def shutdown(self) -> None:
        if self._server_cm is not None:
            cm, self._server_cm = self._server_cm, None
            await cm.__aexit__(None, None, None)
        if self._attempts is not None:
            await self._attempts.adapter.aclose()


# -- on the driver ------------------------------------------------------------------------------------


Answer = tuple[list[AttemptError], Outcome | None, Snapshot | None]  # one unit's, from a batch


def _retrieved(fut: asyncio.Future[Answer]) -> None:
    # A worker cancelled while its unit was away never reads the answer: nor must asyncio complain.
    if not fut.cancelled():
        fut.exception()


@functools.cache
def _actor_class() -> ActorHandle:
    import ray

    return ray.remote(LaneActor)


def _resources(cfg: ModelConfig) -> dict[str, object]:
    need = registry.entry(cfg.adapter).lane_resources(cfg)
    return {"num_cpus": need.cpus, **({"num_gpus": need.gpus} if need.gpus else {}),
            **({"resources": dict(cfg.ray_resources)} if cfg.ray_resources else {})}


def _need(cfg: ModelConfig) -> dict[str, float]:
    """The lane's resources in Ray's node-totals names."""
    need = registry.entry(cfg.adapter).lane_resources(cfg)
    return {"CPU": need.cpus, **({"GPU": need.gpus} if need.gpus else {}), **cfg.ray_resources}


class RayAttempts:
    """A lane's attempts in its Ray actor; the lane itself (walk, writes, judge stage) stays on the
    driver. The actor starts with the lane's first unit: a lane with nothing to do holds no
    resources (a GPU lane with its work done never waits for a GPU)."""

    def __init__(self, name: str, cfg: ModelConfig, errors: Sink, brakes: Brakes, ctx: RayContext, *,
                 spend: Spend | None = None, clock: Clock | None = None) -> None:
        self.name = name
        self.cfg = cfg
        self.errors = errors
        self.brakes = brakes
        self.spend = spend
        self.stats = LaneStats()
        self._ctx = ctx
        self._actor: ActorHandle | None = None
        self._incarnation = 0
        self._snaps: dict[int, Snapshot] = {}
        self._restart_lock = asyncio.Lock()
        self.clock = clock or LoopClock()
        self.restarts = 0  # every loss of this lane's actor (each replaced while ray_max_restarts allows)
        self.causes: dict[str, int] = {}  # Ray's error name -> replacements it caused
        self._lost_on: set[str] = set()  # nodes where this lane's actor was lost
        self._failed = False
        self._placement: dict[str, object] = {}
        self._pending: list[tuple[ActorHandle, Unit, asyncio.Future[Answer]]] = []
        self._sending: set[asyncio.Future[None]] = set()
        self._dead: tuple[type[BaseException], ...] = _actor_errors()
        brakes.on_halt.append(self._halt_actor)

    def placement(self) -> dict[str, object]:
        """run.json's `lanes.<model>` additions: where the actor ran, its replacements and their causes."""
        if not self._placement and not self.restarts:
            return {}
        return {**self._placement, "actor_restarts": self.restarts,
                **({"restart_causes": dict(self.causes)} if self.causes else {})}

    async def run(self, unit: Unit) -> Outcome | None:
        if self.brakes.stopping:
            return None
        if self._incarnation == 0:
            await self._first_start()
        reserved = 0.0
        if self.spend is not None:
            got = self.spend.reserve(unit)
            if got is None:
                return None
            reserved = got
        result = None
        try:
            result = await self._call(unit)
        finally:
            if self.spend is not None:
                final = result[1] if result is not None else None
                self.spend.settle(reserved, final.response if final is not None else None)
        if result is None:
            return None
        errors, outcome, snap, incarnation = result
        if snap is not None:
            self._absorb(incarnation, snap)
        for rec in errors:
            self.errors.put(rec)
        if snap is not None and snap.halted and not self.brakes.halted.is_set():
            self.stats.state = snap.stats.state
            self.stats.message = snap.stats.message
            self.brakes.halt()
        return outcome

    async def _call(self, unit: Unit) -> tuple[list[AttemptError], Outcome | None, Snapshot | None, int] | None:
        """The actor's answer for `unit`; a dead actor is replaced and the unit sent again (its
        records were never written: nothing is duplicated)."""
        while True:
            actor, inc = self._actor, self._incarnation
            if actor is None or self.brakes.halted.is_set():
                return None
            self.stats.in_flight += 1
            try:
                errors, outcome, snap = await self._submit(actor, unit)
            except self._dead as exc:
                await self._restart(inc, exc)
                continue
            finally:
                self.stats.in_flight -= 1
            return errors, outcome, snap, inc

    def _submit(self, actor: ActorHandle, unit: Unit) -> asyncio.Future[Answer]:
        """`unit`'s answer, sent with the other units submitted in this turn of the loop."""
        fut: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        fut.add_done_callback(_retrieved)
        self._pending.append((actor, unit, fut))
        if len(self._pending) == 1:
            asyncio.get_running_loop().call_soon(self._flush)
        return fut

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        by_actor: dict[int, list[tuple[ActorHandle, Unit, asyncio.Future[Answer]]]] = {}
        for entry in pending:
            by_actor.setdefault(id(entry[0]), []).append(entry)
        for group in by_actor.values():
            for i in range(0, len(group), BATCH_MAX):
                task = asyncio.ensure_future(self._send(group[i:i + BATCH_MAX]))
                self._sending.add(task)
                task.add_done_callback(self._sending.discard)

    async def _send(self, batch: list[tuple[ActorHandle, Unit, asyncio.Future[Answer]]]) -> None:
        try:
            results, snap = await batch[0][0].process.remote([unit for _, unit, _ in batch])
        except BaseException as exc:  # each unit's worker decides (a lost actor: replace it, send again)
            for _, _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        for i, ((_, _, fut), (errors, outcome)) in enumerate(zip(batch, results, strict=True)):
            if not fut.done():
                fut.set_result((errors, outcome, snap if i == 0 else None))

    async def start_actor(self) -> None:
        """A new actor for this lane, once it answers; raises EngineError when the cluster cannot
        place it in time, and Ray's dead-actor errors when it dies first."""
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        env: dict[str, str] = {}
        if self.cfg.api_key_env:
            env[self.cfg.api_key_env] = api_key(self.cfg.api_key_env, self.name) or ""
        opts = {**_resources(self.cfg), "max_concurrency": self.cfg.concurrency() + 8, "max_restarts": 0}
        if self._lost_on:  # away from where this lane's actors were lost, if another node can hold it
            node = await asyncio.to_thread(pick_node, _need(self.cfg), self._lost_on)
            if node is not None:
                opts["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node_id=node, soft=True)
        actor = _actor_class().options(**opts).remote(self.name, self.cfg, str(self._ctx.log_dir), env)
        timeout = max(60.0, self.cfg.options.start_timeout_s())
        try:  # a wall-clock limit on the cluster's scheduling, not a lane timer
            info = await asyncio.wait_for(actor.where.remote(), timeout)
        except TimeoutError:
            with contextlib.suppress(Exception):  # it may still be scheduled later: it must not linger
                ray.kill(actor)
            raise EngineError(f"lane {self.name}: no Ray node could start its actor within {timeout:.0f} s "
                              f"(needs {_need(self.cfg)}); check the cluster's free resources") from None
        except self._dead:
            with contextlib.suppress(Exception):
                ray.kill(actor)
            raise
        self._actor = actor
        self._incarnation += 1
        self._placement = {"node": info["node"], "host": info["host"], "pid": info["pid"],
                           **({"node_id": info["node_id"]} if info["node_id"] else {})}
        node_id = f"node id {str(info['node_id'])[:8]}, " if info["node_id"] else ""  # one host, many nodes
        self._ctx.log(f"lane {self.name}: Ray actor on node {info['node']} ({node_id}{info['host']}, pid {info['pid']})")

    async def _first_start(self) -> None:
        async with self._restart_lock:
            if self._incarnation or self._failed:
                return
            try:
                await self.start_actor()
            except EngineError as err:
                self._fail(str(err))
            except self._dead as exc:  # lost before it answered: replaced like any lost actor
                await self._replace(exc)

    def _fail(self, message: str) -> None:
        self._failed = True
        self.stats.state = "failed"
        self.stats.message = message
        self.brakes.halt()

    async def _restart(self, incarnation: int, exc: BaseException) -> None:
        import ray

        async with self._restart_lock:
            if incarnation != self._incarnation or self._actor is None:
                return  # another worker already replaced it (or the lane gave up)
            old, self._actor = self._actor, None
            with contextlib.suppress(Exception):  # it is lost already
                ray.kill(old)
            node = self._placement.get("node_id")
            if isinstance(node, str):
                self._lost_on.add(node)
            await self._replace(exc)

    async def _replace(self, exc: BaseException) -> None:
        """Replacement actors until one answers, each try counted (the caller holds the lock)."""
        budget = self.cfg.ray_max_restarts
        while not self.brakes.stopping:
            cause = type(exc).__name__
            self.restarts += 1
            self.causes[cause] = self.causes.get(cause, 0) + 1
            self._ctx.note(f"lane {self.name}: Ray actor lost ({cause}), replacement {self.restarts}/{budget}:\n{exc}")
            if self.restarts > budget:
                self._fail(f"lane {self.name}: its Ray actor was lost {self.restarts} times (last: {cause}; "
                           f"ray_max_restarts = {budget}; Ray's text in logs/ray.log); rerun to resume")
                return
            self._ctx.log(f"lane {self.name}: Ray actor lost ({cause}); starting another ({self.restarts}/{budget}); "
                          "its units in flight are sent again")
            await self.clock.sleep(RESTART_BACKOFF_S[min(self.restarts, len(RESTART_BACKOFF_S)) - 1])
            try:
                await self.start_actor()
                return
            except EngineError as err:
                self._fail(str(err))
                return
            except self._dead as lost:  # placed where Ray had not yet declared the node dead
                exc = lost

    def _absorb(self, incarnation: int, snap: Snapshot) -> None:
        cur = self._snaps.get(incarnation)
        if cur is not None and cur.seq >= snap.seq:
            return
        self._snaps[incarnation] = snap
        self.stats.add_up_attempts([s.stats for s in self._snaps.values()])

    def _halt_actor(self) -> None:
        if self._actor is not None:
            with contextlib.suppress(Exception):  # a dead actor has nothing to stop
                self._actor.halt.remote()

    async def aclose(self) -> None:
        import ray

        actor, self._actor = self._actor, None
        if actor is None:
            return
        with contextlib.suppress(Exception):  # a dead or slow actor is killed anyway
            await asyncio.wait_for(actor.shutdown.remote(), 10)
        with contextlib.suppress(Exception):
            ray.kill(actor)
