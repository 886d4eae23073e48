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
                       ("  of it before the wake-up, p99 (ms):", "wake_lag_p99_ms"),
                       ("Client CPU (fraction of one core):", "client_cpu_fraction"),
                       ("Machine load (1 min):", "machine_load_1m")):
        value = doc.get(key)
        missing = "n/a (rate inf)" if "_lag_" in key else "n/a"
        lines.append(f"{label:<40} {missing if value is None else f'{float(value):.3f}'}")  # type: ignore[arg-type]  # floats we wrote
    lines.append("=" * 50)
    return lines


def _ticks(top: float) -> tuple[float, list[float]]:
    """The axis end (a round number at least 5% above `top`) and 4 to 6 round ticks from 0 to it."""
    top = top * 1.05 if math.isfinite(top) and top > 0 else 1.0
    raw = top / 4
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    n = math.ceil(top / step - 1e-9)
    return n * step, [i * step for i in range(n + 1)]


def _num(x: float) -> str:
    return f"{round(x, 6):g}"


def _point_name(doc: Mapping[str, object]) -> str:
    """How a point was driven: r=4, c=8 (rate inf), r=4 c=8, r=inf."""
    rate, conc = doc.get("request_rate"), doc.get("max_concurrency")
    r = f"r={rate}" if rate == "inf" else f"r={_num(float(rate))}"  # type: ignore[arg-type]  # a float we wrote
    if conc is None:
        return r
    return f"c={conc}" if rate == "inf" else f"{r} c={conc}"


def _marker(shape: str, x: float, y: float, colour: str) -> str:
    if shape == "square":
        return f'<rect x="{x - 3.5:.1f}" y="{y - 3.5:.1f}" width="7" height="7" fill="{colour}"/>'
    if shape == "triangle":
        return f'<path d="M{x:.1f},{y - 4.5:.1f} L{x + 4.5:.1f},{y + 3.5:.1f} L{x - 4.5:.1f},{y + 3.5:.1f} Z" fill="{colour}"/>'
    return f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3.5" fill="none" stroke="{colour}" stroke-width="1.5"/>'


# Drawn in this order, each with its own marker and dash, so a series that lies on another
# (median E2EL on median TTFT when replies are short) still shows.
_SERIES = (("p99_e2el_ms", "#D55E00", "p99 E2EL", "square", ""),
           ("median_e2el_ms", "#0072B2", "median E2EL", "circle", ' stroke-dasharray="7 4"'),
           ("median_ttft_ms", "#009E73", "median TTFT", "triangle", ' stroke-dasharray="2 3"'))


def sweep_svg(points: Sequence[Mapping[str, object]], label: str, width: int = 600, height: int = 400) -> str:
    """Median and p99 end-to-end latency and median TTFT (ms) against request throughput (req/s):
    axes with round ticks, one marker per sweep point and series, each point named by its rate or
    concurrency. A small SVG without scripts or fonts; all text escaped."""
    def val(p: Mapping[str, object], key: str) -> float:
        x = float(p[key])  # type: ignore[arg-type]  # floats we wrote
        return x if math.isfinite(x) else 0.0

    xs = [val(p, "request_throughput") for p in points]
    x_end, x_ticks = _ticks(max(xs, default=0.0))
    y_end, y_ticks = _ticks(max((val(p, k) for p in points for k, *_ in _SERIES), default=0.0))
    left, right, top, bottom = 64, width - 24, 60, height - 52

    def px(x: float) -> float:
        return left + (right - left) * x / x_end

    def py(y: float) -> float:
        return bottom - (bottom - top) * y / y_end

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(label, quote=True)}" '
             'font-family="sans-serif">',
             f'<text x="{left}" y="18" font-size="13">{escape(label)}: latency against request throughput</text>',
             f'<text x="{left - 40}" y="{top - 10}" font-size="11">latency (ms)</text>',
             f'<text x="{(left + right) / 2:.1f}" y="{height - 12}" font-size="11" text-anchor="middle">'
             'request throughput (req/s)</text>']
    for t in x_ticks:
        parts += [f'<line x1="{px(t):.1f}" y1="{top}" x2="{px(t):.1f}" y2="{bottom + 4}" stroke="#ddd"/>',
                  f'<text class="xtick" x="{px(t):.1f}" y="{bottom + 17}" font-size="10" text-anchor="middle">'
                  f'{_num(t)}</text>']
    for t in y_ticks:
        parts += [f'<line x1="{left - 4}" y1="{py(t):.1f}" x2="{right}" y2="{py(t):.1f}" stroke="#ddd"/>',
                  f'<text class="ytick" x="{left - 7}" y="{py(t) + 3.5:.1f}" font-size="10" text-anchor="end">'
                  f'{_num(t)}</text>']
    parts += [f'<line x1="{left}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="#555"/>',
              f'<line x1="{left}" y1="{bottom}" x2="{left}" y2="{top}" stroke="#555"/>']
    for i, (key, colour, name, shape, dash) in enumerate(_SERIES):
        xy = [(px(x), py(val(p, key))) for x, p in zip(xs, points, strict=True)]
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.8"{dash} points="'
                     + " ".join(f"{x:.1f},{y:.1f}" for x, y in xy) + '"/>')
        parts += [_marker(shape, x, y, colour) for x, y in xy]
        lx, ly = left + 100 + 125 * i, 40  # one row above the plot, where no point can be
        parts += [f'<line x1="{lx}" y1="{ly - 4}" x2="{lx + 24}" y2="{ly - 4}" stroke="{colour}" stroke-width="1.8"{dash}/>',
                  _marker(shape, lx + 12, ly - 4, colour),
                  f'<text x="{lx + 30}" y="{ly}" font-size="11" fill="{colour}">{name}</text>']
    for x, p in zip(xs, points, strict=True):  # above the point's highest marker
        y = min(py(val(p, k)) for k, *_ in _SERIES) - 9
        parts.append(f'<text class="point" x="{min(max(px(x), left + 20), right - 20):.1f}" y="{max(y, top + 2):.1f}" '
                     f'font-size="10" text-anchor="middle">{escape(_point_name(p))}</text>')
    parts.append("</svg>")
    return "\n".join(parts)
