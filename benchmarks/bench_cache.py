#!/usr/bin/env python
"""What the response cache (`run --cache DIR`) costs and saves against the fake server at 0 ms:

    python benchmarks/bench_cache.py [--n 5000] [--reps 3] [--no-append]

Interleaved, `reps` times: a run without a cache, a run into an empty cache (every unit a miss:
a lookup, the request, a write), and a run answered entirely by that cache (every unit a hit: no
request). Each into a new output directory, `python -m engine run --items` at max_concurrency 64.
At 0 ms latency the miss overhead is the cache's whole cost; against an API (hundreds of ms per
request) it disappears in the wait. Not a test: prints a table and appends it to RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.testing.fakeserver import FakeServerProcess  # noqa: E402

RESULTS = ROOT / "benchmarks" / "RESULTS.md"


def _run(tmp: Path, cfg: Path, items: Path, out: str, *extra: str) -> float:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "engine", "run", str(cfg), "--items", str(items), "--output",
                        str(tmp / out), "--no-progress", "--status-every", "0", *extra],
                       cwd=ROOT, env=env, capture_output=True)
    if p.returncode != 0:
        raise SystemExit(p.stderr.decode()[-2000:])
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--no-append", action="store_true")
    args = ap.parse_args()
    walls: dict[str, list[float]] = {"none": [], "misses": [], "hits": []}
    with tempfile.TemporaryDirectory() as d, FakeServerProcess() as srv:
        tmp = Path(d)
        items = tmp / "items.jsonl"
        items.write_bytes(b"".join(orjson.dumps({"id": f"q{i}", "prompt": f"question {i}: how are you?"}) + b"\n"
                                   for i in range(args.n)))
        cfg = tmp / "c.toml"
        cfg.write_text(f'[models.fake]\nadapter = "openai"\nbase_url = "{srv.url}"\nmodel = "fake-model"\n'
                       "max_concurrency = 64\n")
        for r in range(args.reps):
            walls["none"].append(_run(tmp, cfg, items, f"none{r}"))
            walls["misses"].append(_run(tmp, cfg, items, f"miss{r}", "--cache", str(tmp / f"cache{r}")))
            walls["hits"].append(_run(tmp, cfg, items, f"hit{r}", "--cache", str(tmp / f"cache{r}")))
        sent = srv.stats()["requests"]
    med = {k: statistics.median(v) for k, v in walls.items()}
    load = os.getloadavg()[0]
    lines = [f"\n## Response cache, {_dt.datetime.now(_dt.UTC):%Y-%m-%d %H:%M} UTC "
             f"(bench_cache.py --n {args.n} --reps {args.reps}; {os.cpu_count()} CPUs, load {load:.1f})\n",
             "| run | wall, median (all) | vs no cache |", "|---|---|---|"]
    for k, label in (("none", "no cache"), ("misses", "empty cache: every unit a miss"),
                     ("hits", "full cache: every unit a hit")):
        lines.append(f"| {label} | {med[k]:.2f} s ({', '.join(f'{w:.2f}' for w in walls[k])}) | "
                     f"{med[k] / med['none']:.2f} |")
    lines.append(f"\nThe fake server saw {sent} requests for {args.reps} x 2 x {args.n} sent units (the hit runs sent none).")
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_append:
        with open(RESULTS, "a", encoding="utf-8") as f:
            f.write(text)


if __name__ == "__main__":
    main()
