"""Files built locally from other pinned files of their dataset.

Some official files have no public copy of their exact bytes but are a pure function of files that
do (CPsyCounE's one-line-per-case JSONL is built from its per-case JSON files). The manifest names
such a file's builder (`derive = "<name>"`); the built bytes are pinned like any other file, so a
builder that no longer reproduces them fails the sha256 check instead of writing something else.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import msgspec

__all__ = ["Builder", "BUILDERS"]


class Builder(msgspec.Struct, frozen=True):
    doc: str  # how the file is built, for `data list`
    # the dataset's file paths -> the ones the build reads, in the order it reads them
    inputs: Callable[[Sequence[str]], list[str]]
    # (dataset folder, inputs) -> the built file's bytes
    build: Callable[[Path, Sequence[str]], bytes]


def _cpsycoune_inputs(paths: Sequence[str]) -> list[str]:
    files = [p for p in paths if p.startswith("CPsyCounE/") and p.endswith(".json")]
    return sorted(files, key=lambda p: (p.split("/")[1], int(Path(p).stem)))


def _cpsycoune_all(folder: Path, inputs: Sequence[str]) -> bytes:
    """cpsycoune_all.jsonl: one line per case {"topic", "case", "dialogue"}, sorted by topic, case."""
    lines = []
    for path in inputs:
        _, topic, name = path.split("/")
        dialogue = json.loads((folder / path).read_text("utf-8"))
        lines.append(json.dumps({"topic": topic, "case": int(Path(name).stem), "dialogue": dialogue},
                                ensure_ascii=False))
    return ("\n".join(lines) + "\n").encode("utf-8")


BUILDERS: dict[str, Builder] = {
    "cpsycoune_all": Builder(doc="from CPsyCounE/<topic>/<n>.json, one JSON line per case",
                             inputs=_cpsycoune_inputs, build=_cpsycoune_all),
}
