"""Pure benchmark metrics: per-request outcomes -> the result document, with `vllm bench serve`'s
field names (completed, failed, request_throughput, output_throughput, total_token_throughput,
request_goodput, mean_/median_/std_/pNN_ x ttft_ms, tpot_ms, itl_ms, e2el_ms), so plotting
scripts written for vllm's result JSON read ours.

Definitions (vllm's): TTFT is send -> first text piece; TPOT per request is (E2EL - TTFT) /
(output tokens - 1) for requests with more than one output token; ITL is every gap between
consecutive text pieces, over all requests; E2EL is send -> last byte. A request is "good" when it
meets every SLO given (`--goodput ttft:MS tpot:MS e2el:MS`); request_goodput = good / duration.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence

import msgspec

__all__ = ["Outcome", "SLO_METRICS", "parse_goodput", "percentile", "summarize", "send_lag_stats"]

SLO_METRICS = ("ttft", "tpot", "e2el")
PERCENTILES = (90.0, 99.0)


class Outcome(msgspec.Struct, frozen=True, kw_only=True):
    """One benchmark request: when it was due (`planned`), when the dispatcher released it
    (`woke`) and when its bytes were handed to the socket (`sent`; engine/bench/load.py says how
    that is stamped), in s from the start; and what came back."""

    planned: float
    sent: float
    woke: float = 0.0
    ok: bool
    prompt_tokens: int = 0
    output_tokens: int = 0
    ttft_s: float = 0.0
    latency_s: float = 0.0
    itl_s: tuple[float, ...] = ()
    error: str = ""

    def tpot_s(self) -> float | None:
        if self.output_tokens <= 1:
            return None
        return (self.latency_s - self.ttft_s) / (self.output_tokens - 1)


def percentile(values: Sequence[float], q: float) -> float:
    """numpy's default (linear between closest ranks); 0 for no values."""
    if not values:
        return 0.0
    s = sorted(values)
    pos = (len(s) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def parse_goodput(specs: Sequence[str]) -> dict[str, float]:
    """["ttft:200", "tpot:50"] -> {"ttft": 200.0, "tpot": 50.0} (milliseconds); ValueError with
    one line naming the bad part."""
    out: dict[str, float] = {}
    for spec in specs:
        name, sep, value = spec.partition(":")
        if not sep or name not in SLO_METRICS:
            raise ValueError(f"--goodput {spec!r}: expected NAME:MS with NAME one of {', '.join(SLO_METRICS)}")
        try:
            ms = float(value)
        except ValueError:
            raise ValueError(f"--goodput {spec!r}: {value!r} is not a number of milliseconds") from None
        if not math.isfinite(ms) or ms <= 0:
            raise ValueError(f"--goodput {spec!r}: the limit must be a positive number of milliseconds")
        out[name] = ms
    return out


def _good(o: Outcome, slo: Mapping[str, float]) -> bool:
    tpot = o.tpot_s() or 0.0
    values = {"ttft": o.ttft_s, "tpot": tpot, "e2el": o.latency_s}
    return all(values[k] * 1000.0 <= limit for k, limit in slo.items())


def _stats(name: str, seconds: Sequence[float]) -> dict[str, float]:
    ms = [v * 1000.0 for v in seconds]
    out = {f"mean_{name}_ms": statistics.fmean(ms) if ms else 0.0,
           f"median_{name}_ms": statistics.median(ms) if ms else 0.0,
           f"std_{name}_ms": statistics.pstdev(ms) if ms else 0.0}
    for p in PERCENTILES:
        out[f"p{p:g}_{name}_ms"] = percentile(ms, p)
    return out


def send_lag_stats(outcomes: Sequence[Outcome]) -> dict[str, float]:
    """How late the client sent requests after they were due (ms): the client's own precision.
    The wake lag is the part before the dispatcher's release of the (prepared) request ran (its
    timer, the machine's scheduling, the loop turn in progress); the rest is the task step that
    writes the bytes."""
    lags = [max(0.0, o.sent - o.planned) * 1000.0 for o in outcomes]
    wakes = [max(0.0, o.woke - o.planned) * 1000.0 for o in outcomes]
    return {"send_lag_p50_ms": percentile(lags, 50.0), "send_lag_p99_ms": percentile(lags, 99.0),
            "send_lag_max_ms": max(lags, default=0.0), "wake_lag_p50_ms": percentile(wakes, 50.0),
            "wake_lag_p99_ms": percentile(wakes, 99.0)}


def summarize(outcomes: Sequence[Outcome], duration_s: float, slo: Mapping[str, float] | None = None) -> dict[str, object]:
    """The metrics of one benchmark point. `duration_s`: first send to last completion."""
    done = [o for o in outcomes if o.ok]
    dur = max(duration_s, 1e-9)
    total_in = sum(o.prompt_tokens for o in done)
    total_out = sum(o.output_tokens for o in done)
    tpots = [t for o in done if (t := o.tpot_s()) is not None]
    out: dict[str, object] = {
        "duration": duration_s, "completed": len(done), "failed": len(outcomes) - len(done),
        "total_input_tokens": total_in, "total_output_tokens": total_out,
        "request_throughput": len(done) / dur,
        "request_goodput": sum(1 for o in done if _good(o, slo)) / dur if slo else None,
        "output_throughput": total_out / dur, "total_token_throughput": (total_in + total_out) / dur,
    }
    out.update(_stats("ttft", [o.ttft_s for o in done]))
    out.update(_stats("tpot", tpots))
    out.update(_stats("itl", [g for o in done for g in o.itl_s]))
    out.update(_stats("e2el", [o.latency_s for o in done]))
    return out
