"""The circuit breaker per lane (issue 16, item 5; engine/run/breaker.py), in-process on virtual
time against the real fake server: a server that answers every request 500 pauses its lane after
K failures, is probed at doubling intervals and the lane stops with one line naming the server and
the last error while another lane completes; 429s never open it; a server that recovers during
the pause closes it and the lane finishes; a server nobody has reached is not waited for."""

from __future__ import annotations

import asyncio
import re
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from engine.core.clock import VirtualClock
from engine.core.records import Record
from engine.run.progress import Bars, StatusLines
from engine.testing.fakeserver import SERVER_KEY, FakeServer, start_in_loop
from tests.test_lane_inprocess import Rig, _adapter, model


async def drive(clock: VirtualClock, rigs: list[Rig], *others: Awaitable[object], real_limit_s: float = 30.0) -> None:
    """Runs the rigs' lanes (and `others`) on one virtual clock while real sockets work: time
    jumps to the next sleeper only when no request of any lane is in flight."""
    lanes = [asyncio.ensure_future(r.lane.run()) for r in rigs]
    side = [asyncio.ensure_future(o) for o in others]
    give_up = time.monotonic() + real_limit_s
    while not all(t.done() for t in lanes):
        await clock.settle()
        wake = clock.next_wakeup()
        if all(t.done() for t in lanes):
            break
        if sum(r.lane.stats.in_flight for r in rigs) == 0 and wake is not None:
            await clock.advance(max(0.0, wake - clock.now()))
        else:
            await asyncio.sleep(0.001)
        assert time.monotonic() < give_up, "lanes did not finish"
    for t in side:
        t.cancel()
    for t in lanes:
        t.result()


Servers = list[tuple[FakeServer, str]]


def _with_servers(n: int, body: Callable[[Servers], Awaitable[None]]) -> None:
    """Runs `body` on a fresh loop with `n` fake servers serving in that same loop."""
    async def main() -> None:
        started = [await start_in_loop({"log": False}) for _ in range(n)]
        try:
            await body([(runner.app[SERVER_KEY], url) for runner, url in started])
        finally:
            for runner, _ in started:
                await runner.cleanup()
    asyncio.run(main())


BREAKER = {"breaker_failures": 5, "breaker_probe_s": 2.0, "breaker_max_pause_s": 30.0}


def test_a_server_failing_every_request_stops_its_lane_and_the_other_lane_completes(tmp_path: Path) -> None:
    async def body(servers: Servers) -> None:
        (bad, bad_url), (good, good_url) = servers
        bad.set_config(p_5xx=1.0)
        clock = VirtualClock()
        cfg = model(bad_url, max_concurrency=1, max_attempts=1000, deadline_s=10_000.0, backoff_base_s=0.1,
                    backoff_max_s=0.2, **BREAKER)
        broken = Rig(cfg, _adapter(cfg, tmp_path), 200, clock=clock)
        ok_cfg = model(good_url, max_concurrency=2)
        fine = Rig(ok_cfg, _adapter(ok_cfg, tmp_path / "ok"), 20, clock=clock)
        await drive(clock, [broken, fine])

        s = broken.lane.stats
        assert s.state == "stopped" and s.message is not None
        line = s.message
        assert "\n" not in line and bad_url in line and "5xx" in line and "failed 5 times in a row" in line
        assert "Last error: HTTP 50" in line and "rerun" in line
        # K failures open it; probes at +2, +6, +14, +30 s; the next (+62 s) would pass 30 s: stop.
        breaker = broken.attempts.breaker
        assert bad.stats()["requests"] == 5 + 4 and breaker.probes == 4 and breaker.opens == 1
        assert breaker.opened_at is not None and clock.now() - breaker.opened_at == pytest.approx(30.0, abs=0.01)
        # Nothing was recorded for the unit it held: the next run retries it.
        assert not broken.responses.records and not any(e.final for e in broken.attempt_errors)
        assert len(broken.attempt_errors) == 9
        # The other lane never noticed.
        assert fine.lane.stats.state == "complete" and len(fine.responses.records) == 20
        assert good.stats()["requests"] == 20
    _with_servers(2, body)


def test_429s_never_open_the_breaker(tmp_path: Path) -> None:
    async def body(servers: Servers) -> None:
        [(srv, url)] = servers
        srv.set_config(p_429=1.0, retry_after_s=1.0)
        clock = VirtualClock()
        cfg = model(url, max_concurrency=2, max_attempts=12, deadline_s=10_000.0, breaker_failures=3)
        rig = Rig(cfg, _adapter(cfg, tmp_path), 2, clock=clock)
        await drive(clock, [rig])
        assert srv.stats()["requests"] == 24  # 8 times K, every one a 429
        assert rig.attempts.breaker.opens == 0 and not rig.attempts.breaker.counts
        assert rig.lane.stats.state == "incomplete" and rig.lane.stats.exhausted == 2  # retries ran out, no stop
        assert rig.lane.stats.message is None
    _with_servers(1, body)


