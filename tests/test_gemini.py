"""adapters.gemini against the Gemini fake (engine/testing/fake_providers.py) in the test's own loop:
request bodies the fake validates, reply parsing (safety blocks included), the classification of
every failure, and key redaction. The end-to-end run with a gemini lane is in test_anthropic.py
(one engine run serves both providers).

Documentation the expectations come from:
  https://ai.google.dev/api/generate-content                (request body, GenerateContentResponse,
                                                             FinishReason, PromptFeedback.blockReason,
                                                             UsageMetadata)
  https://ai.google.dev/gemini-api/docs/structured-output   (responseMimeType + responseJsonSchema)
  https://ai.google.dev/gemini-api/docs/troubleshooting     (HTTP code / status table)
  https://ai.google.dev/gemini-api/docs/generate-content/api-errors
"""

from __future__ import annotations

import asyncio
import math
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from adapters.gemini import GeminiGenerate, gemini_body, gemini_error, parse_generate_response
from adapters.registry import make_adapter
from engine.core.adapter import AdapterError
from engine.core.config import ModelConfig
from engine.core.records import GenParams, Message
from engine.testing.fake_providers import GEMINI_DOC_RESPONSE, GeminiFake, reply_text, start_fake

KEY = "AIzaSyD-SECRETSECRET-0123456789abcdef"
MODEL = "gemini-2.5-flash"
MSGS = (Message(role="system", content="be brief"), Message(role="user", content="hello there"))
PARAMS = GenParams(max_tokens=32, temperature=0.0, seed=3)
SCHEMA = {"name": "label", "schema": {"type": "object", "properties": {"label": {"type": "string", "enum": ["a", "b"]}},
                                      "required": ["label"], "additionalProperties": False}}

Fn = Callable[[GeminiGenerate, GeminiFake], Awaitable[None]]


def with_fake(fn: Fn, *, key: str | None = KEY, model: str = MODEL, suffix: str = "", **fake_kw: Any) -> None:
    async def main() -> None:
        fake = GeminiFake(api_key=KEY, **fake_kw)
        runner, url = await start_fake(fake)
        adapter = GeminiGenerate(model=model, api_key=key, concurrency=4, base_url=url + suffix)
        try:
            await fn(adapter, fake)
        finally:
            await adapter.aclose()
            await runner.cleanup()

    asyncio.run(main())


async def _err(a: GeminiGenerate, body: dict[str, Any], timeout: float = 5.0) -> AdapterError:
    with pytest.raises(AdapterError) as ei:
        await a.send(body, timeout)
    assert KEY not in ei.value.message and KEY[:8] not in ei.value.message and KEY[-4:] not in ei.value.message
    return ei.value


# -- request bodies -----------------------------------------------------------------------------------


def test_body_uses_contents_system_instruction_and_generation_config() -> None:
    a = GeminiGenerate(model=MODEL, api_key=KEY, concurrency=1)
    body = a.build_body(MSGS, PARAMS)
    assert body == {"contents": [{"role": "user", "parts": [{"text": "hello there"}]}],
                    "systemInstruction": {"parts": [{"text": "be brief"}]},
                    "generationConfig": {"temperature": 0.0, "maxOutputTokens": 32, "seed": 3}}
    assert orjson.dumps(body) == orjson.dumps(a.build_body(MSGS, PARAMS))
    assert KEY not in orjson.dumps(body).decode() and KEY not in a.url  # the key travels in a header only
    assert a.url == f"https://generativelanguage.googleapis.com/v1beta/models/{MODEL}:generateContent"
    assert GeminiGenerate(model="models/gemini-x", api_key=None, concurrency=1,
                          base_url="http://h:1/v1beta/").url == "http://h:1/v1beta/models/gemini-x:generateContent"
    assert "generationConfig" not in gemini_body(MSGS, GenParams())


