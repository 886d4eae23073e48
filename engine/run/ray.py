"""`run --backend ray`: each lane's requests run in a Ray actor; the driver keeps everything that
makes a run exactly-once.

Design. The driver (this process) keeps what it has with the local backend: item iteration, the
resume scan, the bounded queue and workers of each lane, the judge hub, and the single checkpoint
writer per file. What moves into the lane's actor is the request loop of one unit: the adapter
(and, for local models, the model server), the lane's limits (adaptive concurrency, request
pacing, token window) and its retries (`Lane._process`, unchanged, inside the actor). A driver
worker sends one unit to the actor and gets back that unit's records (final outcome or judgment,
failed attempts) and the actor's lane counters; the driver writes them. So the files, the keys
and resume are exactly those of the local backend.

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
import os
import socket
from collections import Counter
from pathlib import Path
from typing import Any

from adapters import registry
from engine.core.config import ModelConfig
from engine.core.errors import EngineError
from engine.run.lane import Lane
from engine.run.units import Unit

MAX_RESTARTS = 3
EXTRA = "pip install 'trustmh-engine[ray]'"
# Counters the actor keeps (summed over the lane's actors); the driver keeps the others
# (done, judged, skipped, truncated, requeried, planned, in_flight, state).
_ACTOR_FIELDS = ("ok", "fatal", "exhausted", "sent", "retries", "rate_limited", "limit_pushbacks", "wait_s",
                 "busy_s", "prompt_tokens", "completion_tokens", "reasoning_tokens", "cached_tokens")


def require_ray() -> None:
    try:
        import ray  # noqa: F401
    except ImportError:
        raise EngineError(f"--backend ray needs Ray, an optional extra: {EXTRA}") from None


def preflight(address: str | None, timeout: float = 5.0) -> None:
    """Ray is installed and a given cluster address answers: checked before the output directory
    is touched (ray.init on a wrong address retries for minutes)."""
    require_ray()
    if not address or address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise EngineError(f"--ray-address {address}: expected HOST:PORT (or ray://HOST:PORT, auto)")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise EngineError(f"--ray-address {address}: no Ray cluster answers there ({exc.strerror or exc}); "
                          "check the address (ray status on the head node) or RAY_ADDRESS") from None


def _actor_errors() -> tuple[type[BaseException], ...]:
    import ray.exceptions as rex

    errs: list[type[BaseException]] = [rex.RayActorError]
    for name in ("ActorUnavailableError", "ActorDiedError", "WorkerCrashedError", "NodeDiedError"):
        cls = getattr(rex, name, None)
        if isinstance(cls, type):
            errs.append(cls)
    return tuple(errs)


# -- inside the actor --------------------------------------------------------------------------------

_sink: contextvars.ContextVar[list[Any]] = contextvars.ContextVar("trustmh_lane_sink")


class _Sink:
    """Stands in for the lane's JSONL writers inside the actor: what one unit produces goes back
    to the driver with that unit's result (each actor call runs in its own task and context)."""

    def put(self, record: Any) -> None:
        _sink.get().append(record)


class LaneActor:
    """One lane's request loop (wrapped with ray.remote at run time: Ray stays optional)."""

    def __init__(self, name: str, cfg: Any, log_dir: str, env: dict[str, str]) -> None:
        os.environ.update(env)
        self.name = name
        self.cfg = cfg
        self.log_dir = Path(log_dir)
        self._lane: Lane | None = None
        self._server_cm: Any = None
        self._opening: asyncio.Lock | None = None
        self._seq = 0

    def where(self) -> dict[str, Any]:
        node = None
        with contextlib.suppress(Exception):  # placement is informational
            import ray

            node = ray.util.get_node_ip_address()
        return {"node": node or socket.gethostname(), "host": socket.gethostname(), "pid": os.getpid()}

    async def _ready(self) -> Lane:
        if self._lane is not None:
            return self._lane
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            if self._lane is not None:
                return self._lane
            adapter, open_server = registry.make_adapter(self.name, self.cfg, self.log_dir)
            sink = _Sink()
            lane = Lane(self.name, self.cfg, adapter, lambda: iter(()), samples=1, done=set(),
                        responses=sink, errors=sink, judgments=sink, stop=asyncio.Event())  # type: ignore[arg-type]
            if open_server is not None:
                cm = open_server(adapter)
                await cm.__aenter__()
                self._server_cm = cm
            self._lane = lane
            return lane

    def _snapshot(self) -> dict[str, Any]:
        assert self._lane is not None
        s = self._lane.stats
        self._seq += 1
        snap = {f: getattr(s, f) for f in _ACTOR_FIELDS}
        snap.update(seq=self._seq, errors=dict(s.errors), lat=dict(s._lat), state=s.state, message=s.message,
                    halted=self._lane._lane_stop.is_set())
        return snap

    async def process(self, unit: Unit) -> tuple[list[Any], dict[str, Any]]:
        lane = await self._ready()
        out: list[Any] = []
        _sink.set(out)
        await lane._process(unit)
        return out, self._snapshot()

    def halt(self) -> None:
        if self._lane is not None:
            self._lane.halt()

    async def shutdown(self) -> None:
        if self._server_cm is not None:
            cm, self._server_cm = self._server_cm, None
            await cm.__aexit__(None, None, None)
        if self._lane is not None:
            await self._lane.adapter.aclose()


