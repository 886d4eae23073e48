"""Answer parsers shared by the classification subtasks: JSON objects, option letters, class labels.

All functions are pure and total: any string in, a value or None out, never an exception. A None
means "unparseable"; callers record it as such and never turn it into a wrong answer silently.

Order of evidence (most explicit first) follows the authors' ethics extractor (PROTOCOL.md §3.8):
a fenced ```json block, then the whole reply as JSON, then (our addition, for chatty models that
print a bare object after some prose) the last balanced ``{...}`` that parses, and only then free
text. The free-text fallbacks pick the FIRST mention, because models that restate the options
usually lead with their answer ("B. ..."), and that is what the upstream regexes do.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

__all__ = ["parse_json_object", "json_objects", "extract_letter", "match_label", "normalize_label"]

_FENCED = re.compile(r"```(?:json)?\s*(\{.*?\})\s*```", re.DOTALL)
# Scanning every "{" of a pathological reply is quadratic; real replies hold a handful of objects.
_MAX_BRACE_STARTS = 256
_DECODER = json.JSONDecoder()


def _brace_starts(text: str) -> list[int]:
    """Where the last ``_MAX_BRACE_STARTS`` "{" of ``text`` are, in order: found from the end with
    rfind, as a per-character scan of every judge output cost the report seconds on a big run."""
    out: list[int] = []
    i = len(text)
    while len(out) < _MAX_BRACE_STARTS and (i := text.rfind("{", 0, i)) >= 0:
        out.append(i)
    out.reverse()
    return out


def _loads_dict(text: str) -> dict[str, object] | None:
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        return None
    return obj if isinstance(obj, dict) else None


def parse_json_object(text: str) -> dict[str, object] | None:
    """The JSON object a reply carries: fenced block, else the whole text, else the last balanced one.

    "Last" means the object that ends last; when objects nest, the outermost one. Returns None when
    there is no object (a JSON array or scalar is not an answer object).
    """
    if not isinstance(text, str):
        return None
    m = _FENCED.search(text)
    if m:
        obj = _loads_dict(m.group(1))
        if obj is not None:
            return obj
    obj = _loads_dict(text.strip())
    if obj is not None:
        return obj
    starts = _brace_starts(text)
    best: tuple[int, int, dict[str, object]] | None = None  # (end, -start, obj)
    for start in starts:
        try:
            cand, end = _DECODER.raw_decode(text, start)
        except (ValueError, RecursionError):
            continue
        if isinstance(cand, dict) and (best is None or (end, -start) > best[:2]):
            best = (end, -start, cand)
    return best[2] if best else None


def json_objects(text: str) -> list[dict[str, object]]:
    """Every balanced JSON object in ``text`` (nested ones too), ordered by where it ends, the
    outer one last when two end together; fenced or not. The last ``_MAX_BRACE_STARTS`` starts."""
    if not isinstance(text, str):
        return []
    found: list[tuple[int, int, dict[str, object]]] = []  # (end, -start, obj)
    for start in _brace_starts(text):
        try:
            cand, end = _DECODER.raw_decode(text, start)
        except (ValueError, RecursionError):
            continue
        if isinstance(cand, dict):
            found.append((end, -start, cand))
    found.sort(key=lambda t: (t[0], t[1]))
    return [obj for _, _, obj in found]


def _letter_in(value: str, letters: str, flags: int) -> str | None:
    m = re.search(rf"\b([{re.escape(letters)}])\b", value, flags)
    return m.group(1).upper() if m else None


def extract_letter(
    text: str, letters: str = "ABCD", *, case_insensitive: bool = False
) -> str | None:
    """The option letter a reply chooses, or None.

    1. A JSON object's ``choice`` field (quotes stripped, uppercased): the whole field when it is
       one allowed letter, else the first standalone allowed letter inside it.
    2. Else the first standalone allowed letter in the text. Case-sensitive by default, because a
       case-insensitive search also matches the English article "a" (the ethics extractor does
       exactly that, on purpose, for fidelity).
    """
    if not isinstance(text, str) or not letters:
        return None
    letters = letters.upper()
    obj = parse_json_object(text)
    if obj is not None and "choice" in obj and obj["choice"] is not None:
        choice = str(obj["choice"]).strip().strip("\"'").strip().upper()
        if len(choice) == 1 and choice in letters:
            return choice
        found = _letter_in(choice, letters, 0)
        if found:
            return found
    return _letter_in(text, letters, re.IGNORECASE if case_insensitive else 0)


_SEP = re.compile(r"[\s_\-]+")


def normalize_label(value: str) -> str:
    """Lowercased, runs of spaces/underscores/hyphens collapsed to one space ("Self_Harm" -> "self harm")."""
    return _SEP.sub(" ", value.lower()).strip()


def _first_mention(text: str, labels: Sequence[str]) -> str | None:
    norm = " " + normalize_label(text) + " "
    best: tuple[int, int, str] | None = None  # (position, -length, label)
    for label in labels:
        key = normalize_label(label)
        if not key:
            continue
        m = re.search(rf"(?<![a-z0-9]){re.escape(key)}(?![a-z0-9])", norm)
        if m and (best is None or (m.start(), -len(key)) < best[:2]):
            best = (m.start(), -len(key), label)
    return best[2] if best else None


def match_label(
    text: str, labels: Sequence[str], *, json_field: str | None = "label"
) -> str | None:
    """The label a reply names, returned in its canonical spelling from ``labels``.

    The JSON field (when ``json_field`` is set and the reply carries an object with it) wins:
    an exact normalized match, else the first label mentioned inside the field. Otherwise the
    label whose mention comes first in the whole text (whole-word, case-insensitive,
    ``_``/``-``/space equivalent; at one position the longer label wins).
    """
    if not isinstance(text, str) or not labels:
        return None
    if json_field:
        obj = parse_json_object(text)
        field = obj.get(json_field) if obj is not None else None
        if isinstance(field, str):
            key = normalize_label(field)
            for label in labels:
                if normalize_label(label) == key:
                    return label
            found = _first_mention(field, labels)
            if found:
                return found
    return _first_mention(text, labels)
