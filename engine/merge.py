"""`merge DIR`: N shard runs (engine/shards.py) into the normal layout, and the checks that `verify`
runs on a directory whose shards are not merged yet.

Merge checks that all N shards are there, that no key is in two files, that the shards ran the
same requests (fingerprints), then writes the normal layout (each file via temp + rename), writes
run.json and moves the shard files to `DIR/shards/<time>/`. A re-merge after a crash is
idempotent: a shard line already present byte for byte in the merged file is skipped.

Lines are copied as bytes (engine/store/jsonl.py), never decoded and re-encoded; run documents
are the typed ones (engine/core/rundoc.py), so lane statistics are summed field by field.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import msgspec
from msgspec import UNSET, UnsetType

from engine.config import Config
from engine.core.errors import EngineError, LockedError
from engine.core.rundoc import (
    LANE_STATES,
    Fingerprint,
    HistoryEntry,
    LaneSummary,
    Latency,
    RunDoc,
    RunSpec,
    ShardRun,
    ShardsDoc,
    TokenCounts,
)
from engine.run.stats import add_hist, latency_of
from engine.shards import Found, Partition, discover
from engine.spec import merged_spec
from engine.store.jsonl import describe, is_error, key_int, line_digest, line_key, whole_lines
from engine.store.lock import OutputLock
from engine.store.rundoc_io import read_run_doc, read_run_if_any, run_config, write_run

# -- combined view of shards (verify, merge) ---------------------------------------------------------


def _states(found: Found) -> dict[int, RunDoc]:
    docs: dict[int, RunDoc] = {}
    for i, p in sorted(found.states.items()):
        doc = read_run_doc(p)
        if doc is not None:
            docs[i] = doc
    return docs


def _merge_specs(base: RunSpec | None, specs: Iterable[RunSpec]) -> RunSpec:
    cur = base
    for s in specs:
        cur = merged_spec(cur, s)
    assert cur is not None
    return cur


def combined_doc(out: Path, found: Found, base: RunDoc | None) -> RunDoc:
    """A run.json view of the merged run.json (if any) and the shard states."""
    docs = list(_states(found).values())
    if not docs:
        if base is None:
            raise EngineError(f"{out}: shard files but no run.shard-I-of-{found.count}.json; was a shard run "
                              "interrupted before it started? rerun it")
        return base
    last = docs[-1]
    planned = dict(base.planned) if base else {}
    models_fp = dict(base.fingerprint.models) if base else {}
    for d in docs:
        for m, p in d.planned.items():
            planned[m] = {**planned.get(m, {}), **p}
        models_fp.update(d.fingerprint.models)
    spec = _merge_specs(base.spec if base else None, (d.spec for d in docs))
    fp = Fingerprint(data=last.fingerprint.data, models=models_fp, protocol=last.fingerprint.protocol)
    if base is None:
        return RunDoc(config=last.config, config_source=last.config_source, spec=spec, planned=planned, fingerprint=fp)
    return msgspec.structs.replace(base, config=last.config, config_source=last.config_source, spec=spec,
                                   planned=planned, fingerprint=fp, completion=UNSET)  # the files are rewritten


def fingerprint_conflicts(base: RunDoc | None, docs: dict[int, RunDoc], count: int) -> list[str]:
    out: list[str] = []
    data: dict[str, str] = {}
    models: dict[str, dict[str, str]] = {}
    who_fp = [("merged run.json", base.fingerprint)] if base is not None else []
    who_fp += [(f"shard {i}/{count}", d.fingerprint) for i, d in sorted(docs.items())]
    for who, fp in who_fp:
        if fp.data:
            data[who] = fp.data
        for m, v in fp.models.items():
            models.setdefault(m, {})[who] = v
    if len(set(data.values())) > 1:
        out.append(f"the shards ran over different data (items file or data dir): {', '.join(data)}")
    for m, by in models.items():
        if len(set(by.values())) > 1:
            out.append(f"model `{m}` had other request settings in {', '.join(by)}")
    return out


class StreamCheck(msgspec.Struct, kw_only=True):
    """One (kind, name) stream: its merged file and its shard files, checked for overlap."""

    kind: str
    name: str
    new: dict[int, int] = {}  # shard -> lines to add
    already: int = 0  # lines already in the merged file byte for byte (an earlier merge)
    replaced: int = 0  # merged fatal-error records replaced by a shard's retry (--retry-errors)
    overlaps: list[str] = []
    duplicates: list[str] = []
    n_overlap: int = 0
    n_duplicate: int = 0

    def problems(self) -> list[str]:
        """What merge and verify report for this stream: overlapping and duplicated keys."""
        lines: list[str] = []
        if self.n_overlap:
            lines.append(f"{self.kind}/{self.name}: {self.n_overlap} keys in more than one file, e.g.")
            lines += [f"  {x}" for x in self.overlaps]
        if self.n_duplicate:
            lines.append(f"{self.kind}/{self.name}: {self.n_duplicate} keys twice in one file, e.g.")
            lines += [f"  {x}" for x in self.duplicates]
        return lines


def check_stream(out: Path, kind: str, name: str, parts: dict[int, Path], count: int,
                 replace: set[str] | None = None) -> StreamCheck:
    """Overlap: a key in two shard files, or in a shard file and (with other content) in the
    merged file; duplicate: a key twice in one file. `replace` collects merged error records that a
    shard retried."""
    res = StreamCheck(kind=kind, name=name, new={}, overlaps=[], duplicates=[])
    base = out / kind / f"{name}.jsonl"
    # 64-bit key prefixes and line digests as ints: a million-record stream stays ~100 MB.
    base_keys: dict[int, tuple[int, bool]] = {}
    if base.exists():
        for line in whole_lines(base):
            k = key_int(line_key(line))
            if k in base_keys:
                res.n_duplicate += 1
                if len(res.duplicates) < 5:
                    res.duplicates.append(f"{describe(line)} twice in {kind}/{base.name}")
            base_keys[k] = (line_digest(line), is_error(line))
    seen: dict[int, int] = {}
    for i in sorted(parts):
        n = 0
        for line in whole_lines(parts[i]):
            k = key_int(line_key(line))
            prev = seen.get(k)
            if prev is not None:
                if prev == i:
                    res.n_duplicate += 1
                    if len(res.duplicates) < 5:
                        res.duplicates.append(f"{describe(line)} twice in {kind}/{parts[i].name}")
                else:
                    res.n_overlap += 1
                    if len(res.overlaps) < 5:
                        res.overlaps.append(f"{describe(line)} in shard {prev}/{count} and shard {i}/{count}")
                continue
            seen[k] = i
            b = base_keys.get(k)
            if b is not None:
                if b[0] == line_digest(line):
                    res.already += 1
                    continue
                if b[1] and kind == "responses":
                    res.replaced += 1
                    if replace is not None:
                        replace.add(line_key(line))
                    n += 1
                    continue
                res.n_overlap += 1
                if len(res.overlaps) < 5:
                    res.overlaps.append(f"{describe(line)} in shard {i}/{count} and in the merged {kind}/{base.name}")
                continue
            n += 1
        res.new[i] = n
    return res




# -- lane statistics over shards ---------------------------------------------------------------------

# Counters that add up over shards (wall time does not: the shards ran side by side).
_SUMMED = ("planned", "skipped", "done", "judged", "ok", "fatal", "exhausted", "sent", "retries", "rate_limited",
           "limit_pushbacks", "truncated", "requeried", "wait_s", "busy_s")


def _opt_sum(a: float | UnsetType, b: float | UnsetType) -> float | UnsetType:
    """A sometimes-present number summed: absent on one side counts as 0, absent on both stays absent."""
    if isinstance(a, UnsetType):
        return b
    return a if isinstance(b, UnsetType) else a + b


def _opt_counts(a: dict[str, int] | UnsetType, b: dict[str, int] | UnsetType) -> dict[str, int] | UnsetType:
    if isinstance(a, UnsetType) or isinstance(b, UnsetType):
        return b if isinstance(a, UnsetType) else a
    return {k: a.get(k, 0) + b.get(k, 0) for k in {**a, **b}}


def _worse(a: float | None, b: float | None) -> float | None:
    return b if b is not None and (a is None or b > a) else a


def _least_finished(a: str, b: str) -> str:
    if b in LANE_STATES and (a not in LANE_STATES or LANE_STATES.index(b) < LANE_STATES.index(a)):
        return b
    return a


def _first(pick: Callable[[float, float], float], a: float | UnsetType, b: float | UnsetType) -> float | UnsetType:
    if isinstance(a, UnsetType):
        return b
    return a if isinstance(b, UnsetType) else pick(a, b)


def add_lanes(a: LaneSummary, b: LaneSummary) -> LaneSummary:
    """One lane over two shards: counters summed, wall time the longest, latency percentiles over
    both histograms (shards written before histograms were kept: the highest shard's, an upper
    bound), state the least finished, the last message; where the lane ran (ray) is the first
    shard's."""
    summed = {f: getattr(a, f) + getattr(b, f) for f in _SUMMED}
    errors = dict(a.errors)
    for k, v in b.errors.items():
        errors[k] = errors.get(k, 0) + v
    tokens = TokenCounts(**{f: getattr(a.tokens, f) + getattr(b.tokens, f) for f in TokenCounts.__struct_fields__})
    latency = Latency(**{q: _worse(getattr(a.latency_s, q), getattr(b.latency_s, q)) for q in Latency.__struct_fields__})
    hist: dict[int, int] | UnsetType = UNSET
    if not isinstance(a.latency_hist, UnsetType) and not isinstance(b.latency_hist, UnsetType):
        hist = add_hist(a.latency_hist, b.latency_hist)  # both histograms: exact percentiles over both
        latency = latency_of(hist) if hist else latency
    return msgspec.structs.replace(
        a, **summed, errors=errors, tokens=tokens, latency_s=latency, latency_hist=hist,
        started_at=_first(min, a.started_at, b.started_at), ended_at=_first(max, a.ended_at, b.ended_at),
        wall_s=_worse(a.wall_s, b.wall_s),
        state=_least_finished(a.state, b.state), message=b.message or a.message,
        actor_restarts=_opt_sum(a.actor_restarts, b.actor_restarts), cost=_opt_sum(a.cost, b.cost),
        restart_causes=_opt_counts(a.restart_causes, b.restart_causes),
        cache_hits=_opt_sum(a.cache_hits, b.cache_hits), cache_misses=_opt_sum(a.cache_misses, b.cache_misses))