def test_body_roles_stops_and_schema() -> None:
    msgs = (Message(role="user", content="a"), Message(role="assistant", content="b"),
            Message(role="assistant", content="c"), Message(role="user", content="d"))
    body = gemini_body(msgs, GenParams(top_p=0.9, stop=("\n",), json_schema=SCHEMA))
    assert body["contents"] == [{"role": "user", "parts": [{"text": "a"}]},
                                {"role": "model", "parts": [{"text": "b"}, {"text": "c"}]},
                                {"role": "user", "parts": [{"text": "d"}]}]
    assert "systemInstruction" not in body
    gen = body["generationConfig"]
    assert gen == {"topP": 0.9, "stopSequences": ["\n"], "responseMimeType": "application/json",
                   "responseJsonSchema": SCHEMA["schema"]}


def test_built_bodies_pass_the_documented_validation() -> None:
    async def fn(a: GeminiGenerate, fake: GeminiFake) -> None:
        convo = (Message(role="user", content="hi"), Message(role="assistant", content="yo"),
                 Message(role="user", content="again"))
        for p in (GenParams(), PARAMS, GenParams(top_p=0.5, stop=("x",), json_schema=SCHEMA)):
            for m in (MSGS, convo):
                r = await a.send(a.build_body(m, p), 5.0)
                assert r.finish_reason == "stop"
        assert fake.count == 6

    with_fake(fn)


# -- success ------------------------------------------------------------------------------------------


def test_success_text_usage_model() -> None:
    async def fn(a: GeminiGenerate, fake: GeminiFake) -> None:
        r = await a.send(a.build_body(MSGS, PARAMS), 5.0)
        assert r.text == reply_text(GeminiFake.provider, "hello there")
        assert r.finish_reason == "stop" and r.server_model == MODEL
        assert r.usage.prompt_tokens == 3 and r.usage.completion_tokens > 0
        assert r.usage.reasoning_tokens is None and r.usage.cached_tokens is None
        assert a.last_signal is None  # Gemini sends no rate-limit headers
        rs = await asyncio.gather(*(a.send(a.build_body((Message(role="user", content=f"q{i}"),), PARAMS), 5.0)
                                    for i in range(24)))
        assert [x.text for x in rs] == [reply_text(GeminiFake.provider, f"q{i}") for i in range(24)]

    with_fake(fn)


def test_doc_shaped_response_with_thoughts_and_cache() -> None:
    r = parse_generate_response(orjson.dumps(GEMINI_DOC_RESPONSE), 0.25)
    assert r.text == "AI learns patterns from data to make predictions."
    assert r.finish_reason == "stop" and r.server_model == "gemini-2.5-flash"
    # Thinking tokens count as completion tokens (as OpenAI counts reasoning tokens) and are reported.
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.reasoning_tokens, r.usage.cached_tokens) == \
        (8, 10 + 24, 24, 4)

    async def fn(a: GeminiGenerate, fake: GeminiFake) -> None:
        body = a.build_body(MSGS, PARAMS)
        fake.script("doc_example", "thinking", "cached", "max_tokens")
        assert (await a.send(body, 5.0)).usage == r.usage
        t = await a.send(body, 5.0)  # thought parts are not part of the answer
        assert t.text == reply_text(GeminiFake.provider, "hello there") and t.usage.reasoning_tokens == 37
        assert t.usage.completion_tokens == t.usage.reasoning_tokens + math.ceil(len(t.text) / 4)
        c = await a.send(body, 5.0)
        assert c.usage.cached_tokens == 3
        m = await a.send(body, 5.0)
        assert m.finish_reason == "length"

    with_fake(fn)


@pytest.mark.parametrize("mode", ["safety", "blocked", "recitation", "prohibited"])
def test_safety_blocks_are_content_filter_responses(mode: str) -> None:
    async def fn(a: GeminiGenerate, fake: GeminiFake) -> None:
        fake.mode = mode
        r = await a.send(a.build_body(MSGS, PARAMS), 5.0)
        assert r.finish_reason == "content_filter" and r.text == ""
        assert r.usage.prompt_tokens == 3

    with_fake(fn)


