"""Lanes in-process, on virtual time: a Lane built directly with LocalAttempts and a VirtualClock,
against the real aiohttp fake server in this loop (retries, auth stop, deadline, 429s) or a scripted
adapter (the judge stage, the budget). No subprocess and no real sleeps: a backoff of minutes takes
milliseconds, and the waits the lane chose are checked exactly."""

from __future__ import annotations

import asyncio
import random
import signal
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from adapters.registry import make_adapter
from engine.config import Config, PriceConfig, parse_config
from engine.core.adapter import Adapter, AdapterError
from engine.core.clock import VirtualClock
from engine.core.config import ModelConfig
from engine.core.records import AttemptError, GenParams, Item, JudgmentRecord, Message, Record, Response, Usage
from engine.core.rundoc import RunSpec
from engine.core.subtask import Subtask
from engine.costs import Budget
from engine.items import ItemFactory, WorkItem, pillar_source
from engine.run.attempt import Brakes, LocalAttempts, RunStop, Spend
from engine.run.judge import JudgeHub, close_when_generated
from engine.run.lane import Lane, LaneIO, LanePolicy
from engine.run.signals import Interrupt
from engine.spec import subtasks
from engine.testing.fakeserver import SERVER_KEY, FakeServer, start_in_loop


class ListSink:
    def __init__(self) -> None:
        self.records: list[Record | JudgmentRecord | AttemptError] = []

    def put(self, record: Record | JudgmentRecord | AttemptError) -> None:
        self.records.append(record)


def items(n: int) -> ItemFactory:
    def factory() -> Iterator[WorkItem]:
        for i in range(n):
            yield WorkItem(Item(id=f"q{i}", pillar="custom", subtask="custom",
                                messages=(Message(role="user", content=f"question number {i}"),)), None)
    return factory


def model(url: str, **kw: object) -> ModelConfig:
    body = {"adapter": "openai", "base_url": url, "model": "fake-model", **kw}
    return parse_config({"models": {"m": body}}, "test").models["m"]


class Rig:
    """One lane with list sinks, on a virtual clock."""

    def __init__(self, cfg: ModelConfig, adapter: Adapter, n_items: int, *, clock: VirtualClock | None = None,
                 budget: Budget | None = None) -> None:
        self.clock = clock or VirtualClock()
        self.stop = RunStop()
        self.responses, self.errors = ListSink(), ListSink()
        spend = None
        if budget is not None:
            spend = Spend(budget, PriceConfig(input_per_mtok=1000.0, output_per_mtok=1000.0), "m", self.stop)
        self.attempts = LocalAttempts("m", cfg, adapter, self.errors, Brakes(self.stop), clock=self.clock,
                                      spend=spend, rng=random.Random(7))
        self.lane = Lane("m", cfg, adapter, items(n_items), LaneIO(self.responses, self.errors), self.attempts)

    @property
    def attempt_errors(self) -> list[AttemptError]:
        return [e for e in self.errors.records if isinstance(e, AttemptError)]

    async def run_with_sockets(self, real_limit_s: float = 20.0) -> None:
        """Drives the lane on virtual time while real sockets work: time jumps to the next sleeper's
        wake-up only when no request is in flight, so a response is never overtaken by a timer."""
        task = asyncio.ensure_future(self.lane.run())
        give_up = time.monotonic() + real_limit_s
        while not task.done():
            await self.clock.settle()
            wake = self.clock.next_wakeup()
            if task.done():
                break
            if self.lane.stats.in_flight == 0 and wake is not None:
                await self.clock.advance(max(0.0, wake - self.clock.now()))
            else:
                await asyncio.sleep(0.001)
            assert time.monotonic() < give_up, "lane did not finish"
        task.result()


def with_server(body: Callable[[FakeServer, str], Awaitable[None]]) -> None:
    """Runs `body` on a fresh loop with the fake server serving in that same loop."""
    async def main() -> None:
        runner, url = await start_in_loop({"log": False})
        try:
            await body(runner.app[SERVER_KEY], url)
        finally:
            await runner.cleanup()
    asyncio.run(main())


def _adapter(cfg: ModelConfig, tmp_path: Path) -> Adapter:
    return make_adapter("m", cfg, tmp_path).adapter


def test_retries_back_off_on_virtual_time(tmp_path: Path) -> None:
    with_server(lambda srv, url: _retries_back_off_on_virtual_time(srv, url, tmp_path))


