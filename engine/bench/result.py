"""A benchmark point's result document, its table, the client-bottleneck warning and the SVG of a
sweep (latency against throughput). Pure builders; the command writes the files."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from html import escape

__all__ = ["bottleneck_warning", "result_doc", "sweep_svg", "table"]


def result_doc(metrics: Mapping[str, object], *, backend: str, label: str, model_id: str, num_prompts: int,
               rate: float, burstiness: float, max_concurrency: int | None, client: Mapping[str, float | None],
               date: str) -> dict[str, object]:
    """vllm's top-level fields (request_rate "inf" as vllm writes it), the metrics, then ours
    (send lag, client CPU)."""
    return {"date": date, "backend": backend, "label": label, "model_id": model_id,
            "num_prompts": num_prompts, "request_rate": "inf" if math.isinf(rate) else rate,
            "burstiness": burstiness, "max_concurrency": max_concurrency, **metrics, **client}


def bottleneck_warning(doc: Mapping[str, object], rate: float, max_concurrency: int | None) -> str | None:
    """A line when the client, not the server, may be what limits the numbers: it sent open-loop
    requests late (p99 lag above 10% of the mean gap and above 2 ms), or its process was busy most of
    the run (CPU above 90% of one core); with either, a load average above the CPU count is named
    as the likely cause."""
    lag = float(doc.get("send_lag_p99_ms") or 0.0)  # type: ignore[arg-type]  # a float we wrote
    cpu = float(doc.get("client_cpu_fraction") or 0.0)  # type: ignore[arg-type]  # a float we wrote
    why = []
    if not math.isinf(rate) and max_concurrency is None and lag > max(2.0, 100.0 / rate):
        why.append(f"requests were sent late (p99 {lag:.1f} ms after they were due)")
    if cpu > 0.9:
        why.append(f"the client process was busy {cpu:.0%} of the run")
    load, cpus = doc.get("machine_load_1m"), doc.get("machine_cpus")
    if why and isinstance(load, float) and isinstance(cpus, float) and load > cpus:
        why.append(f"the machine was busier than its CPUs (load {load:.1f} on {cpus:.0f}): every wakeup waits for one")
    if not why:
        return None
    return "warning: the client may be the bottleneck: " + "; ".join(why) + \
        " (run bench on another machine or core, or lower --request-rate)"


_ROWS = (("Successful requests:", "completed", "{:d}"), ("Failed requests:", "failed", "{:d}"),
         ("Benchmark duration (s):", "duration", "{:.2f}"), ("Total input tokens:", "total_input_tokens", "{:d}"),
         ("Total generated tokens:", "total_output_tokens", "{:d}"),
         ("Request throughput (req/s):", "request_throughput", "{:.2f}"),
         ("Request goodput (req/s):", "request_goodput", "{:.2f}"),
         ("Output token throughput (tok/s):", "output_throughput", "{:.2f}"),
         ("Total token throughput (tok/s):", "total_token_throughput", "{:.2f}"))
_METRICS = (("ttft", "Time to First Token"), ("tpot", "Time per Output Token (excl. 1st token)"),
            ("itl", "Inter-token Latency"), ("e2el", "End-to-end Latency"))


def table(doc: Mapping[str, object]) -> list[str]:
    """The result as `vllm bench serve` prints it, plus the client's send lag."""
    lines = [f"{' Serving Benchmark Result ':=^50}"]
    for title, key, fmt in _ROWS:
        if doc.get(key) is not None:
            lines.append(f"{title:<40} {fmt.format(doc[key]):<10}")
    for key, title in _METRICS:
        lines.append(f"{' ' + title + ' ':-^50}")
        for stat in ("mean", "median", "p90", "p99"):
            lines.append(f"{stat.capitalize() if stat[0] != 'p' else stat.upper()} {key.upper()} (ms):".ljust(41)
                         + f"{float(doc[f'{stat}_{key}_ms']):.2f}")  # type: ignore[arg-type]  # floats we wrote
    lines.append(f"{' Client ':-^50}")
    for label, key in (("Send lag p50 (ms):", "send_lag_p50_ms"), ("Send lag p99 (ms):", "send_lag_p99_ms"),
                       ("Client CPU (fraction of one core):", "client_cpu_fraction"),
                       ("Machine load (1 min):", "machine_load_1m")):
        value = doc.get(key)
        missing = "n/a (rate inf)" if key.startswith("send_lag") else "n/a"
        lines.append(f"{label:<40} {missing if value is None else f'{float(value):.3f}'}")  # type: ignore[arg-type]  # floats we wrote
    lines.append("=" * 50)
    return lines


def sweep_svg(points: Sequence[Mapping[str, object]], label: str, width: int = 560, height: int = 360) -> str:
    """Median and p99 end-to-end latency and median TTFT (ms) against request throughput (req/s),
    one marker per sweep point."""
    xs = [float(p["request_throughput"]) for p in points]  # type: ignore[arg-type]  # floats we wrote
    series = (("median_e2el_ms", "#0072B2", "median E2EL"), ("p99_e2el_ms", "#D55E00", "p99 E2EL"),
              ("median_ttft_ms", "#009E73", "median TTFT"))
    ys = [float(p[k]) for p in points for k, _, _ in series]  # type: ignore[arg-type]  # floats we wrote
    x_max, y_max = max(xs, default=1.0) * 1.1 or 1.0, max(ys, default=1.0) * 1.1 or 1.0
    left, bottom, top, right = 60, height - 40, 30, width - 20

    def at(x: float, y: float) -> str:
        return f"{left + (right - left) * x / x_max:.1f},{bottom - (bottom - top) * y / y_max:.1f}"

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(label, quote=True)}">',
             f'<text x="{left}" y="18" font-size="13">{escape(label)}: latency (ms) vs request throughput (req/s)</text>',
             f'<line x1="{left}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="#555"/>',
             f'<line x1="{left}" y1="{bottom}" x2="{left}" y2="{top}" stroke="#555"/>',
             f'<text x="{right}" y="{bottom + 28}" font-size="11" text-anchor="end">{x_max / 1.1:.1f} req/s</text>',
             f'<text x="4" y="{top + 4}" font-size="11">{y_max / 1.1:.0f} ms</text>']
    for i, (key, colour, name) in enumerate(series):
        pts = " ".join(at(x, float(p[key])) for x, p in zip(xs, points, strict=True))  # type: ignore[arg-type]  # floats
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{pts}"/>')
        parts += [f'<circle cx="{c.split(",")[0]}" cy="{c.split(",")[1]}" r="3" fill="{colour}"/>' for c in pts.split()]
        parts.append(f'<text x="{left + 10}" y="{top + 14 + 14 * i}" font-size="11" fill="{colour}">{name}</text>')
    parts.append("</svg>")
    return "\n".join(parts)
