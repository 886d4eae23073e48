"""engine.core.retry: Retry-After parsing and backoff timing."""

from __future__ import annotations

import email.utils
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from engine.core.retry import backoff_delay, parse_retry_after


def h(**kw: str) -> CIMultiDict[str]:
    # aiohttp hands the adapter case-insensitive headers; use the same type here.
    return CIMultiDict({k.replace("_", "-"): v for k, v in kw.items()})


def test_parse_seconds() -> None:
    assert parse_retry_after(h(retry_after="7")) == 7.0
    assert parse_retry_after(CIMultiDict({"Retry-After": "3"})) == 3.0  # any header case


def test_parse_fractional_seconds() -> None:
    assert parse_retry_after(h(retry_after="0.25")) == pytest.approx(0.25)
    assert parse_retry_after(h(retry_after="1.5")) == pytest.approx(1.5)


def test_parse_http_date() -> None:
    now = 1_700_000_000.0
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert parse_retry_after(h(retry_after=date), now=now) == pytest.approx(30.0)
    past = email.utils.formatdate(now - 30, usegmt=True)
    assert parse_retry_after(h(retry_after=past), now=now) == 0.0


def test_parse_retry_after_ms_wins() -> None:
    assert parse_retry_after(h(retry_after_ms="1500")) == pytest.approx(1.5)
    assert parse_retry_after(h(retry_after_ms="250", retry_after="1")) == pytest.approx(0.25)
    assert parse_retry_after(CIMultiDict({"Retry-After-Ms": "20"})) == pytest.approx(0.02)


def test_parse_absent_or_garbage() -> None:
    assert parse_retry_after(h()) is None
    assert parse_retry_after(h(retry_after="soon")) is None
    assert parse_retry_after(h(retry_after_ms="x", retry_after="2")) == 2.0  # bad ms falls back
    assert parse_retry_after(h(retry_after="-5")) == 0.0  # never negative


@settings(max_examples=200, deadline=None)
@given(attempt=st.integers(min_value=1, max_value=30), base=st.floats(min_value=0.01, max_value=5),
       cap=st.floats(min_value=0.1, max_value=120), ra=st.one_of(st.none(), st.floats(min_value=0, max_value=300)),
       seed=st.integers(min_value=0, max_value=2**32))
def test_backoff_never_below_retry_after_and_bounded(attempt: int, base: float, cap: float, ra: float | None,
                                                     seed: int) -> None:
    d = backoff_delay(attempt, base, cap, ra, random.Random(seed))
    exp = min(cap, base * 2.0 ** (attempt - 1))
    assert d >= exp / 2.0 - 1e-9  # equal jitter: at least half the exponential step
    if ra is None:
        assert d <= exp + 1e-9  # and never above the cap
    else:
        assert d >= ra
        assert d <= max(exp, ra + min(1.0, max(0.05, 0.1 * ra))) + 1e-9


def test_backoff_exponential_growth_and_cap() -> None:
    rng = random.Random(1)
    means = []
    for attempt in range(1, 12):
        ds = [backoff_delay(attempt, 0.5, 8.0, None, rng) for _ in range(200)]
        means.append(sum(ds) / len(ds))
        assert max(ds) <= 8.0
    # Doubles until it meets the cap, then stays there.
    assert means[1] == pytest.approx(2 * means[0], rel=0.15)
    assert means[2] == pytest.approx(2 * means[1], rel=0.15)
    assert all(m == pytest.approx(6.0, rel=0.1) for m in means[5:])  # 3/4 of the cap on average


def test_backoff_jitter_spreads_callers_with_same_retry_after() -> None:
    rng = random.Random(7)
    delays = [backoff_delay(1, 0.5, 60.0, 2.0, rng) for _ in range(64)]
    assert len(set(delays)) == 64  # no two callers come back at the same instant
    assert min(delays) >= 2.0
    assert max(delays) - min(delays) >= 0.05  # a real spread, not rounding noise
    assert max(delays) <= 2.0 + 0.2 + 1e-9


def test_backoff_jitter_with_tiny_retry_after() -> None:
    rng = random.Random(3)
    delays = [backoff_delay(1, 0.001, 60.0, 0.0, rng) for _ in range(64)]
    assert len(set(delays)) == 64
    assert all(0.0 <= d <= 0.05 + 0.001 for d in delays)
