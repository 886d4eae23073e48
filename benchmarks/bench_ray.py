#!/usr/bin/env python
"""Ray lanes against local lanes on the same fake server, side by side:

    python benchmarks/bench_ray.py [--n 4000] [--latency-ms 50] [--concurrency 64] [--reps 2] [--no-append]

Interleaved, `reps` times: `python -m engine run --items` with `--backend local`, then with
`--backend ray` (a local Ray started by the run), each into a new output directory against one
engine/testing/fakeserver.py at `latency-ms`. Reported per backend: the wall (start-up and Ray's
start and stop included), the steady rate (responses-file growth between 10 % and 90 % of the
items), and the time to the first record (start-up: for Ray, starting the local instance and the
lane's actor). Goal: a Ray lane's steady rate >= 0.85 x the local lane's. Not a test: prints a
table and appends it to RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_core import MODEL, RESULTS, Watched, machine_line, make_items, run_engine  # noqa: E402

from engine.testing.fakeserver import FakeServerProcess  # noqa: E402

GOAL = 0.85


def _first_record_s(w: Watched) -> float | None:
    return next((t for t, lines, _ in w.samples if lines > 0), None)


def _one(cfg: Path, items: Path, out: Path, n: int, backend: str) -> tuple[float, float | None, float | None]:
    w = run_engine(cfg, items, out, "--backend", backend, "--status-every", "0")
    if w.rc != 0 or w.lines != n:
        raise SystemExit(f"{backend}: rc {w.rc}, {w.lines}/{n} records\n{w.out[-2000:]}")
    steady = w.steady(n)
    return w.wall, steady[0] if steady else None, _first_record_s(w)


def _med(xs: list[float | None]) -> float | None:
    got = [x for x in xs if x is not None]
    return statistics.median(got) if got else None


def _f(x: float | None, fmt: str) -> str:
    return format(x, fmt) if x is not None else "-"


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--n", type=int, default=4000)
    ap.add_argument("--latency-ms", type=int, default=50)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--no-append", action="store_true")
    args = ap.parse_args()
    got: dict[str, list[tuple[float, float | None, float | None]]] = {"local": [], "ray": []}
    with tempfile.TemporaryDirectory() as d, FakeServerProcess() as srv:
        tmp = Path(d)
        srv.set_config(latency_ms=args.latency_ms)
        items = make_items(tmp / "items.jsonl", args.n)
        cfg = tmp / "c.toml"
        cfg.write_text(f'[models.{MODEL}]\nadapter = "openai"\nbase_url = "{srv.url}"\nmodel = "fake-model"\n'
                       f"max_concurrency = {args.concurrency}\n")
        for rep in range(args.reps):
            for backend in ("local", "ray"):
                got[backend].append(_one(cfg, items, tmp / f"{backend}{rep}", args.n, backend))
    rows = {b: (_med([r[0] for r in rs]), _med([r[1] for r in rs]), _med([r[2] for r in rs])) for b, rs in got.items()}
    ratio = rows["ray"][1] / rows["local"][1] if rows["ray"][1] and rows["local"][1] else None
    wall_ratio = rows["local"][0] / rows["ray"][0] if rows["ray"][0] and rows["local"][0] else None
    load = os.getloadavg()[0]
    cmd = " ".join(["bench_ray.py", *sys.argv[1:]])
    lines = [f"## Ray lanes vs local lanes, {_dt.datetime.now(_dt.UTC):%Y-%m-%d %H:%M} UTC ({cmd}; "
             f"{machine_line()}, load {load:.1f})", "",
             f"{args.n} items, one lane, fake server at {args.latency_ms} ms, max_concurrency {args.concurrency}, "
             f"medians of {args.reps} interleaved runs each.", "",
             "| backend | wall (all runs) | steady items/s (all runs) | first record at |", "|---|---|---|---|"]
    for b, rs in got.items():
        wall, steady, first = rows[b]
        lines.append(f"| {b} | {_f(wall, '.2f')} s ({', '.join(f'{r[0]:.2f}' for r in rs)}) | {_f(steady, '.0f')} "
                     f"({', '.join(_f(r[1], '.0f') for r in rs)}) | {_f(first, '.2f')} s |")
    lines += ["", f"Ray / local steady: {_f(ratio, '.3f')} (goal >= {GOAL}: "
              f"{'MET' if ratio is not None and ratio >= GOAL else 'NOT MET'}); by wall: {_f(wall_ratio, '.3f')}.", ""]
    text = "\n".join(lines)
    sys.stdout.write(text + "\n")
    if not args.no_append:
        with open(RESULTS, "a", encoding="utf-8") as f:
            f.write("\n" + text + "\n")


if __name__ == "__main__":
    main()
