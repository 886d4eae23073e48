"""Shards: `run --shard I/N` for batch schedulers (Slurm arrays and the like), and `merge DIR`.

Partition (deterministic, the same on every machine and every run; a function of the config, N and
the unit key only):

* local models (adapters embedded, vllm, vllm-offline) go whole to one shard, so a shard starts
  only the servers of its own models: the config's local models, sorted by name, are dealt
  round-robin (the i-th goes to shard i mod N + 1), which balances them (each shard gets
  floor(M/N) or ceil(M/N) of them) and does not depend on `--models`;
* every other unit goes to shard int(key[:8], 16) mod N + 1 (the key is the request hash);
* a judgment belongs to the shard that owns the judged response: the judge lane runs in every
  shard that has judged responses (a local judge is started by each such shard).

Files: each shard writes `responses/<model>.shard-I-of-N.jsonl`, `errors/…`, `judgments/<judge>.shard-
I-of-N.jsonl`, its run state `run.shard-I-of-N.json` and server logs under `logs/shard-I-of-N/`, and
takes its own lock `.lock.shard-I-of-N` plus a shared lock on `.lock` (so an unsharded run or a
merge, which take `.lock` exclusively, cannot run at the same time as a shard, while shards never
block each other). A shard's resume scan reads its own files and the merged files (work merged
earlier is not redone).

`merge DIR` checks that all N shards are there, that no key is in two files, that the shards ran
the same requests (fingerprints), then writes the normal layout (each file via temp + rename),
writes run.json and moves the shard files to `DIR/shards/<time>/`. A re-merge after a crash is
idempotent: a shard line already present byte for byte in the merged file is skipped.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import orjson

from adapters import registry
from engine.checkpoint import OutputLock, iter_records, key_int, scan_responses
from engine.config import Config, ModelConfig
from engine.core.errors import EngineError, LockedError
from engine.runstate import read_run_json, write_run_json

KINDS = ("responses", "errors", "judgments")
_FILE = re.compile(r"^(?P<name>.+)\.shard-(?P<i>[0-9]+)-of-(?P<n>[0-9]+)\.jsonl$")
_STATE = re.compile(r"^run\.shard-(?P<i>[0-9]+)-of-(?P<n>[0-9]+)\.json$")
_SHARD_ARG = re.compile(r"^\s*([0-9]+)\s*/\s*([0-9]+)\s*$")
_ERROR_FIELD = b',"error":{'


class Shard(msgspec.Struct, frozen=True):
    index: int  # 1-based
    count: int

    @property
    def tag(self) -> str:
        return f"shard-{self.index}-of-{self.count}"

    @property
    def suffix(self) -> str:
        return f".{self.tag}"

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(text: str) -> Shard:
    m = _SHARD_ARG.match(text)
    if m is None:
        raise EngineError(f"--shard {text}: expected I/N (e.g. --shard 2/8: the 2nd of 8 shards, I from 1 to N)")
    i, n = int(m.group(1)), int(m.group(2))
    if n < 1 or not 1 <= i <= n:
        raise EngineError(f"--shard {text}: I must be between 1 and N and N >= 1 (e.g. --shard 1/{max(n, 1)})")
    return Shard(i, n)


def is_local(cfg: ModelConfig) -> bool:
    return registry.entry(cfg.adapter).local


class Partition:
    """Which shard (1-based) owns a unit."""

    def __init__(self, models: dict[str, ModelConfig], count: int) -> None:
        self.count = count
        local = sorted(n for n, m in models.items() if is_local(m))
        self.local = {name: i % count + 1 for i, name in enumerate(local)}

    @classmethod
    def of(cls, cfg: Config, count: int) -> Partition:
        return cls(dict(cfg.models), count)

    def owner(self, model: str, key: str) -> int:
        s = self.local.get(model)
        return s if s is not None else int(key[:8], 16) % self.count + 1

    def has_model(self, model: str, index: int) -> bool:
        """Whether shard `index` can own any unit of `model` (as a target)."""
        s = self.local.get(model)
        return s is None or s == index

    def keep(self, model: str, index: int) -> Callable[[Any], bool] | None:
        """A unit filter for a lane of `model` in shard `index` (None: the lane keeps all)."""
        if model in self.local:
            return None
        count = self.count
        want = index - 1
        return lambda u: int(u.key[:8], 16) % count == want

    def to_dict(self) -> dict[str, Any]:
        return {"count": self.count, "local_models": self.local, "api": "int(key[:8], 16) % N + 1"}


# -- paths -----------------------------------------------------------------------------------------


def suffix(shard: Shard | None) -> str:
    return shard.suffix if shard is not None else ""


def state_name(shard: Shard) -> str:
    return f"run.{shard.tag}.json"


def read_state(out: Path, shard: Shard) -> dict[str, Any] | None:
    path = out / state_name(shard)
    return orjson.loads(path.read_bytes()) if path.exists() else None


def write_state(out: Path, shard: Shard | None, doc: dict[str, Any]) -> None:
    if shard is None:
        write_run_json(out, doc)
        return
    path = out / state_name(shard)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS))
    os.replace(tmp, path)


class Found(msgspec.Struct):
    """Shard runs of one N present in a directory."""

    count: int
    states: dict[int, Path]  # shard index -> run.shard-I-of-N.json
    files: dict[tuple[str, str], dict[int, Path]]  # (kind, name) -> shard index -> file


def discover(out: Path) -> dict[int, Found]:
    """Unmerged shard files in `out`, by N."""
    found: dict[int, Found] = {}

    def get(n: int) -> Found:
        return found.setdefault(n, Found(n, {}, {}))

    if not out.is_dir():
        return found
    for p in out.iterdir():
        m = _STATE.match(p.name)
        if m and p.is_file():
            get(int(m.group("n"))).states[int(m.group("i"))] = p
    for kind in KINDS:
        d = out / kind
        if not d.is_dir():
            continue
        for p in d.iterdir():
            m = _FILE.match(p.name)
            if m and p.is_file():
                get(int(m.group("n"))).files.setdefault((kind, m.group("name")), {})[int(m.group("i"))] = p
    return found


def check_layout(out: Path, shard: Shard | None) -> None:
    """An unsharded run on a directory with unmerged shards would redo their work (and a shard
    run of another N would overlap them): refuse both before anything is written."""
    found = discover(out)
    if shard is None:
        if found:
            n = ", ".join(str(k) for k in sorted(found))
            raise EngineError(f"{out} holds unmerged shard files (N = {n}); run `python -m engine merge {out}` "
                              f"first, or add --shard I/{min(found)} to run one of those shards")
        return
    other = sorted(n for n in found if n != shard.count)
    if other:
        raise EngineError(f"{out} holds unmerged shards of N = {', '.join(map(str, other))}, not {shard.count}; "
                          f"run `python -m engine merge {out}` first, or use --shard I/{other[0]}")


# -- lock ------------------------------------------------------------------------------------------


class ShardLock:
    """`flock` LOCK_SH on DIR/.lock (shards share it; an unsharded run or a merge takes it
    exclusively) plus LOCK_EX on DIR/.lock.shard-I-of-N. The kernel drops both when the process
    dies, so kill -9 never blocks the resume."""

    def __init__(self, directory: Path, shard: Shard) -> None:
        self.directory = directory
        self.shard = shard
        self._fds: list[int] = []

    def acquire(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        shared = os.open(self.directory / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(shared, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(shared, 32, 0).decode(errors="replace").strip() or "?"
            os.close(shared)
            raise LockedError(f"{self.directory} is in use by an unsharded run or a merge (pid {holder}); "
                              "wait for it to finish") from None
        own_path = self.directory / f".lock.{self.shard.tag}"
        own = os.open(own_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(own, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(own, 32, 0).decode(errors="replace").strip() or "?"
            os.close(own)
            os.close(shared)
            raise LockedError(f"{self.directory}: shard {self.shard} is in use by another run (pid {holder}); "
                              "wait for it to finish") from None
        os.ftruncate(own, 0)
        os.pwrite(own, str(os.getpid()).encode(), 0)
        self._fds = [own, shared]

    def release(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds = []


def make_lock(out: Path, shard: Shard | None) -> OutputLock | ShardLock:
    return OutputLock(out) if shard is None else ShardLock(out, shard)


# -- resume ----------------------------------------------------------------------------------------


def merged_done(path: Path, *, drop_errors: bool) -> set[int]:
    """Keys of a merged file, read by a shard run (never rewritten: other shards read it too).
    With --retry-errors its fatal-error records are left out, so the shard retries them; merge
    then replaces the error record with the new outcome."""
    done = scan_responses(path).done
    if drop_errors and path.exists():
        for line in _lines(path):
            if _ERROR_FIELD in line and orjson.loads(line).get("error") is not None:
                done.discard(key_int(line[8:40].decode()))
    return done


def supersede_shard(out: Path, shard: Shard) -> Path | None:
    """--fresh with --shard: this shard's own files move aside (merged results are refused: they
    belong to every shard)."""
    if (out / "run.json").exists():
        raise EngineError(f"--fresh --shard: {out} holds merged results (run.json) shared by every shard; "
                          "use another --output, or move them aside yourself")
    names = [out / k / f"{p.name}" for k in KINDS if (out / k).is_dir()
             for p in (out / k).glob(f"*{shard.suffix}.jsonl")]
    state = out / state_name(shard)
    if state.exists():
        names.append(state)
    if not names:
        return None
    dest = out / "superseded" / time.strftime("%Y%m%d-%H%M%S") / shard.tag
    for p in names:
        rel = p.relative_to(out)
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(p), str(dest / rel))
    return dest


def response_sources(out: Path, name: str, shard: Shard | None,
                     partition: Partition | None) -> list[tuple[Path, Callable[[Any], bool] | None]]:
    """The response files a run reads back for judging, each with a record filter: unsharded, the
    model's file; a shard, its own file plus the merged records it owns."""
    base = out / "responses" / f"{name}.jsonl"
    if shard is None or partition is None:
        return [(base, None)]
    idx = shard.index
    return [(out / "responses" / f"{name}{shard.suffix}.jsonl", None),
            (base, lambda r: partition.owner(r.model, r.key) == idx)]


