"""tqdm bars on stderr: one per lane plus a total, refreshed twice a second (not per request)."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from tqdm import tqdm


class Bars:
    def __init__(self, lanes: list[Any], interval: float = 0.5) -> None:
        self._lanes = lanes
        self._interval = interval
        self._task: asyncio.Task[None] | None = None
        total = sum(lane.stats.planned for lane in lanes)
        self._total = tqdm(total=total, desc="total", position=0, file=sys.stderr, unit="req", dynamic_ncols=True)
        # A lane's label names the node its Ray actor runs on (--backend ray).
        self._bars = [tqdm(total=lane.stats.planned, desc=getattr(lane, "label", lane.name), position=i + 1,
                           file=sys.stderr,
                           unit="req", dynamic_ncols=True, leave=True) for i, lane in enumerate(lanes)]

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    def _refresh(self) -> None:
        total = 0
        agg = {"inflight": 0, "retries": 0, "429": 0, "errors": 0}
        for lane, bar in zip(self._lanes, self._bars):
            s = lane.stats
            n = s.skipped + s.done
            bar.n = n
            label = getattr(lane, "label", lane.name)  # lane@node once its Ray actor runs
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

    async def _loop(self) -> None:
        while True:
            self._refresh()
            await asyncio.sleep(self._interval)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self._refresh()
        for b in (*self._bars, self._total):
            b.close()
