"""Per-lane counters for progress bars, run.json and the report."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass, field, fields, replace
from typing import TypeVar

from engine.core.rundoc import LaneSummary, Latency, TokenCounts

_BASE = math.log(1.05)
_INV_BASE = 1.0 / _BASE
_log = math.log
T = TypeVar("T")
# Counters that a lane's attempts keep (engine/run/attempt.py); with --backend ray they are counted
# in the lane's actors and summed on the driver, which keeps the others.
_BY_ATTEMPTS = {"attempts": True}


def _attempts(default: T) -> T:
    return field(default=default, metadata=_BY_ATTEMPTS)


@dataclass
class LaneStats:
    planned: int = 0
    skipped: int = 0  # already complete in the checkpoint
    done: int = 0  # final outcomes written this run
    judged: int = 0  # judgments written this run (as a judge lane)
    ok: int = _attempts(0)
    fatal: int = _attempts(0)
    exhausted: int = _attempts(0)  # retries or deadline ran out: no final outcome, retried next run
    sent: int = _attempts(0)
    retries: int = _attempts(0)
    rate_limited: int = _attempts(0)
    requeried: int = 0  # extra samples sent because an answer was unparseable (protocol re-query)
    truncated: int = 0  # prompts cut to fit the model's context (engine/truncate.py)
    limit_pushbacks: int = _attempts(0)  # lane held because provider headers said the limit was near
    in_flight: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    wait_s: float = _attempts(0.0)  # time spent waiting on rate limits
    busy_s: float = _attempts(0.0)  # summed request time
    prompt_tokens: int = _attempts(0)
    completion_tokens: int = _attempts(0)
    reasoning_tokens: int = _attempts(0)
    cached_tokens: int = _attempts(0)
    started: float | None = None
    ended: float | None = None
    state: str = "pending"
    message: str | None = None
    # latency histogram in 5% buckets: constant memory however many requests
    _lat: Counter[int] = field(default_factory=Counter)

    def copy(self) -> LaneStats:
        return replace(self, errors=Counter(self.errors), _lat=Counter(self._lat))

    def add_up_attempts(self, parts: Collection[LaneStats]) -> None:
        """Sets the attempts' counters to their sum over `parts` (a Ray lane's actors, one
        snapshot each)."""
        for f in fields(self):
            if f.metadata.get("attempts"):
                setattr(self, f.name, sum(getattr(p, f.name) for p in parts))
        self.errors = Counter()
        self._lat = Counter()
        for p in parts:
            self.errors.update(p.errors)
            self._lat.update(p._lat)

    def latency(self, seconds: float) -> None:
        self._lat[int(_log(seconds if seconds > 1e-6 else 1e-6) * _INV_BASE)] += 1

    def percentile(self, q: float) -> float | None:
        total = sum(self._lat.values())
        if not total:
            return None
        rank = q * total
        acc = 0
        for b in sorted(self._lat):
            acc += self._lat[b]
            if acc >= rank:
                return round(math.exp((b + 0.5) * _BASE), 6)
        return None

    def summary(self) -> LaneSummary:
        """run.json `lanes.<model>`."""
        wall = (self.ended or 0) - (self.started or 0) if self.started and self.ended else None
        return LaneSummary(
            state=self.state, message=self.message, planned=self.planned, skipped=self.skipped, done=self.done,
            judged=self.judged, ok=self.ok, fatal=self.fatal, exhausted=self.exhausted, sent=self.sent,
            retries=self.retries, rate_limited=self.rate_limited, limit_pushbacks=self.limit_pushbacks,
            truncated=self.truncated, requeried=self.requeried, errors=dict(self.errors),
            wait_s=round(self.wait_s, 3), busy_s=round(self.busy_s, 3),
            wall_s=round(wall, 3) if wall else None,
            requests_per_s=round(self.done / wall, 3) if wall else None,
            output_tokens_per_s=round(self.completion_tokens / wall, 3) if wall else None,
            latency_s=Latency(p50=self.percentile(0.5), p95=self.percentile(0.95), p99=self.percentile(0.99)),
            tokens=TokenCounts(prompt=self.prompt_tokens, completion=self.completion_tokens,
                               reasoning=self.reasoning_tokens, cached=self.cached_tokens))