def iter_sources(sources: list[tuple[Path, Callable[[Any], bool] | None]]) -> Iterator[Any]:
    for path, keep in sources:
        for rec in iter_records(path):
            if keep is None or keep(rec):
                yield rec


# -- reading lines ----------------------------------------------------------------------------------


def _lines(path: Path) -> Iterator[bytes]:
    """Whole lines of a JSONL file (an unterminated last line, left by a kill, is not one)."""
    with open(path, "rb") as f:
        rest = b""
        while block := f.read(8 << 20):
            block = rest + block
            cut = block.rfind(b"\n") + 1
            rest = block[cut:]
            for line in block[:cut].split(b"\n")[:-1]:
                if line.strip():
                    yield line


def _digest(line: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(line, digest_size=8).digest(), "big")


def _key(line: bytes) -> str:
    if not line.startswith(b'{"key":"'):
        raise EngineError(f"not a record line (no leading key): {line[:80]!r}")
    return line[8:40].decode()


def _describe(line: bytes) -> str:
    try:
        d = orjson.loads(line)
    except orjson.JSONDecodeError:
        return _key(line)
    who = d.get("model", "?")
    if d.get("judge"):
        who = f"{d['judge']} judging {who}"
    return f"{who} {d.get('pillar')}/{d.get('subtask')} {d.get('item_id')} #{d.get('sample')} (key {d['key'][:12]}…)"


