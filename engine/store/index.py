"""Where each record of a checkpoint lies, by (model, pillar, subtask): read a file once, then only
the lines a scorer's unit needs.

`iter_records_of` filters one pass over the whole file, so a scorer that takes one subtask x model
at a time over a run of S subtasks x M models reads every responses file S times and the judge's
file S x M times (a 12-model x 19-subtask run: 228 passes over the judgments). `LineIndex` makes
one such pass, keeping only each line's byte offset and length per group (16 bytes a record), and
`read(where)` then seeks to the chosen groups' lines (adjacent lines in one read) and decodes those
alone, in file order: what `iter_records_of(path, where)` yields, for the I/O of one pass in all.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec

from engine.store.checkpoint import _decode_chunk, _where_decoder, _written, iter_records_of
from engine.store.jsonl import DECODE_CHUNK, chunks

Group = tuple[str, str, str]  # (model, pillar, subtask) of the record (a judgment: of the judged response)


class LineIndex:
    """One checkpoint's line index (module docstring), a snapshot of the file when it was built
    (what a later read sees, even if a running run appends meanwhile). `decoder`: the file's full
    record decoder, so a damaged line is named as `iter_records_of` names it."""

    def __init__(self, path: Path, decoder: msgspec.json.Decoder[Any], *, live: bool = False) -> None:
        self.path, self.decoder, self.live = path, decoder, live
        self.groups: dict[Group, array[int]] = {}  # group -> start, length, start, length, ...
        if not path.exists():
            return
        offset = 0
        for first, whole, _ in chunks(path, DECODE_CHUNK):
            chunk = _written(path, whole, live)
            heads = _decode_chunk(path, first, chunk, _where_decoder, decoder)
            spans = []
            pos = offset
            for line in chunk.split(b"\n"):
                if line.strip():  # as decode_lines counts lines
                    spans.append((pos, len(line)))
                pos += len(line) + 1
            for h, (start, n) in zip(heads, spans, strict=True):
                g = (h.model, h.pillar, h.subtask)
                (self.groups.get(g) or self.groups.setdefault(g, array("q"))).extend((start, n))
            offset += len(whole)

    def read(self, where: Callable[[str, str, str], bool]) -> Iterator[Any]:
        """The records of the groups `where(model, pillar, subtask)` picks, in file order, decoded
        in batches of about DECODE_CHUNK bytes (only those records are held)."""
        spans = sorted(sp for g, arr in self.groups.items() if where(*g) for sp in zip(arr[0::2], arr[1::2], strict=True))
        if not spans:
            return
        with open(self.path, "rb") as f:
            batch: list[bytes] = []
            size = 0
            for start, end in _runs(spans):
                f.seek(start)
                batch.append(f.read(end - start))
                size += end - start
                if size >= DECODE_CHUNK:
                    yield from self._decode(batch, where)
                    batch, size = [], 0
            if batch:
                yield from self._decode(batch, where)

    def _decode(self, pieces: list[bytes], where: Callable[[str, str, str], bool]) -> list[Any]:
        try:
            return self.decoder.decode_lines(b"\n".join(pieces))
        except msgspec.DecodeError:
            # Name the damaged line (by its line number) as the full filtered pass does.
            for _ in iter_records_of(self.path, where, self.decoder, live=self.live):
                pass
            raise


def _runs(spans: list[tuple[int, int]]) -> Iterator[tuple[int, int]]:
    """(start, end) byte ranges of adjacent lines, merged up to DECODE_CHUNK bytes (one read for a
    run of chosen lines; a whole file of one group would otherwise be one read, decoded at once)."""
    start, end = spans[0][0], spans[0][0] + spans[0][1]
    for s, n in spans[1:]:
        if s == end + 1 and s + n - start <= DECODE_CHUNK:
            end = s + n
        else:
            yield start, end
            start, end = s, s + n
    yield start, end
