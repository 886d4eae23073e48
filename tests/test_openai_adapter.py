"""adapters.openai_compat against the fake server in the test's own loop: bodies, parsing and the
classification of every failure the scheduler must tell apart."""

from __future__ import annotations

import asyncio
import itertools
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import pytest

from adapters import openai_compat
from adapters.openai_compat import OpenAIChat, classify_status, openai_body, parse_chat_response
from engine.core.adapter import AdapterError
from engine.core.records import GenParams, Message
from engine.testing.fakeserver import SERVER_KEY, FakeServer, expected_text, start_in_loop

MSGS = (Message(role="system", content="be brief"), Message(role="user", content="hello there"))
PARAMS = GenParams(max_tokens=32, temperature=0.0, seed=3)


def with_server(config: dict[str, Any], fn: Callable[[OpenAIChat, FakeServer, str], Awaitable[None]],
                *, api_key: str | None = None) -> None:
    async def main() -> None:
        runner, url = await start_in_loop(config)
        srv = runner.app[SERVER_KEY]
        adapter = OpenAIChat(base_url=url, model="fake-model", api_key=api_key, concurrency=4)
        try:
            await fn(adapter, srv, url)
        finally:
            await adapter.aclose()
            await runner.cleanup()

    asyncio.run(main())


def test_build_body_is_deterministic_and_complete() -> None:
    a = OpenAIChat(base_url="http://127.0.0.1:9/v1/", model="gpt-4o-mini", api_key=None, concurrency=1)
    body = a.build_body(MSGS, PARAMS)
    assert body == {"model": "gpt-4o-mini",
                    "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"}],
                    "max_tokens": 32, "temperature": 0.0, "seed": 3}
    assert orjson.dumps(body) == orjson.dumps(a.build_body(MSGS, PARAMS))
    assert a.url == "http://127.0.0.1:9/v1/chat/completions"
    # No auth or stream fields ever enter the body (the body is hashed into the record key).
    a2 = OpenAIChat(base_url="http://x/v1", model="m", api_key="sk-secret-123456789", concurrency=1)
    assert "sk-secret" not in orjson.dumps(a2.build_body(MSGS, PARAMS)).decode()


def test_reasoning_models_use_max_completion_tokens_without_temperature() -> None:
    body = openai_body("o3-mini", MSGS, GenParams(max_tokens=64, temperature=0.7, top_p=0.9), reasoning=True)
    assert body["max_completion_tokens"] == 64
    assert "max_tokens" not in body and "temperature" not in body and "top_p" not in body
    a = OpenAIChat(base_url="http://x/v1", model="gpt-5-mini", api_key=None, concurrency=1)
    assert a.reasoning


def test_json_schema_and_stop() -> None:
    schema = {"name": "s", "schema": {"type": "object", "properties": {"a": {"type": "integer"}}}}
    body = openai_body("m", MSGS, GenParams(stop=("\n",), json_schema=schema))
    assert body["stop"] == ["\n"]
    assert body["response_format"] == {"type": "json_schema", "json_schema": schema}


def test_success_parses_text_usage_and_latency() -> None:
    async def fn(a: OpenAIChat, srv: FakeServer, url: str) -> None:
        body = a.build_body(MSGS, PARAMS)
        r = await a.send(body, 5.0)
        assert r.text == expected_text(body)
        assert r.finish_reason == "stop"
        assert r.usage.prompt_tokens == 5  # ceil(19 chars / 4)
        assert r.usage.completion_tokens > 0
        assert r.server_model == "fake-model"
        assert 0 < r.latency_s < 5
        # The connection pool is reused: many concurrent sends, all right.
        bodies = [a.build_body((Message(role="user", content=f"q{i}"),), PARAMS) for i in range(40)]
        rs = await asyncio.gather(*(a.send(b, 5.0) for b in bodies))
        assert [x.text for x in rs] == [expected_text(b) for b in bodies]

    with_server({}, fn)


async def _err(a: OpenAIChat, body: dict[str, Any], timeout: float = 5.0) -> AdapterError:
    with pytest.raises(AdapterError) as ei:
        await a.send(body, timeout)
    return ei.value


