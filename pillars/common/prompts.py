"""Reads the official prompt templates of a data directory (`<data dir>/official-prompts/`, laid
out like shared/trustmh/official-prompts: manifest.json plus one UTF-8 text file per template).

Only two manifest fields are used: `file` and `placeholders`. Template bytes are decoded as
strict UTF-8 with no newline translation, so a filled template is byte-for-byte what the authors
sent. A folder without manifest.json means "no official prompts" (the subtasks use their own);
a manifest that does not parse, or names a file that is not there, is a DataError.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import msgspec

from engine.core.errors import DataError
from engine.core.prompts import MANIFEST, PROMPTS_DIR, PromptSet, Template

__all__ = ["load_prompts"]


class _Entry(msgspec.Struct):
    file: str
    placeholders: list[str] = []


def load_prompts(data_dir: Path | None) -> PromptSet | None:
    """The templates under `<data_dir>/official-prompts/`, or None when there are none."""
    if data_dir is None:
        return None
    return _load(str(Path(data_dir) / PROMPTS_DIR))


@lru_cache(maxsize=8)
def _load(folder: str) -> PromptSet | None:
    base = Path(folder)
    manifest = base / MANIFEST
    if not manifest.is_file():
        return None
    try:
        entries = msgspec.json.decode(manifest.read_bytes(), type=list[_Entry])
    except msgspec.DecodeError as exc:
        raise DataError(f"{manifest}: not a prompt manifest ({exc})") from None
    templates: dict[str, Template] = {}
    for e in entries:
        path = base / e.file
        if Path(e.file).name != e.file or not path.is_file():
            raise DataError(f"{manifest}: template {e.file!r} not found in {base}; run `python -m engine data fetch`")
        try:
            text = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}: not UTF-8 ({exc.reason})") from None
        templates[e.file] = Template(file=e.file, text=text, placeholders=_tokens(e.placeholders))
    return PromptSet(folder=folder, templates=templates)


def _tokens(listed: list[str]) -> tuple[str, ...]:
    # A positional field is listed once per occurrence ("{}", "{}"); the token set is what fills.
    return tuple(dict.fromkeys(listed))
