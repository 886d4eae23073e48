"""Behaviour tests for engine/testing/fakeserver.py (the fake OpenAI server).

Most tests share one subprocess server (module fixture) and reset it between
tests, which is also how engine tests use it; a few use an in-process server.
Timing assertions are deliberately loose.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from typing import Any

import aiohttp
import msgspec
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.testing.fakeserver import (
    SERVER_KEY,
    FakeConfig,
    FakeServer,
    FakeServerProcess,
    body_hash,
    count_prompt_tokens,
    expected_text,
    key_fingerprint,
    start_in_loop,
    token_charge,
)


def _body(content: str = "hello", model: str = "m", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}


async def _post(
    url: str,
    body: Any,
    *,
    key: str | None = None,
    timeout: float = 10.0,
    session: aiohttp.ClientSession | None = None,
) -> tuple[int, dict[str, str], bytes]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    headers["Content-Type"] = "application/json"
    own = session is None
    s = session or aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout))
    try:
        async with s.post(url + "/chat/completions", data=data, headers=headers) as r:
            return r.status, dict(r.headers), await r.read()
    finally:
        if own:
            await s.close()


def post(url: str, body: Any, **kw: Any) -> tuple[int, dict[str, str], bytes]:
    return asyncio.run(_post(url, body, **kw))


@pytest.fixture(scope="module")
def proc():
    with FakeServerProcess() as p:
        yield p


@pytest.fixture
def srv(proc: FakeServerProcess) -> FakeServerProcess:
    # Fresh state and default config for every test.
    proc.set_config(**msgspec.to_builtins(FakeConfig()))
    proc.reset()
    return proc


# ---------------------------------------------------------------- pure functions


def test_expected_text_is_deterministic_and_input_sensitive():
    a = expected_text(_body("hello"))
    assert a == expected_text(_body("hello"))
    assert a.startswith("reply:") and len(a) == len("reply:") + 16
    assert a != expected_text(_body("hello!"))
    assert a != expected_text(_body("hello", model="other"))
    # Sampling parameters do not change the text; only model + messages do.
    assert a == expected_text(_body("hello", temperature=0.7, max_tokens=5))


def test_count_prompt_tokens_and_charge():
    body = {
        "messages": [
            {"role": "system", "content": "abcde"},  # 5 chars
            {"role": "user", "content": [{"type": "text", "text": "xyz"}]},  # 3 chars
            {"role": "assistant", "content": None},
        ]
    }
    assert count_prompt_tokens(body) == 2  # ceil(8 / 4)
    assert token_charge(body) == 2
    assert token_charge({**body, "max_tokens": 10}) == 12
    assert token_charge({**body, "max_completion_tokens": 7}) == 9


@settings(max_examples=50, deadline=None)
@given(st.lists(st.text(max_size=50), min_size=1, max_size=5))
def test_count_prompt_tokens_property(contents):
    body = {"messages": [{"role": "user", "content": c} for c in contents]}
    assert count_prompt_tokens(body) == math.ceil(sum(len(c) for c in contents) / 4)


def test_script_and_padding():
    cfg = {"script": {"SCORE?": '{"score": 10}'}}
    body = {"model": "m", "messages": [{"role": "system", "content": "SCORE?"}, {"role": "user", "content": "rate SCORE? now"}]}
    assert expected_text(body, cfg) == '{"score": 10}'
    # Only the last user message is matched.
    body2 = {"model": "m", "messages": [{"role": "user", "content": "SCORE?"}, {"role": "user", "content": "x"}]}
    assert expected_text(body2, cfg).startswith("reply:")

    t = expected_text(_body("p", max_tokens=50), {"completion_tokens": "max_tokens"})
    assert len(t) == 200 and t.startswith("reply:")
    t = expected_text(_body("p", max_tokens=50), {"completion_tokens": 20})
    assert math.ceil(len(t) / 4) == 20
    t = expected_text(_body("p", max_tokens=10), {"completion_tokens": 20})  # capped at max_tokens
    assert math.ceil(len(t) / 4) == 10


def test_json_schema_reply_is_valid_json():
    schema = {
        "type": "object",
        "properties": {
            "score": {"type": "integer", "minimum": 1, "maximum": 10},
            "label": {"type": "string", "enum": ["good", "bad"]},
            "why": {"type": "string"},
            "ok": {"type": "boolean"},
            "tags": {"type": "array", "items": {"type": "string"}, "minItems": 2},
            "p": {"type": "number", "exclusiveMinimum": 0},
            "sub": {"$ref": "#/$defs/Sub"},
        },
        "required": ["score", "label", "why", "ok", "tags", "p", "sub"],
        "additionalProperties": False,
        "$defs": {"Sub": {"type": "object", "properties": {"n": {"type": ["integer", "null"]}}}},
    }
    body = _body("judge", response_format={"type": "json_schema", "json_schema": {"name": "s", "schema": schema}})
    obj = orjson.loads(expected_text(body))
    assert obj["score"] == 1 and obj["label"] == "good" and obj["ok"] is False
    assert obj["why"].startswith("reply:") and len(obj["tags"]) == 2 and obj["p"] > 0
    assert obj["sub"] == {"n": 0}
    # Padding keeps JSON valid.
    padded = expected_text({**body, "max_tokens": 100}, {"completion_tokens": "max_tokens"})
    assert len(padded) == 400 and orjson.loads(padded) == obj
    assert "reply" in orjson.loads(expected_text(_body("x", response_format={"type": "json_object"})))


def test_config_validation():
    with pytest.raises(ValueError, match="sum to <= 1"):
        FakeConfig(p_429=0.7, p_5xx=0.7)
    with pytest.raises(ValueError, match="malformed_kinds"):
        FakeConfig(malformed_kinds=("nope",))
    assert FakeConfig(p_429=0.5, p_5xx=0.5).p_429 == 0.5


# ---------------------------------------------------------------- HTTP behaviour


def test_success_body_shape(srv):
    body = _body("hello world", max_tokens=20, temperature=0, seed=1)
    status, headers, raw = post(srv.url, body)
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    r = orjson.loads(raw)
    assert r["id"].startswith("chatcmpl-") and r["object"] == "chat.completion"
    assert isinstance(r["created"], int) and r["model"] == "fake-model"
    (choice,) = r["choices"]
    assert choice["index"] == 0 and choice["finish_reason"] == "stop"
    assert choice["message"] == {"role": "assistant", "content": expected_text(body)}
    text = choice["message"]["content"]
    assert r["usage"] == {
        "prompt_tokens": 3,
        "completion_tokens": math.ceil(len(text) / 4),
        "total_tokens": 3 + math.ceil(len(text) / 4),
    }


def test_models_and_health(srv):
    srv.set_config(served_model="gpt-fake")
    import urllib.request

    with urllib.request.urlopen(srv.url + "/models") as r:
        assert orjson.loads(r.read()) == {
            "object": "list",
            "data": [{"id": "gpt-fake", "object": "model", "owned_by": "fake"}],
        }
    with urllib.request.urlopen(srv.base_url + "/health") as r:
        assert r.status == 200 and orjson.loads(r.read()) == {"status": "ok"}
    status, _, raw = post(srv.url, _body())
    assert status == 200 and orjson.loads(raw)["model"] == "gpt-fake"


def test_bad_request_400(srv):
    status, _, raw = post(srv.url, b"{not json")
    assert status == 400 and orjson.loads(raw)["error"]["type"] == "invalid_request_error"
    status, _, raw = post(srv.url, {"model": "m", "messages": []})
    err = orjson.loads(raw)["error"]
    assert status == 400 and err["param"] == "messages" and set(err) == {"message", "type", "param", "code"}


def test_injected_429_has_retry_after(srv):
    srv.set_config(p_429=1.0, retry_after_s=2)
    status, headers, raw = post(srv.url, _body())
    assert status == 429
    assert headers["Retry-After"] == "2" and headers["retry-after-ms"] == "2000"
    assert orjson.loads(raw) == {
        "error": {
            "message": orjson.loads(raw)["error"]["message"],
            "type": "requests",
            "param": None,
            "code": "rate_limit_exceeded",
        }
    }
    srv.set_config(retry_after_s=0.25)
    _, headers, _ = post(srv.url, _body())
    assert headers["Retry-After"] == "0.250" and headers["retry-after-ms"] == "250"
    assert srv.stats()["n_429"] == 2


def test_injected_5xx(srv):
    srv.set_config(p_5xx=1.0)
    seen = set()
    for i in range(20):
        status, _, raw = post(srv.url, _body(f"q{i}"))
        assert status in (500, 503)
        assert orjson.loads(raw)["error"]["type"] == "server_error"
        seen.add(status)
    assert seen == {500, 503}


def test_reset_is_a_connection_error(srv):
    srv.set_config(p_reset=1.0)
    for _ in range(2):
        with pytest.raises(aiohttp.ClientConnectionError):
            post(srv.url, _body())
    assert srv.stats()["by_status"] == {"reset": 2}


def test_hang_times_out_and_reset_releases(srv):
    srv.set_config(p_hang=1.0)
    t0 = time.monotonic()
    with pytest.raises(asyncio.TimeoutError):
        post(srv.url, _body(), timeout=0.5)
    assert 0.4 < time.monotonic() - t0 < 5
    assert srv.stats()["in_flight"] == 1  # still hanging server-side
    srv.reset()  # releases hung requests
    deadline = time.monotonic() + 5
    while srv.stats()["in_flight"] and time.monotonic() < deadline:
        time.sleep(0.02)
    assert srv.stats()["in_flight"] == 0


def test_short_hang_closes_without_answer(srv):
    srv.set_config(p_hang=1.0, hang_s=0.2)
    with pytest.raises(aiohttp.ClientConnectionError):
        post(srv.url, _body(), timeout=5)


def test_malformed_variants(srv):
    srv.set_config(p_malformed=1.0)
    kinds = set()
    for i in range(6):
        status, _, raw = post(srv.url, _body(f"m{i}"))
        assert status == 200
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError:
            kinds.add("truncated" if raw.startswith(b"{") else "not_json")
        else:
            assert "choices" not in obj
            kinds.add("no_choices")
    assert kinds == {"not_json", "truncated", "no_choices"}
    stats = srv.stats()
    assert stats["ok"] == 0 and stats["by_status"] == {"malformed": 6}

    srv.set_config(malformed_kinds=["cut"])
    with pytest.raises(aiohttp.ClientPayloadError):
        post(srv.url, _body("cut"))


def test_sliding_window_limiter_exact():
    # Drive the limiter with synthetic arrival times: every 1 s window (t-1, t]
    # may hold rpm/60 = 3 requests.
    server = FakeServer({"rpm": 180})
    cfg = server.config
    assert [server._admit(cfg, 1, t, 0) for t in (0.0, 0.1, 0.2)] == [None] * 3
    wait, kind = server._admit(cfg, 1, 0.5, 0)
    assert kind == "requests" and wait == pytest.approx(0.5)  # fits once t=0.0 leaves
    assert server._admit(cfg, 2, 0.5, 0) is None  # other key, own window
    assert server._admit(cfg, 1, 1.0, 0) is None  # 0.0 is outside (0.0, 1.0]
    wait, _ = server._admit(cfg, 1, 1.05, 0)  # window holds 0.1, 0.2, 1.0
    assert wait == pytest.approx(0.05)
    assert server._admit(cfg, 1, 1.1, 0) is None

    server = FakeServer({"tpm": 600})  # 10 tokens per sliding second
    cfg = server.config
    assert server._admit(cfg, 1, 0.0, 6) is None
    assert server._admit(cfg, 1, 0.3, 4) is None
    wait, kind = server._admit(cfg, 1, 0.5, 1)
    assert kind == "tokens" and wait == pytest.approx(0.5)
    assert server._admit(cfg, 1, 0.5, 11)[0] == math.inf  # larger than the whole budget


def test_rpm_sliding_window_http(srv):
    srv.set_config(rpm=180)  # 3 requests per sliding second

    async def run() -> None:
        async with aiohttp.ClientSession() as s:
            results = [await _post(srv.url, _body(f"r{i}"), key="k1", session=s) for i in range(4)]
            assert [r[0] for r in results[:3]] == [200, 200, 200]
            status, headers, raw = results[3]
            assert status == 429
            err = orjson.loads(raw)["error"]
            assert err["code"] == "rate_limit_exceeded" and err["type"] == "requests"
            wait_ms = int(headers["retry-after-ms"])
            assert 1 <= wait_ms <= 1000
            assert float(headers["Retry-After"]) == pytest.approx(wait_ms / 1000)
            # Limits are per API key.
            assert (await _post(srv.url, _body("other"), key="k2", session=s))[0] == 200
            # Waiting as told admits the request.
            await asyncio.sleep(wait_ms / 1000)
            assert (await _post(srv.url, _body("r5"), key="k1", session=s))[0] == 200

    asyncio.run(run())
    stats = srv.stats()
    assert stats["n_429_limiter"] == 1 and stats["n_429"] == 1 and stats["ok"] == 5


def test_rpm_fractional_window(srv):
    srv.set_config(rpm=90)  # 1.5 per second: one admitted per sliding second
    assert post(srv.url, _body("a"))[0] == 200
    assert post(srv.url, _body("b"))[0] == 429


def test_tpm_charges_prompt_plus_max_tokens(srv):
    srv.set_config(tpm=6000)  # 100 tokens per sliding second
    body = _body("x" * 40, max_tokens=40)  # charge 10 + 40 = 50
    assert token_charge(body) == 50
    assert post(srv.url, body, key="a")[0] == 200
    assert post(srv.url, _body("y" * 40, max_tokens=40), key="a")[0] == 200
    status, headers, raw = post(srv.url, _body("z", max_tokens=1), key="a")  # 100 + 2 > 100
    assert status == 429 and orjson.loads(raw)["error"]["type"] == "tokens"
    assert 1 <= int(headers["retry-after-ms"]) <= 1000
    # A request that can never fit is rejected as too large.
    status, _, raw = post(srv.url, _body("w", max_tokens=500), key="b")
    assert status == 429 and "too large" in orjson.loads(raw)["error"]["message"]
    assert srv.stats()["n_429_limiter"] == 2


def test_require_key(srv):
    srv.set_config(require_key="sk-secret")
    for key in (None, "sk-wrong"):
        status, _, raw = post(srv.url, _body(), key=key)
        assert status == 401
        assert orjson.loads(raw)["error"]["code"] == "invalid_api_key"
        assert orjson.loads(raw)["error"]["type"] == "invalid_request_error"
    assert post(srv.url, _body(), key="sk-secret")[0] == 200
    # The log carries a fingerprint, never the key.
    log = srv.log()
    assert [e["key"] for e in log] == [None, key_fingerprint("sk-wrong"), key_fingerprint("sk-secret")]
    assert "sk-secret" not in orjson.dumps(log).decode()


def test_fail_first_n(srv):
    srv.set_config(fail_first_n=2)
    assert [post(srv.url, _body("same"))[0] for _ in range(3)] == [503, 503, 200]
    # Counted per distinct messages, independent of other fields.
    assert post(srv.url, _body("same", temperature=1))[0] == 200
    assert post(srv.url, _body("different"))[0] == 503


def test_control_endpoints(srv):
    cfg = srv.set_config(latency_ms=1, script={"a": "b"})
    assert cfg["latency_ms"] == 1 and cfg["script"] == {"a": "b"} and cfg["served_model"] == "fake-model"
    assert srv.config() == cfg
    with pytest.raises(ValueError, match="400"):
        srv.set_config(no_such_field=1)
    with pytest.raises(ValueError, match="400"):
        srv.set_config(p_429=2)
    assert srv.config() == cfg  # rejected changes leave the config alone
    post(srv.url, _body("say a"))
    assert srv.stats()["requests"] == 1 and len(srv.log()) == 1
    srv.reset()
    stats = srv.stats()
    assert stats["requests"] == 0 and stats["by_status"] == {} and srv.log() == []


def test_log_and_duplicates(srv):
    a, b = _body("one"), _body("two")
    for body in (a, a, b, a):
        assert post(srv.url, body, key="sk-abc")[0] == 200
    stats = srv.stats()
    assert stats["ok"] == 4 and stats["duplicates_ok"] == 2 and stats["distinct_ok"] == 2
    log = srv.log()
    assert [e["body_hash"] for e in log] == [body_hash(x) for x in (a, a, b, a)]
    assert all(e["status"] == 200 and e["outcome"] == "200" for e in log)
    assert all(e["key"] == key_fingerprint("sk-abc") for e in log)
    assert log == sorted(log, key=lambda e: e["t"])
    assert srv.log(offset=1, limit=2) == log[1:3]
    # A failed attempt followed by a success is not a duplicate.
    srv.reset()
    srv.set_config(fail_first_n=1)
    post(srv.url, a)
    post(srv.url, a)
    assert srv.stats()["duplicates_ok"] == 0


def test_log_can_be_disabled(srv):
    srv.set_config(log=False)
    post(srv.url, _body())
    post(srv.url, _body())
    assert srv.log() == [] and srv.stats()["duplicates_ok"] == 1


def test_fault_sequence_is_seeded(srv):
    srv.set_config(p_429=0.3, p_5xx=0.3, seed=7)

    def outcomes() -> list[int]:
        return [post(srv.url, _body(f"s{i}"))[0] for i in range(30)]

    first = outcomes()
    srv.reset()  # re-seeds
    assert outcomes() == first
    assert {200, 429} <= set(first)


def test_latency_applied(srv):
    srv.set_config(latency_ms=150)
    t0 = time.monotonic()
    assert post(srv.url, _body())[0] == 200
    assert time.monotonic() - t0 >= 0.14


def test_streaming(srv):
    body = _body("stream me", stream=True, stream_options={"include_usage": True})

    async def run() -> tuple[str, list[bytes]]:
        async with aiohttp.ClientSession() as s:
            async with s.post(srv.url + "/chat/completions", json=body) as r:
                assert r.status == 200 and r.headers["Content-Type"].startswith("text/event-stream")
                raw = await r.read()
        events = [e for e in raw.split(b"\n\n") if e]
        return raw.decode(), events

    _, events = asyncio.run(run())
    assert all(e.startswith(b"data: ") for e in events) and events[-1] == b"data: [DONE]"
    chunks = [orjson.loads(e[6:]) for e in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == expected_text(body)
    assert chunks[-1]["usage"]["completion_tokens"] == math.ceil(len(text) / 4)
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "stop"


def test_concurrency_tracked(srv):
    srv.set_config(latency_ms=200)

    async def run() -> None:
        async with aiohttp.ClientSession() as s:
            res = await asyncio.gather(*(_post(srv.url, _body(f"c{i}"), session=s) for i in range(10)))
            assert all(r[0] == 200 for r in res)

    asyncio.run(run())
    assert srv.stats()["max_in_flight"] == 10


# ---------------------------------------------------------------- lifecycle


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_subprocess_start_stop_clean_even_with_hung_requests():
    srv = FakeServerProcess({"p_hang": 1.0}).start()
    pid = srv.pid
    assert pid and _pid_alive(pid) and srv.url.endswith("/v1")

    async def hang() -> None:
        async with aiohttp.ClientSession() as s:
            task = asyncio.ensure_future(_post(srv.url, _body(), session=s, timeout=30))
            while srv.stats()["in_flight"] == 0:
                await asyncio.sleep(0.02)
            t0 = time.monotonic()
            rc = await asyncio.to_thread(srv.stop)
            assert rc == 0 and time.monotonic() - t0 < 5  # clean SIGTERM exit, not a kill
            with pytest.raises(aiohttp.ClientError):
                await task

    asyncio.run(hang())
    assert not _pid_alive(pid)
    assert srv.stop() == 0  # idempotent


def test_subprocess_start_failure_reports_stderr():
    with pytest.raises(RuntimeError, match="fault probabilities"):
        FakeServerProcess({"p_429": 5}).start()
    with pytest.raises(RuntimeError, match="unknown field"):
        FakeServerProcess({"bogus": 1}).start()


def test_cli_flags_override_config():
    # Individual flags take JSON values and override --config.
    from engine.testing.fakeserver import _build_parser, config_from_args

    args = _build_parser().parse_args(
        ["--config", '{"latency_ms": 5, "rpm": 60}', "--latency-ms", "7", "--require-key", "123", "--log", "false"]
    )
    cfg = config_from_args(args)
    assert (cfg.latency_ms, cfg.rpm, cfg.require_key, cfg.log) == (7.0, 60.0, "123", False)


def test_in_process_server():
    async def run() -> None:
        runner, url = await start_in_loop({"script": {"ping": "pong"}})
        try:
            server = runner.app[SERVER_KEY]
            status, _, raw = await _post(url, _body("ping"))
            assert status == 200 and orjson.loads(raw)["choices"][0]["message"]["content"] == "pong"
            server.set_config(p_5xx=1.0)
            assert (await _post(url, _body("x")))[0] in (500, 503)
            assert server.stats()["requests"] == 2
        finally:
            await runner.cleanup()

    asyncio.run(run())