def test_429_is_rate_limited_with_fractional_retry_after() -> None:
    async def fn(a: OpenAIChat, srv: FakeServer, url: str) -> None:
        srv.set_config(p_429=1.0, retry_after_s=0.25)
        e = await _err(a, a.build_body(MSGS, PARAMS))
        assert e.kind == "rate_limited" and e.status == 429 and e.retryable
        assert e.retry_after == pytest.approx(0.25)

    with_server({}, fn)


def test_request_too_large_for_the_whole_tpm_is_fatal_not_retried() -> None:
    async def fn(a: OpenAIChat, srv: FakeServer, url: str) -> None:
        srv.set_config(tpm=600)  # 10 tokens a second: this request can never be admitted
        e = await _err(a, a.build_body(MSGS, PARAMS))
        assert e.kind == "fatal" and e.status == 429 and not e.retryable
        assert "Request too large for" in e.message and "tokens per min (TPM): Limit 600" in e.message
        srv.set_config(tpm=None, p_429=1.0, retry_after_s=0.1)  # an ordinary 429 still waits and retries
        assert (await _err(a, a.build_body(MSGS, PARAMS))).kind == "rate_limited"

    with_server({}, fn)


def test_5xx_is_transient() -> None:
    async def fn(a: OpenAIChat, srv: FakeServer, url: str) -> None:
        srv.set_config(p_5xx=1.0)
        for _ in range(4):
            e = await _err(a, a.build_body(MSGS, PARAMS))
            assert e.kind == "transient" and e.status in (500, 503) and e.retryable

    with_server({}, fn)


def test_reset_is_transient() -> None:
    async def fn(a: OpenAIChat, srv: FakeServer, url: str) -> None:
        srv.set_config(p_reset=1.0)
        e = await _err(a, a.build_body(MSGS, PARAMS))
        assert e.kind == "transient" and e.retryable
        srv.set_config(p_reset=0.0)  # the pool recovers from the dropped connection
        r = await a.send(a.build_body(MSGS, PARAMS), 5.0)
        assert r.text

    with_server({}, fn)


def test_hang_is_timeout_within_the_attempt_timeout() -> None:
    async def fn(a: OpenAIChat, srv: FakeServer, url: str) -> None:
        srv.set_config(p_hang=1.0)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        e = await _err(a, a.build_body(MSGS, PARAMS), timeout=0.3)
        assert e.kind == "timeout" and e.retryable
        assert 0.25 <= loop.time() - t0 < 3.0
        srv.reset()

    with_server({}, fn)


@pytest.mark.parametrize("kind", ["not_json", "truncated", "no_choices", "cut"])
def test_malformed_bodies_are_malformed(kind: str) -> None:
    async def fn(a: OpenAIChat, srv: FakeServer, url: str) -> None:
        srv.set_config(p_malformed=1.0, malformed_kinds=[kind])
        e = await _err(a, a.build_body(MSGS, PARAMS))
        assert e.kind in ("malformed", "transient") and e.retryable
        if kind != "cut":
            assert e.kind == "malformed"

    with_server({}, fn)


def test_401_is_auth_and_key_never_in_message() -> None:
    secret = "sk-test-SECRETVALUE-0123456789abcdef"

    async def fn(a: OpenAIChat, srv: FakeServer, url: str) -> None:
        e = await _err(a, a.build_body(MSGS, PARAMS))
        assert e.kind == "auth" and e.status == 401 and not e.retryable
        assert secret not in e.message

    with_server({"require_key": "the-right-key"}, fn, api_key=secret)


def test_right_key_is_sent_as_bearer() -> None:
    async def fn(a: OpenAIChat, srv: FakeServer, url: str) -> None:
        r = await a.send(a.build_body(MSGS, PARAMS), 5.0)
        assert r.text

    with_server({"require_key": "k-123"}, fn, api_key="k-123")


def test_400_is_fatal_not_retryable() -> None:
    async def fn(a: OpenAIChat, srv: FakeServer, url: str) -> None:
        e = await _err(a, a.build_body(MSGS, GenParams(max_tokens=0)))
        assert e.kind == "fatal" and e.status == 400 and not e.retryable
        assert "max_tokens" in e.message

    with_server({}, fn)


def test_404_is_fatal() -> None:
    async def fn(a: OpenAIChat, srv: FakeServer, url: str) -> None:
        a.url = url + "/nope"
        e = await _err(a, a.build_body(MSGS, PARAMS))
        assert e.kind == "fatal" and e.status == 404

    with_server({}, fn)


