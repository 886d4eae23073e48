"""Reading and writing the run documents (engine/core/rundoc.py) in a run directory: run.json, a
shard's run.shard-I-of-N.json and scores.json.

Each write is atomic (temp file + rename; a write the disk refuses leaves the old file as it was
and raises StorageError) and keeps the top-level keys this code does not know
from the file it replaces, so a run.json written by a newer engine keeps its extra fields when an
older one resumes the run. A missing or unreadable document is one `EngineError` line that says
which file and what to do.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TypeVar

import msgspec
import orjson

from engine.config import Config, parse_config
from engine.core.errors import STORAGE_ERRNOS, CheckpointError, EngineError, StorageError
from engine.core.rundoc import OLD_PROTOCOL, RunDoc, ScoresDoc, UnsetType
from engine.core.secrets import redact

RUN_JSON = "run.json"
SCORES_JSON = "scores.json"

D = TypeVar("D", RunDoc, ScoresDoc)


def _decode(path: Path, kind: type[D]) -> D:
    try:
        return msgspec.json.decode(path.read_bytes(), type=kind)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise CheckpointError(f"{path}: not a valid {path.name} ({exc}); repair it or move the directory aside, "
                              "then rerun") from None


def read_doc(path: Path, kind: type[D]) -> D | None:
    """The document at `path`, or None when there is none."""
    if not path.exists():
        return None
    return _decode(path, kind)


def read_run_doc(path: Path) -> RunDoc | None:
    """A run.json or a shard's state file at `path` (None when there is none), as every reader
    sees it: one written before `fingerprint.protocol` was recorded states its protocol."""
    doc = read_doc(path, RunDoc)
    return _with_old_protocol(doc) if doc is not None else None


def _with_old_protocol(doc: RunDoc) -> RunDoc:
    # A run.json without `fingerprint.protocol` gets OLD_PROTOCOL's options, one whose recorded
    # protocol has no `judge_hardened` gets judge_hardened = false on its judged subtasks: so
    # verify, score, report and a resume read the records that run made as it asked them.
    if doc.spec.items is not None:
        return doc
    recorded = doc.fingerprint.protocol
    if not isinstance(recorded, UnsetType):
        before = [k for k, p in recorded.items() if p.judge_constrained is not None and p.judge_hardened is None]
        if not before:
            return doc
        fixed = {k: {"judge_hardened": False, **doc.spec.options.get(k, {})} for k in before}
        return msgspec.structs.replace(doc, spec=msgspec.structs.replace(
            doc.spec, options={**doc.spec.options, **fixed}))
    options = {k: {**OLD_PROTOCOL, **doc.spec.options.get(k, {})} for k in doc.spec.subtasks}
    options.update({k: v for k, v in doc.spec.options.items() if k not in options})
    return msgspec.structs.replace(doc, spec=msgspec.structs.replace(doc.spec, options=options))


def write_doc(path: Path, doc: RunDoc | ScoresDoc, *, keep_unknown: bool = True) -> None:
    """`doc` as indented JSON at `path`, atomically; with `keep_unknown`, the top-level keys of the
    file it replaces that `doc` does not know are kept (after the known ones)."""
    body = msgspec.to_builtins(doc)
    if keep_unknown and path.exists():
        try:
            old = orjson.loads(path.read_bytes())
        except orjson.JSONDecodeError:
            old = None
        if isinstance(old, dict):
            known = set(type(doc).__struct_fields__)
            body.update({k: v for k, v in old.items() if k not in known and k not in body})
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    data = orjson.dumps(body, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY)
    try:
        _write_synced(tmp, redact(data))  # a lane's message may quote a server that echoed the key
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as exc:
        # The document it would replace stays as it was; no half-written temp file is left.
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if exc.errno in STORAGE_ERRNOS:
            raise StorageError.of(exc, path) from None
        raise


def _write_synced(path: Path, data: bytes) -> None:
    # Without the fsync a crash soon after the rename can leave run.json empty on some file systems
    # (the rename reaches the disk before the data): the run's identity would be lost.
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(directory: Path) -> None:
    """Makes a rename in `directory` durable; best effort where the platform cannot open a folder."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


def read_run(directory: Path) -> RunDoc:
    """run.json of a run directory; an error when there is none."""
    doc = read_run_doc(Path(directory) / RUN_JSON)
    if doc is None:
        raise EngineError(no_run_json(Path(directory)))
    return doc


def no_run_json(directory: Path) -> str:
    """The one line every command says of a path that holds no run.json: that it does not exist, is a
    file, or is a folder without run.json."""
    if not directory.exists():
        return f"{directory}: no such directory (no run.json); pass a run's output directory"
    if not directory.is_dir():
        return f"{directory} is a file, not a run directory (no run.json); pass a run's output directory"
    return f"{directory}: no run.json; is this a run output directory?"


def read_run_if_any(directory: Path) -> RunDoc | None:
    return read_run_doc(Path(directory) / RUN_JSON)


def write_run(directory: Path, doc: RunDoc) -> None:
    write_doc(Path(directory) / RUN_JSON, doc)


def load_run(directory: Path) -> tuple[RunDoc, Config]:
    """What every command on a finished directory starts with: its run.json and the config the run
    used (validated again, so a hand-edited run.json fails here with the key named)."""
    doc = read_run(directory)
    return doc, run_config(doc, f"{directory}/{RUN_JSON}")


def run_config(doc: RunDoc, source: str) -> Config:
    """The config a run document stored (its format-1 layout), validated; `source` names the file."""
    return parse_config(doc.config, source, stored=True)


def read_scores(directory: Path) -> ScoresDoc | None:
    return read_doc(Path(directory) / SCORES_JSON, ScoresDoc)


def write_scores(directory: Path, scores: ScoresDoc) -> Path:
    path = Path(directory) / SCORES_JSON
    write_doc(path, scores, keep_unknown=False)  # recomputed from the records: nothing old to keep
    return path