# -- combined view of shards (verify, merge) ---------------------------------------------------------


def _merge_specs(base: dict[str, Any] | None, specs: list[dict[str, Any]]) -> dict[str, Any]:
    from engine.spec import RunSpec, merged_spec

    cur: dict[str, Any] = dict(base) if base else {}
    for s in specs:
        cur = merged_spec(cur, msgspec.convert(s, RunSpec))
    return cur


def combined_doc(out: Path, found: Found, base: dict[str, Any] | None) -> dict[str, Any]:
    """A run.json-shaped view of the merged run.json (if any) and the shard states."""
    docs = [orjson.loads(found.states[i].read_bytes()) for i in sorted(found.states)]
    if not docs:
        if base is None:
            raise EngineError(f"{out}: shard files but no run.shard-I-of-{found.count}.json; was a shard run "
                              "interrupted before it started? rerun it")
        return base
    doc: dict[str, Any] = dict(base or {})
    last = docs[-1]
    doc["config"] = last["config"]
    doc["config_source"] = last.get("config_source", "")
    doc["spec"] = _merge_specs((base or {}).get("spec"), [d["spec"] for d in docs])
    planned = dict((base or {}).get("planned", {}))
    models_fp = dict((base or {}).get("fingerprint", {}).get("models", {}))
    for d in docs:
        for m, p in d.get("planned", {}).items():
            planned[m] = {**planned.get(m, {}), **p}
        models_fp.update(d.get("fingerprint", {}).get("models", {}))
    doc["planned"] = planned
    doc["fingerprint"] = {"data": last.get("fingerprint", {}).get("data"), "models": models_fp}
    return doc


