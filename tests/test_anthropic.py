"""adapters.anthropic against the Anthropic fake (engine/testing/fake_providers.py) in the test's own loop:
request bodies the fake validates, reply parsing, the classification of every failure, the
rate-limit signal, key redaction, and one end-to-end run of Anthropic and Gemini lanes.

Documentation the expectations come from:
  https://platform.claude.com/docs/en/api/messages/create               (request/response shape)
  https://platform.claude.com/docs/en/build-with-claude/handling-stop-reasons  (stop_reason values)
  https://platform.claude.com/docs/en/api/errors                        (error shapes and statuses)
  https://platform.claude.com/docs/en/api/rate-limits                   (anthropic-ratelimit-*, retry-after)
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from adapters.anthropic import ANTHROPIC_VERSION, DEFAULT_MAX_TOKENS, AnthropicMessages, anthropic_body, parse_messages_response
from adapters.registry import make_adapter
from engine.core.adapter import AdapterError
from engine.core.config import ModelConfig
from engine.core.records import GenParams, Message
from engine.testing.fake_providers import ANTHROPIC_DOC_MESSAGE, AnthropicFake, GeminiFake, reply_text, run_in_thread, start_fake
from tests.conftest import read_jsonl, run_engine, verify_clean, write_config

KEY = "sk-ant-api03-SECRETSECRET-0123456789abcdef"
MODEL = "claude-sonnet-4-5"
MSGS = (Message(role="system", content="be brief"), Message(role="user", content="hello there"))
PARAMS = GenParams(max_tokens=32, temperature=0.0, seed=3)

Fn = Callable[[AnthropicMessages, AnthropicFake], Awaitable[None]]


def with_fake(fn: Fn, *, key: str | None = KEY, model: str = MODEL, suffix: str = "", **fake_kw: Any) -> None:
    async def main() -> None:
        fake = AnthropicFake(api_key=KEY, **fake_kw)
        runner, url = await start_fake(fake)
        adapter = AnthropicMessages(model=model, api_key=key, concurrency=4, base_url=url + suffix)
        try:
            await fn(adapter, fake)
        finally:
            await adapter.aclose()
            await runner.cleanup()

    asyncio.run(main())


async def _err(a: AnthropicMessages, body: dict[str, Any], timeout: float = 5.0) -> AdapterError:
    with pytest.raises(AdapterError) as ei:
        await a.send(body, timeout)
    assert KEY not in ei.value.message and KEY[:8] not in ei.value.message and KEY[-4:] not in ei.value.message
    return ei.value


# -- request bodies -----------------------------------------------------------------------------------


def test_body_has_top_level_system_and_required_max_tokens() -> None:
    a = AnthropicMessages(model=MODEL, api_key=KEY, concurrency=1)
    body = a.build_body(MSGS, PARAMS)
    assert body == {"model": MODEL, "max_tokens": 32, "system": "be brief",
                    "messages": [{"role": "user", "content": "hello there"}], "temperature": 0.0}
    assert orjson.dumps(body) == orjson.dumps(a.build_body(MSGS, PARAMS))  # deterministic (hashed into the key)
    assert KEY not in orjson.dumps(body).decode() and "seed" not in body  # no seed field in the Messages API
    assert a.url == "https://api.anthropic.com/v1/messages"
    a_v1 = AnthropicMessages(model=MODEL, api_key=None, concurrency=1, base_url="http://h:1/v1/")
    assert a_v1.url == "http://h:1/v1/messages"
    # max_tokens is required by the API: a default fills in when the config leaves it unset.
    assert anthropic_body(MODEL, MSGS, GenParams())["max_tokens"] == DEFAULT_MAX_TOKENS


def test_body_merges_turns_and_maps_params() -> None:
    msgs = (Message(role="system", content="s1"), Message(role="user", content="a"),
            Message(role="user", content="b"), Message(role="assistant", content="c"),
            Message(role="system", content="s2"), Message(role="user", content="d"))
    body = anthropic_body(MODEL, msgs, GenParams(max_tokens=8, temperature=0.5, top_p=0.9, stop=("\n\n", "END"),
                                                 json_schema={"name": "x", "schema": {"type": "object"}}))
    assert body["system"] == "s1\n\ns2"
    assert body["messages"] == [{"role": "user", "content": "a\n\nb"}, {"role": "assistant", "content": "c"},
                                {"role": "user", "content": "d"}]
    # Newer models reject temperature together with top_p: only temperature is sent.
    assert body["temperature"] == 0.5 and "top_p" not in body
    assert body["stop_sequences"] == ["\n\n", "END"]
    assert "response_format" not in body and "output_format" not in body
    assert anthropic_body(MODEL, msgs, GenParams(top_p=0.9))["top_p"] == 0.9


def test_built_bodies_pass_the_documented_validation() -> None:
    async def fn(a: AnthropicMessages, fake: AnthropicFake) -> None:
        variants = [GenParams(), PARAMS, GenParams(max_tokens=5, top_p=0.5, stop=("x",)),
                    GenParams(temperature=1.0, json_schema={"name": "n", "schema": {"type": "object"}})]
        convo = (Message(role="user", content="hi"), Message(role="assistant", content="yo"),
                 Message(role="user", content="again"), Message(role="user", content="and again"))
        for p in variants:
            for m in (MSGS, convo):
                r = await a.send(a.build_body(m, p), 5.0)
                assert r.finish_reason == "stop"
        assert fake.count == 8
        # The adapter sends the documented headers.
        assert fake.requests[-1]["messages"][-1]["content"] == "again\n\nand again"

    with_fake(fn)


# -- success ------------------------------------------------------------------------------------------


def test_success_text_usage_model_and_signal() -> None:
    async def fn(a: AnthropicMessages, fake: AnthropicFake) -> None:
        r = await a.send(a.build_body(MSGS, PARAMS), 5.0)
        assert r.text == reply_text(AnthropicFake.provider, "hello there")
        assert r.finish_reason == "stop"
        assert r.server_model == MODEL
        assert r.usage.prompt_tokens == 5 and r.usage.completion_tokens > 0  # ceil(8/4) + ceil(11/4)
        assert r.usage.cached_tokens is None and r.usage.reasoning_tokens is None
        assert 0 < r.latency_s < 5
        sig = a.last_signal
        assert sig is not None and sig.remaining_requests == 999 and sig.remaining_tokens is not None
        assert sig.reset_requests_s is not None and 0.0 <= sig.reset_requests_s <= 60.0
        rs = await asyncio.gather(*(a.send(a.build_body((Message(role="user", content=f"q{i}"),), PARAMS), 5.0)
                                    for i in range(24)))
        assert [x.text for x in rs] == [reply_text(AnthropicFake.provider, f"q{i}") for i in range(24)]

    with_fake(fn)


def test_doc_example_response_parses() -> None:
    r = parse_messages_response(orjson.dumps(ANTHROPIC_DOC_MESSAGE), 0.5)
    assert r.text == "Here's the answer to your question..."
    assert r.finish_reason == "stop" and r.server_model is None
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (100, 50)

    async def fn(a: AnthropicMessages, fake: AnthropicFake) -> None:
        fake.script("doc_example")
        r2 = await a.send(a.build_body(MSGS, PARAMS), 5.0)
        assert r2.text == r.text and r2.usage == r.usage

    with_fake(fn)


def test_stop_reason_mapping_and_cache_usage() -> None:
    async def fn(a: AnthropicMessages, fake: AnthropicFake) -> None:
        body = a.build_body(MSGS, PARAMS)
        fake.script("max_tokens", "refusal", "cached")
        r = await a.send(body, 5.0)
        assert r.finish_reason == "length" and r.text
        r = await a.send(body, 5.0)  # a refusal is a Response, never an error
        assert r.finish_reason == "content_filter" and r.text == ""
        r = await a.send(body, 5.0)
        # prompt_tokens counts uncached + cache writes + cache reads, like OpenAI's prompt_tokens.
        assert r.usage.cached_tokens == 5 and r.usage.prompt_tokens == 3 + 5

    with_fake(fn)
    blocks = {"content": [{"type": "thinking", "thinking": "hmm", "signature": "x"}, {"type": "text", "text": "A"},
                          {"type": "tool_use", "id": "t", "name": "f", "input": {}}, {"type": "text", "text": "B"}],
              "stop_reason": "model_context_window_exceeded", "type": "message", "usage": {}}
    r = parse_messages_response(orjson.dumps(blocks), 0.0)
    assert r.text == "AB" and r.finish_reason == "length"
    for reason, mapped in (("stop_sequence", "stop"), ("tool_use", "stop"), ("pause_turn", "stop"),
                           ("end_turn", "stop"), (None, "stop"), ("refusal", "content_filter")):
        raw = orjson.dumps({"type": "message", "content": [], "stop_reason": reason})
        assert parse_messages_response(raw, 0.0).finish_reason == mapped


# -- validation the fake enforces (and the adapter classifies) ------------------------------------------


def test_documented_request_rejections_are_fatal() -> None:
    async def fn(a: AnthropicMessages, fake: AnthropicFake) -> None:
        good = a.build_body(MSGS, PARAMS)
        cases = [
            ({k: v for k, v in good.items() if k != "max_tokens"}, "max_tokens: Field required"),
            ({**good, "messages": [{"role": "system", "content": "x"}]}, 'Unexpected role "system"'),
            ({**good, "seed": 3}, "seed: Extra inputs are not permitted"),
            ({**good, "temperature": 1.5}, "temperature"),
            ({**good, "top_p": 0.9}, "cannot both be specified"),
            ({**good, "messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]},
             "roles must alternate"),
        ]
        for body, needle in cases:
            e = await _err(a, body)
            assert (e.kind, e.status, e.retryable) == ("fatal", 400, False), e.message
            assert "invalid_request_error" in e.message and needle in e.message
        e = await _err(a, {**good, "model": "unknown-model"})
        assert (e.kind, e.status) == ("fatal", 404) and "not_found_error" in e.message
        assert fake.count == 0

    with_fake(fn)


def test_missing_version_header_is_400() -> None:
    async def fn(a: AnthropicMessages, fake: AnthropicFake) -> None:
        assert a._headers["anthropic-version"] == ANTHROPIC_VERSION
        del a._headers["anthropic-version"]
        e = await _err(a, a.build_body(MSGS, PARAMS))
        assert (e.kind, e.status) == ("fatal", 400) and "anthropic-version" in e.message

    with_fake(fn)


def test_wrong_or_missing_key_is_auth() -> None:
    async def fn(a: AnthropicMessages, fake: AnthropicFake) -> None:
        e = await _err(a, a.build_body(MSGS, PARAMS))
        assert (e.kind, e.status, e.retryable) == ("auth", 401, False) and "authentication_error" in e.message

    with_fake(fn, key="sk-ant-wrong-key-0000000000")
    with_fake(fn, key=None)


# -- every error class ----------------------------------------------------------------------------------


def test_429_is_rate_limited_with_retry_after_and_signal() -> None:
    async def fn(a: AnthropicMessages, fake: AnthropicFake) -> None:
        fake.mode = "429"
        e = await _err(a, a.build_body(MSGS, PARAMS))
        assert (e.kind, e.status, e.retryable) == ("rate_limited", 429, True)
        assert e.retry_after == pytest.approx(0.25) and "rate_limit_error" in e.message
        assert a.last_signal is not None and a.last_signal.remaining_requests == 0

    with_fake(fn, retry_after_s=0.25)


@pytest.mark.parametrize("mode, status, kind", [("529", 529, "transient"), ("500", 500, "transient"),
                                                ("503", 503, "transient"), ("403", 403, "auth"),
                                                ("404", 404, "fatal")])
def test_status_classes(mode: str, status: int, kind: str) -> None:
    async def fn(a: AnthropicMessages, fake: AnthropicFake) -> None:
        fake.mode = mode
        e = await _err(a, a.build_body(MSGS, PARAMS))
        assert (e.kind, e.status) == (kind, status)
        if mode == "529":
            assert "overloaded_error" in e.message

    with_fake(fn)


@pytest.mark.parametrize("mode", ["malformed", "malformed_shape"])
def test_malformed_bodies(mode: str) -> None:
    async def fn(a: AnthropicMessages, fake: AnthropicFake) -> None:
        fake.mode = mode
        e = await _err(a, a.build_body(MSGS, PARAMS))
        assert e.kind == "malformed" and e.retryable

    with_fake(fn)


def test_reset_hang_and_refused() -> None:
    async def fn(a: AnthropicMessages, fake: AnthropicFake) -> None:
        body = a.build_body(MSGS, PARAMS)
        fake.script("reset")
        e = await _err(a, body)
        assert e.kind == "transient" and e.retryable
        assert (await a.send(body, 5.0)).text  # the pool recovers
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
        a = AnthropicMessages(model=MODEL, api_key=KEY, concurrency=1, base_url=f"http://127.0.0.1:{port}")
        try:
            e = await _err(a, a.build_body(MSGS, PARAMS))
            assert e.kind == "transient" and getattr(e, "unreachable", False)
        finally:
            await a.aclose()

    asyncio.run(refused())


def test_key_echoed_by_the_server_is_redacted() -> None:
    async def fn(a: AnthropicMessages, fake: AnthropicFake) -> None:
        fake.mode = "leaky_auth"
        e = await _err(a, a.build_body(MSGS, PARAMS))  # _err asserts the key is absent
        assert e.kind == "auth" and "[redacted]" in e.message

    with_fake(fn)


def test_signal_tracks_the_window() -> None:
    async def fn(a: AnthropicMessages, fake: AnthropicFake) -> None:
        body = a.build_body(MSGS, PARAMS)
        seen = []
        for _ in range(3):
            await a.send(body, 5.0)
            assert a.last_signal is not None
            seen.append(a.last_signal.remaining_requests)
        assert seen == [2, 1, 0]
        assert a.last_signal.reset_requests_s is not None and a.last_signal.reset_requests_s <= 60.0

    with_fake(fn, requests_limit=3)


def test_registry_builds_the_adapter() -> None:
    cfg = ModelConfig(adapter="anthropic", model=MODEL, base_url="http://127.0.0.1:9", api_key_env="NO_SUCH_KEY_VAR")
    adapter, open_server = make_adapter("claude", cfg, Path("."), with_secrets=False)
    assert isinstance(adapter, AnthropicMessages) and open_server is None
    assert adapter.url == "http://127.0.0.1:9/v1/messages" and "x-api-key" not in adapter._headers
    adapter, _ = make_adapter("claude", ModelConfig(adapter="anthropic"), Path("."), with_secrets=False)
    assert isinstance(adapter, AnthropicMessages) and adapter.model == "claude"
    assert adapter.url == "https://api.anthropic.com/v1/messages"


# -- end to end: `python -m engine run` with an anthropic and a gemini lane --------------------------------


def test_engine_runs_anthropic_and_gemini_lanes_end_to_end(tmp_path: Path) -> None:
    anthropic_key, gemini_key = "sk-ant-e2e-KEYKEYKEY-000111", "AIzaE2E-KEYKEYKEY-222333"
    afake = AnthropicFake(api_key=anthropic_key, retry_after_s=0.05)
    gfake = GeminiFake(api_key=gemini_key, retry_after_s=0.05)
    afake.script("429", "529", "reset")
    gfake.script("503", "429", "500")
    n = 12
    items = tmp_path / "items.jsonl"
    prompts = {}
    with open(items, "wb") as f:
        for i in range(n):
            prompts[f"q{i}"] = f"question {i}: how do you cope with stress?"
            row: dict[str, Any] = {"id": f"q{i}", "prompt": prompts[f"q{i}"]}
            if i % 3 == 0:
                row["system"] = "You are a supportive counsellor."
            f.write(orjson.dumps(row) + b"\n")
    with run_in_thread(afake) as aurl, run_in_thread(gfake) as gurl:
        common = {"max_tokens": 64, "temperature": 0.0, "backoff_base_s": 0.05, "backoff_max_s": 0.5,
                  "max_concurrency": 4, "timeout_s": 10.0}
        cfg = write_config(tmp_path / "c.toml", {
            "claude": {"adapter": "anthropic", "model": MODEL, "base_url": aurl, "api_key_env": "E2E_ANTHROPIC_KEY",
                       **common},
            "gem": {"adapter": "gemini", "model": "gemini-2.5-flash", "base_url": gurl,
                    "api_key_env": "E2E_GEMINI_KEY", **common},
        })
        out = tmp_path / "out"
        env = {"E2E_ANTHROPIC_KEY": anthropic_key, "E2E_GEMINI_KEY": gemini_key}
        res = run_engine("run", cfg, "--items", items, "--output", out, timeout=120, env=env)
        assert res.rc == 0, res.stderr
        assert "Traceback" not in res.stderr
    for name, provider in (("claude", AnthropicFake.provider), ("gem", GeminiFake.provider)):
        recs = read_jsonl(out / "responses" / f"{name}.jsonl")
        assert len(recs) == n and len({r["key"] for r in recs}) == n
        for r in recs:
            assert r.get("error") is None, r
            assert r["response"]["text"] == reply_text(provider, prompts[r["item_id"]])
            assert r["response"]["finish_reason"] == "stop"
            assert r["response"]["usage"]["prompt_tokens"] > 0
        errs = read_jsonl(out / "errors" / f"{name}.jsonl")
        assert len(errs) == 3 and not any(e.get("final") for e in errs)
        assert {e["error"]["kind"] for e in errs} == {"rate_limited", "transient"}
    assert afake.count == n + 3 and gfake.count == n + 3
    # The system prompt went top-level (Anthropic) / into systemInstruction (Gemini).
    assert any(b.get("system") == "You are a supportive counsellor." for b in afake.requests)
    assert any("systemInstruction" in b for b in gfake.requests)
    for path in (out / "responses", out / "errors", out / "run.json"):
        blobs = [p.read_bytes() for p in ([path] if path.is_file() else path.iterdir())]
        assert not any(anthropic_key.encode() in b or gemini_key.encode() in b for b in blobs)
    verify_clean(out)