# -- on the driver ------------------------------------------------------------------------------------


def _resources(cfg: ModelConfig) -> dict[str, int]:
    need = registry.entry(cfg.adapter).lane_resources(cfg)
    return {"num_cpus": need.cpus, **({"num_gpus": need.gpus} if need.gpus else {})}


class RayContext:
    """The connection to Ray for one run: started before the lanes, shut down after them."""

    def __init__(self, address: str | None, log: Any, log_dir: Path) -> None:
        self.address = address
        self.log = log
        self.log_dir = log_dir
        self.started_here = False
        self.actor_cls: Any = None

    def connect(self) -> None:
        require_ray()
        import logging

        import ray

        if not ray.is_initialized():
            kw: dict[str, Any] = {"logging_level": logging.ERROR, "log_to_driver": False}
            try:
                if self.address:
                    ray.init(address=self.address, **kw)
                else:  # "local": a new instance, never a stale `ray start` cluster found on this machine
                    ray.init(address="local", include_dashboard=False, **kw)
            except Exception as exc:
                where = f"the Ray cluster at {self.address}" if self.address else "a local Ray instance"
                raise EngineError(f"--backend ray: could not connect to {where} ({type(exc).__name__}: "
                                  f"{str(exc).splitlines()[0] if str(exc) else ''}); check --ray-address / "
                                  "RAY_ADDRESS") from None
            self.started_here = True
        self.actor_cls = ray.remote(LaneActor)
        where = self.address or "a local Ray instance"
        self.log(f"backend ray: {where}, {len(ray.nodes())} node(s)")

    def close(self) -> None:
        if self.started_here:
            import ray

            ray.shutdown()


