"""The report's item browser at full size (issue 18): on a run directory made by gen_explore_run.py
(12 replay models x the official item counts), times `report` (writing report.md + report.html,
and its peak memory), then opens report.html in headless chromium (engine/testing/cdp.py) and reads:

- first paint: the page's first-contentful-paint entry (goal <= 2 s);
- items ready: until the item browser has decoded and listed every item (after first paint);
- search: the in-page time of one filter pass + list redraw for a query typed into the search box
  (the browser's own `data-ms`, median of several queries; goal <= 300 ms).

    python benchmarks/gen_explore_run.py /tmp/exbig --models 12 --data-dir ../shared/trustmh
    python benchmarks/bench_report.py /tmp/exbig/run [--no-append]

It prints a table and appends a dated section to RESULTS.md. It asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.testing.cdp import Chromium  # noqa: E402  (the repo root goes on sys.path first)

QUERIES = ("lithium", "suicid", "onerror=alert", "the answer is", "anxious", "zzzz-not-there")
READY = "document.querySelector('#items') && document.querySelector('#items').dataset.ready"


def write_report(run: Path) -> tuple[float, float]:
    """(seconds, peak RSS MiB) of `python -m engine report RUN` in a child process."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "engine", "report", str(run)], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    return wall, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def measure_page(page_path: Path, repeat: int) -> dict[str, float]:
    paints, readies, searches = [], [], []
    for _ in range(repeat):
        with Chromium(width=1400, height=1000, timeout=120) as page:
            t0 = time.perf_counter()
            page.open(f"file://{page_path}")
            page.wait(READY, timeout=120)
            readies.append(time.perf_counter() - t0)
            fcp = page.eval("(performance.getEntriesByName('first-contentful-paint')[0] || {}).startTime || null")
            paints.append(float(fcp) / 1000 if isinstance(fcp, (int, float)) else float("nan"))
            for q in QUERIES:
                page.eval(f"""(() => {{ const s = document.querySelector('#items [data-f="q"]');
                    s.value = {q!r}; s.dispatchEvent(new Event('input')); }})()""")
                ms = page.eval("document.querySelector('#items').dataset.ms")
                searches.append(float(str(ms)))
            assert not page.console, page.console
    return {"first_paint_s": statistics.median(paints), "ready_s": statistics.median(readies),
            "search_ms_median": statistics.median(searches), "search_ms_max": max(searches)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-append", action="store_true")
    args = ap.parse_args()
    run = args.run.resolve()
    wall, rss = write_report(run)
    page = run / "report.html"
    sizes = {p.name: p.stat().st_size for p in (run / "responses").glob("*.jsonl")}
    m = measure_page(page, args.repeat)
    scores = orjson.loads((run / "scores.json").read_bytes())
    with Chromium() as p:
        p.open(f"file://{page}")
        p.wait(READY, timeout=120)
        n_items = int(str(p.eval("document.querySelector('#items').dataset.items")))
        n_answers = int(str(p.eval("document.querySelector('#items').dataset.answers")))
    rows = [
        ("run", f"{len(scores['models'])} models x {len(scores['subtasks'])} subtasks, {n_items} items, "
                f"{n_answers} answers, responses {sum(sizes.values()) / 2**20:.0f} MiB"),
        ("report (md + html)", f"{wall:.1f} s, peak RSS {rss:.0f} MiB"),
        ("report.html", f"{page.stat().st_size / 2**20:.1f} MiB"),
        ("first paint (FCP)", f"{m['first_paint_s']:.2f} s (goal <= 2 s: {'MET' if m['first_paint_s'] <= 2 else 'NOT MET'})"),
        ("every item listed", f"{m['ready_s']:.2f} s from navigation"),
        ("search (filter + redraw)", f"median {m['search_ms_median']:.0f} ms, max {m['search_ms_max']:.0f} ms "
                                     f"(goal <= 300 ms: {'MET' if m['search_ms_max'] <= 300 else 'NOT MET'})"),
    ]
    text = "\n".join(f"| {a} | {b} |" for a, b in rows)
    print(text)
    if not args.no_append:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True).stdout.strip()
        head = (f"\n## bench_report.py — {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, commit {commit}, "
                f"{platform.node() and 'this machine'} ({os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}), "
                f"Python {platform.python_version()}\n\n`python benchmarks/bench_report.py {args.run}` "
                f"(median of {args.repeat} page loads; queries {', '.join(QUERIES)}):\n\n| what | result |\n| --- | --- |\n")
        with open(ROOT / "benchmarks" / "RESULTS.md", "a", encoding="utf-8") as f:
            f.write(head + text + "\n")


if __name__ == "__main__":
    main()
