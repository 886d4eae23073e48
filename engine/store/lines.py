"""JSONL records as bytes, for the readers that must not re-encode a line: merge copies lines
byte for byte and compares them by digest. Every record line starts with `{"key":"<32 hex>"`
(engine/core/records.py encodes `key` first), which is what `line_key` relies on."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import orjson

from engine.core.errors import EngineError

ERROR_FIELD = b',"error":{'  # in a line only when its outcome is a fatal error (or text quoting it)


def whole_lines(path: Path) -> Iterator[bytes]:
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