def sum_lanes(runs: Iterable[dict[str, LaneSummary]]) -> dict[str, LaneSummary]:
    """run.json `lanes` over shards (`add_lanes`), with the rates recomputed over the longest wall."""
    out: dict[str, LaneSummary] = {}
    for lanes in runs:
        for name, lane in lanes.items():
            cur = out.get(name)
            out[name] = lane if cur is None else add_lanes(cur, lane)
    for name, lane in out.items():
        if lane.wall_s:
            out[name] = msgspec.structs.replace(
                lane, requests_per_s=round(lane.done / lane.wall_s, 3),
                output_tokens_per_s=round(lane.tokens.completion / lane.wall_s, 3))
    return out


# -- merge -------------------------------------------------------------------------------------------


class MergeResult(msgspec.Struct, kw_only=True):
    code: int
    lines: list[str]
    merged: bool = False  # False: refused, nothing changed


def _write_merged(base: Path, parts: list[Path], drop: set[str], skip_identical: bool) -> int:
    """base (minus `drop` keys) + the parts' new lines -> base, atomically. Returns lines added."""
    tmp = base.with_name(f".{base.name}.merge.tmp")
    base.parent.mkdir(parents=True, exist_ok=True)
    have: set[int] = set()
    added = 0
    with open(tmp, "wb") as f:
        if base.exists():
            for line in whole_lines(base):
                if drop and line_key(line) in drop and is_error(line):
                    continue
                if skip_identical:
                    have.add(line_digest(line))
                f.write(line + b"\n")
        for p in parts:
            for line in whole_lines(p):
                if skip_identical and line_digest(line) in have:
                    continue
                f.write(line + b"\n")
                added += 1
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, base)
    return added


