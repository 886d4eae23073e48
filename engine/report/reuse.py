"""An --items run's report inputs kept beside the run (`DIR/.report-inputs.msgpack`): the first items
the Responses table shows, their records and each model's tallies over every record. They are a
function of the items file's bytes, the responses files, the spec's limit and samples and the code;
the file holds them under a digest of all that (each responses file by its identity: device,
inode, size, mtime, ctime), so the report of an unchanged run (a rerun with nothing to do, a
second `report`) reads no record and walks no item, and any change reads them again.

A run still going is never kept (its files grow); a file that cannot be read or written is only a
slower report.
"""

from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path

import msgspec
import orjson

from engine.core.records import Item, Record
from engine.core.rundoc import RunSpec
from engine.report.view import ResponsesShown
from engine.runstate import code_digest, content_digest, file_id
from engine.store.whole import replace_whole

NAME = ".report-inputs.msgpack"
FORMAT = 1


class Kept(msgspec.Struct, frozen=True, kw_only=True):
    key: str
    items: list[Item]  # the first `rows` items, in file order
    total: int
    records: dict[str, list[Record]]
    shown: ResponsesShown


def key(directory: Path, spec: RunSpec, models: list[str], rows: int) -> str | None:
    """What the kept inputs are a function of (None: the items file is not here)."""
    assert spec.items is not None
    items = Path(spec.items)
    if not items.is_file():
        return None
    responses = {m: msgspec.to_builtins(file_id(directory / "responses" / f"{m}.jsonl")) for m in models}
    doc = {"format": FORMAT, "code": code_digest(), "items": content_digest(items), "directory": str(directory),
           "limit": spec.limit, "samples": spec.samples, "models": models, "rows": rows, "responses": responses}
    return hashlib.blake2b(orjson.dumps(doc, option=orjson.OPT_SORT_KEYS), digest_size=16).hexdigest()


def load(directory: Path, digest: str) -> Kept | None:
    try:
        kept = msgspec.msgpack.decode((directory / NAME).read_bytes(), type=Kept)
    except (OSError, msgspec.DecodeError, msgspec.ValidationError):
        return None
    return kept if kept.key == digest else None


def save(directory: Path, kept: Kept) -> None:
    try:
        data = msgspec.msgpack.encode(kept)
    except (OverflowError, TypeError, msgspec.EncodeError):
        return  # a value JSON holds and MessagePack does not (an integer past 64 bits in an item): not kept
    with contextlib.suppress(OSError):  # not kept: the next report reads the checkpoints again
        replace_whole(directory / NAME, data)
