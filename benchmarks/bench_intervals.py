"""What the 95% intervals cost `score` (engine/intervals.py): scores a run directory with the bootstrap
timed per subtask, then prints the first model's n and interval per subtask.

    python benchmarks/gen_explore_run.py /tmp/big --models 2 --data-dir ../shared/trustmh
    python benchmarks/bench_intervals.py /tmp/big/run
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import engine.scoring as sc  # noqa: E402  (the repo root goes on sys.path first)
from engine.core.subtask import ItemScore, Metric  # noqa: E402


def main(directory: Path) -> None:
    real = sc.with_interval
    per: dict[str, float] = {}

    def timed(m: Metric, agg: Callable[[Sequence[ItemScore]], Metric], scores: Sequence[ItemScore], *,
              seed: int, key: str, resamples: int | None = None) -> Metric:
        t = time.process_time()
        out = real(m, agg, scores, seed=seed, key=key, resamples=resamples)
        sub = key.rsplit("/", 1)[0]
        per[sub] = per.get(sub, 0.0) + time.process_time() - t
        return out

    sc.with_interval = timed
    t = time.process_time()
    doc = sc.score_run(directory, 0)
    total = time.process_time() - t
    slow = ", ".join(f"{k} {v:.1f}" for k, v in sorted(per.items(), key=lambda kv: -kv[1]) if v > 0.05)
    print(f"score_run CPU {total:.1f} s, of which intervals {sum(per.values()):.1f} s ({len(doc.models)} models); "
          f"subtasks over 0.05 s: {slow}")
    first = doc.models[0]
    for k, s in doc.subtasks.items():
        m = s.models[first]
        print(k, m.n, m.ci, m.ci_reason or "")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
