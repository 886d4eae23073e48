"""Retry timing: exponential backoff with jitter that never undercuts the server's Retry-After."""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Mapping


def parse_retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds to wait from `retry-after-ms`, or `retry-after` as seconds or an HTTP date."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def backoff_delay(attempt: int, base: float, cap: float, retry_after: float | None, rng: random.Random) -> float:
    """Delay before attempt `attempt + 1`.

    Exponential "equal jitter" (half fixed, half random) spreads retries of many callers; with a
    Retry-After the delay is at least that long, plus up to 10% (min 50 ms, max 1 s) of random
    spread so that 64 callers told the same Retry-After do not return in lockstep.
    """
    exp = min(cap, base * (2.0 ** (attempt - 1)))
    delay = exp / 2.0 + rng.uniform(0.0, exp / 2.0)
    if retry_after is not None:
        spread = min(1.0, max(0.05, 0.1 * retry_after))
        delay = max(delay, retry_after + rng.uniform(0.0, spread))
    return delay