def test_finish_reason_table() -> None:
    for reason, mapped in (("STOP", "stop"), ("MAX_TOKENS", "length"), ("SAFETY", "content_filter"),
                           ("RECITATION", "content_filter"), ("BLOCKLIST", "content_filter"),
                           ("PROHIBITED_CONTENT", "content_filter"), ("SPII", "content_filter"),
                           ("OTHER", "content_filter"), ("FINISH_REASON_UNSPECIFIED", "stop"), (None, "stop")):
        raw = orjson.dumps({"candidates": [{"content": {"parts": [{"text": "x"}]}, "finishReason": reason}]})
        assert parse_generate_response(raw, 0.0).finish_reason == mapped, reason
    # No candidates and no block reason is not a documented reply.
    with pytest.raises(AdapterError) as ei:
        parse_generate_response(b'{"usageMetadata": {}}', 0.0)
    assert ei.value.kind == "malformed"


# -- validation the fake enforces (and the adapter classifies) ------------------------------------------


def test_documented_request_rejections_are_fatal() -> None:
    async def fn(a: GeminiGenerate, fake: GeminiFake) -> None:
        good = a.build_body(MSGS, PARAMS)
        cases = [
            ({**good, "contents": [{"role": "assistant", "parts": [{"text": "x"}]}]}, "valid role: user, model"),
            ({**good, "contents": [{"role": "system", "parts": [{"text": "x"}]}]}, "valid role: user, model"),
            ({**good, "generationConfig": {"max_tokens": 5}}, 'Unknown name "max_tokens"'),
            ({**good, "system_instruction": good["systemInstruction"]}, 'Unknown name "system_instruction"'),
            ({**good, "generationConfig": {"responseSchema": {"type": "object"}}}, "response_mime_type"),
            ({**good, "generationConfig": {"responseMimeType": "application/json",
                                           "responseSchema": SCHEMA["schema"]}}, "additionalProperties"),
            ({"contents": []}, "contents"),
        ]
        for body, needle in cases:
            e = await _err(a, body)
            assert (e.kind, e.status, e.retryable) == ("fatal", 400, False), e.message
            assert "INVALID_ARGUMENT" in e.message and needle in e.message
        assert fake.count == 0

    with_fake(fn)


def test_unknown_model_is_fatal_404() -> None:
    async def fn(a: GeminiGenerate, fake: GeminiFake) -> None:
        e = await _err(a, a.build_body(MSGS, PARAMS))
        assert (e.kind, e.status) == ("fatal", 404) and "NOT_FOUND" in e.message

    with_fake(fn, model="unknown-gemini")


def test_wrong_key_is_auth_even_though_it_is_a_400() -> None:
    async def fn(a: GeminiGenerate, fake: GeminiFake) -> None:
        e = await _err(a, a.build_body(MSGS, PARAMS))
        assert (e.kind, e.status, e.retryable) == ("auth", 400, False)
        assert "API key not valid" in e.message

    with_fake(fn, key="AIzaWRONG-0000000000000000")


def test_missing_key_is_auth_403() -> None:
    async def fn(a: GeminiGenerate, fake: GeminiFake) -> None:
        e = await _err(a, a.build_body(MSGS, PARAMS))
        assert (e.kind, e.status) == ("auth", 403) and "PERMISSION_DENIED" in e.message

    with_fake(fn, key=None)


# -- every error class ----------------------------------------------------------------------------------


def test_429_is_rate_limited_with_retry_info_delay() -> None:
    async def fn(a: GeminiGenerate, fake: GeminiFake) -> None:
        fake.mode = "429"
        e = await _err(a, a.build_body(MSGS, PARAMS))
        assert (e.kind, e.status, e.retryable) == ("rate_limited", 429, True)
        assert e.retry_after == pytest.approx(0.25) and "RESOURCE_EXHAUSTED" in e.message

    with_fake(fn, retry_after_s=0.25)
    # The live API's fractional protobuf durations, and a Retry-After header if a proxy adds one.
    body = orjson.dumps({"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "message": "quota", "details": [
        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "47.434392449s"}]}})
    assert gemini_error(429, body, {}, ()).retry_after == pytest.approx(47.434392449)
    assert gemini_error(429, body, {"retry-after": "3"}, ()).retry_after == 3.0
    assert gemini_error(429, b"<html>busy</html>", {}, ()).kind == "rate_limited"


