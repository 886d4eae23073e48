"""Batch lanes at scale: a run of N requests through the OpenAI batch fake (engine/testing/fake_batches.py,
in its own process so that its memory is not the engine's), peak memory (VmHWM of the engine process)
against N.

    python benchmarks/bench_batch.py [--sizes 20000,100000] [--batch 10000] [--no-append]

With a fixed batch size the engine holds one gathering batch's units (their workers and futures),
while batch input is written to a file and uploaded from it, and results are read as a stream: the
peak should not grow with N. Appends a section to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_core import PY, ROOT, _env, machine_line, make_items, run_watched

KEY = "test-key-0123456789"


def start_fake() -> tuple[subprocess.Popen[bytes], str]:
    p = subprocess.Popen([PY, "-m", "engine.testing.fake_batches", "--port", "0", "--complete-after-s", "1"],
                         cwd=str(ROOT), env=_env(), stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    assert p.stdout is not None
    line = p.stdout.readline().decode().strip()
    if not line.startswith("LISTENING "):
        p.kill()
        raise SystemExit(f"the batch fake did not start: {line!r}")
    return p, line.split(" ", 1)[1]


def config(path: Path, url: str, batch: int) -> Path:
    path.write_text(f'[run]\nprogress = false\n\n[models.fake]\nadapter = "openai"\nbase_url = "{url}/v1"\n'
                    f'model = "fake-model"\napi_key_env = "BENCH_BATCH_KEY"\nbatch = true\n'
                    f"batch_max_requests = {batch}\nbatch_wait_s = 1\nbatch_poll_s = 0.5\nbatch_poll_max_s = 2\n")
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="20000,100000")
    ap.add_argument("--batch", type=int, default=10_000)
    ap.add_argument("--no-append", action="store_true")
    args = ap.parse_args(argv)
    os.environ["BENCH_BATCH_KEY"] = KEY
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for n in sizes:
            fake, url = start_fake()
            try:
                items = make_items(work / f"items-{n}.jsonl", n)
                cfg = config(work / "c.toml", url, args.batch)
                out = work / f"out-{n}"
                w = run_watched([PY, "-m", "engine", "run", str(cfg), "--items", str(items), "--output", str(out),
                                 "--no-progress", "--status-every", "0"], watch=out / "responses" / "fake.jsonl",
                                interval=0.05, mem_every=0.25)
            finally:
                fake.terminate()
                fake.wait(10)
            if w.rc != 0 or w.lines != n:
                print(w.out[-3000:], file=sys.stderr)  # a benchmark's own report
                raise SystemExit(f"run of {n} failed: rc {w.rc}, {w.lines} responses")
            mid = w.rss_at(0.5) // 1024
            rows.append((n, w.wall, w.cpu, w.hwm_kib // 1024, mid))
            print(f"{n} requests: {w.wall:.1f} s wall, {w.cpu:.1f} s CPU, peak RSS {w.hwm_kib // 1024} MiB, "
                  f"RSS at half time {mid} MiB", flush=True)
    text = [f"\n## bench_batch.py — {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {machine_line()}\n",
            f"`python benchmarks/bench_batch.py --sizes {args.sizes} --batch {args.batch}` (OpenAI batch fake in its own "
            "process, batches complete 1 s after creation; engine process VmHWM):\n",
            "| requests | batches | wall s | CPU s | peak RSS MiB | RSS at half time MiB |", "| --- | --- | --- | --- | --- | --- |"]
    for n, wall, cpu, hwm, mid in rows:
        text.append(f"| {n:,} | {-(-n // args.batch)} | {wall:.1f} | {cpu:.1f} | {hwm} | {mid} |")
    if not args.no_append:
        with open(ROOT / "benchmarks" / "RESULTS.md", "a") as f:
            f.write("\n".join(text) + "\n")
    print("\n".join(text))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
