#!/usr/bin/env python
"""Memory of a judged run whose judge is slower than its target: peak RSS stays flat because the
judge backlog is bounded and generation waits for it (engine/run/judge.py, JudgeHub.gate).

    python benchmarks/bench_judge.py                      # 1M judged responses (~25 min on 2 cores)
    python benchmarks/bench_judge.py --judged 200000      # smaller
    python benchmarks/bench_judge.py --root /tmp/old      # the same run with another checkout's engine
    python benchmarks/bench_judge.py --judged 30000 --keep /tmp/j30k   # keep the run directory

Not a test: nothing is asserted. One `python -m engine run` against two fake servers (target at
0 ms, judge at --judge-latency-ms with --judge-concurrency workers, so the judge is the slower
stage), on the built-in crisis items: escalation (21 items, judged) with `samples` chosen so that
`--judged` responses get a judgment, identification and severity cut to one item each. Reports the
child's peak RSS (VmHWM, polled every 50 ms), RSS at 10/50/90 % of the wall time, judged count,
wall, and `verify`'s exit and judgments line; appends them to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_core  # noqa: E402

from engine.testing.fakeserver import FakeServerProcess  # noqa: E402

ESCALATION_ITEMS = 21  # bench_data/crisis/escalation.jsonl


def write_config(path: Path, out: Path, target_url: str, judge_url: str, samples: int, judge_c: int) -> Path:
    path.write_text(
        f'[run]\noutput = "{out}"\nprogress = false\npillars = ["crisis"]\nsamples = {samples}\n\n'
        f'[models.target]\nadapter = "openai"\nbase_url = "{target_url}"\nmodel = "target"\nmax_concurrency = 64\n\n'
        f'[models.judge]\nadapter = "openai"\nbase_url = "{judge_url}"\nmodel = "judge"\n'
        f"max_concurrency = {judge_c}\n\n"
        '[judge]\nmodels = ["judge"]\n\n'
        '[pillars."crisis/identification"]\nlimit = 1\n\n[pillars."crisis/severity"]\nlimit = 1\n')
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--judged", type=int, default=1_000_000, help="judged responses (default 1M)")
    ap.add_argument("--judge-latency-ms", type=float, default=20.0)
    ap.add_argument("--judge-concurrency", type=int, default=16)
    ap.add_argument("--root", type=Path, default=ROOT, help="the engine checkout to run (default: this one)")
    ap.add_argument("--no-append", action="store_true")
    ap.add_argument("--keep", type=Path, default=None,
                    help="move the run directory here at the end (to diff scores.json or time `score`/`report` on it)")
    args = ap.parse_args(argv)
    samples = max(1, -(-args.judged // ESCALATION_ITEMS))
    judged = samples * ESCALATION_ITEMS
    work = Path(tempfile.mkdtemp(prefix="bench-judge-"))
    target = FakeServerProcess({"log": False, "completion_tokens": bench_core.COMPLETION_TOKENS}).start()
    judge = FakeServerProcess({"log": False, "completion_tokens": bench_core.COMPLETION_TOKENS,
                               "latency_ms": args.judge_latency_ms}).start()
    try:
        out = work / "out"
        cfg = write_config(work / "c.toml", out, target.url, judge.url, samples, args.judge_concurrency)
        # run_watched runs `python -m engine` in bench_core.ROOT: point it at the checkout to measure.
        bench_core.ROOT = args.root.resolve()
        print(f"judged run: {judged:,} judged responses ({samples:,} samples x {ESCALATION_ITEMS} items) "
              f"+ {2 * samples:,} unjudged; judge {args.judge_latency_ms:g} ms x {args.judge_concurrency}", flush=True)
        w = bench_core.run_watched([bench_core.PY, "-m", "engine", "run", str(cfg), "--models", "target", "--no-progress",
                                    "--status-every", "60"], watch=out / "judgments" / "judge.jsonl",
                                   interval=0.05, mem_every=0.05)
        ver = subprocess.run([bench_core.PY, "-m", "engine", "verify", str(out)], cwd=str(bench_core.ROOT),
                             env=bench_core._env(), capture_output=True, text=True)
        jline = next((ln for ln in ver.stdout.splitlines() if ln.startswith("judge: judgments")), "(no judgments line)")
        lanes = json.loads((out / "run.json").read_bytes()).get("lanes", {})
        # Until the last judgment line: generation and judging. After it the run scores and reports,
        # which reads every record (engine/scoring.py), a separate cost from the judge backlog.
        t_end = next((t for t, n, _ in w.samples if n >= judged), w.wall)
        judging = max((h for t, _, h in w.mem if t <= t_end), default=0)
        rows = [
            ("peak RSS while generating and judging (VmHWM until the last judgment)", f"{judging / 1024:.1f} MiB"),
            ("peak RSS of the whole run, scoring and report included", f"{w.hwm_kib / 1024:.1f} MiB"),
            ("RSS at 10%, 50%, 90% of wall time (judging ends at " f"{100 * t_end / w.wall:.0f}%)",
             f"{w.rss_at(0.1) / 1024:.0f}, {w.rss_at(0.5) / 1024:.0f}, {w.rss_at(0.9) / 1024:.0f} MiB"),
            ("judgments written / planned", f"{w.lines:,} / {judged:,}"),
            ("wall, CPU", f"{w.wall:.0f} s, {w.cpu:.0f} s"),
            ("run exit; verify exit", f"{w.rc}; {ver.returncode}"),
            ("verify's judgments line", jline),
            ("target / judge lane", f"{lanes.get('target', {}).get('state')} / {lanes.get('judge', {}).get('state')}"),
        ]
        for k, v in rows:
            print(f"  {k}: {v}", flush=True)
        if w.rc != 0:
            print(w.out[-2000:])
        if not args.no_append:
            commit = subprocess.run(["git", "-C", str(bench_core.ROOT), "rev-parse", "--short", "HEAD"],
                                    capture_output=True, text=True).stdout.strip()
            when = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
            cmd = "python benchmarks/bench_judge.py " + " ".join(argv if argv is not None else sys.argv[1:])
            text = (f"\n\n## Judged run memory, {when} ({cmd.strip()}; engine at {commit}; "
                    f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f})\n\n"
                    f"{judged:,} judged crisis/escalation responses + {2 * samples:,} unjudged, target 0 ms x 64, "
                    f"judge {args.judge_latency_ms:g} ms x {args.judge_concurrency} (the slower stage)\n\n"
                    "| metric | value |\n|---|---|\n" + "".join(f"| {k} | {v} |\n" for k, v in rows))
            with open(ROOT / "benchmarks" / "RESULTS.md", "a") as f:
                f.write(text)
    finally:
        target.stop()
        judge.stop()
        if args.keep is not None and (work / "out").is_dir():
            shutil.move(str(work / "out"), str(args.keep))
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
