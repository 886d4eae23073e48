#!/usr/bin/env python
"""Engine vs the local model server's own best: throughput against the embedded llama.cpp server.

    python benchmarks/bench_local.py [--n 48] [--max-tokens 32] [--slots 4]

One embedded server (SmolLM2-135M, greedy, per-slot KV cache) is started once; against it, back to
back and repeated, (1) a bare aiohttp client keeps `slots` requests in flight (the server's own
best: it batches up to its slot count), and (2) `python -m engine run --items` sends the same
requests through an `openai` lane at the same concurrency, checkpoint and all. Both report
requests/s and completion tokens/s; the goal is engine >= 0.95 x bare. Not a test: it prints a
table and appends it to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from adapters.servers.llama import LlamaSettings, launch_embedded  # noqa: E402

RESULTS = ROOT / "benchmarks" / "RESULTS.md"
ALIAS = "smollm2-135m"
TOPICS = ["sleep", "stress", "exams", "a move", "loneliness", "work", "family", "a breakup", "grief", "anger",
          "worry", "motivation"]


def prompts(n: int) -> list[str]:
    return [f"In two sentences, how can someone cope with {TOPICS[i % len(TOPICS)]}? (case {i})" for i in range(n)]


async def bare(url: str, texts: list[str], max_tokens: int, c: int, model: str = ALIAS) -> tuple[float, int]:
    """The server's own best: c requests in flight from one session; returns (wall s, completion tokens)."""
    queue = list(texts)
    tokens = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=c)) as s:
        async def worker() -> None:
            nonlocal tokens
            while queue:
                p = queue.pop()
                body = {"model": model, "messages": [{"role": "user", "content": p}], "max_tokens": max_tokens,
                        "temperature": 0.0, "seed": 0}
                async with s.post(url + "/chat/completions", json=body) as r:
                    data = await r.json()
                    tokens += data["usage"]["completion_tokens"]
        t = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(c)))
        return time.perf_counter() - t, tokens


def engine(url: str, texts: list[str], max_tokens: int, c: int, tmp: Path, k: int) -> tuple[float, int]:
    items = tmp / "items.jsonl"
    items.write_text("".join(json.dumps({"id": f"i{i}", "prompt": p}) + "\n" for i, p in enumerate(texts)))
    cfg = tmp / "c.toml"
    cfg.write_text(f'[models.local]\nadapter = "openai"\nmodel = "{ALIAS}"\nbase_url = "{url}"\n'
                   f"max_concurrency = {c}\nmax_tokens = {max_tokens}\ntemperature = 0.0\nseed = 0\n")
    out = tmp / f"out{k}"
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "engine", "run", str(cfg), "--items", str(items), "--output", str(out),
                    "--no-progress"], cwd=ROOT, check=True, capture_output=True)
    wall = time.perf_counter() - t
    tokens = sum(json.loads(line)["response"]["usage"]["completion_tokens"]
                 for line in (out / "responses" / "local.jsonl").read_text().splitlines())
    return wall, tokens


async def main_async(args: argparse.Namespace) -> list[tuple[str, str]]:
    tmp = Path(tempfile.mkdtemp(prefix="bench-local-"))
    server = await launch_embedded(LlamaSettings(alias=ALIAS, slots=args.slots, ctx_per_slot=1024, threads=args.threads),
                                   tmp / "server.log")
    rows: list[tuple[str, str]] = []
    try:
        texts = prompts(args.n)
        await bare(server.base_url, texts[:4], args.max_tokens, args.slots)  # warm-up
        b_rates, e_rates, b_tok, e_tok = [], [], [], []
        for k in range(args.repeat):
            wall, tok = await bare(server.base_url, texts, args.max_tokens, args.slots)
            b_rates.append(args.n / wall)
            b_tok.append(tok / wall)
            wall, tok = await asyncio.to_thread(engine, server.base_url, texts, args.max_tokens, args.slots, tmp, k)
            e_rates.append(args.n / wall)
            e_tok.append(tok / wall)
        b, e = statistics.median(b_rates), statistics.median(e_rates)
        rows.append(("bare client, req/s (median)", f"{b:.2f} ({statistics.median(b_tok):.0f} tok/s)"))
        rows.append(("engine end to end incl. start-up, req/s (median)", f"{e:.2f} ({statistics.median(e_tok):.0f} tok/s)"))
        ratio = e / b
        rows.append(("engine / bare", f"{ratio:.3f} (runs: " + ", ".join(f"{x / y:.2f}" for x, y in zip(e_rates, b_rates))
                     + f") goal >= 0.95: {'MET' if ratio >= 0.95 else 'NOT MET'}"))
    finally:
        await server.stop()
    return rows


def report(rows: list[tuple[str, str]], title: str, detail: str, *, append: bool) -> None:
    """Prints the rows as a table and, with append, adds it to RESULTS.md under a dated heading
    with the machine, the commit and `detail` (the command, timings)."""
    width = max(len(r[0]) for r in rows)
    lines = [f"| {'case':{width}} | result |", f"|{'-' * (width + 2)}|--------|"]
    lines += [f"| {a:{width}} | {b} |" for a, b in rows]
    print("\n".join(lines))
    if append:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        with open(RESULTS, "a") as f:
            f.write(f"\n## {title} — {_dt.datetime.now(_dt.UTC):%Y-%m-%d %H:%M} UTC\n\n"
                    f"{os.cpu_count()} cores, Python {platform.python_version()}, commit {commit}; {detail}\n\n"
                    + "\n".join(lines) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=48)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--slots", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-append", action="store_true")
    args = ap.parse_args()
    rows = asyncio.run(main_async(args))
    report(rows, "bench_local (embedded llama.cpp server)",
           f"`python benchmarks/bench_local.py --n {args.n} --max-tokens {args.max_tokens} --slots {args.slots}`",
           append=not args.no_append)
    return 0


if __name__ == "__main__":
    sys.exit(main())
