"""`verify DIR`: recompute the expected (model, pillar, subtask, item, sample) set from run.json and
compare it with responses/: missing, duplicated, failed and unexpected records; then judgments/
the same way (engine/verify_judgments.py). A directory with
unmerged shards (`run --shard I/N`) is checked as a whole: every shard file is read, and missing
shards and keys in more than one file (overlap) are reported."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import msgspec

from adapters.registry import make_adapter
from engine.core.errors import EngineError
from engine.merge import judgment_overlaps, shard_problems
from engine.run.units import lane_units
from engine.shards import discover
from engine.spec import item_factory
from engine.store.checkpoint import iter_records
from engine.store.rundoc_io import RUN_JSON, no_run_json, read_run_if_any, run_config
from engine.verify_judgments import JudgmentCheck


class VerifyReport(msgspec.Struct, kw_only=True):
    clean: bool
    lines: list[str]
    missing: int = 0
    duplicated: int = 0
    failed: int = 0
    overlapping: int = 0
    judgments_missing: int = 0
    judgments_duplicated: int = 0
    judgments_failed: int = 0


def verify(directory: Path) -> VerifyReport:
    doc = read_run_if_any(directory)
    found = discover(directory)
    lines: list[str] = []
    totals = Counter[str]()
    if found:
        doc, problems = shard_problems(directory, found, doc)
        lines += problems
        totals["shards"] += len(problems)
    if doc is None:
        raise EngineError(no_run_json(Path(directory)))
    cfg = run_config(doc, f"{directory}/{RUN_JSON}")
    spec = doc.spec
    factory = item_factory(spec)
    judged = JudgmentCheck(cfg, spec, directory)
    for name in spec.models:
        if name not in cfg.models:
            continue
        adapter, _ = make_adapter(name, cfg.models[name], directory / "logs", with_secrets=False)
        expected: dict[str, tuple[str, str, int]] = {}
        for u in lane_units(name, cfg.models[name], adapter, factory, spec.samples):
            expected[u.key] = (f"{u.item.pillar}/{u.item.subtask}", u.item.id, u.sample)
            judged.plan(u)
        seen = Counter[str]()
        failed: list[str] = []
        files = [directory / "responses" / f"{name}.jsonl"]
        for f in found.values():
            files += [p for _, p in sorted(f.files.get(("responses", name), {}).items())]
        dupes_d: dict[str, None] = {}
        overlap: dict[str, None] = {}  # keys in more than one file (shards)
        for path in files:
            local: set[str] = set()
            for rec in iter_records(path):
                if rec.key in local:
                    dupes_d[rec.key] = None
                elif rec.key in seen:
                    overlap[rec.key] = None
                local.add(rec.key)
                seen[rec.key] += 1
                if rec.response is not None:
                    judged.answered.add(rec.key)
                if rec.error is not None and rec.key in expected:
                    failed.append(f"{rec.pillar}/{rec.subtask} {rec.item_id} #{rec.sample}: {rec.error.kind} {rec.error.message[:80]}")
        missing = [k for k in expected if k not in seen]
        dupes = list(dupes_d)
        extra = [k for k in seen if k not in expected]
        totals.update(missing=len(missing), duplicated=len(dupes), failed=len(failed), overlapping=len(overlap))
        state = "complete" if not (missing or dupes or failed or overlap) else "NOT clean"
        lines.append(f"{name}: {state}: expected {len(expected)}, present {len(seen)}, missing {len(missing)}, "
                     f"duplicated {len(dupes)}, failed {len(failed)}, not in plan {len(extra)}"
                     + (f", in two shard files {len(overlap)}" if found else ""))
        for k in list(overlap)[:10]:
            sub, item_id, sample = expected.get(k, ("?", "?", "?"))
            lines.append(f"  overlapping key {k} ({sub} {item_id} #{sample}) in {seen[k]} files")
        for k in missing[:10]:
            sub, item_id, sample = expected[k]
            lines.append(f"  missing {sub} {item_id} #{sample}")
        if len(missing) > 10:
            lines.append(f"  ... and {len(missing) - 10} more missing")
        for k in dupes[:10]:
            lines.append(f"  duplicated key {k} ({seen[k]} lines)")
        for failure in failed[:10]:
            lines.append(f"  failed {failure}")
        if len(failed) > 10:
            lines.append(f"  ... and {len(failed) - 10} more failed (rerun with --retry-errors to retry them)")
    jlines, jt = judged.check(directory, found)
    lines += jlines
    if found:
        jl = judgment_overlaps(directory, found)
        lines += jl
        totals["shards"] += len(jl)
    clean = not (totals["missing"] or totals["duplicated"] or totals["failed"] or totals["overlapping"]
                 or totals["shards"] or jt.missing or jt.duplicated or jt.failed)
    lines.append("verify: clean" if clean else "verify: NOT clean")
    return VerifyReport(clean=clean, lines=lines, missing=totals["missing"], duplicated=totals["duplicated"],
                        failed=totals["failed"], overlapping=totals["overlapping"], judgments_missing=jt.missing,
                        judgments_duplicated=jt.duplicated, judgments_failed=jt.failed)
