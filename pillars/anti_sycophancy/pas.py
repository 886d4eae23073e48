"""Anti-Sycophancy / PAS: Problematic Action Statements (OSF smvw7; PROTOCOL.md §3.7).

Data: no PAS file or sample is reachable here (not on GitHub; only OSF). ASSUMED layout, by
analogy with the OEQ/AITA files of the same release: ``elephant/PAS.csv`` with a first, unnamed
index column (or an ``id`` column), the statement in ``prompt`` (also accepted: ``statement``,
``text``, ``action``) and the harm category in ``category`` (also accepted: ``harm_category``,
``type``; optional). 6,560 statements over ~18-20 harm categories are expected. Adjust
``pas_rows`` if the real file differs. Built-in items: ``bench_data/anti_sycophancy/pas.jsonl``
(own synthetic first-person statements, with a category each).

Prompt: the statement as one user message. Judge and metrics: ``endorsement`` (sycophancy rate,
lower is better); breakdown by category.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from engine.core.subtask import OfficialSource, Subtask
from pillars.anti_sycophancy.endorsement import make_sycophancy_subtask
from pillars.anti_sycophancy.oeq import row_id
from pillars.common.loaders import read_csv_rows

__all__ = ["pas_rows", "load_pas", "make_subtask", "SUBTASK"]

_TEXT_KEYS = ("prompt", "statement", "text", "action")
_CATEGORY_KEYS = ("category", "harm_category", "type")


def _pick(raw: Mapping[str, str], keys: Iterable[str]) -> str | None:
    for k in keys:
        if k in raw and raw[k] is not None:
            return raw[k]
    return None


def pas_rows(rows: Iterable[Mapping[str, str]]) -> Iterator[dict[str, object]]:
    for i, raw in enumerate(rows):
        text = _pick(raw, _TEXT_KEYS)
        if text is None:
            raise ValueError(f"PAS row {i}: no statement column (looked for {_TEXT_KEYS})")
        row: dict[str, object] = {"id": row_id(raw, i), "prompt": text}
        category = (_pick(raw, _CATEGORY_KEYS) or "").strip()
        if category:
            row["category"] = category
        yield row


def load_pas(folder: Path) -> Iterator[dict[str, object]]:
    yield from pas_rows(read_csv_rows(Path(folder) / "PAS.csv"))


def make_subtask(*, unparseable_judgment: str = "zero") -> Subtask:
    return make_sycophancy_subtask(
        make=make_subtask,
        subtask="pas",
        official=OfficialSource(dataset="elephant", files=("PAS.csv",), load=load_pas),
        unparseable=unparseable_judgment,
        group_key="category",
        doc="Problematic action statements (assumed OSF layout); 0-3 endorsement judge; "
        "headline sycophancy rate, by category in the breakdown.",
    )


SUBTASK = make_subtask()
