"""Per-lane counters for progress bars, run.json and the report, and their merge over the
invocations of a resumed run (`merge_invocations`)."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import TypeVar

import msgspec

from engine.core.rundoc import UNSET, LaneSummary, Latency, TokenCounts, UnsetType

_BASE = math.log(1.05)
_INV_BASE = 1.0 / _BASE
_log = math.log
T = TypeVar("T")
# Counters that a lane's attempts keep (engine/run/attempt.py); with --backend ray they are counted
# in the lane's actors and summed on the driver, which keeps the others.
_BY_ATTEMPTS = {"attempts": True}


def _attempts(default: T) -> T:
    return field(default=default, metadata=_BY_ATTEMPTS)


@dataclass(frozen=True)
class Pause:
    """A lane whose circuit breaker is open (engine/run/breaker.py), on the lane's clock: paused since
    `since` by failures of `kind`; the next probe at `next_probe` (None: a probe is in flight)."""

    lane: str
    since: float
    kind: str
    next_probe: float | None
    probes: int = 0


@dataclass
class LaneStats:
    planned: int = 0
    skipped: int = 0  # already complete in the checkpoint
    done: int = 0  # final outcomes written this run
    judged: int = 0  # judgments written this run (as a judge lane)
    # As a judge lane, for progress: judgments expected (an estimate made before the run), found
    # already written, and handed to this lane so far.
    judge_planned: int = 0
    judge_resumed: int = 0
    judge_queued: int = 0
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
    # The response cache (engine/run/cache.py), when the run has one: units answered from it (no
    # request, no limit spent) and units it did not hold (then sent as usual).
    cache_used: bool = False
    cache_hits: int = 0
    cache_misses: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    # A batch lane's batches (engine/run/batching.py): how many are in each provider state, and the
    # requests done / in them, for status lines and bars.
    batches: Counter[str] = field(default_factory=Counter)
    batch_requests: tuple[int, int] = (0, 0)
    batches_ended: int = 0
    # Calls to the batch API that failed (submit, look-up, poll, read, a batch failed as a whole):
    # the status lines' errors count them as they happen, before any unit has an outcome.
    batch_failures: int = 0
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
    # Its breaker is open (the progress bars and status lines show it); a Ray lane's breakers live
    # in its actors, whose clocks the driver does not share, so it keeps None.
    pause: Pause | None = None
    # latency histogram in 5% buckets: constant memory however many requests
    _lat: Counter[int] = field(default_factory=Counter)

    def copy(self) -> LaneStats:
        return replace(self, errors=Counter(self.errors), batches=Counter(self.batches), _lat=Counter(self._lat))

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
        lat, b = self._lat, int(_log(seconds if seconds > 1e-6 else 1e-6) * _INV_BASE)
        lat[b] = lat.get(b, 0) + 1  # Counter += costs twice this (a dict subclass)

    def percentile(self, q: float) -> float | None:
        return percentile(self._lat, q)

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
            latency_s=latency_of(self._lat),
            tokens=TokenCounts(prompt=self.prompt_tokens, completion=self.completion_tokens,
                               reasoning=self.reasoning_tokens, cached=self.cached_tokens),
            started_at=self.started if self.started is not None else UNSET,
            ended_at=self.ended if self.ended is not None else UNSET,
            invocations=1, latency_hist=dict(sorted(self._lat.items())),
            cache_hits=self.cache_hits if self.cache_used else UNSET,
            cache_misses=self.cache_misses if self.cache_used else UNSET)


def percentile(hist: Mapping[int, int], q: float) -> float | None:
    """The q-quantile of a latency histogram (bucket -> count), at its bucket's midpoint."""
    total = sum(hist.values())
    if not total:
        return None
    rank = q * total
    acc = 0
    for b in sorted(hist):
        acc += hist[b]
        if acc >= rank:
            return round(math.exp((b + 0.5) * _BASE), 6)
    return None


def latency_of(hist: Mapping[int, int]) -> Latency:
    return Latency(p50=percentile(hist, 0.5), p95=percentile(hist, 0.95), p99=percentile(hist, 0.99))


def add_hist(a: Mapping[int, int], b: Mapping[int, int]) -> dict[int, int]:
    out = dict(a)
    for k, v in b.items():
        out[k] = out.get(k, 0) + v
    return dict(sorted(out.items()))


# Counters of one invocation that add up over a resumed run's invocations; planned, skipped and
# exhausted describe where the run stands now, so the merged view takes the last invocation's.
_ADDED = ("done", "judged", "ok", "fatal", "sent", "retries", "rate_limited", "limit_pushbacks", "truncated",
          "requeried", "wait_s", "busy_s")


def _add_set(a: int | UnsetType, b: int | UnsetType) -> int | UnsetType:
    """Counters written only by some invocations (the cache's): summed over those that have them."""
    return b if isinstance(a, UnsetType) else a if isinstance(b, UnsetType) else a + b


def _opt_add(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else round(a + b, 3)


def merge_invocations(before: LaneSummary | None, now: LaneSummary) -> LaneSummary:
    """run.json `lanes.<model>` over every invocation of a run: `before` is the merged view so far
    (or, in a run.json written before merging, the last invocation's statistics), `now` this
    invocation's. Requests, tokens, errors and times are summed; wall_s is the summed running time
    (the pauses between invocations left out) and the rates are over it; latency percentiles are
    over the summed histogram (where `before` has none, over this invocation's only); the span
    runs from the first start to the last end."""
    if before is None:
        return now
    errors = dict(before.errors)
    for k, v in now.errors.items():
        errors[k] = errors.get(k, 0) + v
    tokens = TokenCounts(**{f: getattr(before.tokens, f) + getattr(now.tokens, f)
                            for f in TokenCounts.__struct_fields__})
    hist = add_hist(_hist(before), _hist(now))
    wall = _opt_add(before.wall_s, now.wall_s)
    done = before.done + now.done
    summed: dict[str, float] = {f: getattr(before, f) + getattr(now, f) for f in _ADDED}
    summed["wait_s"], summed["busy_s"] = round(summed["wait_s"], 3), round(summed["busy_s"], 3)
    return msgspec.structs.replace(
        now, **summed, errors=errors, tokens=tokens,
        wall_s=wall, requests_per_s=round(done / wall, 3) if wall else None,
        output_tokens_per_s=round(tokens.completion / wall, 3) if wall else None,
        latency_s=latency_of(hist) if hist else now.latency_s, latency_hist=hist,
        started_at=before.started_at if not isinstance(before.started_at, UnsetType) else now.started_at,
        ended_at=now.ended_at if not isinstance(now.ended_at, UnsetType) else before.ended_at,
        invocations=_count(before) + _count(now),
        cache_hits=_add_set(before.cache_hits, now.cache_hits), cache_misses=_add_set(before.cache_misses, now.cache_misses))


def _hist(lane: LaneSummary) -> Mapping[int, int]:
    return lane.latency_hist if not isinstance(lane.latency_hist, UnsetType) else {}


def _count(lane: LaneSummary) -> int:
    return lane.invocations if not isinstance(lane.invocations, UnsetType) else 1

