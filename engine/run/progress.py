"""What a run shows while it goes: tqdm bars on stderr when it is a terminal (one per lane plus a
total, refreshed twice a second, not per request), else one status line every N seconds for batch
logs (Slurm, CI, nohup), where bars would be either absent or a mess of carriage returns.

Both count generation and judging, and count work found already done (a resumed run) apart from
this invocation's, so that rates and ETAs are over the work this process did. A lane whose circuit
breaker is open shows as paused: for how long, why, and when it probes the server next.
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Never, Protocol

import msgspec

from engine.core.clock import Clock
from engine.run.lane import Lane
from engine.run.options import Log
from engine.run.stats import LaneStats, Pause

if TYPE_CHECKING:  # imported where bars are made: only a run on a terminal shows them
    from tqdm import tqdm

# Width and height when the terminal reports 0 columns or rows (a pty under `script`, some CI
# runners): tqdm would draw nothing.
FALLBACK_COLUMNS = 100
FALLBACK_ROWS = 50


class Stage(msgspec.Struct, frozen=True):
    """One stage's counts: `resumed` were already in the output, `done` written by this process."""

    planned: int = 0
    resumed: int = 0
    done: int = 0

    @property
    def complete(self) -> int:
        return self.resumed + self.done

    @property
    def left(self) -> int:
        return max(self.planned - self.complete, 0)

    def __add__(self, other: Stage) -> Stage:
        return Stage(self.planned + other.planned, self.resumed + other.resumed, self.done + other.done)


class Counted(Protocol):
    stats: LaneStats


def generation(lane: Counted) -> Stage:
    s = lane.stats
    return Stage(max(s.planned, s.skipped + s.done), s.skipped, s.done)


def judging(lane: Counted) -> Stage:
    """A judge lane's judgments: planned is an estimate (items that opt out of judging and
    re-asked unparseable verdicts make it differ) until its queue shows more."""
    s = lane.stats
    return Stage(max(s.judge_planned, s.judge_resumed + s.judge_queued), s.judge_resumed, s.judged)


def _shape() -> tuple[int, int] | None:
    """None: the terminal has a size (tqdm follows it); else a fixed (columns, rows)."""
    try:
        size = os.get_terminal_size(sys.stderr.fileno())
    except (OSError, ValueError):
        return FALLBACK_COLUMNS, FALLBACK_ROWS
    if size.columns > 0 and size.lines > 0:
        return None
    return size.columns if size.columns > 0 else FALLBACK_COLUMNS, size.lines if size.lines > 0 else FALLBACK_ROWS


class Bars:
    def __init__(self, lanes: list[Lane], clock: Clock, interval: float = 0.5) -> None:
        self._lanes = lanes
        self._clock = clock
        self._interval = interval
        # Lazy for start-up time: tqdm reads its package metadata on import (tens of ms), and a run whose
        # stderr is not a terminal (a script, a test, Slurm) shows no bars.
        from tqdm import tqdm

        shape = _shape()
        ncols, nrows = shape if shape is not None else (None, None)
        self._total = tqdm(total=0, desc="total", position=0, file=sys.stderr, unit="req",
                           dynamic_ncols=shape is None, ncols=ncols, nrows=nrows)
        # A lane's label names the node its Ray actor runs on (--backend ray).
        self._bars = [tqdm(total=0, desc=lane.label, position=i + 1, leave=True, file=sys.stderr, unit="req",
                           dynamic_ncols=shape is None, ncols=ncols, nrows=nrows) for i, lane in enumerate(lanes)]

    def _refresh(self) -> None:
        whole = Stage()
        agg = {"inflight": 0, "retries": 0, "429": 0, "errors": 0}
        for lane, bar in zip(self._lanes, self._bars):
            s = lane.stats
            work = generation(lane) + judging(lane)
            whole = whole + work
            _show(bar, work)
            label = lane.label  # lane@node once its Ray actor runs
            if s.pause is not None:
                label = f"{label} (paused)"
            if bar.desc.rstrip(": ") != label:
                bar.set_description(label, refresh=False)
            errs = s.fatal + s.exhausted + s.batch_failures
            if s.batches or s.batches_ended:
                bar.set_postfix_str(batch_summary([s]) + f", err={errs}", refresh=False)
            else:
                post: dict[str, object] = {"inflight": s.in_flight, "retries": s.retries, "r429": s.rate_limited,
                                           "err": errs}
                if s.pause is not None:
                    post["paused"] = paused_text(s.pause, self._clock.now(), short=True)
                bar.set_postfix(post, refresh=False)
            bar.refresh()
            agg["inflight"] += s.in_flight
            agg["retries"] += s.retries
            agg["429"] += s.rate_limited
            agg["errors"] += errs
        _show(self._total, whole)
        paused = sum(1 for lane in self._lanes if lane.stats.pause is not None)
        total: dict[str, object] = {"inflight": agg["inflight"], "retries": agg["retries"], "r429": agg["429"],
                                    "err": agg["errors"]}
        if paused:
            total["paused"] = paused
        self._total.set_postfix(total, refresh=False)
        self._total.refresh()

    async def run(self) -> None:
        """Refreshes until cancelled (when the lanes are done)."""
        while True:
            self._refresh()
            await self._clock.sleep(self._interval)

    def close(self) -> None:
        self._refresh()
        for b in (*self._bars, self._total):
            b.close()


