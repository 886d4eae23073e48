"""Provider rate-limit response headers -> one `LimitSignal` (pure parsers, no I/O, no clock reads
unless `now` is left out).

Providers report where a key stands on every response, success or 429, so a client can slow down
*before* it is refused:

* OpenAI (https://platform.openai.com/docs/guides/rate-limits, "Rate limits in headers"):
  `x-ratelimit-limit-requests`, `x-ratelimit-limit-tokens`, `x-ratelimit-remaining-requests`,
  `x-ratelimit-remaining-tokens`, and `x-ratelimit-reset-requests` / `x-ratelimit-reset-tokens`,
  the time until the limit resets as a Go-style duration ("1s", "6m0s", "20ms", "1h2m3.5s").
  Compatible servers (Azure) sometimes send plain seconds ("12") or -1 for "unknown".
* Anthropic (https://platform.claude.com/docs/en/api/rate-limits, "Response headers"):
  `anthropic-ratelimit-requests-{limit,remaining,reset}`, `anthropic-ratelimit-tokens-*` (the most
  restrictive token limit currently in effect), `anthropic-ratelimit-input-tokens-*` and
  `anthropic-ratelimit-output-tokens-*`; `-reset` values are RFC 3339 timestamps
  ("2025-08-21T12:40:59Z") of when the limit is fully replenished.
* Gemini sends no rate-limit headers (https://ai.google.dev/gemini-api/docs/rate-limits); its 429
  carries a `google.rpc.RetryInfo` in the body instead (adapters.gemini reads that).

All reset values become seconds from now (>= 0). A header that is absent or unreadable is None:
a signal never invents a limit.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping
from datetime import datetime

import msgspec

__all__ = ["LimitSignal", "parse_anthropic", "parse_duration", "parse_openai", "parse_rfc3339_delay"]


class LimitSignal(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Where the key stands, as of the response that carried the headers.

    remaining_requests  requests left in the current window (None: not reported)
    remaining_tokens    tokens left (Anthropic: the most restrictive token limit in effect)
    reset_requests_s    seconds until the request limit is fully replenished
    reset_tokens_s      seconds until the token limit is fully replenished
    limit_requests      the request limit itself (None: not reported)
    limit_tokens        the token limit the remaining_tokens count belongs to

    Both providers refill continuously (OpenAI's example: limit 60, remaining 59, reset "1s";
    Anthropic: a token bucket, reset = "fully replenished"), so with the limit known, the wait for
    one more request is reset / (limit - remaining), not the whole reset.
    """

    remaining_requests: int | None = None
    remaining_tokens: int | None = None
    reset_requests_s: float | None = None
    reset_tokens_s: float | None = None
    limit_requests: int | None = None
    limit_tokens: int | None = None

    def empty(self) -> bool:
        return (self.remaining_requests is None and self.remaining_tokens is None
                and self.reset_requests_s is None and self.reset_tokens_s is None)

    def request_wait_s(self) -> float | None:
        """Seconds to hold back new requests when at most one is left (None: no need)."""
        rem, reset, limit = self.remaining_requests, self.reset_requests_s, self.limit_requests
        if rem is None or rem > 1 or not reset:
            return None
        if limit is not None and limit > rem:
            return reset / (limit - rem)
        return reset

    def token_wait_s(self, need: int) -> float | None:
        """Seconds until `need` tokens are available when fewer remain (None: no need)."""
        rem, reset, limit = self.remaining_tokens, self.reset_tokens_s, self.limit_tokens
        if rem is None or rem >= need or not reset:
            return None
        if limit is not None and limit > rem:
            return reset * min(1.0, (min(need, limit) - rem) / (limit - rem))
        return reset


_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|h|m|s)")
_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}


def parse_duration(value: str | None) -> float | None:
    """Seconds in a Go-style duration ("6m0s", "1h2m3.5s", "20ms", "0s"), or plain seconds ("12",
    "0.5"); None if unreadable."""
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    pos, total = 0, 0.0
    for m in _DURATION_PART.finditer(text):
        if m.start() != pos:
            return None
        total += float(m.group(1)) * _UNIT_S[m.group(2)]
        pos = m.end()
    return total if pos == len(text) and pos > 0 else None


def parse_rfc3339_delay(value: str | None, now: float | None = None) -> float | None:
    """Seconds from `now` (epoch seconds; default the wall clock) until an RFC 3339 timestamp,
    clamped at 0; None if unreadable or without a UTC offset."""
    if not value:
        return None
    text = value.strip()
    if text[-1:] in ("z", "Z"):
        text = text[:-1] + "+00:00"
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _count(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        f = float(value.strip())
    except ValueError:
        return None
    if not math.isfinite(f):
        return None
    n = int(f)
    return n if n >= 0 else None  # Azure sends -1 for "not reported"


def parse_openai(headers: Mapping[str, str]) -> LimitSignal | None:
    """OpenAI-style `x-ratelimit-*` headers; None when there are none."""
    if "x-ratelimit-remaining-requests" not in headers and "x-ratelimit-remaining-tokens" not in headers \
            and "x-ratelimit-reset-requests" not in headers and "x-ratelimit-reset-tokens" not in headers:
        return None  # the common case for local servers: no parsing per response
    sig = LimitSignal(
        remaining_requests=_count(headers.get("x-ratelimit-remaining-requests")),
        remaining_tokens=_count(headers.get("x-ratelimit-remaining-tokens")),
        reset_requests_s=parse_duration(headers.get("x-ratelimit-reset-requests")),
        reset_tokens_s=parse_duration(headers.get("x-ratelimit-reset-tokens")),
        limit_requests=_count(headers.get("x-ratelimit-limit-requests")),
        limit_tokens=_count(headers.get("x-ratelimit-limit-tokens")),
    )
    return None if sig.empty() else sig


def parse_anthropic(headers: Mapping[str, str], now: float | None = None) -> LimitSignal | None:
    """Anthropic `anthropic-ratelimit-*` headers; None when there are none.

    Tokens: `anthropic-ratelimit-tokens-*` already is the most restrictive token limit in effect;
    without it, the tighter of the input- and output-token limits (and its reset) stands in."""
    if now is None:
        now = time.time()
    p = "anthropic-ratelimit-"
    remaining_tokens = _count(headers.get(p + "tokens-remaining"))
    reset_tokens = parse_rfc3339_delay(headers.get(p + "tokens-reset"), now)
    limit_tokens = _count(headers.get(p + "tokens-limit"))
    if remaining_tokens is None and reset_tokens is None:
        best: tuple[int, float | None, int | None] | None = None
        for kind in ("input-tokens", "output-tokens"):
            rem = _count(headers.get(f"{p}{kind}-remaining"))
            if rem is not None and (best is None or rem < best[0]):
                best = (rem, parse_rfc3339_delay(headers.get(f"{p}{kind}-reset"), now),
                        _count(headers.get(f"{p}{kind}-limit")))
        if best is not None:
            remaining_tokens, reset_tokens, limit_tokens = best
    sig = LimitSignal(
        remaining_requests=_count(headers.get(p + "requests-remaining")),
        remaining_tokens=remaining_tokens,
        reset_requests_s=parse_rfc3339_delay(headers.get(p + "requests-reset"), now),
        reset_tokens_s=reset_tokens,
        limit_requests=_count(headers.get(p + "requests-limit")),
        limit_tokens=limit_tokens,
    )
    return None if sig.empty() else sig
