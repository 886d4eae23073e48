"""`run --backend ray`: each lane's requests run in a Ray actor; the driver keeps everything that
makes a run exactly-once.

Design. The driver (this process) keeps what it has with the local backend: item iteration, the
resume scan, the workers of each lane, the judge hub, the budget, re-queries and the single
checkpoint writer per file. What moves into the lane's actor is the lane's `Attempts`: the
adapter (and, for local models, the model server), the lane's limits (adaptive concurrency,
request pacing, token window) and its retries (`LocalAttempts`, unchanged, inside the actor). A
driver worker sends one unit to the actor and gets back that unit's outcome, its failed attempts
and the actor's counters; the driver writes them. So the files, the keys and resume are exactly
those of the local backend.

A dead actor (node lost, process killed: `RayActorError`) is replaced by a new one (up to
`MAX_RESTARTS` per lane) and the units it held are sent again: their records were never written,
so nothing is duplicated; at worst a request is made twice. Other lanes go on meanwhile.

Resources: API lanes ask for no CPU or GPU (they wait on the network); embedded lanes ask for
`threads` CPUs; vLLM lanes for `tensor_parallel_size` GPUs. Every node needs this package
installed (`pip install 'trustmh-engine[ray]'`); an API lane's key goes to its actor with the
actor's arguments (the variable named by `api_key_env`, read on the driver).

run.json `lanes.<model>` gains `node`, `pid` and `actor_restarts`; progress bars name the node.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import os
import socket
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapters import registry
from adapters.registry import make_adapter
from engine.core.clock import LoopClock
from engine.core.config import ModelConfig
from engine.core.errors import EngineError
from engine.core.records import AttemptError, JudgmentRecord, Record
from engine.core.secrets import api_key
from engine.run.attempt import Brakes, LocalAttempts, RunStop, Sink, Spend
from engine.run.ray_connect import RayContext
from engine.run.stats import LaneStats
from engine.run.units import Outcome, Unit

MAX_RESTARTS = 3
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


@dataclass(frozen=True)
class Snapshot:
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
        node = None
        with contextlib.suppress(Exception):  # placement is informational
            import ray

            node = ray.util.get_node_ip_address()
        return {"node": node or socket.gethostname(), "host": socket.gethostname(), "pid": os.getpid()}

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

    async def process(self, unit: Unit) -> tuple[list[AttemptError], Outcome | None, Snapshot]:
        attempts = await self._ready()
        out: list[AttemptError] = []
        _sink.set(out)
        outcome = await attempts.run(unit)
        self._seq += 1
        return out, outcome, Snapshot(self._seq, attempts.stats.copy(), attempts.brakes.halted.is_set())

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


@functools.cache
def _actor_class() -> ActorHandle:
    import ray

    return ray.remote(LaneActor)


def _resources(cfg: ModelConfig) -> dict[str, int]:
    need = registry.entry(cfg.adapter).lane_resources(cfg)
    return {"num_cpus": need.cpus, **({"num_gpus": need.gpus} if need.gpus else {})}


class RayAttempts:
    """A lane's attempts in its Ray actor; the lane itself (walk, writes, judge stage) stays on the
    driver. The actor starts with the lane's first unit: a lane with nothing to do holds no
    resources (a GPU lane with its work done never waits for a GPU)."""

    def __init__(self, name: str, cfg: ModelConfig, errors: Sink, brakes: Brakes, ctx: RayContext, *,
                 spend: Spend | None = None) -> None:
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
        self.restarts = 0
        self._failed = False
        self._placement: dict[str, object] = {}
        self._dead: tuple[type[BaseException], ...] = _actor_errors()
        brakes.on_halt.append(self._halt_actor)

    def placement(self) -> dict[str, object]:
        return dict(self._placement)

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
        self._absorb(incarnation, snap)
        for rec in errors:
            self.errors.put(rec)
        if snap.halted and not self.brakes.halted.is_set():
            self.stats.state = snap.stats.state
            self.stats.message = snap.stats.message
            self.brakes.halt()
        return outcome

    async def _call(self, unit: Unit) -> tuple[list[AttemptError], Outcome | None, Snapshot, int] | None:
        """The actor's answer for `unit`; a dead actor is replaced and the unit sent again (its
        records were never written: nothing is duplicated)."""
        while True:
            actor, inc = self._actor, self._incarnation
            if actor is None or self.brakes.halted.is_set():
                return None
            self.stats.in_flight += 1
            try:
                errors, outcome, snap = await actor.process.remote(unit)
            except self._dead as exc:
                await self._restart(inc, exc)
                continue
            finally:
                self.stats.in_flight -= 1
            return errors, outcome, snap, inc

    async def start_actor(self) -> None:
        env: dict[str, str] = {}
        if self.cfg.api_key_env:
            env[self.cfg.api_key_env] = api_key(self.cfg.api_key_env, self.name) or ""
        opts = {**_resources(self.cfg), "max_concurrency": self.cfg.concurrency() + 8, "max_restarts": 0}
        actor = _actor_class().options(**opts).remote(self.name, self.cfg, str(self._ctx.log_dir), env)
        timeout = max(60.0, self.cfg.options.start_timeout_s())
        try:  # a wall-clock limit on the cluster's scheduling, not a lane timer
            info = await asyncio.wait_for(actor.where.remote(), timeout)
        except TimeoutError:
            raise EngineError(f"lane {self.name}: no Ray node could start its actor within {timeout:.0f} s "
                              f"(needs {_resources(self.cfg)}); check the cluster's free resources") from None
        self._actor = actor
        self._incarnation += 1
        self._placement = {"node": info["node"], "host": info["host"], "pid": info["pid"],
                           "actor_restarts": self.restarts}
        self._ctx.log(f"lane {self.name}: Ray actor on node {info['node']} ({info['host']}, pid {info['pid']})")

    async def _first_start(self) -> None:
        async with self._restart_lock:
            if self._incarnation or self._failed:
                return
            try:
                await self.start_actor()
            except EngineError as err:
                self._failed = True
                self._fail(str(err))

    def _fail(self, message: str) -> None:
        self.stats.state = "failed"
        self.stats.message = message
        self.brakes.halt()

    async def _restart(self, incarnation: int, exc: BaseException) -> None:
        import ray

        async with self._restart_lock:
            if incarnation != self._incarnation or self._actor is None:
                return  # another worker already replaced it (or the lane gave up)
            old, self._actor = self._actor, None
            with contextlib.suppress(Exception):  # it is dead already
                ray.kill(old)
            self.restarts += 1
            if self.restarts > MAX_RESTARTS:
                self._fail(f"lane {self.name}: its Ray actor died {self.restarts} times "
                           f"({type(exc).__name__}); rerun to resume")
                return
            self._ctx.log(f"lane {self.name}: Ray actor died ({type(exc).__name__}); restarting it "
                          f"({self.restarts}/{MAX_RESTARTS}); its units in flight are sent again")
            try:
                await self.start_actor()
            except EngineError as err:
                self._fail(str(err))

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
