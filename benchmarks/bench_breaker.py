"""The circuit breaker against a server that answers every request 500 (issue 16, item 5): how long
one lane with default settings takes to give up on 100k items, and how many requests it sends,
with the breaker (defaults: 20 failures, probes from 5 s, 300 s pause) and without it
(`breaker_failures = 0`, stopped by SIGINT after --off-s seconds and extrapolated from the items
that ran out of retries meanwhile).

    python benchmarks/bench_breaker.py [--items 100000] [--off-s 120]

Prints the numbers; append them to benchmarks/RESULTS.md by hand with the machine's load.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

from engine.testing.fakeserver import FakeServerProcess


def _config(path: Path, url: str, extra: str = "") -> Path:
    path.write_text(f'[models.fake]\nadapter = "openai"\nbase_url = "{url}"\nmodel = "fake-model"\n{extra}')
    return path


def _cmd(cfg: Path, items: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "engine", "run", str(cfg), "--items", str(items), "--output", str(out),
            "--no-progress", "--status-every", "0"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--off-s", type=float, default=120.0, help="how long the run without a breaker goes on")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench_breaker_"))
    try:
        items = tmp / "items.jsonl"
        with open(items, "wb") as f:
            for i in range(args.items):
                f.write(orjson.dumps({"id": f"q{i}", "prompt": f"question number {i}"}) + b"\n")
        with FakeServerProcess({"p_5xx": 1.0, "log": False}) as srv:
            cfg = _config(tmp / "on.toml", srv.url)
            t0 = time.monotonic()
            res = subprocess.run(_cmd(cfg, items, tmp / "on"), capture_output=True, text=True, timeout=900)
            wall = time.monotonic() - t0
            stop = next((ln.strip() for ln in res.stderr.splitlines() if "stopped:" in ln), "")
            print(f"breaker on: exit {res.returncode}, {wall:.1f} s, {srv.stats()['requests']} requests")
            print(f"  {stop}")
        with FakeServerProcess({"p_5xx": 1.0, "log": False}) as srv:
            cfg = _config(tmp / "off.toml", srv.url, "breaker_failures = 0\n")
            p = subprocess.Popen(_cmd(cfg, items, tmp / "off"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(args.off_s)
            p.send_signal(signal.SIGINT)
            p.wait(timeout=120)
            done = sum(1 for ln in (tmp / "off" / "errors" / "fake.jsonl").read_bytes().splitlines() if b'"final":true' in ln)
            sent = srv.stats()["requests"]
            assert isinstance(sent, int)
            rate = done / args.off_s
            print(f"breaker off: after {args.off_s:.0f} s, {sent} requests, {done} items out of retries; "
                  f"{args.items} items would take about {args.items / rate / 3600:.1f} h and "
                  f"{sent / max(done, 1) * args.items:,.0f} requests")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
