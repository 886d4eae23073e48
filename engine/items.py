"""Item sources: a custom JSONL file (`--items`) or the registered pillar subtasks.

Sources are re-iterable factories of lazy iterators: every lane, and `verify`, walks them again
instead of holding items in memory.
"""

from __future__ import annotations

import itertools
from array import array
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
    messages: tuple[Message, ...] | None = None
    prompt: str | None = None
    system: str | None = None
    reference: object = None
    metadata: dict[str, object] = {}


_custom_decoder = msgspec.json.Decoder(_CustomLine)


def _custom_row(line: bytes, path: Path, line_no: int) -> _CustomLine:
    """One line, decoded and checked: what makes it an item or an error."""
    try:
        row = _custom_decoder.decode(line)
    except msgspec.DecodeError as exc:
        raise EngineError(f"{path}:{line_no}: bad item line ({exc}); each line needs \"id\" and \"messages\" or \"prompt\"") from None
    if (row.messages is None) == (row.prompt is None):
        raise EngineError(f"{path}:{line_no}: item {row.id!r} needs exactly one of \"messages\" or \"prompt\"")
    if row.messages is not None and not row.messages:
        raise EngineError(f"{path}:{line_no}: item {row.id!r} has empty \"messages\"")
    return row


def _custom_item(line: bytes, path: Path, line_no: int) -> Item:
    row = _custom_row(line, path, line_no)
    messages = row.messages
    if messages is None:
        assert row.prompt is not None
        user = Message(role="user", content=row.prompt)
        messages = (Message(role="system", content=row.system), user) if row.system else (user,)
    return Item(id=str(row.id), pillar=CUSTOM, subtask=CUSTOM, messages=messages,
                reference=row.reference, metadata=row.metadata)


def _lines(path: Path, limit: int) -> Iterator[tuple[int, bytes]]:
    """(line number, line) of the file's first `limit` (0: all) item lines, blank lines skipped."""
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
            yield line_no, line
            n += 1
            if limit and n >= limit:
                return
    if n == 0:
        raise EngineError(f"--items {path}: no items (the file is empty or blank); pass a JSONL file with one "
                          "item per line")


def custom_items(path: Path, limit: int = 0) -> Iterator[Item]:
    for line_no, line in _lines(path, limit):
        yield _custom_item(line, path, line_no)


def custom_head(path: Path, limit: int, keep: int) -> tuple[list[Item], int]:
    """The file's first `keep` items and how many items it holds: the rest are counted, not decoded
    (a report shows the first ones; the run checked every line before it sent anything)."""
    lines = _lines(path, limit)
    head = [_custom_item(line, path, line_no) for line_no, line in itertools.islice(lines, keep)]
    return head, len(head) + sum(1 for _ in lines)


class WorkItem(msgspec.Struct, frozen=True):
    item: Item
    params: GenParams | None  # the subtask's protocol overrides, or None


ItemFactory = Callable[[], Iterator[WorkItem]]


class CustomSource:
    """An --items file as an ItemFactory; `plan_counts` walks its ids (each line checked as the lanes
    will decode it) without building the items."""

    def __init__(self, path: Path, limit: int) -> None:
        self.path = path
        self.limit = limit

    def __call__(self) -> Iterator[WorkItem]:
        for item in custom_items(self.path, self.limit):
            yield WorkItem(item, None)

    def ids(self) -> Iterator[str]:
        path = self.path
        for line_no, line in _lines(path, self.limit):
            yield str(_custom_row(line, path, line_no).id)


def custom_source(path: Path, limit: int) -> ItemFactory:
    return CustomSource(path, limit)


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
    # hash() of each id is enough to find candidates without holding every id string; the hashes
    # are kept packed, 8 bytes each, in 16 parts (a set of 1M ints took this walk's peak from 29 to
    # 105 MB, the start-up peak of every 1M-item run), and each part is checked at the end.
    seen: dict[str, list[array[int]]] = {}
    if isinstance(factory, CustomSource):  # one subtask; its lines checked, no Item built
        key = f"{CUSTOM}/{CUSTOM}"
        n = _pack(factory.ids(), seen.setdefault(key, _parts()))
        counts = {key: n * samples} if n else {}
    else:
        counts = {}
        for w in factory():
            key = f"{w.item.pillar}/{w.item.subtask}"
            counts[key] = counts.get(key, 0) + samples
            parts = seen.get(key)
            if parts is None:
                parts = seen[key] = _parts()
            h = hash(w.item.id) & _HASH_MASK
            parts[h & 15].append(h)
    candidates = {key: dup for key, parts in seen.items() if (dup := _repeated(parts))}
    if candidates:
        exact: dict[tuple[str, str], int] = {}
        for w in factory():
            key = f"{w.item.pillar}/{w.item.subtask}"
            if hash(w.item.id) & _HASH_MASK in candidates.get(key, ()):
                exact[(key, w.item.id)] = exact.get((key, w.item.id), 0) + 1
        real = [k for k, n in exact.items() if n > 1]
        if real:
            sub, item_id = real[0]
            raise EngineError(f"item id {item_id!r} appears more than once in {sub} ({len(real)} duplicated ids); ids must be unique")
    return counts


_HASH_MASK = (1 << 64) - 1


def _parts() -> list[array[int]]:
    return [array("Q") for _ in range(16)]


def _pack(ids: Iterator[str], parts: list[array[int]]) -> int:
    """Packs the hash of each id into `parts`; how many ids there were."""
    n = 0
    mask = _HASH_MASK
    for item_id in ids:
        h = hash(item_id) & mask
        parts[h & 15].append(h)
        n += 1
    return n


def _repeated(parts: list[array[int]]) -> set[int]:
    """The hashes that occur more than once (a part at a time: 1/16 of them)."""
    out: set[int] = set()
    for part in parts:
        if len(set(part)) != len(part):
            once: set[int] = set()
            for h in part:
                if h in once:
                    out.add(h)
                once.add(h)
    return out