def test_connection_refused_is_transient() -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now

    async def main() -> None:
        a = OpenAIChat(base_url=f"http://127.0.0.1:{port}/v1", model="m", api_key=None, concurrency=1)
        try:
            e = await _err(a, a.build_body(MSGS, PARAMS))
            assert e.kind == "transient" and e.retryable
            assert "Traceback" not in e.message
        finally:
            await a.aclose()

    asyncio.run(main())


def test_classify_status_redacts_echoed_key() -> None:
    key = "sk-proj-ABCDEFGHIJKLMNOP1234"
    raw = orjson.dumps({"error": {"message": f"Incorrect API key provided: {key[:8]}...{key[-4:]} and {key}"}})
    e = classify_status(401, raw, {}, (key,))
    assert key not in e.message and key[:8] not in e.message and key[-4:] not in e.message
    e = classify_status(503, b"<html>busy</html>", {"retry-after": "2"}, ())
    assert e.kind == "transient" and e.retry_after == 2.0
    assert classify_status(422, b"{}", {}, ()).kind == "fatal"
    assert classify_status(403, b"{}", {}, ()).kind == "auth"


def test_parse_refusal_and_null_content() -> None:
    raw = orjson.dumps({"choices": [{"message": {"content": None, "refusal": "I can't help"},
                                     "finish_reason": "stop"}]})
    r = parse_chat_response(raw, 0.1)
    assert r.finish_reason == "content_filter" and r.text == "I can't help"
    raw = orjson.dumps({"choices": [{"message": {"content": None}, "finish_reason": "content_filter"}]})
    assert parse_chat_response(raw, 0.1).finish_reason == "content_filter"
    raw = orjson.dumps({"choices": [{"message": {"content": "hi"}, "finish_reason": "length"}],
                        "usage": {"prompt_tokens": 3, "completion_tokens": 2,
                                  "completion_tokens_details": {"reasoning_tokens": 1},
                                  "prompt_tokens_details": {"cached_tokens": 2}}})
    r = parse_chat_response(raw, 0.1)
    assert (r.text, r.finish_reason, r.usage.reasoning_tokens, r.usage.cached_tokens) == ("hi", "length", 1, 2)
    for bad in (b"", b"{}", b'{"choices": []}', b'{"choices": [{"message": {"content": 5}}]}', b"[1]"):
        with pytest.raises(AdapterError) as ei:
            parse_chat_response(bad, 0.1)
        assert ei.value.kind == "malformed"


def _outcome(parse: Callable[[bytes, float], object], raw: bytes) -> object:
    try:
        return parse(raw, 0.1234567)
    except Exception as exc:  # the comparison covers what each path raises, whatever it is
        return (type(exc).__name__, str(exc))


_USAGES: tuple[object, ...] = (
    None, {}, {"prompt_tokens": 3, "completion_tokens": 4}, {"prompt_tokens": 3.0}, {"prompt_tokens": True},
    {"prompt_tokens": "7"}, {"prompt_tokens": "10**21"},
    {"completion_tokens_details": {"reasoning_tokens": 2}, "prompt_tokens_details": {"cached_tokens": 1}},
    {"completion_tokens_details": [1]}, 0, "u")


def test_typed_parse_agrees_with_the_dict_walk() -> None:
    """parse_chat_response reads the usual reply shape with a typed decoder and leaves every other
    to the dict walk: both give the same Response, or the same error, for any reply. One test over
    the 792 shapes (a parametrised test each cost more in pytest-xdist's bookkeeping than the check)."""
    shapes = itertools.product(["hi", "", None, 5], ["stop", "tool_calls", "weird", "", None, 3], _USAGES,
                               ["m", None, 5])
    checked = 0
    for content, finish, usage, model in shapes:
        message: dict[str, object] = ({"role": "assistant"} if content is None
                                      else {"role": "assistant", "content": content})
        choice: dict[str, object] = {"index": 0, "message": message}
        if finish is not None:
            choice["finish_reason"] = finish
        doc: dict[str, object] = {"choices": [choice], "model": model}
        if usage is not None:
            doc["usage"] = usage
        raw = orjson.dumps(doc).replace(b'"10**21"', b"1" + b"0" * 21)  # orjson writes no integer that large
        assert _outcome(parse_chat_response, raw) == _outcome(openai_compat._parse_chat_dict, raw), raw
        checked += 1
    assert checked == 792