def _show(bar: tqdm[Never], work: Stage) -> None:
    # Resumed work is the bar's `initial`: tqdm's rate and ETA count only what this process did.
    bar.total = work.planned
    bar.initial = work.resumed
    bar.n = work.complete


class StatusLines:
    """One line every `every` seconds through `log` (stderr): elapsed, per stage done/planned,
    rate, in flight, retries, 429s, errors and an ETA."""

    def __init__(self, lanes: Sequence[Counted], clock: Clock, every: float, log: Log) -> None:
        self._lanes = lanes
        self._clock = clock
        self._every = every
        self._log = log
        self._start = clock.now()

    def line(self) -> str:
        gen = sum((generation(lane) for lane in self._lanes), Stage())
        judge = sum((judging(lane) for lane in self._lanes), Stage())
        elapsed = self._clock.now() - self._start
        stats = [lane.stats for lane in self._lanes]
        done = gen.done + judge.done
        rate = done / elapsed if elapsed > 0 else 0.0
        left = gen.left + judge.left
        eta = fmt_duration(left / rate) if rate > 0 else "unknown" if left else "0s"
        parts = [f"[{fmt_duration(elapsed)}] generation {gen.complete}/{gen.planned}"]
        if judge.planned:
            parts.append(f"judging {judge.complete}/{judge.planned}")
        parts += [f"{rate:.2f} req/s", f"in flight {sum(s.in_flight for s in stats)}",
                  f"retries {sum(s.retries for s in stats)}", f"429s {sum(s.rate_limited for s in stats)}",
                  f"errors {sum(s.fatal + s.exhausted + s.batch_failures for s in stats)}", f"ETA {eta}"]
        if batches := batch_summary(stats):
            parts.insert(-1, batches)
        now = self._clock.now()
        parts += [f"{s.pause.lane} {paused_text(s.pause, now)}" for s in stats if s.pause is not None]
        return "; ".join(parts)

    async def run(self) -> None:
        """A line every `every` seconds until cancelled (when the lanes are done)."""
        while True:
            await self._clock.sleep(self._every)
            self._log(self.line())

    def close(self) -> None:
        """The summary follows from the runner; nothing to clear."""


def batch_summary(stats: Sequence[LaneStats]) -> str:
    """Batch lanes' batches by provider state and the requests done in the open ones, e.g.
    "batches in_progress 2, validating 1, ended 4 (1200/3000 requests)"; "" without batch lanes."""
    states: Counter[str] = Counter()
    done = total = ended = 0
    for s in stats:
        states.update(s.batches)
        done += s.batch_requests[0]
        total += s.batch_requests[1]
        ended += s.batches_ended
    if not states and not ended:
        return ""
    shown = [f"{k} {n}" for k, n in sorted(states.items())] + ([f"ended {ended}"] if ended else [])
    return f"batches {', '.join(shown)} ({done}/{total} requests)"


def paused_text(p: Pause, now: float, *, short: bool = False) -> str:
    """A lane's open breaker: for how long it has paused, why, and when it probes the server next:
    "paused for 12s (5xx), next probe in 4s", or in a bar's postfix "12s 5xx, probe in 4s"."""
    since = fmt_duration(max(now - p.since, 0.0))
    probe = "probing" if p.next_probe is None else f"probe in {fmt_duration(max(p.next_probe - now, 0.0))}"
    return f"{since} {p.kind}, {probe}" if short else f"paused for {since} ({p.kind}), next {probe}"


def fmt_duration(seconds: float) -> str:
    s = int(seconds + 0.5)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"