async def _retries_back_off_on_virtual_time(srv: FakeServer, url: str, tmp_path: Path) -> None:
    srv.set_config(fail_first_n=2)  # 503, 503, then the answer
    cfg = model(url, backoff_base_s=8.0, backoff_max_s=120.0, max_concurrency=1)
    rig = Rig(cfg, _adapter(cfg, tmp_path), 1)
    t0 = time.monotonic()
    await rig.run_with_sockets()
    assert time.monotonic() - t0 < 5  # 12+ s of backoff took no real time
    [rec] = rig.responses.records
    assert isinstance(rec, Record) and rec.response is not None and rec.attempts == 3
    assert [(e.attempt, e.error.status, e.final) for e in rig.attempt_errors] == [(1, 503, False), (2, 503, False)]
    # Equal jitter: attempt k waits within [base*2^(k-1)/2, base*2^(k-1)].
    first, second = rig.clock.sleeps
    assert 4.0 <= first <= 8.0 and 8.0 <= second <= 16.0
    assert rig.clock.now() == pytest.approx(first + second)
    assert rig.lane.stats.state == "complete" and rig.lane.stats.retries == 2


def test_auth_failures_stop_the_lane(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INPROC_KEY", "wrong")
    with_server(lambda srv, url: _auth_failures_stop_the_lane(srv, url, tmp_path))


async def _auth_failures_stop_the_lane(srv: FakeServer, url: str, tmp_path: Path) -> None:
    srv.set_config(require_key="right")
    cfg = model(url, api_key_env="INPROC_KEY", auth_failures_to_stop=3, max_concurrency=1)
    rig = Rig(cfg, _adapter(cfg, tmp_path), 20)
    await rig.run_with_sockets()
    s = rig.lane.stats
    assert s.state == "stopped" and s.message is not None and "INPROC_KEY" in s.message
    assert srv.stats()["requests"] == 3 and not rig.responses.records
    # Not final: a fixed key on the next run retries these items.
    assert [e.final for e in rig.attempt_errors] == [False, False, False]


def test_deadline_ends_the_retries(tmp_path: Path) -> None:
    with_server(lambda srv, url: _deadline_ends_the_retries(srv, url, tmp_path))


async def _deadline_ends_the_retries(srv: FakeServer, url: str, tmp_path: Path) -> None:
    srv.set_config(p_5xx=1.0)
    cfg = model(url, deadline_s=30.0, backoff_base_s=4.0, backoff_max_s=4.0, max_attempts=1000, max_concurrency=1)
    rig = Rig(cfg, _adapter(cfg, tmp_path), 1)
    await rig.run_with_sockets()
    errs = rig.attempt_errors
    assert errs[-1].final and not any(e.final for e in errs[:-1])
    assert not rig.responses.records and rig.lane.stats.exhausted == 1
    # Each wait is 2..4 s; the last attempt is the one whose next wait would pass the deadline.
    assert rig.clock.now() < 30.0 and 7 <= len(errs) <= 16
    assert rig.lane.stats.state == "incomplete"


def test_429s_wait_at_least_retry_after_and_halve_concurrency(tmp_path: Path) -> None:
    with_server(lambda srv, url: _429s_wait(srv, url, tmp_path))


async def _429s_wait(srv: FakeServer, url: str, tmp_path: Path) -> None:
    srv.set_config(p_429=0.3, retry_after_s=20.0, seed=3)
    cfg = model(url, max_concurrency=8, max_attempts=50, backoff_base_s=0.5)
    rig = Rig(cfg, _adapter(cfg, tmp_path), 24)
    await rig.run_with_sockets()
    s = rig.lane.stats
    assert s.state == "complete" and len(rig.responses.records) == 24
    n429 = srv.stats()["n_429"]
    assert n429 > 0 and s.rate_limited == n429 and s.retries == n429
    assert all(d >= 20.0 for d in rig.clock.sleeps)  # never sooner than Retry-After
    assert rig.attempts.limit.limit < 8  # AIMD: halved on the 429s, regrowing by one per streak


# -- a scripted adapter: no sockets, so the clock runs on its own ---------------------------------------


class Scripted:
    """An adapter whose replies are a function of the request; each send takes `latency` virtual s."""

    def __init__(self, clock: VirtualClock, reply: str = "ok", latency: float = 1.0) -> None:
        self.clock = clock
        self.reply = reply
        self.latency = latency
        self.sent: list[dict[str, object]] = []

    def build_body(self, messages: tuple[Message, ...], params: GenParams) -> dict[str, object]:
        return {"messages": [m.content for m in messages], "max_tokens": params.max_tokens}

    async def send(self, body: dict[str, object], timeout: float) -> Response:
        self.sent.append(body)
        await self.clock.sleep(self.latency)
        if self.reply == "400":
            raise AdapterError("fatal", "scripted 400", status=400)
        return Response(text=self.reply, finish_reason="stop", usage=Usage(prompt_tokens=10, completion_tokens=5),
                        latency_s=self.latency)

    async def aclose(self) -> None:
        return None


def test_fatal_error_is_a_final_record_not_retried() -> None:
    clock = VirtualClock()
    cfg = model("http://unused", max_concurrency=2)
    adapter = Scripted(clock, reply="400")
    rig = Rig(cfg, adapter, 3, clock=clock)
    asyncio.run(clock.run(rig.lane.run()))
    recs = [r for r in rig.responses.records if isinstance(r, Record)]
    assert len(recs) == 3 and all(r.error is not None and r.error.status == 400 and r.attempts == 1 for r in recs)
    assert rig.lane.stats.fatal == 3 and len(adapter.sent) == 3 and rig.lane.stats.state == "complete"


def test_budget_stops_the_run_and_keeps_what_is_done() -> None:
    clock = VirtualClock()
    cfg = model("http://unused", max_concurrency=1, max_tokens=100)
    budget = Budget(0.5)  # each request reserves ~0.1 USD at 1000 USD/Mtok, and spends 0.015
    rig = Rig(cfg, Scripted(clock), 100, clock=clock, budget=budget)
    asyncio.run(clock.run(rig.lane.run()))
    assert budget.exhausted and rig.stop.is_set()
    assert rig.lane.stats.state == "interrupted" and 0 < len(rig.responses.records) < 100
    assert budget.spent <= budget.limit


def _judge_setup(n: int) -> tuple[Config, list[Subtask], ItemFactory]:
    raw = {"models": {"t": {"adapter": "openai", "base_url": "http://unused", "model": "x", "max_concurrency": 2},
                      "j": {"adapter": "openai", "base_url": "http://unused", "model": "y", "max_concurrency": 2}},
           "judge": {"models": ["j"]}}
    cfg = parse_config(raw, "test")
    spec = RunSpec(output="unused", models=("t",), subtasks=("safety/jailbreak",), limit=n)
    return cfg, subtasks(spec), pillar_source(spec.subtasks, None, n, {})


def test_judge_stage_overlaps_generation_and_closes() -> None:
    clock = VirtualClock()
    cfg, subs, factory = _judge_setup(6)
    tcfg, jcfg = cfg.models["t"], cfg.models["j"]
    stop = RunStop()
    tsink, terr, jsink, jerr = ListSink(), ListSink(), ListSink(), ListSink()
    target_adapter, judge_adapter = Scripted(clock, "I cannot help with that.", 1.0), Scripted(clock, "yes", 0.5)
    target = Lane("t", tcfg, target_adapter, factory, LaneIO(tsink, terr),
                  LocalAttempts("t", tcfg, target_adapter, terr, Brakes(stop), clock=clock))
    judge = Lane("j", jcfg, judge_adapter, lambda: iter(()), LaneIO(jsink, jerr, jsink, asyncio.Queue()),
                 LocalAttempts("j", jcfg, judge_adapter, jerr, Brakes(stop), clock=clock))
    hub = JudgeHub(cfg, subs, {"j": judge}, {"j": set()}, b"salt")
    target.hooks.on_record = hub.on_record
    judge.hooks.on_judgment = hub.on_judgment
    judge.hooks.on_judge_done = hub.on_judge_done
    asyncio.run(clock.run(target.run(), judge.run(), close_when_generated(hub, [target])))
    responses = [r for r in tsink.records if isinstance(r, Record)]
    judgments = [r for r in jsink.records if isinstance(r, JudgmentRecord)]
    assert len(responses) == 6 and target.stats.state == "complete" and judge.stats.state == "complete"
    assert {j.response_key for j in judgments if j.try_ == 0} == {r.key for r in responses}
    # Overlap: 6 responses at 2 at a time take 3 s; judging each 0.5 s as it arrives ends at 3.5 s,
    # not 3 s + 3 x 0.5 s after the last response.
    assert clock.now() == pytest.approx(3.5)


def test_a_server_nobody_reaches_stops_the_lane(tmp_path: Path) -> None:
    async def main() -> None:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        sock.close()  # nothing listens there: every attempt is refused
        cfg = model(f"http://127.0.0.1:{port}/v1", max_attempts=3, backoff_base_s=5.0, max_concurrency=1)
        rig = Rig(cfg, _adapter(cfg, tmp_path), 50)
        await rig.run_with_sockets()
        s = rig.lane.stats
        assert s.state == "stopped" and s.message is not None and "base_url" in s.message
        # One item's attempts, then the lane stops instead of retrying 49 more items for hours.
        assert len(rig.attempt_errors) == 3 and rig.attempt_errors[-1].final and s.exhausted == 1
        assert len(rig.clock.sleeps) == 2
    asyncio.run(main())


def test_first_signal_stops_dispatch_and_the_grace_period_cancels_in_flight() -> None:
    clock = VirtualClock()
    cfg = model("http://unused", max_concurrency=2)
    rig = Rig(cfg, Scripted(clock, latency=100.0), 10, clock=clock)
    lines: list[str] = []

    def stop_run() -> None:
        rig.stop.set()
        rig.lane.halt()

    interrupt = Interrupt(stop_run, grace=30.0, log=lines.append)

    async def main() -> None:
        task = asyncio.ensure_future(rig.lane.run())
        grace = asyncio.ensure_future(interrupt.enforce_grace(clock, task.cancel))
        await clock.advance(10.0)
        interrupt(signal.SIGINT)
        await clock.run(asyncio.wait({task}), until=1000.0)
        grace.cancel()
        assert task.cancelled()

    asyncio.run(main())
    # Two requests were in flight (100 s each); the grace period (30 s) ended them at t = 40 s.
    assert clock.now() == pytest.approx(40.0)
    assert rig.lane.stats.state == "interrupted" and not rig.responses.records
    assert interrupt.signum == signal.SIGINT and "SIGINT: no new requests" in lines[0]


def _wired(hub: JudgeHub, target: Lane, judge: Lane) -> None:
    """The hooks engine/run/lanes.py sets: records to the hub, the gate on generation."""
    target.hooks.on_record = hub.on_record
    target.hooks.gate = hub.gate
    judge.hooks.on_judgment = hub.on_judgment
    judge.hooks.on_judge_done = hub.on_judge_done
    judge.hooks.on_end = lambda: hub.judge_ended(judge.name)


def _slow_judge_rig(clock: VirtualClock, samples: int) -> tuple[Config, list[Subtask], Lane, Lane, ListSink, ListSink]:
    cfg, subs, factory = _judge_setup(24)
    tcfg, jcfg = cfg.models["t"], cfg.models["j"]
    stop = RunStop()
    tsink, terr, jsink, jerr = ListSink(), ListSink(), ListSink(), ListSink()
    target_adapter, judge_adapter = Scripted(clock, "I cannot help with that.", 0.1), Scripted(clock, "yes", 1.0)
    target = Lane("t", tcfg, target_adapter, factory, LaneIO(tsink, terr),
                  LocalAttempts("t", tcfg, target_adapter, terr, Brakes(stop), clock=clock),
                  policy=LanePolicy(samples=samples))
    judge = Lane("j", jcfg, judge_adapter, lambda: iter(()), LaneIO(jsink, jerr, jsink, asyncio.Queue()),
                 LocalAttempts("j", jcfg, judge_adapter, jerr, Brakes(stop), clock=clock))
    return cfg, subs, target, judge, tsink, jsink


def test_a_slow_judge_holds_generation_back_with_a_bounded_backlog() -> None:
    """Targets 20x faster than the judge: without backpressure all 240 judge units would wait in
    memory; with a backlog of 4 at most 4 + the target's 2 workers' worth are held at once."""
    clock = VirtualClock()
    cfg, subs, target, judge, tsink, jsink = _slow_judge_rig(clock, samples=10)
    hub = JudgeHub(cfg, subs, {"j": judge}, {"j": set()}, b"salt", backlog=4)
    _wired(hub, target, judge)
    asyncio.run(clock.run(target.run(), judge.run(), close_when_generated(hub, [target])))
    responses = [r for r in tsink.records if isinstance(r, Record)]
    judgments = [r for r in jsink.records if isinstance(r, JudgmentRecord)]
    assert len(responses) == 240 and target.stats.state == "complete" and judge.stats.state == "complete"
    assert {j.response_key for j in judgments} == {r.key for r in responses}
    assert 4 <= hub.peak <= 4 + 2, hub.peak
    assert hub.gate.is_set()


def test_a_judge_that_stops_does_not_hold_generation_forever() -> None:
    clock = VirtualClock()
    cfg, subs, target, judge, tsink, jsink = _slow_judge_rig(clock, samples=10)
    hub = JudgeHub(cfg, subs, {"j": judge}, {"j": set()}, b"salt", backlog=4)
    _wired(hub, target, judge)

    async def stop_judge() -> None:
        await clock.sleep(20.0)
        judge.halt()

    asyncio.run(clock.run(target.run(), judge.run(), close_when_generated(hub, [target]), stop_judge()))
    responses = [r for r in tsink.records if isinstance(r, Record)]
    assert len(responses) == 240 and target.stats.state == "complete"
    assert 0 < len([r for r in jsink.records if isinstance(r, JudgmentRecord)]) < 240


def test_a_lane_that_judges_its_own_responses_is_not_held_by_itself() -> None:
    """One model as target and judge: its workers wait for room by doing the judge work."""
    clock = VirtualClock()
    raw = {"models": {"t": {"adapter": "openai", "base_url": "http://unused", "model": "x", "max_concurrency": 2}},
           "judge": {"models": ["t"]}}
    cfg = parse_config(raw, "test")
    spec = RunSpec(output="unused", models=("t",), subtasks=("safety/jailbreak",), limit=24)
    subs = subtasks(spec)
    stop = RunStop()
    sink, err = ListSink(), ListSink()
    adapter = Scripted(clock, "yes", 0.5)
    lane = Lane("t", cfg.models["t"], adapter, pillar_source(spec.subtasks, None, 24, {}),
                LaneIO(sink, err, sink, asyncio.Queue()),
                LocalAttempts("t", cfg.models["t"], adapter, err, Brakes(stop), clock=clock),
                policy=LanePolicy(samples=5))
    hub = JudgeHub(cfg, subs, {"t": lane}, {"t": set()}, b"salt", backlog=2)
    _wired(hub, lane, lane)
    asyncio.run(clock.run(lane.run(), close_when_generated(hub, [lane])))
    responses = [r for r in sink.records if isinstance(r, Record)]
    judgments = [r for r in sink.records if isinstance(r, JudgmentRecord)]
    assert len(responses) == 120 and len(judgments) == 120 and lane.stats.state == "complete"
    assert hub.peak <= 2 + 2, hub.peak


def test_earlier_responses_of_a_resumed_run_are_fed_within_the_backlog() -> None:
    """A resumed run's 120 responses without a judgment go to the judge as the backlog allows, even
    before the judge runs: never more than the backlog in memory (a fed iterator, not a list)."""
    clock = VirtualClock()
    cfg, subs, target, judge, _, jsink = _slow_judge_rig(clock, samples=1)
    hub = JudgeHub(cfg, subs, {"j": judge}, {"j": set()}, b"salt", backlog=4)
    _wired(hub, target, judge)
    items = [w.item for w in pillar_source(("safety/jailbreak",), None, 24, {})()]
    earlier = [(Record(key=f"{i.id}-{s:03d}".ljust(32, "0"), model="t", pillar=i.pillar, subtask=i.subtask,
                       item_id=i.id, sample=s, attempts=1, response=Response(text="I cannot help with that.", finish_reason="stop")), i)
               for i in items for s in range(5)]
    hub.earlier = iter(earlier)
    done = asyncio.Event()

    async def work() -> None:
        await asyncio.gather(judge.run(), close_when_generated(hub, []))
        done.set()

    async def ticker() -> None:
        # feed_earlier reads its batches in a thread, which the virtual clock cannot see: a sleeper
        # that always wakes keeps it from calling that wait a deadlock.
        while not done.is_set():
            await clock.sleep(0.25)

    asyncio.run(clock.run(work(), ticker()))
    judgments = [r for r in jsink.records if isinstance(r, JudgmentRecord)]
    assert {j.response_key for j in judgments} == {r.key for r, _ in earlier} and len(judgments) == 120
    assert hub.peak <= 4, hub.peak
