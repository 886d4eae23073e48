"""`verify DIR`: recompute the expected (model, pillar, subtask, item, sample) set from run.json and
compare it with responses/: missing, duplicated, failed and unexpected records."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import msgspec

from engine.checkpoint import iter_records
from engine.config import Config, parse_config
from engine.errors import EngineError
from engine.runstate import read_run_json


class VerifyReport(msgspec.Struct, kw_only=True):
    clean: bool
    lines: list[str]
    missing: int = 0
    duplicated: int = 0
    failed: int = 0


def verify(directory: Path) -> VerifyReport:
    from adapters.registry import make_adapter
    from engine.runner import RunSpec, item_factory
    from engine.scheduler import lane_units

    doc = read_run_json(directory)
    if doc is None:
        raise EngineError(f"{directory}: no run.json; is this a run output directory?")
    cfg: Config = parse_config(doc["config"], f"{directory}/run.json")
    spec = msgspec.convert(doc["spec"], RunSpec)
    factory = item_factory(spec)
    lines: list[str] = []
    totals = Counter[str]()
    for name in spec.models:
        if name not in cfg.models:
            continue
        adapter, _ = make_adapter(name, cfg.models[name], directory / "logs", with_secrets=False)
        expected = {u.key: (f"{u.item.pillar}/{u.item.subtask}", u.item.id, u.sample)
                    for u in lane_units(name, cfg.models[name], adapter, factory, spec.samples)}
        seen = Counter[str]()
        failed: list[str] = []
        for rec in iter_records(directory / "responses" / f"{name}.jsonl"):
            seen[rec.key] += 1
            if rec.error is not None and rec.key in expected:
                failed.append(f"{rec.pillar}/{rec.subtask} {rec.item_id} #{rec.sample}: {rec.error.kind} {rec.error.message[:80]}")
        missing = [k for k in expected if k not in seen]
        dupes = [k for k, n in seen.items() if n > 1]
        extra = [k for k in seen if k not in expected]
        totals.update(missing=len(missing), duplicated=len(dupes), failed=len(failed))
        state = "complete" if not (missing or dupes or failed) else "NOT clean"
        lines.append(f"{name}: {state}: expected {len(expected)}, present {len(seen)}, missing {len(missing)}, "
                     f"duplicated {len(dupes)}, failed {len(failed)}, not in plan {len(extra)}")
        for k in missing[:10]:
            sub, item_id, sample = expected[k]
            lines.append(f"  missing {sub} {item_id} #{sample}")
        if len(missing) > 10:
            lines.append(f"  ... and {len(missing) - 10} more missing")
        for k in dupes[:10]:
            lines.append(f"  duplicated key {k} ({seen[k]} lines)")
        for f in failed[:10]:
            lines.append(f"  failed {f}")
        if len(failed) > 10:
            lines.append(f"  ... and {len(failed) - 10} more failed (rerun with --retry-errors to retry them)")
    clean = not (totals["missing"] or totals["duplicated"] or totals["failed"])
    lines.append("verify: clean" if clean else "verify: NOT clean")
    return VerifyReport(clean=clean, lines=lines, missing=totals["missing"], duplicated=totals["duplicated"],
                        failed=totals["failed"])
