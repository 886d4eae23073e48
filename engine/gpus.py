"""Which local lanes take part in GPU placement, and `plan`'s placement section. The pool, the GPU
detection and the placement itself are adapters.servers.gpus; what a lane needs is its adapter's
registry entry's answer (`tensor_parallel_size` for vLLM without base_url; the embedded model too
when `[run] gpus` is set, so CI can exercise rotation without GPUs).
"""

from __future__ import annotations

from collections.abc import Sequence

from adapters import registry
from adapters.servers.gpus import detect_gpus, initial_placement
from engine.config import Config


def needs_gpus(cfg: Config, name: str, backend: str = "local") -> int:
    """GPUs the lane of `name` must hold while its server runs (0: takes no part in placement)."""
    if backend != "local":
        return 0  # Ray places actors on GPUs itself
    m = cfg.models[name]
    return registry.entry(m.adapter).lane_gpus(m, pinned=cfg.run.gpus is not None)


def render_placement(cfg: Config, models: Sequence[str], complete: set[str]) -> list[str]:
    """`plan`'s placement section: GPUs, first wave, queued models, complete ones never started."""
    needs = {n: needs_gpus(cfg, n) for n in models}
    needs = {n: k for n, k in needs.items() if k}
    if not needs:
        return []
    gpus, source = detect_gpus(cfg.run.gpus)
    lines = ["", (f"GPU placement: {len(gpus)} GPU(s) {','.join(gpus) or '-'} from {source}; "
                  "largest tensor_parallel_size first, freed GPUs go to the next model when a lane is done")]
    todo = {n: k for n, k in needs.items() if n not in complete}
    for name, n, got in initial_placement(todo, gpus):
        where = ("GPUs " + ",".join(got)) if got is not None else (
            "queued: starts when GPUs free up" if n <= len(gpus) else f"cannot run: needs {n} GPUs")
        lines.append(f"  {name:18} tp={n:<3} {where}")
    for name in sorted(set(needs) - set(todo)):
        lines.append(f"  {name:18} tp={needs[name]:<3} complete: never started")
    return lines

