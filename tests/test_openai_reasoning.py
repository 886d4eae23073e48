"""OpenAI reasoning models (o-series, gpt-5*) through adapters.openai_compat: the request rules,
usage details, and the `x-ratelimit-*` signal recorded in `last_signal`.

Documentation the expectations come from:
  https://platform.openai.com/docs/guides/reasoning            (reasoning tokens; max_completion_tokens
                                                                 bounds reasoning + visible output)
  https://platform.openai.com/docs/api-reference/chat/create   (`max_tokens` is deprecated and not
                                                                 compatible with o-series models)
  https://platform.openai.com/docs/api-reference/chat/object   (usage.completion_tokens_details.reasoning_tokens,
                                                                 usage.prompt_tokens_details.cached_tokens)
  https://platform.openai.com/docs/guides/rate-limits          (x-ratelimit-* headers, durations "1s", "6m0s")
  https://platform.openai.com/docs/guides/error-codes          (401 invalid key, 429)

Reasoning models answer a non-default temperature with 400 "Unsupported value: 'temperature' does not
support 0.7 with this model. Only the default (1) value is supported." and `max_tokens` with 400
"Unsupported parameter: 'max_tokens' is not supported with this model. Use 'max_completion_tokens'
instead." (engine.testing.fake_providers.OpenAIReasoningFake reproduces both).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import pytest

from adapters.openai_compat import OpenAIChat, openai_body, parse_chat_response
from adapters.ratelimit_headers import LimitSignal
from engine.core.adapter import AdapterError
from engine.core.records import GenParams, Message
from engine.testing.fake_providers import OPENAI_DOC_REASONING_COMPLETION, OpenAIReasoningFake, reply_text, start_fake
from engine.testing.fakeserver import SERVER_KEY, expected_text, start_in_loop

KEY = "sk-proj-SECRETSECRET-0123456789abcdef"
MSGS = (Message(role="system", content="be brief"), Message(role="user", content="hello there"))
PARAMS = GenParams(max_tokens=64, temperature=0.7, top_p=0.9, seed=3, stop=("\n\n",))

Fn = Callable[[OpenAIChat, OpenAIReasoningFake], Awaitable[None]]


def with_fake(fn: Fn, *, model: str = "o3-mini", key: str = KEY, reasoning: bool | None = None,
              **fake_kw: Any) -> None:
    async def main() -> None:
        fake = OpenAIReasoningFake(api_key=KEY, **fake_kw)
        runner, url = await start_fake(fake)
        adapter = OpenAIChat(base_url=url + "/v1", model=model, api_key=key, concurrency=4, reasoning=reasoning)
        try:
            await fn(adapter, fake)
        finally:
            await adapter.aclose()
            await runner.cleanup()

    asyncio.run(main())


async def _err(a: OpenAIChat, body: dict[str, Any]) -> AdapterError:
    with pytest.raises(AdapterError) as ei:
        await a.send(body, 5.0)
    assert KEY not in ei.value.message and KEY[-4:] not in ei.value.message and KEY[:8] not in ei.value.message
    return ei.value


@pytest.mark.parametrize("model", ["o1", "o1-mini", "o3", "o3-mini", "o4-mini", "gpt-5", "gpt-5-mini", "gpt-5-nano",
                                   "gpt-5.1"])
def test_reasoning_models_are_detected(model: str) -> None:
    a = OpenAIChat(base_url="http://x/v1", model=model, api_key=None, concurrency=1)
    assert a.reasoning
    body = a.build_body(MSGS, PARAMS)
    assert body["max_completion_tokens"] == 64
    assert "max_tokens" not in body and "temperature" not in body and "top_p" not in body
    assert body["seed"] == 3 and body["stop"] == ["\n\n"]


@pytest.mark.parametrize("model", ["gpt-4o", "gpt-4o-mini", "gpt-4.1", "fake-model", "llama-3.1-8b"])
def test_other_models_keep_max_tokens_and_sampling(model: str) -> None:
    a = OpenAIChat(base_url="http://x/v1", model=model, api_key=None, concurrency=1)
    assert not a.reasoning
    body = a.build_body(MSGS, PARAMS)
    assert body["max_tokens"] == 64 and body["temperature"] == 0.7 and body["top_p"] == 0.9
    assert "max_completion_tokens" not in body


def test_explicit_override_and_unset_budget() -> None:
    assert OpenAIChat(base_url="http://x/v1", model="my-o3-proxy", api_key=None, concurrency=1,
                      reasoning=True).reasoning
    assert not OpenAIChat(base_url="http://x/v1", model="o3-mini", api_key=None, concurrency=1,
                          reasoning=False).reasoning
    body = openai_body("o3", MSGS, GenParams(temperature=1.0), reasoning=True)
    assert body == {"model": "o3", "messages": [{"role": "system", "content": "be brief"},
                                                {"role": "user", "content": "hello there"}]}


def test_reasoning_body_is_accepted_and_usage_details_parsed() -> None:
    async def fn(a: OpenAIChat, fake: OpenAIReasoningFake) -> None:
        r = await a.send(a.build_body(MSGS, PARAMS), 5.0)
        assert r.text == reply_text(OpenAIReasoningFake.provider, "hello there") and r.finish_reason == "stop"
        assert r.server_model == "o3-mini"
        assert r.usage.reasoning_tokens == 64 and r.usage.cached_tokens == 0
        assert r.usage.completion_tokens >= r.usage.reasoning_tokens  # reasoning counts as completion
        fake.script("doc_example", "length_empty")
        d = await a.send(a.build_body(MSGS, PARAMS), 5.0)
        assert d.text == "The answer is 42." and d.server_model == "o3-mini-2025-01-31"
        assert (d.usage.prompt_tokens, d.usage.completion_tokens, d.usage.reasoning_tokens, d.usage.cached_tokens) \
            == (75, 1186, 1024, 64)
        # The whole budget went to reasoning: empty visible text, finish_reason "length".
        e = await a.send(a.build_body(MSGS, PARAMS), 5.0)
        assert e.text == "" and e.finish_reason == "length" and e.usage.reasoning_tokens == 64

    with_fake(fn)


def test_doc_completion_parses_offline() -> None:
    r = parse_chat_response(orjson.dumps(OPENAI_DOC_REASONING_COMPLETION), 0.1)
    assert r.usage.reasoning_tokens == 1024 and r.usage.cached_tokens == 64


def test_sending_max_tokens_or_temperature_to_a_reasoning_model_is_fatal() -> None:
    async def fn(a: OpenAIChat, fake: OpenAIReasoningFake) -> None:
        assert not a.reasoning  # forced off: the body carries max_tokens and temperature
        e = await _err(a, a.build_body(MSGS, PARAMS))
        assert (e.kind, e.status, e.retryable) == ("fatal", 400, False)
        assert "Use 'max_completion_tokens' instead" in e.message
        body = {**a.build_body(MSGS, PARAMS)}
        body["max_completion_tokens"] = body.pop("max_tokens")
        e = await _err(a, body)
        assert e.kind == "fatal" and "Only the default (1) value is supported" in e.message
        assert fake.count == 0

    with_fake(fn, model="gpt-5-mini", reasoning=False)


def test_last_signal_from_x_ratelimit_headers() -> None:
    async def fn(a: OpenAIChat, fake: OpenAIReasoningFake) -> None:
        assert a.last_signal is None
        body = a.build_body(MSGS, PARAMS)
        seen = []
        for _ in range(2):
            await a.send(body, 5.0)
            sig = a.last_signal
            assert isinstance(sig, LimitSignal) and sig.remaining_tokens is not None
            assert sig.reset_requests_s is not None and 0.0 <= sig.reset_requests_s <= 60.0
            assert sig.reset_tokens_s is not None and 0.0 <= sig.reset_tokens_s <= 60.0
            seen.append(sig.remaining_requests)
        assert seen == [1, 0]
        fake.mode = "429"
        e = await _err(a, body)
        assert (e.kind, e.retry_after) == ("rate_limited", pytest.approx(0.5))
        assert a.last_signal is not None and a.last_signal.remaining_requests == 0

    with_fake(fn, requests_limit=2, retry_after_s=0.5)


def test_wrong_key_is_auth_and_the_echoed_key_is_redacted() -> None:
    async def fn(a: OpenAIChat, fake: OpenAIReasoningFake) -> None:
        e = await _err(a, a.build_body(MSGS, PARAMS))
        assert (e.kind, e.status) == ("auth", 401) and "Incorrect API key provided" in e.message
        assert "[redacted]" in e.message  # the server echoed "sk-...wxyz"; the last 4 characters are hidden

    wrong = "sk-proj-WRONGWRONG-99998888zzzz"
    with_fake(fn, key=wrong)


def test_fakeserver_counts_max_completion_tokens_and_sends_no_signal() -> None:
    """The general OpenAI fake (engine/testing/fakeserver.py) honours max_completion_tokens for its padded
    completions; it sends no x-ratelimit headers, so last_signal stays None."""

    async def main() -> None:
        runner, url = await start_in_loop({"completion_tokens": "max_tokens"})
        a = OpenAIChat(base_url=url, model="o4-mini", api_key=None, concurrency=2)
        try:
            body = a.build_body(MSGS, GenParams(max_tokens=40, temperature=0.0))
            r = await a.send(body, 5.0)
            assert r.text.startswith(expected_text(body)) and r.usage.completion_tokens == 40
            assert a.last_signal is None
            assert runner.app[SERVER_KEY].stats()["ok"] == 1
        finally:
            await a.aclose()
            await runner.cleanup()

    asyncio.run(main())