class RemoteLane(Lane):
    """A Lane whose `_process` runs in its Ray actor; everything else stays in the driver."""

    def __init__(self, *args: Any, ray_ctx: RayContext, **kw: Any) -> None:
        kw["open_server"] = None  # the server runs next to the actor, never in the driver
        super().__init__(*args, **kw)
        self._ctx = ray_ctx
        self._actor: Any = None
        self._incarnation = 0
        self._snaps: dict[int, dict[str, Any]] = {}
        self._restart_lock = asyncio.Lock()
        self.restarts = 0
        self._failed = False
        self.placement: dict[str, Any] = {}
        self.label = self.name
        self._dead: tuple[type[BaseException], ...] = _actor_errors()

    async def start_actor(self) -> None:
        from engine.core.secrets import api_key

        env: dict[str, str] = {}
        if self.cfg.api_key_env:
            env[self.cfg.api_key_env] = api_key(self.cfg.api_key_env, self.name) or ""
        opts = {**_resources(self.cfg), "max_concurrency": self.cfg.concurrency() + 8, "max_restarts": 0}
        actor = self._ctx.actor_cls.options(**opts).remote(self.name, self.cfg, str(self._ctx.log_dir), env)
        timeout = max(60.0, self.cfg.options.start_timeout_s())
        try:
            info = await asyncio.wait_for(actor.where.remote(), timeout)
        except TimeoutError:
            raise EngineError(f"lane {self.name}: no Ray node could start its actor within {timeout:.0f} s "
                              f"(needs {_resources(self.cfg)}); check the cluster's free resources") from None
        self._actor = actor
        self._incarnation += 1
        self.placement = {"node": info["node"], "host": info["host"], "pid": info["pid"],
                          "actor_restarts": self.restarts}
        self.label = f"{self.name}@{info['node']}"
        self._ctx.log(f"lane {self.name}: Ray actor on node {info['node']} ({info['host']}, pid {info['pid']})")

    async def _first_start(self) -> None:
        """The actor starts with the lane's first unit: a lane with nothing to do holds no
        resources (a GPU lane with its work done never waits for a GPU)."""
        async with self._restart_lock:
            if self._incarnation or self._failed:
                return
            try:
                await self.start_actor()
            except EngineError as err:
                self._failed = True
                self.stats.state = "failed"
                self.stats.message = str(err)
                self.halt()

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
                self.stats.state = "failed"
                self.stats.message = (f"lane {self.name}: its Ray actor died {self.restarts} times "
                                      f"({type(exc).__name__}); rerun to resume")
                self.halt()
                return
            self._ctx.log(f"lane {self.name}: Ray actor died ({type(exc).__name__}); restarting it "
                          f"({self.restarts}/{MAX_RESTARTS}); its units in flight are sent again")
            try:
                await self.start_actor()
            except EngineError as err:
                self.stats.state = "failed"
                self.stats.message = str(err)
                self.halt()

    def _absorb(self, incarnation: int, snap: dict[str, Any]) -> None:
        cur = self._snaps.get(incarnation)
        if cur is not None and cur["seq"] >= snap["seq"]:
            return
        self._snaps[incarnation] = snap
        s = self.stats
        for f in _ACTOR_FIELDS:
            setattr(s, f, sum(x[f] for x in self._snaps.values()))
        s.errors = Counter()
        s._lat = Counter()
        for x in self._snaps.values():
            s.errors.update(x["errors"])
            s._lat.update(x["lat"])

    def halt(self) -> None:
        super().halt()
        if self._actor is not None:
            with contextlib.suppress(Exception):  # a dead actor has nothing to stop
                self._actor.halt.remote()

    async def _process(self, unit: Unit) -> None:
        from engine.checkpoint import key_int
        from engine.core.records import AttemptError
        from engine.costs import cost

        if self.stopping:
            return
        if self._incarnation == 0:
            await self._first_start()
        reserved = 0.0
        if self._budget is not None and self._price is not None:
            reserved = cost(self._price, unit.est_tokens - unit.max_out, unit.max_out) or 0.0
            if not self._budget.reserve(reserved, f"{self.name} {unit.item.pillar}/{unit.item.subtask} {unit.item.id}"):
                self._stop.set()
                return
        records: list[Any] = []
        try:
            while True:
                actor, inc = self._actor, self._incarnation
                if actor is None or self._lane_stop.is_set():
                    return
                self.stats.in_flight += 1
                try:
                    records, snap = await actor.process.remote(unit)
                except self._dead as exc:
                    await self._restart(inc, exc)
                    continue
                finally:
                    self.stats.in_flight -= 1
                break
        finally:
            if reserved:
                final = next((r for r in records if not isinstance(r, AttemptError)), None)
                u = final.response.usage if final is not None and final.response is not None else None
                self._budget.settle(reserved, cost(self._price, u.prompt_tokens, u.completion_tokens)
                                    if u is not None else None)
        self._absorb(inc, snap)
        resp = None
        for rec in records:
            if isinstance(rec, AttemptError):
                self._errors.put(rec)
            else:
                self._emit(unit, rec.attempts, rec.response, rec.error)
                resp = rec.response
        if snap["halted"] and not self._lane_stop.is_set():
            self.stats.state = snap["state"]
            self.stats.message = snap["message"]
            Lane.halt(self)
        if resp is not None and self._requery is not None and unit.judge is None:
            again = self._requery(unit, resp)
            if again is not None and key_int(again.key) not in self._done:
                self.stats.requeried += 1
                await self._process(again)

    async def run(self) -> None:
        try:
            await super().run()
        finally:
            await self._stop_actor()

    async def _stop_actor(self) -> None:
        import ray

        actor, self._actor = self._actor, None
        if actor is None:
            return
        with contextlib.suppress(Exception):  # a dead or slow actor is killed anyway
            await asyncio.wait_for(actor.shutdown.remote(), 10)
        with contextlib.suppress(Exception):
            ray.kill(actor)


def placement(lane: Lane) -> dict[str, Any]:
    """run.json extras of a lane: where its actor ran (ray backend), else nothing."""
    p = getattr(lane, "placement", None)
    return dict(p) if p else {}

