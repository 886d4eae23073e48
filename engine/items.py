"""Item sources: a custom JSONL file (`--items`) or the registered pillar subtasks.

Sources are re-iterable factories of lazy iterators: every lane, and `verify`, walks them again
instead of holding items in memory.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import msgspec

from engine.core.errors import EngineError
from engine.core.records import GenParams, Item, Message
from engine.options import resolve
from pillars import registry

CUSTOM = "custom"


class _CustomLine(msgspec.Struct, kw_only=True):
    id: str | int
    messages: list[Message] | None = None
    prompt: str | None = None
    system: str | None = None
    reference: object = None
    metadata: dict[str, object] = {}


_custom_decoder = msgspec.json.Decoder(_CustomLine)


def _custom_item(line: bytes, path: Path, line_no: int) -> Item:
    try:
        row = _custom_decoder.decode(line)
    except msgspec.DecodeError as exc:
        raise EngineError(f"{path}:{line_no}: bad item line ({exc}); each line needs \"id\" and \"messages\" or \"prompt\"") from None
    if (row.messages is None) == (row.prompt is None):
        raise EngineError(f"{path}:{line_no}: item {row.id!r} needs exactly one of \"messages\" or \"prompt\"")
    if row.messages is not None:
        messages = tuple(row.messages)
        if not messages:
            raise EngineError(f"{path}:{line_no}: item {row.id!r} has empty \"messages\"")
    else:
        assert row.prompt is not None
        messages = ((Message(role="system", content=row.system),) if row.system else ()) + (
            Message(role="user", content=row.prompt),)
    return Item(id=str(row.id), pillar=CUSTOM, subtask=CUSTOM, messages=messages,
                reference=row.reference, metadata=row.metadata)


def custom_items(path: Path, limit: int = 0) -> Iterator[Item]:
    try:
        f = open(path, "rb")
    except OSError as exc:
        raise EngineError(f"cannot read items file {path}: {exc.strerror}; pass a readable JSONL file to --items") from None
    with f:
        n = 0
        for line_no, line in enumerate(f, 1):
            line = line.strip()
            if line_no == 1:
                line = line.removeprefix(b"\xef\xbb\xbf").strip()  # a UTF-8 BOM (Windows editors write one)
            if not line:
                continue
            yield _custom_item(line, path, line_no)
            n += 1
            if limit and n >= limit:
                return
    if n == 0:
        raise EngineError(f"--items {path}: no items (the file is empty or blank); pass a JSONL file with one "
                          "item per line")


class WorkItem(msgspec.Struct, frozen=True):
    item: Item
    params: GenParams | None  # the subtask's protocol overrides, or None


ItemFactory = Callable[[], Iterator[WorkItem]]


def custom_source(path: Path, limit: int) -> ItemFactory:
    def factory() -> Iterator[WorkItem]:
        for item in custom_items(path, limit):
            yield WorkItem(item, None)
    return factory


def limited(items: Iterator[Item], limit: int) -> Iterator[Item]:
    """The first `limit` base items (a dialogue's turns and an item's variants count once)."""
    if not limit:
        yield from items
        return
    seen: set[str] = set()
    for item in items:
        base = str(item.metadata.get("base", item.id))
        if base not in seen:
            if len(seen) >= limit:
                return
            seen.add(base)
        yield item


def pillar_source(keys: tuple[str, ...], data_dir: Path | None, limit: int,
                  options: Mapping[str, Mapping[str, object]] | None = None) -> ItemFactory:
    resolved = [resolve(k, (options or {}).get(k), data_dir) for k in keys]

    def factory() -> Iterator[WorkItem]:
        for sub, eng in resolved:
            if sub.kind == "derived":
                continue
            params = sub.params if sub.params != GenParams() else None
            n = eng.limit if eng.limit is not None else limit
            for item in limited(registry.load_items(sub, data_dir), n):
                yield WorkItem(item, params)
    return factory


def plan_counts(factory: ItemFactory, samples: int) -> dict[str, int]:
    """Work units per "pillar/subtask", validating every item on the way; duplicate ids are an
    error because they would make two records for one (item, sample)."""
    counts: dict[str, int] = {}
    # hash() of each id is enough to find candidates without holding every id string; the hashes
    # are kept as 8 packed bytes in 16 parts (a set of 1M ints took this walk's peak from 29 to
    # 105 MB, the start-up peak of every 1M-item run), and each part is checked at the end.
    seen: dict[str, list[bytearray]] = {}
    for w in factory():
        key = f"{w.item.pillar}/{w.item.subtask}"
        counts[key] = counts.get(key, 0) + samples
        parts = seen.get(key)
        if parts is None:
            parts = seen[key] = [bytearray() for _ in range(16)]
        h = hash(w.item.id) & _HASH_MASK
        parts[h & 15] += h.to_bytes(8, "little")
    candidates = {key: dup for key, parts in seen.items() if (dup := _repeated(parts))}
    if candidates:
        exact: dict[tuple[str, str], int] = {}
        for w in factory():
            key = f"{w.item.pillar}/{w.item.subtask}"
            if (hash(w.item.id) & _HASH_MASK).to_bytes(8, "little") in candidates.get(key, ()):
                exact[(key, w.item.id)] = exact.get((key, w.item.id), 0) + 1
        real = [k for k, n in exact.items() if n > 1]
        if real:
            sub, item_id = real[0]
            raise EngineError(f"item id {item_id!r} appears more than once in {sub} ({len(real)} duplicated ids); ids must be unique")
    return counts


_HASH_MASK = (1 << 64) - 1
_PACKED_HASH = re.compile(rb".{8}", re.DOTALL)


def _repeated(parts: list[bytearray]) -> set[bytes]:
    """The packed hashes that occur more than once (a part at a time: 1/16 of the objects)."""
    out: set[bytes] = set()
    for part in parts:
        hashes = _PACKED_HASH.findall(part)
        if len(set(hashes)) != len(hashes):
            once: set[bytes] = set()
            for h in hashes:
                if h in once:
                    out.add(h)
                once.add(h)
    return out