def test_a_server_that_recovers_during_the_pause_closes_the_breaker(tmp_path: Path) -> None:
    async def body(servers: Servers) -> None:
        [(srv, url)] = servers
        srv.set_config(p_malformed=1.0)  # 200s whose body is not a chat completion
        clock = VirtualClock()
        cfg = model(url, max_concurrency=4, max_attempts=1000, deadline_s=10_000.0, backoff_base_s=0.1,
                    backoff_max_s=0.2, **BREAKER)
        rig = Rig(cfg, _adapter(cfg, tmp_path), 30, clock=clock)

        async def repair() -> None:
            await clock.sleep(5.0)
            srv.set_config(p_malformed=0.0)
        await drive(clock, [rig], repair())

        breaker = rig.attempts.breaker
        assert breaker.opens == 1 and not breaker.is_open and not breaker.counts
        # Open at about 0.1 s (five malformed bodies from four workers), probe at +2 s (still
        # broken), probe at +6 s (repaired at 5 s): closed, and every item done.
        assert breaker.probes == 2
        s = rig.lane.stats
        assert s.state == "complete" and s.message is None
        assert len([r for r in rig.responses.records if isinstance(r, Record) and r.response]) == 30
        assert {e.error.kind for e in rig.attempt_errors} == {"malformed"}
    _with_servers(1, body)


def test_a_server_nothing_has_reached_is_not_waited_for(tmp_path: Path) -> None:
    async def main() -> None:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        sock.close()  # nothing listens there
        cfg = model(f"http://127.0.0.1:{port}/v1", max_attempts=1000, deadline_s=10_000.0, backoff_base_s=0.1,
                    max_concurrency=8, **BREAKER)
        rig = Rig(cfg, _adapter(cfg, tmp_path), 100)
        await drive(rig.clock, [rig])
        s = rig.lane.stats
        assert s.state == "stopped" and s.message is not None and "connection refused" in s.message
        assert "base_url" in s.message and f"127.0.0.1:{port}" in s.message
        assert rig.attempts.breaker.opens == 0 and rig.clock.now() < 1.0  # stopped at the K-th refusal
        assert 5 <= len(rig.attempt_errors) < 5 + 8
    asyncio.run(main())


def test_a_paused_lane_shows_in_the_status_lines_and_bars_until_the_breaker_closes(tmp_path: Path) -> None:
    """While the breaker is open the lane's stats carry a Pause, and the status line and the lane's
    bar say "paused": for how long, why, and when the next probe goes (+2 s, +6 s, +14 s from the
    opening); once a probe gets through nothing says paused. Sampled every virtual second."""
    async def body(servers: Servers) -> None:
        [(srv, url)] = servers
        srv.set_config(p_5xx=1.0)
        clock = VirtualClock()
        cfg = model(url, max_concurrency=1, max_attempts=1000, deadline_s=10_000.0, backoff_base_s=0.1,
                    backoff_max_s=0.2, **BREAKER)
        rig = Rig(cfg, _adapter(cfg, tmp_path), 40, clock=clock)
        seen: list[tuple[float, str, str, float | None]] = []  # (time, status line, bar, paused since)
        bars = Bars([rig.lane], clock)

        def sample() -> None:
            bars._refresh()
            pause = rig.lane.stats.pause
            seen.append((clock.now(), StatusLines([rig.lane], clock, 1.0, lambda _: None).line(),
                         str(bars._bars[0]), pause.since if pause is not None else None))

        async def watch() -> None:
            while True:
                await clock.sleep(1.0)
                sample()

        async def repair() -> None:
            await clock.sleep(9.0)
            srv.set_config(p_5xx=0.0)
        await drive(clock, [rig], watch(), repair())
        sample()  # the lane is done
        bars.close()

        breaker = rig.attempts.breaker
        assert breaker.opens == 1 and breaker.probes == 3  # at +2 s, +6 s (still broken), +14 s (repaired)
        assert rig.lane.stats.state == "complete" and rig.lane.stats.pause is None
        pattern = re.compile(r"; m paused for (\d+)s \(5xx\), next probe in (\d+)s$")
        paused = [(t, pattern.search(line), bar, since) for t, line, bar, since in seen if since is not None]
        opened = paused[0][3]
        assert opened is not None and opened < 1.0 and len(paused) >= 13, seen
        for t, m, bar, _ in paused:
            assert m is not None, seen
            for_s, next_in = int(m.group(1)), int(m.group(2))
            assert abs(for_s - (t - opened)) <= 0.5
            assert any(abs(t + next_in - (opened + d)) <= 0.5 for d in (2.0, 6.0, 14.0)), (t, for_s, next_in)
            assert "m (paused)" in bar and f"paused={for_s}s 5xx, probe in {next_in}s" in bar, bar
        assert 13.0 <= paused[-1][0] <= opened + 14.0
        unpaused = [(line, bar) for t, line, bar, since in seen if since is None]
        assert unpaused[-1] == (seen[-1][1], seen[-1][2])
        assert not any("paused" in line or "paused" in bar for line, bar in unpaused), unpaused
    _with_servers(1, body)
