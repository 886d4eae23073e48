#!/usr/bin/env python
"""One shell command timed in several checkouts, interleaved, for start-up comparisons on a busy machine.

    python benchmarks/interleaved.py 20 'python -m engine --help' ../old-checkout .

Runs the command N times in each checkout in turn (cwd and PYTHONPATH = the checkout) and prints, per
checkout, the median wall time and the median CPU time (user + sys of the command and its children).
On a shared machine the wall time follows the load; the CPU time barely does, so compare CPU first.
Each checkout should have run the command once before (its __pycache__ written) when the comparison
is about start-up rather than byte-compilation.
"""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
import time


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print(__doc__)
        return 2
    n, cmd, dirs = int(argv[0]), argv[1], argv[2:]
    walls: dict[str, list[float]] = {d: [] for d in dirs}
    cpus: dict[str, list[float]] = {d: [] for d in dirs}
    for _ in range(n):
        for d in dirs:
            env = dict(os.environ, PYTHONPATH=os.path.abspath(d))
            r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            t = time.perf_counter()
            subprocess.run(cmd, shell=True, cwd=d, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           check=False)
            walls[d].append(time.perf_counter() - t)
            r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpus[d].append(r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime)
    for d in dirs:
        w, c = walls[d], cpus[d]
        print(f"{d}: wall median {statistics.median(w) * 1e3:.0f} ms (min {min(w) * 1e3:.0f}, max {max(w) * 1e3:.0f}); "
              f"CPU median {statistics.median(c) * 1e3:.0f} ms (min {min(c) * 1e3:.0f}); n={n}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