def fingerprint_conflicts(base: dict[str, Any] | None, docs: dict[int, dict[str, Any]], count: int) -> list[str]:
    out: list[str] = []
    data: dict[str, str] = {}
    models: dict[str, dict[str, str]] = {}
    if base is not None and base.get("fingerprint"):
        fp = base["fingerprint"]
        if fp.get("data"):
            data["merged run.json"] = fp["data"]
        for m, v in fp.get("models", {}).items():
            models.setdefault(m, {})["merged run.json"] = v
    for i, d in sorted(docs.items()):
        fp = d.get("fingerprint", {})
        who = f"shard {i}/{count}"
        if fp.get("data"):
            data[who] = fp["data"]
        for m, v in fp.get("models", {}).items():
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
        for line in _lines(base):
            k = key_int(_key(line))
            if k in base_keys:
                res.n_duplicate += 1
                if len(res.duplicates) < 5:
                    res.duplicates.append(f"{_describe(line)} twice in {kind}/{base.name}")
            base_keys[k] = (_digest(line), _ERROR_FIELD in line and orjson.loads(line).get("error") is not None)
    seen: dict[int, int] = {}
    for i in sorted(parts):
        n = 0
        for line in _lines(parts[i]):
            k = key_int(_key(line))
            prev = seen.get(k)
            if prev is not None:
                if prev == i:
                    res.n_duplicate += 1
                    if len(res.duplicates) < 5:
                        res.duplicates.append(f"{_describe(line)} twice in {kind}/{parts[i].name}")
                else:
                    res.n_overlap += 1
                    if len(res.overlaps) < 5:
                        res.overlaps.append(f"{_describe(line)} in shard {prev}/{count} and shard {i}/{count}")
                continue
            seen[k] = i
            b = base_keys.get(k)
            if b is not None:
                if b[0] == _digest(line):
                    res.already += 1
                    continue
                if b[1] and kind == "responses":
                    res.replaced += 1
                    if replace is not None:
                        replace.add(_key(line))
                    n += 1
                    continue
                res.n_overlap += 1
                if len(res.overlaps) < 5:
                    res.overlaps.append(f"{_describe(line)} in shard {i}/{count} and in the merged {kind}/{base.name}")
                continue
            n += 1
        res.new[i] = n
    return res


