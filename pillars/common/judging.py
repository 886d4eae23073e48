"""Helpers for LLM-as-judge rubrics: wrap the judged response safely, parse scores, build a schema.

The judged response is untrusted text. With a nonce (a hardened rubric; the engine derives one
per judge request) it goes between marker lines that carry the nonce, checked for lookalikes after
normalisation (engine.core.fence), so a response cannot end the block early and append its own
"scores" for the judge to obey. Without a nonce it goes between the fixed delimiter lines that
runs made before nonces sent, with the same neutraliser as then, so such a run resumes with the
same requests.

Score parsing takes the last JSON object whose every field is present, integer-like and in range
(a judge states its verdict last, after any reasoning or quoting), then a per-field last-match
fallback. The engine reads a hardened rubric's output with the blocks the judge quoted back cut
out (`Rubric.read`), so a verdict written inside the response is never read. A judgment is
all-or-nothing; any missing or out-of-range field makes it unparseable.

A judged subtask scores an item in one order (``judged_score``): no response is "failed", a
judgment without every field in range is "unparseable", and only then is the item rated.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

from msgspec.structs import replace

from engine.core.fence import fence
from engine.core.records import Response
from engine.core.subtask import ItemScore, Judgment
from pillars.common.parsing import json_objects

__all__ = [
    "wrap_response",
    "quote_block",
    "last_object",
    "parse_scores",
    "parse_judgment_dims",
    "dims_as_extras",
    "judged_score",
    "score_schema",
    "BEGIN",
    "END",
]

T = TypeVar("T")

BEGIN = "<<<BEGIN RESPONSE>>>"
END = "<<<END RESPONSE>>>"

_LT_RUN = re.compile(r"[<＜«‹]{2,}")
_GT_RUN = re.compile(r"[>＞»›]{2,}")
_DELIM_WORDS = re.compile(r"\b(begin|end)([\s_\-]*)(response)\b", re.IGNORECASE)


def _neutralise(text: str) -> str:
    text = _LT_RUN.sub(lambda m: "‹" * len(m.group(0)), text)
    text = _GT_RUN.sub(lambda m: "›" * len(m.group(0)), text)
    # The words alone cannot close the block, but a judge may still read them as a boundary.
    return _DELIM_WORDS.sub(lambda m: f"{m.group(1)}-of-{m.group(3)}", text)


def wrap_response(text: str, nonce: str | None = None) -> str:
    """The response between the nonce marker lines (see engine.core.fence.fence); without a nonce,
    between the fixed delimiter lines with lookalike delimiters defused (runs made before nonces)."""
    if nonce is not None:
        return fence("RESPONSE", text or "", nonce)
    return f"{BEGIN}\n{_neutralise(text or '')}\n{END}"


def quote_block(label: str, text: str, nonce: str | None = None) -> str:
    """``text`` between ``<<<BEGIN label nonce>>>`` / ``<<<END label nonce>>>`` lines (item data a
    judge must read as data: a jailbreak request is as hostile as its response).

    Without a nonce: fixed ``<<<BEGIN label>>>`` lines around wrap_response's neutralised text,
    whose neutralisation removes every ``<<<``/``>>>`` run, so the only delimiter lines left are
    the two we add.
    """
    if nonce is not None:
        return fence(label, text or "", nonce)
    wrapped = wrap_response(text)
    body = wrapped[len(BEGIN) : len(wrapped) - len(END)]
    return f"<<<BEGIN {label}>>>{body}<<<END {label}>>>"


def _int_like(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if math.isfinite(value) and value.is_integer() else None
    if isinstance(value, str):
        s = value.strip()
        if re.fullmatch(r"[+-]?\d+(?:\.0+)?", s):
            return int(float(s))
    return None


def last_object(text: str, read: Callable[[dict[str, object]], T | None]) -> T | None:
    """What ``read`` makes of the last JSON object in ``text`` that it accepts (objects ordered by
    where they end, the outer one first when they end together); None when it accepts none."""
    for obj in reversed(json_objects(text)):
        got = read(obj)
        if got is not None:
            return got
    return None


def _fields_of(obj: Mapping[str, object], fields: Mapping[str, tuple[int, int]]) -> dict[str, int] | None:
    out: dict[str, int] = {}
    for name, (lo, hi) in fields.items():
        v = _int_like(obj.get(name))
        if v is None or not lo <= v <= hi:
            return None
        out[name] = v
    return out


def parse_scores(text: str, fields: Mapping[str, tuple[int, int]]) -> dict[str, int] | None:
    """{field: int} when every field parses within its [lo, hi]; else None. Never raises."""
    if not isinstance(text, str) or not fields:
        return None
    found = last_object(text, lambda obj: _fields_of(obj, fields))
    if found is not None:
        return found
    out = {}
    for name, (lo, hi) in fields.items():
        pat = rf"[\"']?\b{re.escape(name)}\b[\"']?\s*[:=]\s*[\"']?([+-]?\d+(?:\.0+)?)(?![\d.])"
        matches = re.findall(pat, text, re.IGNORECASE)
        if not matches:
            return None
        v = _int_like(matches[-1])
        if v is None or not lo <= v <= hi:
            return None
        out[name] = v
    return out


def parse_judgment_dims(
    judgment: Judgment | None, fields: Mapping[str, tuple[int, int]]
) -> dict[str, int] | None:
    """The judged fields as ints when every one is present and in range (defensive re-check of
    what ``Rubric.parse`` returned, since a replayed judgment may come from an older rubric)."""
    if not isinstance(judgment, Mapping):
        return None
    out = {}
    for name, (lo, hi) in fields.items():
        v = judgment.get(name)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v != int(v):
            return None
        if not lo <= int(v) <= hi:
            return None
        out[name] = int(v)
    return out


def dims_as_extras(dims: Mapping[str, int]) -> dict[str, float]:
    return {k: float(v) for k, v in dims.items()}


def judged_score(
    base: ItemScore,
    response: Response | None,
    judgment: Judgment | None,
    fields: Mapping[str, tuple[int, int]],
    rate: Callable[[ItemScore, dict[str, int]], ItemScore],
) -> ItemScore:
    """failed (no response) -> unparseable (a field missing or out of range) -> ``rate(base, dims)``."""
    if response is None:
        return replace(base, status="failed")
    dims = parse_judgment_dims(judgment, fields)
    if dims is None:
        return replace(base, status="unparseable")
    return rate(base, dims)


def score_schema(
    fields: Mapping[str, tuple[int, int]], *, extra_strings: Sequence[str] = ("explanation",)
) -> dict[str, object]:
    """A JSON schema for constrained judge output: the integer fields in range plus string fields."""
    props: dict[str, object] = {
        name: {"type": "integer", "minimum": lo, "maximum": hi} for name, (lo, hi) in fields.items()
    }
    for name in extra_strings:
        props[name] = {"type": "string"}
    return {
        "type": "object",
        "properties": props,
        "required": [*fields, *extra_strings],
        "additionalProperties": False,
    }