def merge(out: Path, log: Callable[[str], None] = lambda s: None) -> MergeResult:
    if not out.is_dir():
        raise EngineError(f"{out}: not a directory; pass a run output directory")
    lock = OutputLock(out)
    try:
        lock.acquire()
    except LockedError:
        raise LockedError(f"{out} is in use (a shard or another run is still running); merge when every shard "
                          "has finished") from None
    try:
        return _merge_locked(out, log)
    finally:
        lock.release()


class _Plan(msgspec.Struct, kw_only=True):
    """What merge found, before it changes anything."""

    found: Found
    base: RunDoc | None
    prior: dict[str, ShardRun]  # shards merged before (a shard rerun and merged again)
    docs: dict[int, RunDoc]
    problems: list[str]
    replace: dict[str, set[str]]  # model -> merged error records a shard retried


def _plan(out: Path) -> _Plan:
    found_all = discover(out)
    if not found_all:
        raise EngineError(f"{out}: no shard files to merge (run.shard-I-of-N.json, responses/*.shard-I-of-N.jsonl)")
    if len(found_all) > 1:
        raise EngineError(f"{out}: shards of different N ({', '.join(map(str, sorted(found_all)))}); merge one "
                          "sharding at a time: move the others aside")
    found = next(iter(found_all.values()))
    n = found.count
    base = read_run_if_any(out)
    prior = _prior_runs(base, n)
    problems = [f"missing shard {i}/{n}: no run.shard-{i}-of-{n}.json (run it with --shard {i}/{n})"
                for i in range(1, n + 1) if i not in found.states and str(i) not in prior]
    extra = sorted(i for i in found.states if i > n) + sorted(
        {i for parts in found.files.values() for i in parts if i > n or i < 1})
    problems += [f"shard {i}/{n} is out of range" for i in extra]
    docs = _states(found)
    if not docs:
        problems.append(f"shard files but no run.shard-I-of-{n}.json: rerun the shards")
    problems += fingerprint_conflicts(base, docs, n)
    replace: dict[str, set[str]] = {}
    for (kind, name), parts in sorted(found.files.items()):
        if kind in ("errors", "batches"):  # not records: nothing to check
            continue
        rep: set[str] = set()
        problems += check_stream(out, kind, name, parts, n, rep).problems()
        if rep:
            replace[name] = rep
    return _Plan(found=found, base=base, prior=prior, docs=docs, problems=problems, replace=replace)