# -- merge -----------------------------------------------------------------------------------------


def _sum_lanes(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """run.json `lanes` over shards: counters summed, wall time the longest, latency percentiles
    the highest shard's (an upper bound), state the least finished."""
    order = ["failed", "stopped", "interrupted", "incomplete", "starting", "running", "pending", "complete"]
    out: dict[str, Any] = {}
    for lanes in runs:
        for name, d in lanes.items():
            cur = out.get(name)
            if cur is None:
                out[name] = {**d, "errors": dict(d.get("errors") or {}), "tokens": dict(d.get("tokens") or {}),
                             "latency_s": dict(d.get("latency_s") or {})}
                continue
            for k, v in d.items():
                if k in ("state", "message", "requests_per_s", "output_tokens_per_s"):
                    continue
                if k == "errors" or k == "tokens":
                    for ek, ev in (v or {}).items():
                        cur[k][ek] = cur[k].get(ek, 0) + ev
                elif k == "latency_s":
                    for q, x in (v or {}).items():
                        if x is not None and (cur[k].get(q) is None or x > cur[k][q]):
                            cur[k][q] = x
                elif k == "wall_s":
                    if v is not None and (cur.get(k) is None or v > cur[k]):
                        cur[k] = v
                elif isinstance(v, (int, float)) and not isinstance(v, bool):
                    cur[k] = (cur.get(k) or 0) + v
            a, b = cur.get("state"), d.get("state")
            if b in order and (a not in order or order.index(b) < order.index(a)):
                cur["state"] = b
            if d.get("message"):
                cur["message"] = d["message"]
    for d in out.values():
        wall = d.get("wall_s")
        if wall:
            d["requests_per_s"] = round((d.get("done") or 0) / wall, 3)
            d["output_tokens_per_s"] = round((d.get("tokens") or {}).get("completion", 0) / wall, 3)
    return out


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
            for line in _lines(base):
                if drop and _key(line) in drop and _ERROR_FIELD in line:
                    continue
                if skip_identical:
                    have.add(_digest(line))
                f.write(line + b"\n")
        for p in parts:
            for line in _lines(p):
                if skip_identical and _digest(line) in have:
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


def _merge_locked(out: Path, log: Callable[[str], None]) -> MergeResult:
    found_all = discover(out)
    if not found_all:
        raise EngineError(f"{out}: no shard files to merge (run.shard-I-of-N.json, responses/*.shard-I-of-N.jsonl)")
    if len(found_all) > 1:
        raise EngineError(f"{out}: shards of different N ({', '.join(map(str, sorted(found_all)))}); merge one "
                          "sharding at a time: move the others aside")
    found = next(iter(found_all.values()))
    n = found.count
    lines: list[str] = []
    problems: list[str] = []
    base = read_run_json(out)
    prior = _prior_runs(base, n)  # shards merged before (a shard rerun and merged again)
    missing = [i for i in range(1, n + 1) if i not in found.states and str(i) not in prior]
    for i in missing:
        problems.append(f"missing shard {i}/{n}: no run.shard-{i}-of-{n}.json (run it with --shard {i}/{n})")
    extra = sorted(i for i in found.states if i > n) + sorted(
        {i for parts in found.files.values() for i in parts if i > n or i < 1})
    for i in extra:
        problems.append(f"shard {i}/{n} is out of range")
    docs = {i: orjson.loads(p.read_bytes()) for i, p in found.states.items()}
    if not docs:
        problems.append(f"shard files but no run.shard-I-of-{n}.json: rerun the shards")
    problems += fingerprint_conflicts(base, docs, n)

    replace: dict[str, set[str]] = {}
    checks: list[StreamCheck] = []
    for (kind, name), parts in sorted(found.files.items()):
        if kind == "errors":
            continue
        rep: set[str] = set()
        c = check_stream(out, kind, name, parts, n, rep)
        checks.append(c)
        if rep:
            replace[name] = rep
        problems += c.problems()
    if problems:
        return MergeResult(code=1, lines=[f"merge {out}: refused, nothing changed:"] + [f"  {p}" for p in problems])

    # Statuses: a shard that did not complete is merged as it is and reported.
    incomplete = []
    for i in range(1, n + 1):
        st = docs[i].get("status") if i in docs else prior[str(i)].get("status")
        if st != "complete":
            why = "killed or still held" if st == "running" else st
            incomplete.append(i)
            lines.append(f"shard {i}/{n}: {why}; rerun it with --shard {i}/{n} and merge again")

    # 1. the merged data files (each atomically; idempotent if interrupted and rerun)
    for (kind, name), parts in sorted(found.files.items()):
        ordered = [parts[i] for i in sorted(parts)]
        added = _write_merged(out / kind / f"{name}.jsonl", ordered,
                              replace.get(name, set()) if kind == "responses" else set(), skip_identical=True)
        if kind != "errors":
            lines.append(f"{kind}/{name}.jsonl: {added} lines from {len(ordered)} shard files")

    # 2. run.json
    last = docs[max(docs)]
    partition = Partition.of(_config_of(last), n)
    doc = combined_doc(out, found, base)
    runs = {**prior, **{str(i): {k: docs[i].get(k) for k in ("status", "started_at", "ended_at", "lanes", "history",
                                                              "nodes") if k in docs[i]} for i in sorted(docs)}}
    status = "complete" if not incomplete else "incomplete"
    doc.update({
        "format": 1,
        "packages": last.get("packages", {}),
        "started_at": min((d.get("started_at") or 0) for d in docs.values()) or None,
        "ended_at": time.time(),
        "status": status,
        "lanes": {**(base or {}).get("lanes", {}),
                  **_sum_lanes([runs[i].get("lanes") or {} for i in sorted(runs, key=int)])},
        "shards": {"count": n, "partition": partition.to_dict(), "merged_at": time.time(), "runs": runs},
    })
    doc.setdefault("history", [])
    doc["history"].append({"started_at": doc["started_at"], "ended_at": doc["ended_at"], "status": status,
                           "argv": sys.argv[1:], "merged_shards": n})
    write_run_json(out, doc)

    # 3. shard files aside
    dest = out / "shards" / time.strftime("%Y%m%d-%H%M%S")
    while dest.exists():
        dest = dest.with_name(dest.name + "x")
    moved = [p for parts in found.files.values() for p in parts.values()] + list(found.states.values())
    for p in moved:
        rel = p.relative_to(out)
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(p), str(dest / rel))
    for i in range(1, n + 1):
        try:
            (out / f".lock.shard-{i}-of-{n}").unlink()
        except FileNotFoundError:
            pass
    lines.append(f"merged {n} shards into {out} (status {status}); shard files moved to {dest}")
    return MergeResult(code=1 if incomplete else 0, lines=lines, merged=True)


def _prior_runs(base: dict[str, Any] | None, n: int) -> dict[str, Any]:
    sh = (base or {}).get("shards") or {}
    return dict(sh.get("runs") or {}) if sh.get("count") == n else {}


def _config_of(doc: dict[str, Any]) -> Config:
    from engine.config import parse_config

    return parse_config(doc["config"], "run.shard.json", stored=True)


# -- verify ----------------------------------------------------------------------------------------


def shard_problems(out: Path, found_all: dict[int, Found],
                   doc: dict[str, Any] | None) -> tuple[dict[str, Any] | None, list[str]]:
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
        docs = {i: orjson.loads(p.read_bytes()) for i, p in found.states.items()}
        for i, d in sorted(docs.items()):
            if d.get("status") != "complete":
                st = d.get("status")
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
