"""One `bench` invocation: the points to measure (one, or a --sweep of rates or concurrencies) and
the measurement of each against one target, in one event loop."""

from __future__ import annotations

import gc
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

from engine.bench.arrivals import arrival_times
from engine.bench.load import connections_needed, drive, warm_up
from engine.bench.metrics import send_lag_stats, summarize
from engine.bench.result import result_doc
from engine.bench.setup import Target
from engine.core.errors import ConfigError

__all__ = ["Load", "Point", "parse_sweep", "run_points"]


class Point(NamedTuple):
    rate: float  # requests per second (inf: all at once)
    max_concurrency: int | None  # None: no cap

    def tag(self) -> str:
        """What names this point's result file: rate-4, rate-inf, concurrency-8 (rate inf), rate-4-concurrency-8."""
        rate = f"rate-{self.rate:g}"
        if self.max_concurrency is None:
            return rate
        return (f"{rate}-" if math.isfinite(self.rate) else "") + f"concurrency-{self.max_concurrency}"


class Load(NamedTuple):
    num_prompts: int
    burstiness: float
    seed: int
    timeout_s: float
    slo: Mapping[str, float]


def _load() -> float | None:
    """The 1-minute load average at the end of a point (None where the OS has none): a machine
    busier than its CPUs delays every wakeup of the client, whatever the client does."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def parse_sweep(spec: str, rate: float, max_concurrency: int | None) -> list[Point]:
    """`rate=1,2,4,inf` or `concurrency=1,8,64` -> the points, in order; the other knob stays as given."""
    knob, sep, values = spec.partition("=")
    if not sep or knob not in ("rate", "concurrency") or not values:
        raise ConfigError(f"--sweep {spec!r}: expected rate=R1,R2,... or concurrency=C1,C2,...")
    out = []
    for v in values.split(","):
        try:
            x = float(v)
        except ValueError:
            raise ConfigError(f"--sweep {spec!r}: {v!r} is not a number") from None
        if knob == "rate" and not x > 0:
            raise ConfigError(f"--sweep {spec!r}: rates must be > 0 (or inf)")
        if knob == "concurrency" and (not math.isfinite(x) or x < 1 or x != int(x)):
            raise ConfigError(f"--sweep {spec!r}: concurrencies must be whole numbers >= 1")
        point = Point(x, max_concurrency) if knob == "rate" else Point(rate, int(x))
        if point in out:  # the second would overwrite the first's result file
            raise ConfigError(f"--sweep {spec!r}: {v} appears twice; give each point once")
        out.append(point)
    return out


async def run_points(target: Target, bodies: Sequence[dict[str, object]], warm: Sequence[dict[str, object]],
                     points: Sequence[Point], load: Load, on_point: Callable[[Point, dict[str, object]], None]) -> None:
    """Measures each point in turn (warm-up requests first, not counted) and hands its result
    document to `on_point`; closes the target's client at the end."""
    client = target.client
    try:
        for point in points:
            _, slowest = await warm_up(client.stream_reply, warm, load.timeout_s) if warm else (0, 0.0)
            # A request that has to open its connection is sent a few loop turns late (the
            # handshake): at 200 req/s after 20 warm-ups, 74 of 1200 requests did, and they were
            # the tail of the send lag (median 21 ms against 0.8 ms, machine at load 5).
            if opens := connections_needed(point.rate, point.max_concurrency, len(bodies), slowest):
                await client.open_connections(opens, load.timeout_s)
            planned = arrival_times(len(bodies), point.rate, load.burstiness, load.seed)
            # Everything built so far lives to the end: a collection of the oldest generation would
            # walk it in the middle of the schedule (a pause every request behind it pays as send lag).
            gc.collect()
            gc.freeze()
            cpu0, wall0 = time.process_time(), time.perf_counter()
            try:
                outcomes, duration = await drive(client.stream_reply, bodies, planned,
                                                 max_concurrency=point.max_concurrency, timeout_s=load.timeout_s)
            finally:
                gc.unfreeze()
            wall = max(time.perf_counter() - wall0, 1e-9)
            # With every request due at once there is no schedule to keep: a lag would only be queueing.
            lags = send_lag_stats(outcomes) if math.isfinite(point.rate) else dict.fromkeys(send_lag_stats([]))
            client_stats = {**lags, "client_cpu_fraction": (time.process_time() - cpu0) / wall,
                            "machine_load_1m": _load(), "machine_cpus": float(os.cpu_count() or 1)}
            errors = sorted({o.error for o in outcomes if not o.ok})
            doc = result_doc(summarize(outcomes, duration, load.slo or None), backend=target.backend, label=target.label,
                             model_id=target.model_id, num_prompts=len(bodies), rate=point.rate,
                             burstiness=load.burstiness, max_concurrency=point.max_concurrency,
                             client=client_stats, date=time.strftime("%Y%m%d-%H%M%S"))
            doc["errors"] = errors[:20]
            on_point(point, doc)
    finally:
        await target.built.adapter.aclose()
