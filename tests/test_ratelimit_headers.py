"""adapters.ratelimit_headers: provider rate-limit headers -> LimitSignal (pure, injectable clock).

Header formats:
  OpenAI   https://platform.openai.com/docs/guides/rate-limits ("Rate limits in headers": reset
           values are durations such as "1s", "6m0s")
  Anthropic https://platform.claude.com/docs/en/api/rate-limits ("Response headers": reset values
           are RFC 3339 timestamps; tokens-* is the most restrictive token limit in effect)
"""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec
import pytest

from adapters.ratelimit_headers import LimitSignal, parse_anthropic, parse_duration, parse_openai, parse_rfc3339_delay

NOW = datetime(2025, 8, 21, 12, 40, 0, tzinfo=UTC).timestamp()


@pytest.mark.parametrize("text, seconds", [
    ("1s", 1.0), ("6m0s", 360.0), ("20ms", 0.02), ("0s", 0.0), ("1h2m3.5s", 3723.5), ("17ms", 0.017),
    ("2m30.25s", 150.25), ("500us", 0.0005), ("12", 12.0), ("0.5", 0.5), (" 3s ", 3.0), ("1.5h", 5400.0),
])
def test_go_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "s", "1x", "m5", "5 s", "-1s", "-3", "abc", "1s2", "inf", "nan", None])
def test_unreadable_durations_are_none(text: str | None) -> None:
    assert parse_duration(text) is None


def test_openai_headers_from_the_docs() -> None:
    # The example table of https://platform.openai.com/docs/guides/rate-limits
    headers = {"x-ratelimit-limit-requests": "60", "x-ratelimit-limit-tokens": "150000",
               "x-ratelimit-remaining-requests": "59", "x-ratelimit-remaining-tokens": "149984",
               "x-ratelimit-reset-requests": "1s", "x-ratelimit-reset-tokens": "6m0s"}
    sig = parse_openai(headers)
    assert sig == LimitSignal(remaining_requests=59, remaining_tokens=149984, reset_requests_s=1.0,
                              reset_tokens_s=360.0, limit_requests=60, limit_tokens=150000)


def test_openai_partial_and_azure_quirks() -> None:
    assert parse_openai({}) is None
    assert parse_openai({"content-type": "application/json"}) is None
    sig = parse_openai({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "20ms"})
    assert sig == LimitSignal(remaining_requests=0, reset_requests_s=0.02)
    # Azure answers -1 / 0 when it does not know: -1 is "not reported", never a limit.
    sig = parse_openai({"x-ratelimit-remaining-tokens": "-1", "x-ratelimit-reset-tokens": "0"})
    assert sig == LimitSignal(reset_tokens_s=0.0)
    assert parse_openai({"x-ratelimit-remaining-tokens": "lots"}) is None


def test_rfc3339_delays() -> None:
    assert parse_rfc3339_delay("2025-08-21T12:40:59Z", NOW) == pytest.approx(59.0)
    assert parse_rfc3339_delay("2025-08-21T12:40:00.250Z", NOW) == pytest.approx(0.25)
    assert parse_rfc3339_delay("2025-08-21T14:41:00+02:00", NOW) == pytest.approx(60.0)
    assert parse_rfc3339_delay("2025-08-21T12:39:00Z", NOW) == 0.0  # in the past: no wait
    assert parse_rfc3339_delay("2025-08-21T12:41:00", NOW) is None  # no offset: ambiguous
    assert parse_rfc3339_delay("soon", NOW) is None
    assert parse_rfc3339_delay("", NOW) is None


def test_anthropic_headers_as_the_api_sends_them() -> None:
    # A real reply's headers (all families present), as documented in the rate-limits page.
    headers = {
        "anthropic-ratelimit-input-tokens-limit": "80000", "anthropic-ratelimit-input-tokens-remaining": "80000",
        "anthropic-ratelimit-input-tokens-reset": "2025-08-21T12:40:59Z",
        "anthropic-ratelimit-output-tokens-limit": "16000", "anthropic-ratelimit-output-tokens-remaining": "16000",
        "anthropic-ratelimit-output-tokens-reset": "2025-08-21T12:41:00Z",
        "anthropic-ratelimit-requests-limit": "1000", "anthropic-ratelimit-requests-remaining": "999",
        "anthropic-ratelimit-requests-reset": "2025-08-21T12:40:59Z",
        "anthropic-ratelimit-tokens-limit": "96000", "anthropic-ratelimit-tokens-remaining": "96000",
        "anthropic-ratelimit-tokens-reset": "2025-08-21T12:40:59Z",
    }
    sig = parse_anthropic(headers, now=NOW)
    assert sig == LimitSignal(remaining_requests=999, remaining_tokens=96000, reset_requests_s=59.0,
                              reset_tokens_s=59.0, limit_requests=1000, limit_tokens=96000)


def test_anthropic_without_combined_tokens_uses_the_tighter_family() -> None:
    headers = {"anthropic-ratelimit-input-tokens-remaining": "5000",
               "anthropic-ratelimit-input-tokens-reset": "2025-08-21T12:40:10Z",
               "anthropic-ratelimit-output-tokens-remaining": "300",
               "anthropic-ratelimit-output-tokens-reset": "2025-08-21T12:40:30Z"}
    sig = parse_anthropic(headers, now=NOW)
    assert sig == LimitSignal(remaining_tokens=300, reset_tokens_s=30.0)


def test_anthropic_absent_or_garbled() -> None:
    assert parse_anthropic({}, now=NOW) is None
    sig = parse_anthropic({"anthropic-ratelimit-requests-remaining": "0",
                           "anthropic-ratelimit-requests-reset": "not a time"}, now=NOW)
    assert sig == LimitSignal(remaining_requests=0)


def test_waits_are_one_request_or_the_missing_tokens_worth_of_refill() -> None:
    # OpenAI's documented example: 60 requests per minute, 59 left, full again in 1 s: one per second.
    assert LimitSignal(remaining_requests=59, reset_requests_s=1.0, limit_requests=60).request_wait_s() is None
    # One left of 1000, full again in 59.94 s: the next one refills in 0.06 s, not 59.94 s.
    sig = LimitSignal(remaining_requests=1, reset_requests_s=59.94, limit_requests=1000)
    assert sig.request_wait_s() == pytest.approx(0.06)
    assert LimitSignal(remaining_requests=0, reset_requests_s=2.0).request_wait_s() == 2.0  # no limit: whole reset
    assert LimitSignal(remaining_requests=0, reset_requests_s=0.0, limit_requests=5).request_wait_s() is None
    # Tokens: 1,000 needed, 200 left of 10,000, full in 49 s -> 800 / 9,800 of 49 s.
    tok = LimitSignal(remaining_tokens=200, reset_tokens_s=49.0, limit_tokens=10_000)
    assert tok.token_wait_s(1_000) == pytest.approx(4.0)
    assert tok.token_wait_s(150) is None
    assert tok.token_wait_s(50_000) == pytest.approx(49.0)  # more than the whole limit: at most the reset
    assert LimitSignal(remaining_tokens=10, reset_tokens_s=3.0).token_wait_s(100) == 3.0


def test_signal_is_a_frozen_struct() -> None:
    sig = LimitSignal(remaining_requests=1)
    with pytest.raises(AttributeError):
        sig.remaining_requests = 2  # type: ignore[misc]
    assert msgspec.json.decode(msgspec.json.encode(sig), type=LimitSignal) == sig
    assert msgspec.json.encode(sig) == b'{"remaining_requests":1}'
