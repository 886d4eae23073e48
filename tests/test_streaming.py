"""Streamed replies (issue 19 item 1): each adapter that declares `caps.streaming` against its fake
speaking the provider's real SSE format; text, finish reason and usage equal to the non-streamed
reply, ttft_s and token timing recorded; a stream cut or failing mid-way is a retryable error and
nothing of it is kept; `stream = true` is refused for an adapter that cannot stream; the request
key is the same streamed or not.

Wire formats: OpenAI Chat Completions `stream: true` + `stream_options.include_usage` (chunks, a
usage chunk with empty choices, `data: [DONE]`); Anthropic Messages events (message_start,
content_block_start/delta/stop, message_delta with cumulative usage, message_stop, error);
Gemini `:streamGenerateContent?alt=sse` (each event a GenerateContentResponse, no end marker).
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from adapters.anthropic import AnthropicMessages
from adapters.gemini import GeminiGenerate
from adapters.openai_compat import OpenAIChat, stream_document
from adapters.registry import entry, make_adapter, names
from adapters.sse import Event, split_events, token_timing
from engine.config import load_config
from engine.core.adapter import AdapterError, StreamsReplies
from engine.core.config import ModelConfig
from engine.core.errors import ConfigError
from engine.core.records import GenParams, Message, Response, record_encoder, request_key
from engine.testing.fake_providers import AnthropicFake, GeminiFake, ProviderFake, start_fake
from engine.testing.fakeserver import SERVER_KEY, start_in_loop
from tests.conftest import fake_model, read_jsonl, run_cli, verify_clean, write_config, write_items

KEY = "test-key-0123456789"
MSGS = (Message(role="system", content="be brief"),
        Message(role="user", content="tell me something rather long about streams"))
PARAMS = GenParams(max_tokens=64, temperature=0.0)

Adapter = OpenAIChat | AnthropicMessages | GeminiGenerate
Check = Callable[[Adapter, Adapter], Awaitable[None]]


def _with_provider(kind: str, fn: Check, runners: list[Any] | None = None, **fake_kw: Any) -> None:
    """fn(plain adapter, streaming adapter) against the fake of `kind` (its runner appended to
    `runners`, when given)."""
    async def main() -> None:
        fake: ProviderFake = AnthropicFake(api_key=KEY) if kind == "anthropic" else GeminiFake(api_key=KEY)
        for k, v in fake_kw.items():
            setattr(fake, k, v)
        runner, url = await start_fake(fake)
        if runners is not None:
            runners.append(runner)
        cls = AnthropicMessages if kind == "anthropic" else GeminiGenerate
        model = "claude-sonnet-4-5" if kind == "anthropic" else "gemini-2.5-flash"
        plain = cls(model=model, api_key=KEY, concurrency=4, base_url=url)
        streamed = cls(model=model, api_key=KEY, concurrency=4, base_url=url, stream=True)
        try:
            await fn(plain, streamed)
        finally:
            await plain.aclose()
            await streamed.aclose()
            await runner.cleanup()

    asyncio.run(main())


def _with_openai(config: dict[str, Any], fn: Check, runners: list[Any] | None = None) -> None:
    async def main() -> None:
        runner, url = await start_in_loop(config)
        if runners is not None:
            runners.append(runner)
        plain = OpenAIChat(base_url=url, model="fake-model", api_key=None, concurrency=4)
        streamed = OpenAIChat(base_url=url, model="fake-model", api_key=None, concurrency=4, stream=True)
        try:
            await fn(plain, streamed)
        finally:
            await plain.aclose()
            await streamed.aclose()
            await runner.cleanup()

    asyncio.run(main())


def _same_reply(a: Response, b: Response) -> None:
    assert b.text == a.text and b.text
    assert b.finish_reason == a.finish_reason
    assert b.usage == a.usage
    assert b.server_model == a.server_model
    assert a.ttft_s is None and a.timing is None  # a non-streamed record keeps its bytes
    assert b.ttft_s is not None and 0 < b.ttft_s <= b.latency_s
    assert b.timing is not None and b.timing.chunks >= 1


def _run(kind: str, fn: Check, runners: list[Any] | None = None, **kw: Any) -> None:
    if kind == "openai":
        _with_openai(kw.get("config", {"completion_tokens": 24}), fn, runners)
    else:
        _with_provider(kind, fn, runners, **{k: v for k, v in kw.items() if k != "config"})


@pytest.mark.parametrize("kind", ["openai", "anthropic", "gemini"])
def test_streamed_reply_equals_the_plain_one_with_ttft(kind: str) -> None:
    async def fn(plain: Adapter, streamed: Adapter) -> None:
        body = plain.build_body(MSGS, PARAMS)
        assert streamed.build_body(MSGS, PARAMS) == body  # the key's bytes: no stream field
        assert "stream" not in body and "stream_options" not in body
        a = await plain.send(body, 5.0)
        b = await streamed.send(body, 5.0)
        _same_reply(a, b)
        assert isinstance(streamed, StreamsReplies)
        marks: list[float] = []
        sent: list[float] = []
        before = time.perf_counter()
        c = await streamed.send_streamed(body, 5.0, marks, sent)
        assert c.text == a.text and len(marks) == c.timing.chunks if c.timing else False
        assert marks == sorted(marks)
        # the stamp of the request's bytes going out: after the call began, before any reply
        assert len(sent) == 1 and before <= sent[0] <= marks[0]
        unstamped: list[float] = []
        await plain.send_streamed(body, 5.0, None, unstamped)  # a non-streaming lane's session stamps nothing
        assert unstamped == []
        read = await streamed.stream_reply(body, 5.0)  # the exchange now, its reading later (bench)
        later: list[float] = []
        d = read(later)
        assert d.text == a.text and len(later) == (d.timing.chunks if d.timing else -1)

    _run(kind, fn)


@pytest.mark.parametrize("kind", ["openai", "anthropic", "gemini"])
def test_a_held_request_leaves_on_its_release_and_is_timed_from_there(kind: str) -> None:
    """`not_before`: the bench prepares a request ahead and releases it when due; its bytes go out
    after the release (the stamp says so) and its latency counts from that send, not from the call.
    A session that stamps nothing waits for the release before it builds the request."""
    async def fn(plain: Adapter, streamed: Adapter) -> None:
        assert isinstance(streamed, StreamsReplies) and isinstance(plain, StreamsReplies)
        loop = asyncio.get_running_loop()
        body = plain.build_body(MSGS, PARAMS)
        for adapter, stamped in ((streamed, True), (plain, False)):
            hold: asyncio.Future[None] = loop.create_future()
            released: list[float] = []
            loop.call_later(0.05, lambda h=hold, r=released: (r.append(time.perf_counter()), h.set_result(None)))
            sent: list[float] = []
            r = await adapter.send_streamed(body, 5.0, None, sent, hold)
            done = time.perf_counter()
            assert released and r.text
            if stamped:
                assert len(sent) == 1 and released[0] <= sent[0] and r.latency_s <= done - sent[0]
            else:
                assert sent == [] and r.latency_s <= done - released[0]

    _run(kind, fn)


@pytest.mark.parametrize("kind", ["openai", "anthropic", "gemini"])
def test_connections_opened_ahead_are_the_ones_requests_use(kind: str) -> None:
    """`open_connections(n)` leaves n keep-alive connections in the pool (HEAD requests whose 405
    is ignored); n streamed requests sent together after it open no more."""
    async def fn(plain: Adapter, streamed: Adapter) -> None:
        server = runners[0].server
        assert await streamed.open_connections(3, 5.0) == 3
        assert len(server.connections) == 3
        await asyncio.gather(*(streamed.send_streamed(plain.build_body(MSGS, PARAMS), 5.0) for _ in range(3)))
        assert len(server.connections) == 3

    runners: list[Any] = []
    _run(kind, fn, runners)


def test_openai_latency_model_shows_in_ttft_and_tpot() -> None:
    """TTFT = latency_ms, one event per token every token_delay_ms: ttft and tpot near them
    (generous bounds: behaviour, not speed)."""
    async def fn(plain: Adapter, streamed: Adapter) -> None:
        r = await streamed.send(plain.build_body(MSGS, PARAMS), 10.0)
        assert r.usage.completion_tokens == 12 and r.timing is not None
        assert r.timing.chunks == 12
        assert 0.04 <= (r.ttft_s or 0) < 0.5
        assert 0.015 <= r.timing.tpot_s < 0.2
        assert 0.015 <= r.timing.itl_median_s < 0.2
        whole = await plain.send(plain.build_body(MSGS, PARAMS), 10.0)
        assert whole.latency_s >= 0.04 + 11 * 0.02 * 0.9  # a plain reply waits for its last token

    _with_openai({"completion_tokens": 12, "latency_ms": 40, "token_delay_ms": 20}, fn)


def test_openai_stream_cut_mid_way_is_transient() -> None:
    async def fn(plain: Adapter, streamed: Adapter) -> None:
        with pytest.raises(AdapterError) as ei:
            await streamed.send(plain.build_body(MSGS, PARAMS), 5.0)
        assert ei.value.kind == "transient"

    _with_openai({"completion_tokens": 24, "token_delay_ms": 1, "stream_cut_after": 3}, fn)


@pytest.mark.parametrize("kind", ["anthropic", "gemini"])
@pytest.mark.parametrize("mode", ["stream_cut", "stream_error"])
def test_provider_stream_failing_mid_way_is_transient(kind: str, mode: str) -> None:
    async def fn(plain: Adapter, streamed: Adapter) -> None:
        with pytest.raises(AdapterError) as ei:
            await streamed.send(plain.build_body(MSGS, PARAMS), 5.0)
        assert ei.value.kind == "transient"
        assert KEY not in ei.value.message

    _with_provider(kind, fn, mode=mode)


@pytest.mark.parametrize("kind", ["anthropic", "gemini"])
@pytest.mark.parametrize("mode", ["429", "503", "403"])
def test_status_errors_classified_as_when_not_streamed(kind: str, mode: str) -> None:
    async def fn(plain: Adapter, streamed: Adapter) -> None:
        body = plain.build_body(MSGS, PARAMS)
        with pytest.raises(AdapterError) as e1:
            await plain.send(body, 5.0)
        with pytest.raises(AdapterError) as e2:
            await streamed.send(body, 5.0)
        assert (e2.value.kind, e2.value.status) == (e1.value.kind, e1.value.status)

    _with_provider(kind, fn, mode=mode)


@pytest.mark.parametrize("mode", ["max_tokens", "refusal", "cached"])
def test_anthropic_modes_equal_when_streamed(mode: str) -> None:
    async def fn(plain: Adapter, streamed: Adapter) -> None:
        body = plain.build_body(MSGS, PARAMS)
        a, b = await plain.send(body, 5.0), await streamed.send(body, 5.0)
        assert (b.text, b.finish_reason, b.usage) == (a.text, a.finish_reason, a.usage)

    _with_provider("anthropic", fn, mode=mode)


@pytest.mark.parametrize("mode", ["thinking", "blocked", "safety", "max_tokens"])
def test_gemini_modes_equal_when_streamed(mode: str) -> None:
    async def fn(plain: Adapter, streamed: Adapter) -> None:
        body = plain.build_body(MSGS, PARAMS)
        a, b = await plain.send(body, 5.0), await streamed.send(body, 5.0)
        assert (b.text, b.finish_reason, b.usage) == (a.text, a.finish_reason, a.usage)

    _with_provider("gemini", fn, mode=mode)


def test_token_timing_is_vllm_tpot_and_itl() -> None:
    ttft, t = token_timing(10.0, [10.5, 10.6, 10.8, 11.0], 11.0, 5)
    assert ttft == 0.5
    assert t.tpot_s == pytest.approx(0.125)  # (11.0 - 10.5) / (5 - 1)
    assert t.itl_median_s == pytest.approx(0.2) and t.chunks == 4
    assert t.itl_p99_s == pytest.approx(0.2)
    ttft, t = token_timing(1.0, [], 2.0, 0)
    assert ttft == 1.0 and t.chunks == 0


@pytest.mark.parametrize("eol", [b"\n", b"\r\n"])
def test_sse_events_are_cut_where_their_blank_line_arrived(eol: bytes) -> None:
    """However the socket splits the body, each event is the same and stamped with the arrival of
    the piece that held its blank line; names, comments and a last event without its blank line
    as the SSE format has them."""
    body = eol.join([b"data: {\"a\": 1}", b"", b": a comment", b"event: delta", b"data: x", b"data: y", b"",
                     b"data:no space", b"", b"", b"data: [DONE]"])
    whole = [Event("", b'{"a": 1}', 1.0), Event("delta", b"x\ny", 1.0), Event("", b"no space", 1.0),
             Event("", b"[DONE]", 9.0)]
    assert split_events([body], [1.0], 9.0) == whole
    rng = random.Random(3)
    for _ in range(200):
        cuts = sorted(rng.sample(range(1, len(body)), rng.randint(1, 12)))
        pieces = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
        got = split_events(pieces, [float(i) for i in range(len(pieces))], 99.0)
        assert [(e.name, e.data) for e in got] == [(e.name, e.data) for e in whole]
        blank_lines = [m.end() for m in re.finditer(re.escape(eol + eol), body)][:3]  # just past each
        for ev, end in zip(got[:3], blank_lines, strict=True):
            assert ev.at == next(i for i, c in enumerate([*cuts, len(body)]) if c >= end)
        assert got[3].at == 99.0


def test_streaming_is_a_declared_capability() -> None:
    streaming = {n for n in names() if entry(n).caps.streaming}
    assert {"openai", "anthropic", "gemini"} <= streaming
    for n in streaming:
        cfg = ModelConfig(adapter=n, base_url="http://127.0.0.1:9/v1", model="m", stream=True)
        e = entry(n)
        if e.local:
            continue  # building a local one checks the machine; its client is an OpenAIChat
        built = make_adapter("m", cfg, Path("."), with_secrets=False)
        assert isinstance(built.adapter, StreamsReplies)


def test_stream_true_refused_for_an_adapter_that_cannot_stream(tmp_path: Path) -> None:
    # A built-in one: a test module that registers its own adapters (test_adapter_plugins) may have been
    # imported into this process first, and its entries take other keys.
    cannot = next(n for n in names() if not entry(n).caps.streaming and not entry(n).local
                  and entry(n).build.__module__.startswith("adapters."))
    path = write_config(tmp_path / "c.toml", {"m": {"adapter": cannot, "stream": True, "path": str(tmp_path / "r.jsonl")}})
    with pytest.raises(ConfigError, match="cannot stream"):
        load_config(path)


def test_record_of_a_streamed_reply_round_trips_and_old_records_keep_their_bytes() -> None:
    plain = Response(text="x", finish_reason="stop")
    assert b"ttft" not in record_encoder.encode(plain) and b"timing" not in record_encoder.encode(plain)
    key = request_key("m", "p", "s", "i", 0, {"model": "m"})
    assert key == request_key("m", "p", "s", "i", 0, {"model": "m"})


def test_fakeserver_streams_one_event_per_token_on_the_latency_model() -> None:
    async def main() -> None:
        runner, url = await start_in_loop({"completion_tokens": 8, "token_delay_ms": 5})
        srv = runner.app[SERVER_KEY]
        a = OpenAIChat(base_url=url, model="fake-model", api_key=None, concurrency=2, stream=True)
        try:
            r = await a.send(a.build_body(MSGS, PARAMS), 5.0)
            assert r.timing is not None and r.timing.chunks == 8 == r.usage.completion_tokens
            assert srv.requests == 1
        finally:
            await a.aclose()
            await runner.cleanup()

    asyncio.run(main())


def test_a_streamed_run_records_ttft_and_shares_keys_with_a_plain_run(tmp_path: Path, thread_server: Any) -> None:
    """End to end through the lane: `stream = true` records ttft_s/timing; the keys (and texts)
    are those of the non-streamed run; streams cut mid-way are retried and leave no partial record."""
    items = write_items(tmp_path / "items.jsonl", 6)
    plain_cfg = write_config(tmp_path / "plain.toml", {"m": fake_model(thread_server.url)})
    stream_cfg = write_config(tmp_path / "stream.toml", {"m": fake_model(thread_server.url, stream=True)})
    assert run_cli("run", plain_cfg, "--items", items, "--output", tmp_path / "plain").rc == 0
    thread_server.server.set_config(stream_cut_after=2)
    asyncio.run_coroutine_threadsafe(_later(thread_server), thread_server._loop)
    res = run_cli("run", stream_cfg, "--items", items, "--output", tmp_path / "stream")
    assert res.rc == 0, res.stderr
    plain = {r["key"]: r for r in read_jsonl(tmp_path / "plain" / "responses" / "m.jsonl")}
    streamed = {r["key"]: r for r in read_jsonl(tmp_path / "stream" / "responses" / "m.jsonl")}
    assert set(plain) == set(streamed) and len(plain) == 6
    for k, r in streamed.items():
        assert r["response"]["text"] == plain[k]["response"]["text"]
        assert r["response"]["ttft_s"] > 0 and r["response"]["timing"]["chunks"] >= 1
        assert "ttft_s" not in plain[k]["response"]
    assert any(r["attempts"] > 1 for r in streamed.values())  # the cut streams were retried
    verify_clean(tmp_path / "stream")


async def _later(srv: Any, cut: int = 2) -> None:
    """Heals the server once `cut` more requests have arrived: each took the cutting config as it
    arrived, so their streams are cut and retried. (It healed after 0.3 s: on a loaded machine
    that could pass before the run's first request, and nothing was cut.)"""
    start = srv.server.requests
    while srv.server.requests < start + cut:
        await asyncio.sleep(0.005)
    srv.server.set_config(stream_cut_after=None)


@pytest.mark.parametrize("event", [b'{"error": {"message": "engine died", "type": "server_error"}}',
                                   b'{"object": "error", "message": "engine died", "type": "InternalServerError"}'])
def test_openai_error_event_after_the_200_is_transient(event: bytes) -> None:
    ok = Event("", b'{"choices": [{"delta": {"content": "hi"}, "finish_reason": null}]}', 1.0)
    with pytest.raises(AdapterError) as ei:
        stream_document([ok, Event("", event, 2.0), Event("", b"[DONE]", 3.0)])
    assert ei.value.kind == "transient" and "engine died" in ei.value.message
    with pytest.raises(AdapterError, match="DONE"):
        stream_document([ok])  # ended without [DONE]: incomplete, retried


@pytest.mark.slow  # may start this worker's embedded model server
def test_the_real_llama_cpp_server_streams_what_it_answers_whole(embedded_server: Any, tmp_path: Path) -> None:
    """Against the embedded llama.cpp server (greedy): the streamed reply's text, finish reason and
    usage equal the non-streamed one's (its SSE, include_usage and [DONE] as a real server sends
    them), with a first-token time and one timing piece per token or so; and `bench` against it
    completes every request with TTFT and TPOT > 0."""
    url, alias = embedded_server.base_url, embedded_server.alias
    params = GenParams(max_tokens=16, temperature=0.0, seed=0)
    msgs = (Message(role="user", content="Name two animals."),)

    async def main() -> tuple[Response, Response]:
        plain = OpenAIChat(base_url=url, model=alias, api_key=None, concurrency=2, reasoning=False)
        streamed = OpenAIChat(base_url=url, model=alias, api_key=None, concurrency=2, reasoning=False, stream=True)
        try:
            body = plain.build_body(msgs, params)
            return await plain.send(body, 60.0), await streamed.send(body, 60.0)
        finally:
            await plain.aclose()
            await streamed.aclose()

    a, b = asyncio.run(main())
    assert (b.text, b.finish_reason, b.usage.completion_tokens) == (a.text, a.finish_reason, a.usage.completion_tokens)
    assert b.usage.prompt_tokens == a.usage.prompt_tokens > 0
    assert b.ttft_s is not None and b.timing is not None and b.timing.chunks >= 1
    # Each prompt or generated token costs ~12 ms of one CPU here: two requests at concurrency 2 and
    # one per --ignore-eos setting say what four and two did.
    res = run_cli("bench", "--base-url", embedded_server.root_url, "--model", alias, "--num-prompts", "2",
                  "--max-concurrency", "2", "--input-len", "16", "--output-len", "8")
    assert res.rc == 0, res.stderr
    assert "Successful requests:                     2" in res.stdout
    # ignore_eos (the embedded adapter declares that llama.cpp takes it): a one-word answer runs on
    # to --output-len tokens, as `vllm bench serve --ignore-eos` makes vLLM do (min_tokens is ignored).
    items = tmp_path / "yes.jsonl"
    items.write_text('{"id": "y", "prompt": "Answer with one word: is water wet?"}\n')
    out = {flag: tmp_path / f"{flag}.json" for flag in ("--no-ignore-eos", "--ignore-eos")}
    for flag, path in out.items():
        res = run_cli("bench", "--base-url", embedded_server.root_url, "--model", alias, "--num-prompts", "1",
                      "--items", items, "--output-len", "16", flag, "--result-file", path)
        assert res.rc == 0, res.stderr
    stopped, forced = (orjson.loads(p.read_bytes())["total_output_tokens"] for p in out.values())
    assert stopped < 16 and forced == 16


@pytest.mark.slow  # may start this worker's embedded model server
def test_streams_survive_llama_cpp_closing_each_streamed_connection(embedded_server: Any) -> None:
    """llama.cpp closes the connection after every streamed reply while its headers say Keep-Alive:
    a wave of streams that end in the same decode step leaves that many dead connections in the pool,
    and the next wave, sent at once, takes them (a bare aiohttp loop lost every other request; one
    resend still lost some). Every request is answered: resent, a loop turn apart, until a live
    connection takes it."""
    url, alias = embedded_server.base_url, embedded_server.alias
    params = GenParams(max_tokens=2, temperature=0.0, seed=0)

    async def main() -> list[Response]:
        client = OpenAIChat(base_url=url, model=alias, api_key=None, concurrency=4, reasoning=False, stream=True)
        try:
            out: list[Response] = []
            for wave in range(4):
                bodies = [client.build_body((Message(role="user", content=f"Say {wave}{i}."),), params)
                          for i in range(4)]
                out += await asyncio.gather(*(client.send_streamed(b, 60.0) for b in bodies))
            return out
        finally:
            await client.aclose()

    replies = asyncio.run(main())
    assert len(replies) == 16 and all(r.usage.completion_tokens == 2 for r in replies)


_SSE_REPLY = (b'data: {"id":"c","model":"m","choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":null}]}\n\n'
              b'data: {"id":"c","model":"m","choices":[{"index":0,"delta":{},"finish_reason":"stop"}],'
              b'"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}\n\ndata: [DONE]\n\n')


def test_a_streamed_post_is_resent_only_over_a_pooled_connection_found_dead() -> None:
    """The resend is for a pooled connection the server has closed (llama.cpp closes every streamed
    connection while saying Keep-Alive): sent again, it is answered. A server that drops a request on
    a connection of its own (it may have read and started it) gets it once per attempt: the lane's
    retry, with its backoff and attempt count, decides (it got the same request 4 times at once)."""
    seen: list[int] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Each connection answers its first request and closes at its second, unanswered: the close
        # the client had not yet read when it took the connection from its pool.
        for n in range(2):
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                break
            match = re.search(rb"(?i)content-length: *(\d+)", head)
            await reader.readexactly(int(match.group(1)) if match else 0)
            seen.append(n)
            if n == 1:
                break
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: keep-alive\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(_SSE_REPLY), _SSE_REPLY))
            await writer.drain()
        writer.close()

    async def pooled() -> list[str]:
        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client = OpenAIChat(base_url=f"http://127.0.0.1:{port}/v1", model="m", api_key=None, concurrency=1, stream=True)
        try:
            body = client.build_body((Message(role="user", content="hi"),), GenParams(max_tokens=4))
            return [(await client.send_streamed(body, 10.0)).text for _ in range(2)]
        finally:
            await client.aclose()
            server.close()

    assert asyncio.run(pooled()) == ["hi", "hi"]
    assert seen == [0, 1, 0]  # the second request: on the pooled connection, then on a new one

    async def resets() -> int:
        runner, url = await start_in_loop({"p_reset": 1.0})
        client = OpenAIChat(base_url=url, model="m", api_key=None, concurrency=4, stream=True)
        try:
            with pytest.raises(AdapterError) as err:
                await client.send_streamed(client.build_body((Message(role="user", content="hi"),),
                                                             GenParams(max_tokens=4)), 5.0)
            assert err.value.kind == "transient"
            return int(runner.app[SERVER_KEY].stats()["requests"])
        finally:
            await client.aclose()
            await runner.cleanup()

    assert asyncio.run(resets()) == 1
