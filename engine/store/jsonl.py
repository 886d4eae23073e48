"""JSONL record files as bytes: the line framing every reader shares (`chunks` of whole lines, for
the checkpoint's scan and decoder, and `whole_lines`), and what merge needs to copy lines byte for
byte and compare them by digest. Every record line starts with `{"key":"<32 hex>"`
(engine/core/records.py encodes `key` first), which is what `line_key` and `key_int` rely on."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import orjson

from engine.core.errors import EngineError

ERROR_FIELD = b',"error":{'  # in a line only when its outcome is a fatal error (or text quoting it)
# Bytes read at a time. A chunk is held twice at the peak (the block read and its whole-line slice),
# so this is resume memory: the scan of 200k records peaked at 135 MB with 32 MiB chunks and 63 MB
# with 4 MiB, in the same 1.95 s.
CHUNK = 4 << 20
# Bytes decoded into records at a time: a decoded record takes about 7 times its JSON, so reading
# records (verify, score, report) in 4 MiB chunks held ~27 MiB of objects at once, as much again as
# a whole run's working set (tests/test_memory.py saw it as growth at the end of a run).
DECODE_CHUNK = 256 << 10


def chunks(path: Path, size: int = CHUNK) -> Iterator[tuple[int, bytes, int]]:
    """Yields (first line number, chunk of whole lines, number of lines in it).

    Each block read is sliced once: the partial line carried over from the previous block is
    completed and yielded on its own, so the big block is never concatenated (a 1M-record file is
    hundreds of MB; every extra copy shows in the resume time)."""
    line_no = 1
    with open(path, "rb") as f:
        rest = b""
        while True:
            block = f.read(size)
            if not block:
                if rest:
                    yield line_no, rest, rest.count(b"\n")
                return
            start = 0
            if rest:
                nl = block.find(b"\n")
                if nl < 0:
                    rest += block
                    continue
                yield line_no, rest + block[: nl + 1], 1
                line_no += 1
                start = nl + 1
                rest = b""
            cut = block.rfind(b"\n") + 1
            if cut <= start:
                rest = block[start:]
                continue
            chunk = block if (start == 0 and cut == len(block)) else block[start:cut]
            rest = block[cut:]
            n = chunk.count(b"\n")
            yield line_no, chunk, n
            line_no += n


def key_int(key: str) -> int:
    """The in-memory form of a key: 64 bits are plenty to tell a run's keys apart and cost half
    the memory of the hex string."""
    return int(key[:16], 16)


def whole_lines(path: Path) -> Iterator[bytes]:
    """Whole lines of a JSONL file (an unterminated last line, left by a kill, is not one)."""
    for _, chunk, _ in chunks(path):
        for line in chunk.split(b"\n")[:-1]:
            if line.strip():
                yield line


def line_digest(line: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(line, digest_size=8).digest(), "big")


def line_key(line: bytes) -> str:
    if not line.startswith(b'{"key":"'):
        raise EngineError(f"not a record line (no leading key): {line[:80]!r}")
    return line[8:40].decode()


def is_error(line: bytes) -> bool:
    """Whether the record's outcome is a fatal error (the cheap byte test first)."""
    return ERROR_FIELD in line and orjson.loads(line).get("error") is not None


def describe(line: bytes) -> str:
    """A record line in words, for merge's and verify's findings."""
    try:
        d = orjson.loads(line)
    except orjson.JSONDecodeError:
        return line_key(line)
    who = d.get("model", "?")
    if d.get("judge"):
        who = f"{d['judge']} judging {who}"
    return f"{who} {d.get('pillar')}/{d.get('subtask')} {d.get('item_id')} #{d.get('sample')} (key {d['key'][:12]}…)"
