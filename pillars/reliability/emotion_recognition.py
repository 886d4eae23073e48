"""Reliability / Emotion Recognition: EmoBench EU (PROTOCOL.md §3.1, [I]).

Items: rows of ``EU.jsonl``, id ``<language>-<qid>`` (qid repeats across the two halves). Only the
English half is asked by default (``SUBTASK.extra["language"] = "en"``; "zh" or "all" also work),
because PROTOCOL.md takes emotion accuracy on the 200 English items as the default.

Prompt: one message with the scenario, Q1 "What emotion(s) would {subject} ultimately feel?" with
the lettered emotion choices, Q2 "Why would {subject} feel these emotions?" with the lettered cause
choices (upstream EmoBench's questions), and a request for JSON {"emotion": letter, "cause":
letter}. Asking both in one prompt halves the requests; upstream also asked them together.

Parsing: the JSON fields (a letter in range, or the exact text of a choice); else labelled
fallbacks ("emotion: B", "Q1: B"); an unlabelled reply gives no answer. Headline: emotion accuracy
(an item without a parsed emotion is unparseable). Breakdown: cause accuracy and joint accuracy
(over items whose cause parsed), and accuracy per coarse category.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from msgspec.structs import replace

from engine.core.records import GenParams, Item, Message, Response
from engine.core.subtask import ItemScore, Judgment, Metric, OfficialSource, Row, Subtask
from pillars.common.loaders import read_jsonl
from pillars.common.metrics import accuracy_metric, wilson
from pillars.common.parsing import parse_json_object
from pillars.common.rows import str_list

__all__ = ["SUBTASK", "build_prompt", "parse_answer", "score", "aggregate", "load_official"]

ROW_FIELDS = ("qid", "language", "coarse_category", "scenario", "subject", "emotion_choices",
              "emotion_label", "cause_choices", "cause_label")

_TEMPLATES = {
    "en": {
        "intro": "Read the scenario and answer both questions.",
        "scenario": "Scenario",
        "q1": "Q1: What emotion(s) would {subject} ultimately feel?",
        "q2": "Q2: Why would {subject} feel these emotions?",
        "ask": ('Reply with only a JSON object giving the letter of your choice for each '
                'question: {{"emotion": "<letter for Q1>", "cause": "<letter for Q2>"}}'),
    },
    "zh": {
        "intro": "阅读下面的场景并回答两个问题。",
        "scenario": "场景",
        "q1": "问题1：{subject}最终会感受到什么情绪？",
        "q2": "问题2：{subject}为什么会有这些情绪？",
        "ask": ('只回复一个JSON对象，给出每个问题所选选项的字母：'
                '{{"emotion": "<问题1的字母>", "cause": "<问题2的字母>"}}'),
    },
}


def _lettered(choices: Sequence[str]) -> str:
    return "\n".join(f"{string.ascii_uppercase[i]}. {c}" for i, c in enumerate(choices))


def build_prompt(row: Row) -> str:
    t = _TEMPLATES.get(str(row.get("language", "en")), _TEMPLATES["en"])
    subject = row["subject"]
    return (
        f"{t['intro']}\n\n{t['scenario']}: {row['scenario']}\n\n"
        f"{t['q1'].format(subject=subject)}\n{_lettered(str_list(row['emotion_choices'], 'emotion_choices'))}\n\n"
        f"{t['q2'].format(subject=subject)}\n{_lettered(str_list(row['cause_choices'], 'cause_choices'))}\n\n"
        f"{t['ask'].format()}"
    )


def _field_letter(value: object, choices: Sequence[str]) -> str | None:
    if value is None:
        return None
    letters = string.ascii_uppercase[: len(choices)]
    s = str(value).strip().strip("\"'").strip()
    if len(s) == 1 and s.upper() in letters:
        return s.upper()
    m = re.match(rf"^([{letters}])\b", s)
    if m:
        return m.group(1)
    low = s.lower()
    for i, c in enumerate(choices):
        if c.strip().lower() == low:
            return letters[i]
    return None


def _labelled(text: str, names: str, n: int) -> str | None:
    letters = string.ascii_uppercase[:n]
    found = re.findall(rf"(?:{names})\W{{0,4}}\s*([{letters}])\b", text, re.IGNORECASE)
    found = [f for f in found if f.isupper()]
    return found[-1] if found else None


def parse_answer(text: str, emotion_choices: Sequence[str],
                 cause_choices: Sequence[str]) -> tuple[str | None, str | None]:
    """(emotion letter, cause letter), each None when it cannot be read."""
    if not isinstance(text, str):
        return None, None
    obj = parse_json_object(text) or {}
    emotion = _field_letter(obj.get("emotion"), emotion_choices)
    cause = _field_letter(obj.get("cause"), cause_choices)
    if emotion is None:
        emotion = _labelled(text, r"\bemotions?\b|\bQ1\b|问题1", len(emotion_choices))
    if cause is None:
        cause = _labelled(text, r"\bcauses?\b|\bQ2\b|问题2", len(cause_choices))
    return emotion, cause


# Constrained output where the server supports it: both answers as letters. The enum covers the
# most choices any item has; a letter beyond an item's own choices parses as unanswered.
ANSWER_SCHEMA = {
    "name": "emotion_answer",
    "schema": {"type": "object",
               "properties": {"emotion": {"type": "string", "enum": list("ABCDEFG")},
                              "cause": {"type": "string", "enum": list("ABCDEFG")}},
               "required": ["emotion", "cause"], "additionalProperties": False},
}


def _normalize(raw: dict[str, object]) -> dict[str, object]:
    row = {f: raw.get(f) for f in ROW_FIELDS}
    row["id"] = f"{raw['language']}-{raw['qid']}"
    return row


def load_official(folder: Path) -> Iterator[dict[str, object]]:
    for raw in read_jsonl(folder / "EU.jsonl"):
        yield _normalize(raw)


def _letter_of(label: str, choices: Sequence[str]) -> str:
    return string.ascii_uppercase[list(choices).index(label)]


def items(rows: Iterable[Row]) -> Iterator[Item]:
    language = SUBTASK.extra.get("language", "en")
    for row in rows:
        if language not in ("all", None) and row.get("language") != language:
            continue
        rid = str(row["id"])
        emotion_choices = str_list(row["emotion_choices"], f"{rid}: emotion_choices")
        cause_choices = str_list(row["cause_choices"], f"{rid}: cause_choices")
        emotion_gold = _letter_of(str(row["emotion_label"]), emotion_choices)
        cause_gold = _letter_of(str(row["cause_label"]), cause_choices)
        yield Item(
            id=rid,
            pillar="reliability",
            subtask="emotion_recognition",
            messages=(Message(role="user", content=build_prompt(row)),),
            reference=emotion_gold,
            metadata={
                "base": rid,
                "language": row.get("language"),
                "category": row.get("coarse_category") or "",
                "emotion_choices": emotion_choices,
                "cause_choices": cause_choices,
                "cause_reference": cause_gold,
            },
        )


def score(item: Item, response: Response | None, judgment: Judgment | None) -> ItemScore:
    base = ItemScore(item_id=item.id, reference=item.reference,
                     group={"category": str(item.metadata.get("category", "")),
                            "language": str(item.metadata.get("language", ""))})
    if response is None:
        return replace(base, status="failed")
    emotion, cause = parse_answer(response.text, item.metadata["emotion_choices"],
                                  item.metadata["cause_choices"])
    if emotion is None:
        return replace(base, status="unparseable")
    ok = emotion == item.reference
    extras: dict[str, float] = {}
    if cause is not None:
        cause_ok = cause == item.metadata["cause_reference"]
        extras = {"cause": float(cause_ok), "joint": float(ok and cause_ok)}
    return replace(base, value=float(ok), label=emotion, extras=extras)


def aggregate(scores: Sequence[ItemScore]) -> Metric:
    metric = accuracy_metric(scores, group_by="category")
    breakdown = dict(metric.breakdown)
    scored = [s for s in scores if s.status == "scored"]
    for key in ("cause", "joint"):
        vals = [s.extras[key] for s in scored if key in s.extras]
        k = int(sum(vals))
        breakdown[f"{key}_accuracy"] = {
            "value": k / len(vals) if vals else None, "ci": wilson(k, len(vals)), "n": len(vals)}
    return replace(metric, breakdown=breakdown)


SUBTASK = Subtask(
    pillar="reliability",
    id="emotion_recognition",
    version="1",
    kind="classification",
    headline="emotion_accuracy",
    direction="higher",
    items=items,
    score=score,
    aggregate=aggregate,
    official=OfficialSource(dataset="emobench-eu", files=("EU.jsonl",), load=load_official),
    doc="EmoBench EU (English half by default); emotion accuracy, cause/joint in breakdown.",
    params=GenParams(json_schema=ANSWER_SCHEMA),
    extra={"language": "en"},
)
