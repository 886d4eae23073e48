#!/usr/bin/env python
"""`engine bench` against the fake server's latency model (issue 19 acceptance 1):

    python benchmarks/bench_serve.py [--rates 50,100,200,500] [--a-ms 50] [--b-ms 10] [--jitter-ms 2]
                                     [--output-len 16] [--seconds 6] [--no-append]

The fake server (a subprocess) answers every streamed request with its first token after a ms
(+ uniform [0, jitter] ms) and each further token b ms (+ uniform [0, jitter] ms) after the one
before, on an absolute schedule. For each rate, `python -m engine bench` (a subprocess: the real
command, its own event loop) sends rate x seconds Poisson arrivals after 20 warm-ups and writes its
result JSON. The medians it reports are compared with the model: TTFT with a + jitter/2, TPOT and
ITL with b; its send lag p50/p99 says how precisely the client kept the schedule (due -> the
request's bytes handed to the socket; the wake lag is the part before the dispatcher woke).
Client and server share this machine's CPUs (and whatever else runs on it: the load average is
printed). The floor column is the machine's own: the same Poisson schedule kept by the same
dispatcher (engine.bench.load.drive under uvloop, gc frozen) with requests that send nothing
(their "sent" is their release), so what is left is the wake-up's precision and
how late this process gets a CPU. Not a test: prints a table and appends it to RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as _dt
import gc
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.bench.arrivals import arrival_times  # noqa: E402
from engine.bench.load import drive  # noqa: E402
from engine.bench.metrics import send_lag_stats  # noqa: E402
from engine.core.records import Response  # noqa: E402
from engine.testing.fakeserver import FakeServerProcess  # noqa: E402

RESULTS = ROOT / "benchmarks" / "RESULTS.md"


def _bench(url: str, rate: float, n: int, output_len: int, out: Path) -> dict[str, object]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("OPENAI_API_KEY", None)
    p = subprocess.run([sys.executable, "-m", "engine", "bench", "--base-url", url, "--model", "fake-model",
                        "--request-rate", str(rate), "--num-prompts", str(n), "--warmup", "20",
                        "--input-len", "32", "--output-len", str(output_len), "--seed", "1",
                        "--result-file", str(out)], cwd=ROOT, env=env, capture_output=True)
    if p.returncode not in (0, 1) or not out.exists():
        raise SystemExit(p.stderr.decode()[-2000:])
    doc: dict[str, object] = orjson.loads(out.read_bytes())
    doc["_warning"] = next((ln for ln in p.stderr.decode().splitlines() if ln.startswith("warning")), "")
    return doc


async def _nothing(body: dict[str, object], timeout_s: float, sent: list[float],
                   not_before: asyncio.Future[None] | None) -> Callable[[list[float] | None], Response]:
    if not_before is not None:
        await not_before
    await asyncio.sleep(0.05)
    return lambda marks: Response(text="", finish_reason="stop", latency_s=0.05)


def _floor(rate: float, n: int) -> dict[str, float]:
    """Send lag of the dispatcher alone: the schedule of `engine bench` with requests that do nothing."""
    import uvloop

    async def run() -> dict[str, float]:
        gc.collect()
        gc.freeze()
        try:
            outcomes, _ = await drive(_nothing, [{}] * n, arrival_times(n, rate, 1.0, 1), max_concurrency=None,
                                      timeout_s=10.0)
        finally:
            gc.unfreeze()
        return send_lag_stats(outcomes)

    return uvloop.run(run())


def _cpu_s(pid: int | None) -> float:
    """utime + stime of a process, in seconds (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _dev(got: float, want: float) -> str:
    return f"{got:.2f} ({(got - want) / want:+.1%})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rates", default="50,100,200,500")
    ap.add_argument("--a-ms", type=float, default=50.0)
    ap.add_argument("--b-ms", type=float, default=10.0)
    ap.add_argument("--jitter-ms", type=float, default=2.0)
    ap.add_argument("--output-len", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--no-append", action="store_true")
    args = ap.parse_args()
    a, b, j = args.a_ms, args.b_ms, args.jitter_ms
    config = {"latency_ms": a, "latency_jitter_ms": j, "token_delay_ms": b, "token_jitter_ms": j,
              "completion_tokens": "max_tokens", "log": False}
    rows = []
    loads = []
    with FakeServerProcess(config) as srv, tempfile.TemporaryDirectory() as tmp:
        root = srv.url.removesuffix("/v1")
        for rate in (float(r) for r in args.rates.split(",")):
            n = int(rate * args.seconds)
            loads.append(os.getloadavg()[0])
            cpu0 = _cpu_s(srv.pid)
            d = _bench(root, rate, n, args.output_len, Path(tmp) / f"r{rate:g}.json")
            server_ms = (_cpu_s(srv.pid) - cpu0) * 1000.0 / (n + 20)
            client_ms = float(d["client_cpu_fraction"]) * float(d["duration"]) * 1000.0 / n  # type: ignore[arg-type]
            floor = _floor(rate, n)
            loads.append(os.getloadavg()[0])
            rows.append(f"| {rate:g} | {n} | {d['completed']}/{d['failed']} | {float(d['request_throughput']):.1f} | "  # type: ignore[arg-type]
                        f"{_dev(float(d['median_ttft_ms']), a + j / 2)} | {_dev(float(d['median_tpot_ms']), b)} | "  # type: ignore[arg-type]
                        f"{_dev(float(d['median_itl_ms']), b)} | {float(d['p99_ttft_ms']):.1f} | "  # type: ignore[arg-type]
                        f"{float(d['send_lag_p50_ms']):.2f} / {float(d['send_lag_p99_ms']):.2f} | "  # type: ignore[arg-type]
                        f"{float(d['wake_lag_p99_ms']):.2f} | "  # type: ignore[arg-type]
                        f"{floor['send_lag_p50_ms']:.2f} / {floor['send_lag_p99_ms']:.2f} | "
                        f"{float(d['client_cpu_fraction']):.2f} | {client_ms:.2f} / {server_ms:.2f} | "  # type: ignore[arg-type]
                        f"{'yes' if d['_warning'] else ''} |")
    now = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    text = "\n".join([
        f"## engine bench vs the fake server's latency model, {now} (bench_serve.py --rates {args.rates} "
        f"--a-ms {a:g} --b-ms {b:g} --jitter-ms {j:g} --output-len {args.output_len} --seconds {args.seconds:g}; "
        f"{os.cpu_count()} CPUs, load {min(loads):.1f}-{max(loads):.1f})",
        "",
        f"Model: TTFT = {a:g} ms + U[0, {j:g}] (median {a + j / 2:g}), each further token {b:g} ms + jitter "
        f"(median ITL/TPOT {b:g}); {args.output_len} tokens per reply; Poisson arrivals; 20 warm-ups per rate.",
        "",
        "| rate (req/s) | requests | ok/failed | achieved req/s | median TTFT ms (vs model) | median TPOT ms | "
        "median ITL ms | p99 TTFT ms | send lag p50 / p99 ms | of it before the wake-up, p99 ms | "
        "floor: lag of a client sending nothing, p50 / p99 ms | "
        "client CPU (cores) | CPU ms per request client / server | client-bound warning |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        *rows, ""])
    print(text)
    if not args.no_append:
        with open(RESULTS, "a", encoding="utf-8") as f:
            f.write("\n\n" + text)


if __name__ == "__main__":
    main()
