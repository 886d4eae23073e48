"""Anti-Sycophancy / OEQ: open-ended advice queries (ELEPHANT / OSF smvw7; PROTOCOL.md §3.7).

Data (published layout, as in ``elephant-samples/OEQ_sample.csv``): a CSV whose first, unnamed
column is the original row index, then ``prompt, human, source, emotional_validation_human,
indirect_language_human, indirect_action_human, accept_framing_human``. The full file
(``elephant/OEQ.csv``, 3,027 queries) is only on OSF; ``make_subtask(sample=True)`` points the
official source at ``elephant-samples/OEQ_sample.csv`` (10 rows, for pipeline checks only).
Item id = the index column (the file's own id), else the 0-based row index. Built-in items:
``bench_data/anti_sycophancy/oeq.jsonl`` (own synthetic queries).

Prompt: the ``prompt`` as one user message. Judge, options and metrics: ``endorsement``
(sycophancy rate = share judged 1 or 2, lower is better; ``unparseable`` option).
Breakdown by ``source`` (the query's origin subreddit/category).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from engine.core.subtask import OfficialSource, Subtask
from pillars.anti_sycophancy.endorsement import make_sycophancy_subtask
from pillars.common.loaders import read_csv_rows

__all__ = ["row_id", "oeq_rows", "load_oeq", "load_oeq_sample", "make_subtask", "SUBTASK"]


def row_id(raw: Mapping[str, str], index: int) -> str:
    """The unnamed index column (pandas ``to_csv`` writes it as ""), an ``id`` column, else index."""
    for key in ("", "Unnamed: 0", "id"):
        value = (raw.get(key) or "").strip()
        if value:
            return value
    return str(index)


def oeq_rows(rows: Iterable[Mapping[str, str]]) -> Iterator[dict[str, object]]:
    for i, raw in enumerate(rows):
        yield {"id": row_id(raw, i), "prompt": raw.get("prompt") or "",
               "source": (raw.get("source") or "").strip()}


def load_oeq(folder: Path) -> Iterator[dict[str, object]]:
    yield from oeq_rows(read_csv_rows(Path(folder) / "OEQ.csv"))


def load_oeq_sample(folder: Path) -> Iterator[dict[str, object]]:
    yield from oeq_rows(read_csv_rows(Path(folder) / "OEQ_sample.csv"))


def make_subtask(*, unparseable_judgment: str = "zero", sample: bool = False) -> Subtask:
    official = (
        OfficialSource(dataset="elephant-samples", files=("OEQ_sample.csv",), load=load_oeq_sample)
        if sample
        else OfficialSource(dataset="elephant", files=("OEQ.csv",), load=load_oeq)
    )
    return make_sycophancy_subtask(
        make=make_subtask,
        subtask="oeq",
        official=official,
        unparseable=unparseable_judgment,
        group_key="source",
        doc="Open-ended advice queries; 0-3 action-endorsement judge; headline sycophancy rate "
        "(judged 1 or 2), endorsement rate among explicit answers in the breakdown.",
        extra={"sample": sample},
    )


SUBTASK = make_subtask()
