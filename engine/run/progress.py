"""tqdm bars on stderr: one per lane plus a total, refreshed twice a second (not per request)."""

from __future__ import annotations

import sys

from tqdm import tqdm

from engine.core.clock import Clock
from engine.run.lane import Lane


class Bars:
    def __init__(self, lanes: list[Lane], clock: Clock, interval: float = 0.5) -> None:
        self._lanes = lanes
        self._clock = clock
        self._interval = interval
        total = sum(lane.stats.planned for lane in lanes)
        self._total = tqdm(total=total, desc="total", position=0, file=sys.stderr, unit="req", dynamic_ncols=True)
        # A lane's label names the node its Ray actor runs on (--backend ray).
        self._bars = [tqdm(total=lane.stats.planned, desc=lane.label, position=i + 1,
                           file=sys.stderr,
                           unit="req", dynamic_ncols=True, leave=True) for i, lane in enumerate(lanes)]

    def _refresh(self) -> None:
        total = 0
        agg = {"inflight": 0, "retries": 0, "429": 0, "errors": 0}
        for lane, bar in zip(self._lanes, self._bars):
            s = lane.stats
            n = s.skipped + s.done
            bar.n = n
            label = lane.label  # lane@node once its Ray actor runs
            if bar.desc.rstrip(": ") != label:
                bar.set_description(label, refresh=False)
            errs = s.fatal + s.exhausted
            bar.set_postfix(inflight=s.in_flight, retries=s.retries, r429=s.rate_limited, err=errs, refresh=False)
            bar.refresh()
            total += n
            agg["inflight"] += s.in_flight
            agg["retries"] += s.retries
            agg["429"] += s.rate_limited
            agg["errors"] += errs
        self._total.n = total
        self._total.set_postfix(inflight=agg["inflight"], retries=agg["retries"], r429=agg["429"],
                                err=agg["errors"], refresh=False)
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
