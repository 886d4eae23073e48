"""Keeping API keys out of everything we write or print: keys come only from environment
variables, and every string that reaches a file, a log line or stderr passes through `redact`.

Two strengths, one function:

- everywhere (records included): the exact value of every key this process has read
  (`api_key`, `remember_env`) is removed, in its raw and its JSON-escaped form;
- `shapes=True` (error bodies, headers, exception texts, logs, stderr; never model responses or
  judgments): also what looks like a key although no configured variable holds it (`sk-` + 20 key
  characters, `Bearer ...`, `x-api-key: ...`, `key=` query parameters, Google's `AIza...`), and the
  recognisable ends of a known key that providers echo abbreviated ("sk-abc...wxyz").

The known values live in this module (one set per process: the driver, and each Ray actor, which
reads its lane's key itself), so the writers need not be handed them: a key read anywhere is
removed everywhere.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from typing import overload

from engine.core.errors import ConfigError

__all__ = ["MARK", "api_key", "looks_like_key", "remember", "remember_env", "redact"]

MARK = "[redacted]"
_MARK_B = MARK.encode()
# Shorter values are not removed from records: a 4-character "key" would cut words out of answers.
_MIN_LEN = 8

_known: set[str] = set()  # key values read by this process
_needles: list[tuple[bytes, ...]] = []  # byte forms of each known value, longest first

_KEY_CHARS = r"[A-Za-z0-9_\-]"
_SHAPES = (
    (re.compile(rf"(?<![A-Za-z0-9_])sk-{_KEY_CHARS}{{20,}}"), "sk-" + MARK),
    (re.compile(rf"(?<![A-Za-z0-9_])AIza{_KEY_CHARS}{{30,}}"), MARK),
    (re.compile(r"(?i)\bBearer\s+[A-Za-z0-9._~+/=\-]{6,}"), "Bearer " + MARK),
    (re.compile(r"""(?i)\b(x-(?:goog-)?api-key|api[-_]?key)(["']?\s*[:=]\s*["']?)[^\s"',;&}]{4,}"""),
     r"\1\2" + MARK),
    (re.compile(r"(?i)(?<![A-Za-z0-9_\-])(key=)[^&\s\"'#<>]{4,}"), r"\1" + MARK),
)
# What an environment variable name looks like (POSIX portable names); a key never does.
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def remember(value: str | None) -> None:
    """Adds a key value to the set `redact` removes everywhere."""
    if not value or len(value) < _MIN_LEN or value in _known:
        return
    raw = value.encode("utf-8")
    # A record line holds the value as msgspec encodes it: quotes and backslashes escaped.
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').encode("utf-8")
    _known.add(value)
    _needles.append((raw, escaped) if escaped != raw else (raw,))
    _needles.sort(key=lambda forms: -len(forms[0]))


def remember_env(names: Iterable[str | None]) -> None:
    """Remembers the values the environment holds for these variable names (commands that build
    no adapter, such as `report`, still must not print a key a run's errors might quote)."""
    for name in names:
        if name:
            remember(os.environ.get(name))


def known() -> tuple[str, ...]:
    return tuple(_known)


@overload
def redact(text: str, secrets: tuple[str, ...] = (), *, shapes: bool = True) -> str: ...


@overload
def redact(text: bytearray, secrets: tuple[str, ...] = (), *, shapes: bool = True) -> bytes | bytearray: ...


@overload
def redact(text: bytes, secrets: tuple[str, ...] = (), *, shapes: bool = True) -> bytes: ...


def redact(text: str | bytes | bytearray, secrets: tuple[str, ...] = (), *,
           shapes: bool = True) -> str | bytes | bytearray:
    """`text` without the known key values (and `secrets`, for a caller holding one not read through
    `api_key`); with `shapes`, without key-shaped strings too. Bytes (an encoded record batch, a
    JSON document) get the exact values removed only: records hold model answers, which key shapes
    must not touch. Returns `text` itself when there is nothing to remove."""
    for s in secrets:
        remember(s)
    if not isinstance(text, str):
        for forms in _needles:
            for form in forms:
                if form in text:
                    text = bytes(text).replace(form, _MARK_B)
        return text
    for value in sorted(_known, key=len, reverse=True):
        if value in text:
            text = text.replace(value, MARK)
    if not shapes:
        return text
    for value in _known:
        # Providers echo keys abbreviated ("sk-proj-...wxyz", "****wxyz"): hide the recognisable
        # ends too (the last four only after an ellipsis or stars: alone they could be any word).
        if len(value) >= 16:
            text = text.replace(value[:8], MARK)
            for dots in ("...", "\u2026", "**"):
                text = text.replace(dots + value[-4:], dots + MARK)
    for pattern, repl in _SHAPES:
        text = pattern.sub(repl, text)
    return text


def looks_like_key(name: str) -> bool:
    """Whether an `api_key_env` value is a key pasted where a variable's name belongs."""
    return not _ENV_NAME.fullmatch(name) or bool(_SHAPES[0][0].search(name) or _SHAPES[1][0].search(name)) \
        or (len(name) >= 32 and any(c.isdigit() for c in name) and any(c.islower() for c in name))


def api_key(env_name: str | None, model: str) -> str | None:
    if not env_name:
        return None
    if looks_like_key(env_name):
        remember(env_name)
        raise ConfigError(f"models.{model}.api_key_env: holds what looks like a key itself, not the name of an "
                          "environment variable; export the key in a variable (e.g. OPENAI_API_KEY) and name "
                          "that variable here")
    value = os.environ.get(env_name)
    if not value:
        raise ConfigError(
            f"models.{model}.api_key_env: environment variable {env_name} is not set; export it (the key is never read from files)"
        )
    remember(value)
    return value
