"""Reliability / Knowledge: USMLE-mental multiple-choice questions (PROTOCOL.md §3.1, [I]).

Items: all 727 rows of ``USMLE-mental.jsonl`` (the file has no id field, so id = 0-based row
index). ``options`` is a dict {"A": ..., ...} or a python-dict-like string; both are accepted.
Questions have 5 to 10 options (A..J); the prompt lists exactly the item's options.

Prompt (inferred, PsyEval-style): the question, the lettered options, and a request to answer with
the option letter only. Parsing: ``extract_letter`` restricted to the item's own letters (a JSON
"choice" field first, else the first standalone letter, case-sensitive so the article "a" is not
read as option A). Metric: accuracy (higher = better), Wilson CI; breakdown by exam step.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from msgspec.structs import replace

from engine.core.records import Item, Message, Response
from engine.core.subtask import ItemScore, Judgment, Metric, OfficialSource, Row, Subtask
from pillars.common.loaders import read_jsonl
from pillars.common.metrics import accuracy_metric
from pillars.common.parsing import extract_letter

__all__ = ["SUBTASK", "parse_options", "build_prompt", "score", "aggregate", "load_official"]

ALL_LETTERS = "ABCDEFGHIJ"


def parse_options(options: object) -> dict[str, str]:
    """Options as an ordered {letter: text} dict, from a dict or a dict-like string."""
    if isinstance(options, str):
        parsed: object = None
        for loader in (json.loads, ast.literal_eval):
            try:
                parsed = loader(options)
                break
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                continue
        options = parsed
    if not isinstance(options, dict):
        raise ValueError(f"options are not a dict: {str(options)[:80]!r}")
    out = {str(k).strip().upper(): str(v) for k, v in options.items()}
    return {k: out[k] for k in sorted(out)}


def build_prompt(question: str, options: dict[str, str]) -> str:
    letters = ", ".join(options)
    lines = "\n".join(f"{k}. {v}" for k, v in options.items())
    return (
        "Answer the following multiple-choice question about medicine and mental health. "
        f"Respond with the letter of the single best option ({letters}) only.\n\n"
        f"Question: {question}\n\nOptions:\n{lines}\n\nAnswer:"
    )


def load_official(folder: Path) -> Iterator[dict[str, object]]:
    for i, raw in enumerate(read_jsonl(folder / "USMLE-mental.jsonl")):
        yield {
            "id": str(i),
            "question": raw["question"],
            "options": parse_options(raw["options"]),
            "answer": str(raw["answer"]).strip().upper(),
            "meta_info1": raw.get("meta_info1", ""),
        }


def items(rows: Iterable[Row]) -> Iterator[Item]:
    for row in rows:
        rid = str(row["id"])
        options = parse_options(row["options"])
        yield Item(
            id=rid,
            pillar="reliability",
            subtask="knowledge",
            messages=(Message(role="user", content=build_prompt(str(row["question"]), options)),),
            reference=str(row["answer"]).strip().upper(),
            metadata={"base": rid, "letters": "".join(options),
                      "step": str(row.get("meta_info1", ""))},
        )


def score(item: Item, response: Response | None, judgment: Judgment | None) -> ItemScore:
    base = ItemScore(item_id=item.id, reference=item.reference,
                     group={"step": str(item.metadata.get("step", ""))})
    if response is None:
        return replace(base, status="failed")
    letter = extract_letter(response.text, str(item.metadata.get("letters") or ALL_LETTERS))
    if letter is None:
        return replace(base, status="unparseable")
    return replace(base, value=1.0 if letter == item.reference else 0.0, label=letter)


def aggregate(scores: Sequence[ItemScore]) -> Metric:
    return accuracy_metric(scores, group_by="step")


SUBTASK = Subtask(
    pillar="reliability",
    id="knowledge",
    version="1",
    kind="classification",
    headline="accuracy",
    direction="higher",
    items=items,
    score=score,
    aggregate=aggregate,
    official=OfficialSource(dataset="usmle-mental", files=("USMLE-mental.jsonl",),
                            load=load_official),
    doc="USMLE-mental MCQ (PsyEval); letter extraction; accuracy.",
)