def _merged_run(out: Path, plan: _Plan, status: str) -> RunDoc:
    """run.json after the merge: the combined document with the shards' lanes summed, every
    shard's own state kept under `shards.runs`, and a history entry for the merge."""
    n, docs = plan.found.count, plan.docs
    last = docs[max(docs)]
    runs = {**plan.prior, **{str(i): ShardRun(status=d.status, started_at=d.started_at, ended_at=d.ended_at,
                                              lanes=d.lanes, history=d.history) for i, d in sorted(docs.items())}}
    doc = combined_doc(out, plan.found, plan.base)
    started = min((d.started_at or 0) for d in docs.values()) or None
    ended = time.time()
    lanes = {**(plan.base.lane_map if plan.base else {}),
             **sum_lanes(r.lanes for _, r in sorted(runs.items(), key=lambda t: int(t[0]))
                         if not isinstance(r.lanes, UnsetType))}
    partition = Partition.of(_config_of(last), n)
    return msgspec.structs.replace(
        doc, format=1, packages=last.packages, started_at=started, ended_at=ended, status=status, lanes=lanes,
        shards=ShardsDoc(count=n, partition=partition.doc(), merged_at=time.time(), runs=runs),
        history=[*doc.history, HistoryEntry(started_at=started, ended_at=ended, status=status, argv=sys.argv[1:],
                                            merged_shards=n)])