@pytest.mark.parametrize("mode, status, kind", [("503", 503, "transient"), ("500", 500, "transient"),
                                                ("403", 403, "auth"), ("404", 404, "fatal")])
def test_status_classes(mode: str, status: int, kind: str) -> None:
    async def fn(a: GeminiGenerate, fake: GeminiFake) -> None:
        fake.mode = mode
        e = await _err(a, a.build_body(MSGS, PARAMS))
        assert (e.kind, e.status) == (kind, status)
        if mode == "503":
            assert "UNAVAILABLE" in e.message and e.retryable

    with_fake(fn)


@pytest.mark.parametrize("mode", ["malformed", "malformed_shape"])
def test_malformed_bodies(mode: str) -> None:
    async def fn(a: GeminiGenerate, fake: GeminiFake) -> None:
        fake.mode = mode
        e = await _err(a, a.build_body(MSGS, PARAMS))
        assert e.kind == "malformed" and e.retryable

    with_fake(fn)


def test_reset_hang_and_refused() -> None:
    async def fn(a: GeminiGenerate, fake: GeminiFake) -> None:
        body = a.build_body(MSGS, PARAMS)
        fake.script("reset")
        e = await _err(a, body)
        assert e.kind == "transient" and e.retryable
        assert (await a.send(body, 5.0)).text
        fake.script("hang")
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        e = await _err(a, body, timeout=0.3)
        assert e.kind == "timeout" and 0.25 <= loop.time() - t0 < 3.0

    with_fake(fn, hang_s=1.5)

    async def refused() -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        a = GeminiGenerate(model=MODEL, api_key=KEY, concurrency=1, base_url=f"http://127.0.0.1:{port}")
        try:
            e = await _err(a, a.build_body(MSGS, PARAMS))
            assert e.kind == "transient" and getattr(e, "unreachable", False)
        finally:
            await a.aclose()

    asyncio.run(refused())


def test_key_echoed_by_the_server_is_redacted() -> None:
    async def fn(a: GeminiGenerate, fake: GeminiFake) -> None:
        fake.mode = "leaky_auth"
        e = await _err(a, a.build_body(MSGS, PARAMS))
        assert e.kind == "auth" and "[redacted]" in e.message

    with_fake(fn)


def test_control_endpoint_scripts_modes() -> None:
    async def fn(a: GeminiGenerate, fake: GeminiFake) -> None:
        import aiohttp

        root = a.url.split("/v1beta/")[0]
        async with aiohttp.ClientSession() as s:
            async with s.post(root + "/_control", data=orjson.dumps({"script": ["503", "blocked"]})) as resp:
                assert (await resp.json())["script"] == ["503", "blocked"]
        body = a.build_body(MSGS, PARAMS)
        assert (await _err(a, body)).kind == "transient"
        assert (await a.send(body, 5.0)).finish_reason == "content_filter"
        assert (await a.send(body, 5.0)).finish_reason == "stop"

    with_fake(fn)


def test_registry_builds_the_adapter() -> None:
    cfg = ModelConfig(adapter="gemini", model=MODEL, base_url="http://127.0.0.1:9", api_key_env="NO_SUCH_KEY_VAR")
    adapter, open_server = make_adapter("gem", cfg, Path("."), with_secrets=False)
    assert isinstance(adapter, GeminiGenerate) and open_server is None
    assert adapter.url == f"http://127.0.0.1:9/v1beta/models/{MODEL}:generateContent"
    assert "x-goog-api-key" not in adapter._headers
