"""File readers used by the official loaders and by built-in items: the only I/O in pillars/.

Decoding rule: UTF-8 (a BOM is dropped), falling back to GB18030 when the bytes are not UTF-8.
EthicMH is the file that needs the fallback: the authors read it the same way (pandas utf-8, then
gb18030), and the recorded prompts contain the mojibake that this decoding produces, so keeping
it is what makes replays match.
"""

from __future__ import annotations

import csv
import importlib.resources
import io
import json
from collections.abc import Iterator
from pathlib import Path

__all__ = ["read_text", "read_csv_rows", "read_jsonl", "read_json", "parse_jsonl", "builtin_rows"]


def decode_bytes(data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("gb18030")


def read_text(path: Path) -> str:
    """The whole file as text: utf-8-sig, else gb18030. Newlines are left exactly as stored."""
    return decode_bytes(Path(path).read_bytes())


def read_csv_rows(path: Path) -> Iterator[dict[str, str]]:
    """Rows of a CSV with a header line (BOM-safe; quoted newlines stay inside their field)."""
    yield from csv.DictReader(io.StringIO(read_text(path), newline=""))


def parse_jsonl(text: str, source: str = "<text>") -> Iterator[dict[str, object]]:
    """Objects of a JSON-lines text; blank lines skipped; a bad line raises ValueError(source:line)."""
    # split("\n") rather than splitlines(): U+2028 and friends may sit raw inside JSON strings.
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as e:
            raise ValueError(f"{source}:{lineno}: malformed JSON line ({e})") from None
        if not isinstance(obj, dict):
            raise ValueError(f"{source}:{lineno}: expected a JSON object, got {type(obj).__name__}")
        yield obj


def read_jsonl(path: Path) -> Iterator[dict[str, object]]:
    yield from parse_jsonl(read_text(path), str(path))


def read_json(path: Path) -> object:
    return json.loads(read_text(path))


def builtin_rows(pillar: str, subtask: str) -> Iterator[dict[str, object]]:
    """Rows of the built-in items ``bench_data/<pillar>/<subtask>.jsonl`` (shipped with the package)."""
    res = importlib.resources.files("bench_data").joinpath(pillar, f"{subtask}.jsonl")
    if not res.is_file():
        raise FileNotFoundError(f"no built-in items for {pillar}/{subtask}: {res} is missing")
    yield from parse_jsonl(decode_bytes(res.read_bytes()), f"bench_data/{pillar}/{subtask}.jsonl")