def _merge_locked(out: Path, log: Callable[[str], None]) -> MergeResult:
    plan = _plan(out)
    found, n = plan.found, plan.found.count
    if plan.problems:
        return MergeResult(code=1, lines=[f"merge {out}: refused, nothing changed:"] + [f"  {p}" for p in plan.problems])
    lines: list[str] = []
    # Statuses: a shard that did not complete is merged as it is and reported.
    incomplete = []
    for i in range(1, n + 1):
        st = plan.docs[i].status if i in plan.docs else plan.prior[str(i)].status
        if st != "complete":
            why = "killed or still held" if st == "running" else st
            incomplete.append(i)
            lines.append(f"shard {i}/{n}: {why}; rerun it with --shard {i}/{n} and merge again")
    # 1. the merged data files (each atomically; idempotent if interrupted and rerun)
    for (kind, name), parts in sorted(found.files.items()):
        ordered = [parts[i] for i in sorted(parts)]
        added = _write_merged(out / kind / f"{name}.jsonl", ordered,
                              plan.replace.get(name, set()) if kind == "responses" else set(), skip_identical=True)
        if kind in ("responses", "judgments"):
            lines.append(f"{kind}/{name}.jsonl: {added} lines from {len(ordered)} shard files")
    # 2. run.json
    status = "complete" if not incomplete else "incomplete"
    write_run(out, _merged_run(out, plan, status))
    # 3. shard files aside
    dest = _move_aside(out, found)
    lines.append(f"merged {n} shards into {out} (status {status}); shard files moved to {dest}")
    return MergeResult(code=1 if incomplete else 0, lines=lines, merged=True)


def _move_aside(out: Path, found: Found) -> Path:
    dest = out / "shards" / time.strftime("%Y%m%d-%H%M%S")
    while dest.exists():
        dest = dest.with_name(dest.name + "x")
    moved = [p for parts in found.files.values() for p in parts.values()] + list(found.states.values())
    for p in moved:
        rel = p.relative_to(out)
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(p), str(dest / rel))
    for i in range(1, found.count + 1):
        try:
            (out / f".lock.shard-{i}-of-{found.count}").unlink()
        except FileNotFoundError:
            pass
    return dest


def _prior_runs(base: RunDoc | None, n: int) -> dict[str, ShardRun]:
    sh = base.shards if base is not None else UNSET
    return dict(sh.runs) if not isinstance(sh, UnsetType) and sh.count == n else {}


def _config_of(doc: RunDoc) -> Config:
    return run_config(doc, "run.shard.json")


# -- verify ------------------------------------------------------------------------------------------


def shard_problems(out: Path, found_all: dict[int, Found], doc: RunDoc | None) -> tuple[RunDoc | None, list[str]]:
    """For `verify` on a directory with unmerged shards: the combined run doc, and what is wrong
    with the shards themselves (missing, of another N, unfinished, other request settings)."""
    problems: list[str] = []
    if len(found_all) > 1:
        problems.append(f"shards: files of different N ({', '.join(map(str, sorted(found_all)))}) in one directory")
    for n, found in sorted(found_all.items()):
        base = doc
        doc = combined_doc(out, found, doc)
        prior = _prior_runs(base, n)
        for i in range(1, n + 1):
            if i not in found.states and str(i) not in prior:
                problems.append(f"shards: missing shard {i}/{n} (no run.shard-{i}-of-{n}.json); "
                                f"run it with --shard {i}/{n}")
        docs = _states(found)
        for i, d in sorted(docs.items()):
            if d.status != "complete":
                st = d.status
                problems.append(f"shards: shard {i}/{n} is {'killed or still running' if st == 'running' else st}")
        problems += [f"shards: {p}" for p in fingerprint_conflicts(base, docs, n)]
    return doc, problems


def judgment_overlaps(out: Path, found_all: dict[int, Found]) -> list[str]:
    lines: list[str] = []
    for n, found in sorted(found_all.items()):
        for (kind, name), parts in sorted(found.files.items()):
            if kind != "judgments":
                continue
            lines += check_stream(out, kind, name, parts, n).problems()
    return lines
