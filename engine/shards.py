"""Shards: `run --shard I/N` for batch schedulers (Slurm arrays and the like): who owns which unit,
where a shard's files go, and what a shard reads back. `merge DIR` is engine/merge.py.

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

"""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

import msgspec

from adapters import registry
from engine.config import Config, ModelConfig
from engine.core.errors import EngineError
from engine.core.records import Record
from engine.core.rundoc import PartitionDoc, RunDoc
from engine.store.checkpoint import iter_records, scan_responses
from engine.store.jsonl import is_error, line_key, whole_lines
from engine.store.keyset import KeySet
from engine.store.lock import OutputLock, ShardLock
from engine.store.rundoc_io import read_run_doc, write_doc, write_run

KINDS = ("responses", "errors", "judgments")
# Folders whose shard files merge combines: the record kinds, and batch lanes' journals (README
# "Batch lanes"), concatenated (their lines are keyed by unique local batch ids).
MERGED = (*KINDS, "batches")
_FILE = re.compile(r"^(?P<name>.+)\.shard-(?P<i>[0-9]+)-of-(?P<n>[0-9]+)\.jsonl$")
_STATE = re.compile(r"^run\.shard-(?P<i>[0-9]+)-of-(?P<n>[0-9]+)\.json$")
_SHARD_ARG = re.compile(r"^\s*([0-9]+)\s*/\s*([0-9]+)\s*$")


class Keyed(Protocol):
    """A work unit, as far as the partition cares: its request key."""

    @property
    def key(self) -> str: ...


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

    def keep(self, model: str, index: int) -> Callable[[Keyed], bool] | None:
        """A unit filter for a lane of `model` in shard `index` (None: the lane keeps all)."""
        if model in self.local:
            return None
        count = self.count
        want = index - 1
        return lambda u: int(u.key[:8], 16) % count == want

    def doc(self) -> PartitionDoc:
        return PartitionDoc(count=self.count, local_models=dict(self.local))


# -- paths -----------------------------------------------------------------------------------------


def suffix(shard: Shard | None) -> str:
    return shard.suffix if shard is not None else ""


def state_name(shard: Shard) -> str:
    return f"run.{shard.tag}.json"


def read_state(out: Path, shard: Shard) -> RunDoc | None:
    return read_run_doc(out / state_name(shard))


def write_state(out: Path, shard: Shard | None, doc: RunDoc) -> None:
    """run.json for an unsharded run, the shard's own state file for a shard."""
    if shard is None:
        write_run(out, doc)
    else:
        write_doc(out / state_name(shard), doc)


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
    for kind in MERGED:
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


def make_lock(out: Path, shard: Shard | None) -> OutputLock | ShardLock:
    return OutputLock(out) if shard is None else ShardLock(out, shard.tag, str(shard))


# -- resume ----------------------------------------------------------------------------------------


def merged_done(path: Path, *, drop_errors: bool) -> KeySet:
    """Keys of a merged file, read by a shard run (never rewritten: other shards read it too).
    With --retry-errors its fatal-error records are left out, so the shard retries them; merge
    then replaces the error record with the new outcome."""
    done = scan_responses(path).done
    if drop_errors and path.exists():
        for line in whole_lines(path):
            if is_error(line):
                done.discard(line_key(line))
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


Source = tuple[Path, Callable[[Record], bool] | None]  # a response file, and which of its records count


def response_sources(out: Path, name: str, shard: Shard | None, partition: Partition | None) -> list[Source]:
    """The response files a run reads back for judging, each with a record filter: unsharded, the
    model's file; a shard, its own file plus the merged records it owns."""
    base = out / "responses" / f"{name}.jsonl"
    if shard is None or partition is None:
        return [(base, None)]
    idx = shard.index
    return [(out / "responses" / f"{name}{shard.suffix}.jsonl", None),
            (base, lambda r: partition.owner(r.model, r.key) == idx)]


def iter_sources(sources: list[Source]) -> Iterator[Record]:
    for path, keep in sources:
        for rec in iter_records(path):
            if keep is None or keep(rec):
                yield rec
