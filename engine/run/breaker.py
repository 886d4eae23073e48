"""A lane's circuit breaker: a server that fails every request the same systematic way is paused
and probed instead of being retried for every item (100k items against a server answering 500
would otherwise take about a day of backoffs).

Closed, requests flow. A systematic failure (a 5xx, a malformed body, connection refused, a
connection lost) counts for its kind; any success clears the counts; everything else (429s, which
the limiter handles, timeouts, 4xx) neither counts nor clears. `breaker_failures` (K) failures of
one kind with no success between open the breaker: the lane's workers hold their units and send
nothing, except one probe request after `breaker_probe_s`, the next after twice that, and so on.
A probe that gets an answer (a success, or any failure that is neither systematic nor a timeout)
closes the breaker and the lane goes on; so does any success of a request that was in flight when
it opened. When the next probe would come later than `breaker_max_pause_s` after the opening, the
lane stops with one line naming the server and the last error; the items it did not finish are
retried by the next run, and the other lanes never notice. While it is open the lane's stats carry
a `Pause` (since when, why, the next probe), which the progress bars and status lines show.

A server that nothing in this lane has reached yet (every failure so far connection refused) is
not waited for: the lane stops as soon as the breaker would open (a wrong base_url or a server not
started), as it did before the breaker existed.

Time is the lane's clock (a VirtualClock in tests), and the waits end at once when the lane or the
run stops.
"""

from __future__ import annotations

import asyncio
from collections import Counter

from engine.core.adapter import AdapterError
from engine.core.clock import Clock
from engine.core.config import ModelConfig
from engine.core.records import Response
from engine.run.stats import LaneStats, Pause

__all__ = ["Breaker", "systematic"]


def systematic(err: AdapterError) -> str | None:
    """The systematic kind of a failure (what says the server itself is broken), or None."""
    if err.kind == "malformed":
        return "malformed body"
    if err.kind != "transient":
        return None
    if err.unreachable:
        return "connection refused"
    if err.status is None:
        return "connection lost"
    return "5xx" if err.status >= 500 else None


class Breaker:
    """One lane's breaker. Workers call `admit` before each attempt and `settle` with its result."""

    def __init__(self, name: str, cfg: ModelConfig, clock: Clock, stats: LaneStats | None = None) -> None:
        self.name = name
        self.stats = stats  # its `pause` mirrors an open breaker, for progress
        self.threshold = cfg.breaker_failures  # 0: never opens
        self.first_probe_s = cfg.breaker_probe_s
        self.max_pause_s = cfg.breaker_max_pause_s
        self.server = cfg.base_url or f"the {cfg.adapter} endpoint of model {cfg.model or name}"
        self.clock = clock
        self.counts: Counter[str] = Counter()
        self.opened_at: float | None = None
        self.opened_by = ""
        self.interval = 0.0
        self.next_probe = 0.0
        self.probing = False
        self.probes = 0
        self.opens = 0  # times it opened this run
        self.reached = False  # some request got an answer (not connection refused) this run
        self.last: AdapterError | None = None
        self._changed = asyncio.Event()

    @property
    def is_open(self) -> bool:
        return self.opened_at is not None

    def notify(self) -> None:
        """Wakes every worker waiting in `admit` (the state changed, or the lane is stopping)."""
        self._changed.set()
        self._changed = asyncio.Event()

    async def admit(self, stopping: asyncio.Event) -> bool | None:
        """Waits while the breaker is open. True: send this attempt as the probe; False: send it
        as usual; None: the lane is stopping (send nothing)."""
        while self.opened_at is not None:
            if stopping.is_set():
                return None
            now = self.clock.now()
            if not self.probing and now >= self.next_probe:
                self.probing = True
                self.probes += 1
                self._show()
                return True
            # Until the probe is due, or (a probe in flight) until it settles.
            wait = self.next_probe - now if not self.probing else self.max_pause_s + self.interval
            await self.clock.wait(self._changed, max(wait, 0.0))
        return None if stopping.is_set() else False

    def settle(self, sent: Response | AdapterError | None, probe: bool) -> str | None:
        """Takes one attempt's result; returns the line that stops the lane when the server is
        given up on, else None. `sent` None: the attempt was never sent (deadline, budget)."""
        if sent is None:
            if probe:  # someone else probes
                self.probing = False
                self._show()
                self.notify()
            return None
        kind = systematic(sent) if isinstance(sent, AdapterError) else None
        if kind != "connection refused":
            self.reached = True
        if isinstance(sent, AdapterError):
            self.last = sent
        if kind is None and not (probe and isinstance(sent, AdapterError) and sent.kind == "timeout"):
            if isinstance(sent, Response) or probe:
                self._close()
            return None
        if self.opened_at is None:
            return self._count(kind) if kind is not None else None
        if probe:
            return self._probe_failed()
        return None

    def _count(self, kind: str) -> str | None:
        self.counts[kind] += 1
        if not self.threshold or self.counts[kind] < self.threshold:
            return None
        if kind == "connection refused" and not self.reached:
            return self._stop_line(kind, "nothing in this lane has reached it yet; start the server or fix its "
                                   "base_url, then rerun")
        now = self.clock.now()
        self.opened_at, self.opened_by = now, kind
        self.opens += 1
        self.probes = 0
        self.interval = self.first_probe_s
        self.next_probe = now + self.interval
        if self.interval > self.max_pause_s:
            return self._give_up()
        self._show()
        return None

    def _probe_failed(self) -> str | None:
        assert self.opened_at is not None
        self.probing = False
        now = self.clock.now()
        self.interval *= 2
        self.next_probe = now + self.interval
        if self.next_probe - self.opened_at > self.max_pause_s:
            return self._give_up()
        self._show()
        self.notify()
        return None

    def _close(self) -> None:
        self.counts.clear()
        if self.opened_at is not None:
            self.opened_at = None
            self.probing = False
            self._show()
            self.notify()

    def _give_up(self) -> str:
        assert self.opened_at is not None
        if self.stats is not None:  # the lane stops: its state says so from here
            self.stats.pause = None
        paused = self.clock.now() - self.opened_at
        return self._stop_line(self.opened_by, f"paused {paused:.0f} s with {self.probes} probe(s) and it did not "
                               "recover; check the server, then rerun (unfinished items are retried)")

    def _show(self) -> None:
        if self.stats is not None:
            self.stats.pause = None if self.opened_at is None else Pause(
                lane=self.name, since=self.opened_at, kind=self.opened_by,
                next_probe=None if self.probing else self.next_probe, probes=self.probes)

    def _stop_line(self, kind: str, what_next: str) -> str:
        last = self.last.message if self.last is not None else kind
        return (f"lane {self.name} stopped: {self.server} failed {self.threshold} times in a row ({kind}); "
                f"{what_next}. Last error: {last}")
