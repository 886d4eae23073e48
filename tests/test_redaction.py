"""API keys never reach a file, a log line or stderr (issue 16, item 2): one `redact`
(engine/core/secrets.py) removes the exact value of every key read everywhere, records included,
and key-shaped strings only from error texts and logs, never from model answers.

The end-to-end test runs three HTTP lanes (OpenAI-compatible, Anthropic, Gemini) against fakes that
echo the whole request, headers and key included, in 200 non-JSON, 4xx and 5xx replies, and in a
well-formed answer's text (a model quoting its request), then greps every output file and all
console output of run, verify and report for the keys."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from engine.config import parse_config
from engine.core.errors import ConfigError
from engine.core.secrets import MARK, api_key, looks_like_key, redact, remember
from engine.testing.fake_providers import AnthropicFake, GeminiFake, run_in_thread
from tests.conftest import ThreadServer, read_jsonl, run_engine, write_config

OA_KEY = "sk-proj-OAECHOKEY-0123456789abcdefghij"
AN_KEY = "sk-ant-api03-ANECHOKEY-0123456789abcdef"
GE_KEY = "AIzaSyGEECHOKEY-0123456789abcdefghijkl"
# Not a configured key: a model answer that mentions one must keep it (answers are data).
EXAMPLE = "sk-EXAMPLE000000000000000000000"
QUOTE = f"you sent {OA_KEY}; a key looks like {EXAMPLE} in a risk-assessment"
PROMPTS = ["ECHO200 first", "ECHO500 second", "ECHO400 third", "QUOTE fourth", "fifth", "sixth", "seventh", "eighth"]


def _needles(key: str) -> tuple[bytes, ...]:
    return (key.encode(), key[:12].encode(), key[-12:].encode())


def _assert_nowhere(out: Path, console: str, *, outputs: bool = True) -> None:
    files = [p for p in out.rglob("*") if p.is_file()]
    assert files
    if outputs:
        assert {"run.json", "report.md", "report.html"} <= {p.name for p in files}
        assert any(p.parent.name == "errors" for p in files) and any(p.parent.name == "responses" for p in files)
    for key in (OA_KEY, AN_KEY, GE_KEY):
        for n in _needles(key):
            assert n.decode() not in console, f"{key} reached the console"
            for p in files:
                assert n not in p.read_bytes(), f"{key} reached {p}"


def test_echoing_servers_leak_no_key_anywhere(tmp_path: Path) -> None:
    oa = ThreadServer({"require_key": OA_KEY, "echo": {"ECHO200": 200, "ECHO500": 500, "ECHO400": 400},
                       "script": {"QUOTE": QUOTE}})
    afake, gfake = AnthropicFake(api_key=AN_KEY), GeminiFake(api_key=GE_KEY)
    # One lane worker each, so the scripts meet the items in order: q0 gets a 200 echo, a 500 echo
    # and a 400 echo (final, recorded), q1 an answer quoting the request; Gemini's last two items
    # get 401 echoes, which stop its lane with a message quoting the echo (run.json, stderr).
    afake.script("echo_200", "echo_500", "echo_400", "echo_text")
    gfake.script("echo_200", "echo_500", "echo_400", "echo_text", "ok", "ok", "ok", "ok", "echo_401", "echo_401")
    items = tmp_path / "items.jsonl"
    items.write_bytes(b"".join(orjson.dumps({"id": f"q{i}", "prompt": p}) + b"\n" for i, p in enumerate(PROMPTS)))
    common = {"max_tokens": 64, "temperature": 0.0, "backoff_base_s": 0.01, "backoff_max_s": 0.05,
              "max_concurrency": 1, "max_attempts": 3, "timeout_s": 10.0, "auth_failures_to_stop": 2}
    out = tmp_path / "out"
    try:
        with run_in_thread(afake) as aurl, run_in_thread(gfake) as gurl:
            cfg = write_config(tmp_path / "c.toml", {
                "oa": {"adapter": "openai", "model": "fake-model", "base_url": oa.url, "api_key_env": "RX_OA_KEY",
                       **common},
                "an": {"adapter": "anthropic", "model": "claude-x", "base_url": aurl, "api_key_env": "RX_AN_KEY",
                       **common},
                "ge": {"adapter": "gemini", "model": "gemini-x", "base_url": gurl, "api_key_env": "RX_GE_KEY",
                       **common},
            })
            env = {"RX_OA_KEY": OA_KEY, "RX_AN_KEY": AN_KEY, "RX_GE_KEY": GE_KEY}
            run = run_engine("run", cfg, "--items", items, "--output", out, "--cache", tmp_path / "cache", env=env)
    finally:
        oa.stop()
    assert run.rc == 1 and "Traceback" not in run.stderr, run.stderr  # q0/q1 of oa ran out of retries
    verify = run_engine("verify", out, env=env)
    report = run_engine("report", out, env=env)
    assert report.rc == 0, report.stderr
    console = "".join(r.stdout + r.stderr for r in (run, verify, report))
    _assert_nowhere(out, console)
    _assert_nowhere(tmp_path / "cache", "", outputs=False)  # the response cache keeps answers too

    # Every echo path was taken, and each left a redacted trace.
    oa_errs = read_jsonl(out / "errors" / "oa.jsonl")
    assert {e["error"].get("status") for e in oa_errs} >= {None, 500, 400}
    assert any(e["error"]["kind"] == "malformed" for e in oa_errs)
    oa_recs = {r["item_id"]: r for r in read_jsonl(out / "responses" / "oa.jsonl")}
    assert oa_recs["q2"]["error"]["status"] == 400 and MARK in oa_recs["q2"]["error"]["message"]
    # Exact values leave answers; key shapes and words in them stay.
    assert oa_recs["q3"]["response"]["text"] == QUOTE.replace(OA_KEY, MARK)
    for lane in ("an", "ge"):
        recs = {r["item_id"]: r for r in read_jsonl(out / "responses" / f"{lane}.jsonl")}
        assert recs["q0"]["error"]["status"] == 400
        assert MARK in recs["q1"]["response"]["text"]
        kinds = {e["error"]["kind"] for e in read_jsonl(out / "errors" / f"{lane}.jsonl")}
        assert {"malformed", "transient", "fatal"} <= kinds
    doc = orjson.loads((out / "run.json").read_bytes())
    assert doc["lanes"]["ge"]["state"] == "stopped" and MARK in doc["lanes"]["ge"]["message"]
    assert "lane ge stopped after 2 authentication failures" in run.stderr


def test_redact_exact_everywhere_shapes_only_in_errors() -> None:
    key = "sk-live-REDACTUNIT-abcdefghij0123"
    remember(key)
    answer = f"your plan: a risk-assessment; key {key}; example {EXAMPLE}; see https://x.test/?key=abcd1234"
    # Records: exact values only.
    assert redact(answer, shapes=False) == answer.replace(key, MARK)
    # Error texts: shapes too.
    err = redact(f"HTTP 401: Authorization: Bearer tok_abcdef123456 x-api-key: abcd-efgh-1234 "
                 f"x-goog-api-key=AIzaSyABCDEFGHIJKLMNOPQRSTUVWXYZ0123456 url ?key=abcd1234&alt=json "
                 f"{EXAMPLE} echoed sk-live-...0123, order 0123 risk-assessment")
    for leaked in ("tok_abcdef123456", "abcd-efgh-1234", "AIzaSyABCDEF", "abcd1234", EXAMPLE[3:], "sk-live-",
                   "...0123"):
        assert leaked not in err, err
    assert "risk-assessment" in err and "alt=json" in err and "order 0123" in err
    # Bytes (a record batch, run.json): the raw and the JSON-escaped form of a key with a quote.
    odd = 'k3y"with\\quote-0123456789'
    remember(odd)
    line = orjson.dumps({"text": f"a {odd} b", "raw": key})
    assert odd.encode() not in redact(line) and b"with" not in redact(line) and key.encode() not in redact(line)
    assert orjson.loads(redact(line)) == {"text": f"a {MARK} b", "raw": MARK}
    plain = bytearray(b'{"text":"nothing to see"}')
    assert redact(plain) is plain  # nothing found: no copy on the writer's hot path


def test_api_key_env_holding_the_key_is_refused_without_echo(tmp_path: Path) -> None:
    pasted = "sk-proj-PASTEDKEY-0123456789abcdefgh"
    assert looks_like_key(pasted) and looks_like_key("0123456789abcdef0123456789abcdef01")
    assert not looks_like_key("OPENAI_API_KEY") and not looks_like_key("MY_KEY_2")
    with pytest.raises(ConfigError) as exc:
        parse_config({"models": {"m": {"adapter": "openai", "base_url": "http://x/v1", "api_key_env": pasted}}}, "t")
    assert pasted not in str(exc.value) and "looks like a key" in str(exc.value)
    with pytest.raises(ConfigError) as exc:
        api_key(pasted, "m")
    assert pasted not in str(exc.value)
    cfg = write_config(tmp_path / "c.toml", {"m": {"adapter": "openai", "base_url": "http://127.0.0.1:9/v1",
                                                    "api_key_env": pasted}})
    items = tmp_path / "items.jsonl"
    items.write_bytes(b'{"id": "a", "prompt": "hello"}\n')
    for args in (("validate", cfg), ("plan", cfg, "--items", items),
                 ("run", cfg, "--items", items, "--output", tmp_path / "out")):
        res = run_engine(*args)
        assert res.rc == 2 and len(res.err_lines()) == 1, res.stderr
        assert "api_key_env" in res.stderr and "looks like a key" in res.stderr
        for n in _needles(pasted):
            assert n.decode() not in res.stdout + res.stderr
    assert not (tmp_path / "out").exists()
