"""Loopback fakes of the Anthropic Messages API, the Gemini API and an OpenAI reasoning-model
endpoint, for adapter and end-to-end tests (127.0.0.1 only).

The OpenAI-compatible fault-injecting server is engine/testing/fakeserver.py (reused, not duplicated here);
`OpenAIReasoningFake` below only adds what that server does not model: the reasoning-model request
rules, usage details and `x-ratelimit-*` headers.

Each fake validates requests against the provider's documented schema and answers breaking ones
with the provider's documented error body, so a builder regression fails a test instead of a run:

* Anthropic (https://platform.claude.com/docs/en/api/messages/create,
  https://platform.claude.com/docs/en/api/errors, https://platform.claude.com/docs/en/api/rate-limits,
  https://platform.claude.com/docs/en/api/versioning): `x-api-key` wrong or missing -> 401
  authentication_error; no `anthropic-version` -> 400; no `max_tokens`/`model`/`messages`, a role
  other than user/assistant, non-alternating turns, unknown top-level fields ("Extra inputs are not
  permitted"), temperature/top_p outside [0, 1], both temperature and top_p -> 400
  invalid_request_error; unknown model -> 404 not_found_error. Every reply carries
  `anthropic-ratelimit-*` headers (RFC 3339 resets) and `request-id`.
* Gemini (https://ai.google.dev/api/generate-content,
  https://ai.google.dev/gemini-api/docs/troubleshooting): no key -> 403 PERMISSION_DENIED
  ("Method doesn't allow unregistered callers"); wrong key -> 400 INVALID_ARGUMENT with ErrorInfo
  reason API_KEY_INVALID (what the live API answers); a role other than user/model -> 400
  INVALID_ARGUMENT "Please use a valid role: user, model."; unknown or snake_case fields -> 400
  'Invalid JSON payload received. Unknown name "..."'; unknown model -> 404 NOT_FOUND.
* OpenAI reasoning models (https://platform.openai.com/docs/guides/reasoning,
  https://platform.openai.com/docs/api-reference/chat/create): `max_tokens` -> 400
  unsupported_parameter ("Use 'max_completion_tokens' instead"); a non-default temperature/top_p ->
  400 unsupported_value ("Only the default (1) value is supported"); wrong key -> 401 echoing a
  masked key ("Incorrect API key provided: sk-abc...wxyz"), which the adapter must redact.

Behaviour is scriptable per test: `fake.mode = "429"` (every request), `fake.script("529", "ok")`
(one mode per request, then `mode`), or over HTTP `POST /_control {"mode": ..., "script": [...],
"retry_after_s": ...}` for a fake running in another thread. `fake.requests` keeps every parsed
request body; `fake.count` counts requests that passed validation.

Modes: ok, doc_example, max_tokens, refusal (Anthropic), cached, thinking (Gemini/OpenAI),
safety, blocked, recitation, prohibited (Gemini), length_empty (OpenAI), 429, 529 (Anthropic),
503, 500, 404, 403, malformed, malformed_shape, reset, hang, leaky_auth (an auth error echoing the
key, to test redaction), echo_<status> (a plain-text reply with that status echoing the request line,
every header, the key included, and the body, as some proxies do: echo_200, echo_400, echo_500), and
echo_text (a well-formed answer whose text is that echo: a model that quotes its request).

Replies are a pure function of the request (`reply_text`), so an end-to-end test can check every
recorded text without asking the server.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import math
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, Protocol

import orjson
from aiohttp import web

from engine.testing.fakeserver import _abort, echo_request

__all__ = ["ANTHROPIC_DOC_MESSAGE", "GEMINI_DOC_RESPONSE", "OPENAI_DOC_REASONING_COMPLETION", "AnthropicFake",
           "GeminiFake", "OpenAIReasoningFake", "ProviderFake", "reply_text", "run_in_thread", "start_fake"]

# -- fixtures taken from the documentation -----------------------------------------------------------

#: The example response of https://platform.claude.com/docs/en/build-with-claude/handling-stop-reasons
#: ("The stop_reason field"), verbatim.
ANTHROPIC_DOC_MESSAGE: dict[str, object] = {
    "id": "msg_01234",
    "type": "message",
    "role": "assistant",
    "content": [{"type": "text", "text": "Here's the answer to your question..."}],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {"input_tokens": 100, "output_tokens": 50},
}

#: A GenerateContentResponse with every field the adapter reads, shaped as documented in
#: https://ai.google.dev/api/generate-content#generatecontentresponse (candidates[].content.parts,
#: finishReason, usageMetadata.promptTokenCount/candidatesTokenCount/thoughtsTokenCount/
#: cachedContentTokenCount/totalTokenCount, modelVersion, responseId).
GEMINI_DOC_RESPONSE: dict[str, object] = {
    "candidates": [{
        "content": {"parts": [{"text": "AI learns patterns from data to make predictions."}], "role": "model"},
        "finishReason": "STOP",
        "index": 0,
    }],
    "usageMetadata": {"promptTokenCount": 8, "candidatesTokenCount": 10, "thoughtsTokenCount": 24,
                      "cachedContentTokenCount": 4, "totalTokenCount": 42},
    "modelVersion": "gemini-2.5-flash",
    "responseId": "Il0taoSYJ5Cez7",
}

#: A reasoning-model chat completion as in https://platform.openai.com/docs/guides/reasoning
#: ("Reasoning tokens": usage.completion_tokens_details.reasoning_tokens) and the chat completion
#: object https://platform.openai.com/docs/api-reference/chat/object (prompt_tokens_details.cached_tokens).
OPENAI_DOC_REASONING_COMPLETION: dict[str, object] = {
    "id": "chatcmpl-AbCdEf",
    "object": "chat.completion",
    "created": 1741570283,
    "model": "o3-mini-2025-01-31",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "The answer is 42.", "refusal": None},
                 "finish_reason": "stop"}],
    "usage": {
        "prompt_tokens": 75,
        "completion_tokens": 1186,
        "total_tokens": 1261,
        "prompt_tokens_details": {"cached_tokens": 64, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 1024, "audio_tokens": 0,
                                      "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0},
    },
}


def reply_text(provider: str, last_user: str) -> str:
    """What every fake answers in mode "ok": a pure function of the provider and the last user text."""
    digest = hashlib.blake2b(last_user.encode(), digest_size=4).hexdigest()
    return f"[{provider}:{digest}] {last_user[:80]}"


def _tokens(text: str) -> int:
    return math.ceil(len(text) / 4)


def _rfc3339(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _json(data: object, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json", headers=headers)


async def _echo(request: web.Request) -> bytes:
    return echo_request(request, await request.read())  # aiohttp keeps the body read before


# -- base ---------------------------------------------------------------------------------------------


class ProviderFake:
    """Shared state and control plane of one fake (one instance per test)."""

    provider = "fake"

    def __init__(self, *, api_key: str = "test-key-0123456789", mode: str = "ok", retry_after_s: float = 1.0,
                 hang_s: float = 30.0, requests_limit: int = 1000, tokens_limit: int = 100_000,
                 served_model: str | None = None) -> None:
        self.api_key = api_key
        self.mode = mode
        self.retry_after_s = retry_after_s
        self.hang_s = hang_s
        self.requests_limit = requests_limit
        self.tokens_limit = tokens_limit
        self.served_model = served_model
        self.token_delay_ms = 0.0  # between streamed events
        self._script: collections.deque[str] = collections.deque()
        self.requests: list[dict[str, object]] = []
        self.count = 0  # requests that passed validation
        self.modes_served: collections.Counter[str] = collections.Counter()
        self._window_start = time.time()
        self._window_requests = 0
        self._window_tokens = 0
        self.app = web.Application(client_max_size=8 * 1024 * 1024)
        self.app.router.add_post("/_control", self._control)
        self.app.router.add_get("/_control", self._control_get)
        self._routes(self.app)

    # -- scripting ----------------------------------------------------------------------------------

    def script(self, *modes: str) -> None:
        """The next requests get these modes, one each, then `mode` again."""
        self._script.extend(modes)

    def next_mode(self) -> str:
        mode = self._script.popleft() if self._script else self.mode
        self.modes_served[mode] += 1
        return mode

    async def _control(self, request: web.Request) -> web.Response:
        data = orjson.loads(await request.read() or b"{}")
        if "mode" in data:
            self.mode = str(data["mode"])
        if "script" in data:
            self._script = collections.deque(str(m) for m in data["script"])
        for f in ("retry_after_s", "hang_s", "requests_limit", "tokens_limit"):
            if f in data:
                setattr(self, f, data[f])
        return await self._control_get(request)

    async def _control_get(self, request: web.Request) -> web.Response:
        return _json({"mode": self.mode, "script": list(self._script), "count": self.count,
                      "requests": len(self.requests), "modes_served": dict(self.modes_served)})

    def _routes(self, app: web.Application) -> None:
        raise NotImplementedError

    # -- a fixed one-minute window, reported the way the provider reports it ------------------------

    def _charge(self, tokens: int) -> tuple[int, int, float]:
        now = time.time()
        if now - self._window_start >= 60.0:
            self._window_start, self._window_requests, self._window_tokens = now, 0, 0
        self._window_requests += 1
        self._window_tokens += tokens
        return (max(0, self.requests_limit - self._window_requests), max(0, self.tokens_limit - self._window_tokens),
                self._window_start + 60.0)

    async def _sse(self, request: web.Request, events: list[tuple[str, object]], mode: str,
                   headers: dict[str, str] | None = None) -> web.StreamResponse:
        """A 200 `text/event-stream` of (event name or "", data) events, text pieces
        `token_delay_ms` apart. Modes: stream_cut drops the connection halfway; stream_error sends
        the provider's error event halfway (`error_event`) and ends the stream."""
        resp = web.StreamResponse(status=200, headers={**(headers or {}), "Content-Type": "text/event-stream",
                                                       "Cache-Control": "no-cache"})
        await resp.prepare(request)
        half = len(events) // 2
        for i, (name, data) in enumerate(events):
            if i == half and mode == "stream_cut":
                _abort(request)
                return resp
            if i == half and mode == "stream_error":
                name, data = self.error_event()
            if i and self.token_delay_ms:
                await asyncio.sleep(self.token_delay_ms / 1000.0)
            await resp.write((f"event: {name}\n".encode() if name else b"") + b"data: " + orjson.dumps(data) + b"\n\n")
            if i == half and mode == "stream_error":
                break
        await resp.write_eof()
        return resp

    def error_event(self) -> tuple[str, object]:
        """The event a provider sends when it fails after the 200."""
        raise NotImplementedError

    async def _fault(self, request: web.Request, mode: str) -> web.StreamResponse | None:
        """Transport-level modes shared by all fakes."""
        if mode == "reset":
            _abort(request)
            return web.Response(status=204)  # never reaches the client
        if mode == "hang":
            await asyncio.sleep(self.hang_s)
            return web.Response(status=204)
        if mode == "malformed":
            return web.Response(body=b'{"id": "x", "content": [{"type": "te', status=200,
                                content_type="application/json")
        if mode.startswith("echo_") and mode[5:].isdigit():
            return web.Response(status=int(mode[5:]), body=await _echo(request), content_type="text/plain")
        return None


# -- Anthropic ----------------------------------------------------------------------------------------

_ANTHROPIC_FIELDS = frozenset({"model", "messages", "max_tokens", "system", "temperature", "top_p", "top_k",
                               "stop_sequences", "stream", "metadata", "tools", "tool_choice", "thinking",
                               "service_tier", "container", "mcp_servers"})


def _anthropic_error(status: int, kind: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    # https://platform.claude.com/docs/en/api/errors ("Error shapes")
    return _json({"type": "error", "error": {"type": kind, "message": message}, "request_id": "req_fake0001"},
                 status, headers)


def _anthropic_invalid(body: object) -> str | None:
    if not isinstance(body, dict):
        return "request body must be a JSON object"
    for field in body:
        if field not in _ANTHROPIC_FIELDS:
            return f"{field}: Extra inputs are not permitted"
    for field in ("model", "max_tokens", "messages"):
        if field not in body:
            return f"{field}: Field required"
    if not isinstance(body["model"], str) or not body["model"]:
        return "model: Input should be a valid string"
    mt = body["max_tokens"]
    if not isinstance(mt, int) or isinstance(mt, bool) or mt < 1:
        return "max_tokens: Input should be a valid integer greater than or equal to 1"
    messages = body["messages"]
    if not isinstance(messages, list) or not messages:
        return "messages: at least one message is required"
    prev = None
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            return f"messages.{i}: each message needs a role and content"
        role = m["role"]
        if role == "system":
            return ('messages: Unexpected role "system". The Messages API accepts a top-level `system` parameter, '
                    'not "system" as an input message role.')
        if role not in ("user", "assistant"):
            return f"messages.{i}.role: Input should be 'user' or 'assistant'"
        if role == prev:
            return (f'messages: roles must alternate between "user" and "assistant", but found multiple "{role}" '
                    'roles in a row')
        prev = role
        content = m["content"]
        if not (isinstance(content, str) or (isinstance(content, list) and all(isinstance(b, dict) for b in content))):
            return f"messages.{i}.content: Input should be a valid string or list of content blocks"
    system = body.get("system")
    if system is not None and not (isinstance(system, str) or isinstance(system, list)):
        return "system: Input should be a valid string or list of text blocks"
    for field in ("temperature", "top_p"):
        v = body.get(field)
        if v is not None and (not isinstance(v, (int, float)) or isinstance(v, bool) or not 0.0 <= v <= 1.0):
            return f"{field}: Input should be less than or equal to 1"
    if body.get("temperature") is not None and body.get("top_p") is not None:
        return "`temperature` and `top_p` cannot both be specified for this model. Please use only one."
    stops = body.get("stop_sequences")
    if stops is not None and (not isinstance(stops, list) or not all(isinstance(s, str) for s in stops)):
        return "stop_sequences: Input should be a valid list of strings"
    return None


def _last_user_anthropic(body: dict[str, object]) -> str:
    messages = body["messages"]
    assert isinstance(messages, list)  # _anthropic_invalid checked the shape
    for m in reversed(messages):
        if m["role"] == "user":
            c = m["content"]
            return c if isinstance(c, str) else "".join(b.get("text", "") for b in c if isinstance(b, dict))
    return ""


class AnthropicFake(ProviderFake):
    """POST /v1/messages. base_url for the adapter: the server root (or root + "/v1")."""

    provider = "Anthropic"  # a label in replies and thread names (not the adapter name)
    unknown_model_prefix = "unknown-"

    def _routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/messages", self._messages)

    def _limit_headers(self, tokens: int) -> dict[str, str]:
        rem_req, rem_tok, reset = self._charge(tokens)
        reset_s = _rfc3339(reset)
        h = {"request-id": "req_fake0001"}
        # https://platform.claude.com/docs/en/api/rate-limits ("Response headers")
        for kind, limit, rem in (("requests", self.requests_limit, rem_req), ("tokens", self.tokens_limit, rem_tok),
                                 ("input-tokens", self.tokens_limit, rem_tok),
                                 ("output-tokens", self.tokens_limit // 5, max(0, rem_tok // 5))):
            h[f"anthropic-ratelimit-{kind}-limit"] = str(limit)
            h[f"anthropic-ratelimit-{kind}-remaining"] = str(rem)
            h[f"anthropic-ratelimit-{kind}-reset"] = reset_s
        return h

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        key = request.headers.get("x-api-key")
        if key != self.api_key:
            return _anthropic_error(401, "authentication_error", "invalid x-api-key")
        if not request.headers.get("anthropic-version"):
            return _anthropic_error(400, "invalid_request_error", "anthropic-version: header is required")
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return _anthropic_error(400, "invalid_request_error", "There was an error parsing the body of your request")
        self.requests.append(body)
        problem = _anthropic_invalid(body)
        if problem is not None:
            return _anthropic_error(400, "invalid_request_error", problem)
        if body["model"].startswith(self.unknown_model_prefix):
            return _anthropic_error(404, "not_found_error", f"model: {body['model']}")
        self.count += 1
        mode = self.next_mode()
        fault = await self._fault(request, mode)
        if fault is not None:
            return fault
        prompt = _last_user_anthropic(body)
        system = body.get("system") if isinstance(body.get("system"), str) else ""
        in_tok = _tokens(system) + sum(_tokens(m["content"]) if isinstance(m["content"], str) else 0
                                       for m in body["messages"])
        headers = self._limit_headers(in_tok)
        if mode == "429":
            headers.update({"retry-after": str(self.retry_after_s), "anthropic-ratelimit-requests-remaining": "0"})
            return _anthropic_error(429, "rate_limit_error", "Number of request tokens has exceeded your per-minute "
                                    "rate limit", headers)
        if mode == "529":
            return _anthropic_error(529, "overloaded_error", "Overloaded", headers)
        if mode in ("500", "503"):
            return _anthropic_error(int(mode), "api_error", "Internal server error", headers)
        if mode == "404":
            return _anthropic_error(404, "not_found_error", f"model: {body['model']}", headers)
        if mode == "403":
            return _anthropic_error(403, "permission_error", "Your API key does not have permission to use the "
                                    "specified resource.", headers)
        if mode == "leaky_auth":
            return _anthropic_error(401, "authentication_error", f"invalid x-api-key {key}", headers)
        if mode == "doc_example":
            return _json(ANTHROPIC_DOC_MESSAGE, headers=headers)
        if mode == "malformed_shape":
            return _json({"id": "msg_x", "type": "message", "role": "assistant", "content": "not-a-list"},
                         headers=headers)
        text = reply_text(self.provider, prompt) if mode != "echo_text" else (await _echo(request)).decode()
        stop_reason, stop_sequence = "end_turn", None
        if mode == "max_tokens":
            text, stop_reason = text[: max(1, body["max_tokens"])], "max_tokens"
        elif mode == "refusal":
            # https://platform.claude.com/docs/en/build-with-claude/handling-stop-reasons ("refusal")
            text, stop_reason = "", "refusal"
        usage: dict[str, object] = {"input_tokens": in_tok, "output_tokens": _tokens(text)}
        if mode == "cached":
            usage.update({"input_tokens": 3, "cache_creation_input_tokens": 0, "cache_read_input_tokens": in_tok})
        content = [{"type": "text", "text": text}] if text else []
        message = {"id": "msg_fake" + hashlib.blake2b(orjson.dumps(body), digest_size=6).hexdigest(),
                   "type": "message", "role": "assistant", "content": content,
                   "model": self.served_model or body["model"], "stop_reason": stop_reason,
                   "stop_sequence": stop_sequence, "usage": usage}
        if body.get("stream") is True:
            return await self._sse(request, anthropic_events(message), mode, headers)
        return _json(message, headers=headers)

    def error_event(self) -> tuple[str, object]:
        # https://platform.claude.com/docs/en/build-with-claude/streaming ("Error events")
        return "error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}


def _pieces(text: str) -> list[str]:
    return [text[i : i + 4] for i in range(0, len(text), 4)] or [""]


def anthropic_events(message: dict[str, Any]) -> list[tuple[str, object]]:
    """The Messages API stream of `message` (https://platform.claude.com/docs/en/build-with-claude/
    streaming): message_start (empty content, output_tokens 1), per content block a
    content_block_start, one text_delta per token, content_block_stop, then message_delta (stop
    reason, cumulative output_tokens) and message_stop; a ping after the first block starts."""
    usage = dict(message["usage"])
    start = {**message, "content": [], "stop_reason": None, "stop_sequence": None, "usage": {**usage, "output_tokens": 1}}
    events: list[tuple[str, object]] = [("message_start", {"type": "message_start", "message": start})]
    for i, block in enumerate(message["content"]):
        events.append(("content_block_start", {"type": "content_block_start", "index": i,
                                               "content_block": {"type": "text", "text": ""}}))
        if i == 0:
            events.append(("ping", {"type": "ping"}))
        events += [("content_block_delta", {"type": "content_block_delta", "index": i,
                                            "delta": {"type": "text_delta", "text": piece}})
                   for piece in _pieces(block["text"])]
        events.append(("content_block_stop", {"type": "content_block_stop", "index": i}))
    events.append(("message_delta", {"type": "message_delta", "delta": {"stop_reason": message["stop_reason"],
                                                                        "stop_sequence": message["stop_sequence"]},
                                     "usage": {"output_tokens": usage["output_tokens"]}}))
    events.append(("message_stop", {"type": "message_stop"}))
    return events


def gemini_events(doc: dict[str, Any]) -> list[tuple[str, object]]:
    """The `streamGenerateContent?alt=sse` stream of a GenerateContentResponse: one response per
    token of each part (partial usageMetadata), the last one with finishReason and the full usage;
    a reply without candidates (blocked prompt) or without parts is one event. No end marker."""
    candidates = doc.get("candidates")
    if not isinstance(candidates, list) or not candidates:
        return [("", doc)]
    cand = candidates[0]
    parts = (cand.get("content") or {}).get("parts") or []
    if not parts:
        return [("", doc)]
    usage = doc["usageMetadata"]
    partial = {"promptTokenCount": usage["promptTokenCount"]}
    chunks: list[dict[str, object]] = [{**p, "text": piece} for p in parts for piece in _pieces(p["text"])]
    events: list[tuple[str, object]] = []
    for k, part in enumerate(chunks):
        last = k == len(chunks) - 1
        c: dict[str, object] = {"content": {"parts": [part], "role": "model"}, "index": 0}
        if last:
            c["finishReason"] = cand["finishReason"]
        events.append(("", {"candidates": [c], "usageMetadata": usage if last else partial,
                            "modelVersion": doc["modelVersion"]}))
    return events


# -- Gemini -------------------------------------------------------------------------------------------

_GEMINI_FIELDS = frozenset({"contents", "systemInstruction", "generationConfig", "safetySettings", "tools",
                            "toolConfig", "cachedContent"})
_GEMINI_GEN_FIELDS = frozenset({"stopSequences", "responseMimeType", "responseSchema", "responseJsonSchema",
                                "responseModalities", "candidateCount", "maxOutputTokens", "temperature", "topP",
                                "topK", "seed", "presencePenalty", "frequencyPenalty", "responseLogprobs",
                                "logprobs", "thinkingConfig", "mediaResolution"})
_GEMINI_STATUS_CODE = {400: "INVALID_ARGUMENT", 403: "PERMISSION_DENIED", 404: "NOT_FOUND", 429: "RESOURCE_EXHAUSTED",
                       500: "INTERNAL", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}


def _gemini_error(code: int, message: str, details: list[dict[str, object]] | None = None,
                  status: str | None = None) -> web.Response:
    # https://ai.google.dev/gemini-api/docs/troubleshooting (HTTP code, status)
    err: dict[str, object] = {"code": code, "message": message,
                           "status": status or _GEMINI_STATUS_CODE.get(code, "UNKNOWN")}
    if details:
        err["details"] = details
    return _json({"error": err}, code)


def _gemini_invalid(body: object) -> str | None:
    if not isinstance(body, dict):
        return "Invalid JSON payload received. Expected an object."
    for field in body:
        if field not in _GEMINI_FIELDS:
            return f'Invalid JSON payload received. Unknown name "{field}": Cannot find field.'
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        return "* GenerateContentRequest.contents: contents is not specified"
    for i, c in enumerate(contents):
        if not isinstance(c, dict):
            return f"Invalid value at 'contents[{i}]'"
        if c.get("role", "user") not in ("user", "model"):
            return "Please use a valid role: user, model."
        parts = c.get("parts")
        if not isinstance(parts, list) or not parts:
            return f"* GenerateContentRequest.contents[{i}].parts: contents.parts must not be empty."
        for p in parts:
            if not isinstance(p, dict) or not isinstance(p.get("text"), str):
                return f"Invalid value at 'contents[{i}].parts': each part needs text"
    si = body.get("systemInstruction")
    if si is not None and (not isinstance(si, dict) or not isinstance(si.get("parts"), list)):
        return "Invalid value at 'system_instruction'"
    gen = body.get("generationConfig")
    if gen is not None:
        if not isinstance(gen, dict):
            return "Invalid value at 'generation_config'"
        for field in gen:
            if field not in _GEMINI_GEN_FIELDS:
                return (f"Invalid JSON payload received. Unknown name \"{field}\" at 'generation_config': "
                        "Cannot find field.")
        t = gen.get("temperature")
        if t is not None and (not isinstance(t, (int, float)) or not 0.0 <= t <= 2.0):
            return "* GenerateContentRequest.generation_config.temperature: must be in [0, 2]"
        stops = gen.get("stopSequences")
        if stops is not None and (not isinstance(stops, list) or len(stops) > 5):
            return "* GenerateContentRequest.generation_config.stop_sequences: at most 5 stop sequences"
        mot = gen.get("maxOutputTokens")
        if mot is not None and (not isinstance(mot, int) or mot < 1):
            return "* GenerateContentRequest.generation_config.max_output_tokens: must be positive"
        if "responseSchema" in gen and "responseJsonSchema" in gen:
            return "response_schema and response_json_schema cannot both be set"
        has_schema = "responseSchema" in gen or "responseJsonSchema" in gen
        if has_schema and gen.get("responseMimeType") != "application/json":
            return ("* GenerateContentRequest.generation_config.response_mime_type: must be application/json when a "
                    "response schema is set")
        schema = gen.get("responseSchema")
        if isinstance(schema, dict) and "additionalProperties" in schema:
            return ("Invalid JSON payload received. Unknown name \"additionalProperties\" at "
                    "'generation_config.response_schema': Cannot find field.")
    return None


class GeminiFake(ProviderFake):
    """POST /v1beta/models/{model}:generateContent. base_url for the adapter: the server root."""

    provider = "Gemini"
    unknown_model_prefix = "unknown-"

    def _routes(self, app: web.Application) -> None:
        app.router.add_post("/v1beta/models/{target}", self._generate)

    async def _generate(self, request: web.Request) -> web.StreamResponse:
        model, _, method = request.match_info["target"].partition(":")
        stream = method == "streamGenerateContent"
        if stream and request.query.get("alt") != "sse":
            return _gemini_error(400, "this fake streams only as server-sent events (alt=sse)")
        if method != "generateContent" and not stream:
            return _gemini_error(404, f"Method not found: {method or '(none)'}")
        key = request.headers.get("x-goog-api-key") or request.query.get("key")
        if not key:
            return _gemini_error(403, "Method doesn't allow unregistered callers (callers without established "
                                 "identity). Please use API Key or other form of API consumer identity to call this "
                                 "API.")
        if key != self.api_key:
            return _gemini_error(400, "API key not valid. Please pass a valid API key.", [
                {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID",
                 "domain": "googleapis.com", "metadata": {"service": "generativelanguage.googleapis.com"}}])
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return _gemini_error(400, "Invalid JSON payload received. Unexpected token.")
        self.requests.append(body)
        problem = _gemini_invalid(body)
        if problem is not None:
            return _gemini_error(400, problem)
        if model.startswith(self.unknown_model_prefix):
            return _gemini_error(404, f"models/{model} is not found for API version v1beta, or is not supported "
                                 "for generateContent.")
        self.count += 1
        mode = self.next_mode()
        fault = await self._fault(request, mode)
        if fault is not None:
            return fault
        prompt = ""
        for c in reversed(body["contents"]):
            if c.get("role", "user") == "user":
                prompt = "".join(p["text"] for p in c["parts"])
                break
        in_tok = sum(_tokens(p["text"]) for c in body["contents"] for p in c["parts"])
        self._charge(in_tok)
        failed = self._mode_error(mode, model, key)
        if failed is not None:
            return failed
        echoed = (await _echo(request)).decode() if mode == "echo_text" else None
        doc = self._answer(body, mode, model, prompt, in_tok, echoed)
        return await self._sse(request, gemini_events(doc), mode) if stream else _json(doc)

    def error_event(self) -> tuple[str, object]:
        return "", {"error": {"code": 503, "message": "The model is overloaded. Please try again later.",
                              "status": "UNAVAILABLE"}}

    def _mode_error(self, mode: str, model: str, key: str) -> web.Response | None:
        """The scripted error or fixed document that `mode` answers with, or None for a reply."""
        if mode == "429":
            # The live API names the wait only in the body (google.rpc.RetryInfo), never in a header.
            return _gemini_error(429, "You exceeded your current quota, please check your plan and billing details. "
                                 f"Please retry in {self.retry_after_s}s.", [
                                     {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [
                                         {"quotaMetric": "generativelanguage.googleapis.com/generate_content_requests",
                                          "quotaId": "GenerateRequestsPerMinutePerProjectPerModel"}]},
                                     {"@type": "type.googleapis.com/google.rpc.RetryInfo",
                                      "retryDelay": f"{self.retry_after_s}s"}])
        if mode in ("500", "503"):
            return _gemini_error(int(mode), "The model is overloaded. Please try again later." if mode == "503"
                                 else "An internal error has occurred.")
        if mode == "404":
            return _gemini_error(404, f"models/{model} is not found for API version v1beta.")
        if mode == "403":
            return _gemini_error(403, "Your API key doesn't have the required permissions.")
        if mode == "leaky_auth":
            return _gemini_error(400, f"API key not valid: {key}", [
                {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID"}])
        if mode == "doc_example":
            return _json(GEMINI_DOC_RESPONSE)
        if mode == "malformed_shape":
            return _json({"candidates": [{"content": {"parts": [{"text": 5}]}}]})
        return None

    def _answer(self, body: dict[str, object], mode: str, model: str, prompt: str, in_tok: int,
                text: str | None = None) -> dict[str, object]:
        """A GenerateContentResponse for `prompt`, shaped by `mode` (blocked, safety, max_tokens, ...)."""
        model_version = self.served_model or model
        usage: dict[str, int] = {"promptTokenCount": in_tok}
        prompt_only = {**usage, "totalTokenCount": in_tok}  # usage of a reply without candidates
        if mode == "blocked":
            # https://ai.google.dev/api/generate-content#PromptFeedback: no candidates at all
            return {"promptFeedback": {"blockReason": "SAFETY", "safetyRatings": [
                {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH"}]},
                "usageMetadata": prompt_only, "modelVersion": model_version}
        if mode in ("safety", "recitation", "prohibited"):
            reason = {"safety": "SAFETY", "recitation": "RECITATION", "prohibited": "PROHIBITED_CONTENT"}[mode]
            return {"candidates": [{"finishReason": reason, "index": 0, "safetyRatings": [
                {"category": "HARM_CATEGORY_HARASSMENT", "probability": "HIGH", "blocked": True}]}],
                "usageMetadata": prompt_only, "modelVersion": model_version}
        text = text if text is not None else reply_text(self.provider, prompt)
        finish = "STOP"
        gen = body.get("generationConfig")
        if mode == "max_tokens":
            limit = gen.get("maxOutputTokens", 1) if isinstance(gen, dict) else 1
            text, finish = text[: max(1, limit)], "MAX_TOKENS"
        parts: list[dict[str, object]] = [{"text": text}]
        usage["candidatesTokenCount"] = _tokens(text)
        if mode == "thinking":
            parts.insert(0, {"text": "Let me think about this step by step.", "thought": True})
            usage["thoughtsTokenCount"] = 37
        if mode == "cached":
            usage["cachedContentTokenCount"] = in_tok
        usage["totalTokenCount"] = sum(v for v in usage.values())
        candidate = {"content": {"parts": parts, "role": "model"}, "finishReason": finish, "index": 0}
        return {"candidates": [candidate], "usageMetadata": usage, "modelVersion": model_version,
                "responseId": hashlib.blake2b(orjson.dumps(body), digest_size=6).hexdigest()}


# -- OpenAI reasoning models --------------------------------------------------------------------------

_REASONING_PREFIXES = ("o1", "o3", "o4", "gpt-5")


def _openai_error(status: int, message: str, type_: str, code: str | None, param: str | None = None,
                  headers: dict[str, str] | None = None) -> web.Response:
    # https://platform.openai.com/docs/guides/error-codes
    return _json({"error": {"message": message, "type": type_, "param": param, "code": code}}, status, headers)


class OpenAIReasoningFake(ProviderFake):
    """POST /v1/chat/completions with the reasoning-model rules. base_url: root + "/v1"."""

    provider = "OpenAI"

    def _routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/chat/completions", self._chat)

    def _limit_headers(self, tokens: int) -> dict[str, str]:
        rem_req, rem_tok, reset = self._charge(tokens)
        left = max(0.0, reset - time.time())
        # https://platform.openai.com/docs/guides/rate-limits ("Rate limits in headers")
        return {"x-ratelimit-limit-requests": str(self.requests_limit),
                "x-ratelimit-limit-tokens": str(self.tokens_limit),
                "x-ratelimit-remaining-requests": str(rem_req), "x-ratelimit-remaining-tokens": str(rem_tok),
                "x-ratelimit-reset-requests": f"{int(left // 60)}m{left % 60:.0f}s",
                "x-ratelimit-reset-tokens": f"{int(left * 1000)}ms"}

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        auth = request.headers.get("Authorization", "")
        key = auth.removeprefix("Bearer ")
        if key != self.api_key:
            masked = f"{key[:3]}...{key[-4:]}" if len(key) > 8 else "***"
            return _openai_error(401, f"Incorrect API key provided: {masked}. You can find your API key at "
                                 "https://platform.openai.com/account/api-keys.", "invalid_request_error",
                                 "invalid_api_key")
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return _openai_error(400, "We could not parse the JSON body of your request.", "invalid_request_error",
                                 None)
        self.requests.append(body)
        model = str(body.get("model", ""))
        if model.startswith(_REASONING_PREFIXES):
            if "max_tokens" in body:
                return _openai_error(400, "Unsupported parameter: 'max_tokens' is not supported with this model. "
                                     "Use 'max_completion_tokens' instead.", "invalid_request_error",
                                     "unsupported_parameter", "max_tokens")
            for field in ("temperature", "top_p"):
                if field in body and body[field] != 1:
                    return _openai_error(400, f"Unsupported value: '{field}' does not support {body[field]} with this "
                                         "model. Only the default (1) value is supported.", "invalid_request_error",
                                         "unsupported_value", field)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return _openai_error(400, "'messages' must be a non-empty array.", "invalid_request_error", None,
                                 "messages")
        self.count += 1
        mode = self.next_mode()
        fault = await self._fault(request, mode)
        if fault is not None:
            return fault
        prompt = next((m.get("content", "") for m in reversed(messages) if m.get("role") == "user"), "")
        in_tok = sum(_tokens(str(m.get("content", ""))) for m in messages)
        headers = self._limit_headers(in_tok)
        if mode == "429":
            headers.update({"retry-after": str(self.retry_after_s), "x-ratelimit-remaining-requests": "0"})
            return _openai_error(429, "Rate limit reached for requests", "requests", "rate_limit_exceeded",
                                 headers=headers)
        if mode == "doc_example":
            return _json(OPENAI_DOC_REASONING_COMPLETION, headers=headers)
        text, finish, reasoning = reply_text(self.provider, str(prompt)), "stop", 64
        if mode == "echo_text":
            text = (await _echo(request)).decode()
        if mode == "length_empty":
            # All of max_completion_tokens went to reasoning: empty content, finish_reason "length".
            text, finish = "", "length"
            reasoning = int(body.get("max_completion_tokens") or 64)
        completion = _tokens(text) + reasoning
        return _json({
            "id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()),
            "model": self.served_model or model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text, "refusal": None},
                         "finish_reason": finish}],
            "usage": {"prompt_tokens": in_tok, "completion_tokens": completion, "total_tokens": in_tok + completion,
                      "prompt_tokens_details": {"cached_tokens": 0},
                      "completion_tokens_details": {"reasoning_tokens": reasoning}},
        }, headers=headers)


# -- running ------------------------------------------------------------------------------------------


def _runner(app: web.Application) -> web.AppRunner:
    return web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)


class Served(Protocol):
    """What `start_fake` and `run_in_thread` serve: a fake's app, and a label for its thread."""

    app: web.Application
    provider: str


async def start_fake(fake: Served, host: str = "127.0.0.1") -> tuple[web.AppRunner, str]:
    """Serve `fake` in the running loop on a free port; returns (runner, root URL without a path).
    Stop with `await runner.cleanup()`."""
    runner = _runner(fake.app)
    await runner.setup()
    site = web.TCPSite(runner, host, 0)
    await site.start()
    return runner, f"http://{host}:{runner.addresses[0][1]}"


@contextmanager
def run_in_thread(fake: Served, host: str = "127.0.0.1") -> Iterator[str]:
    """Serve `fake` from a background thread (for tests that run the engine as a subprocess);
    yields the root URL. Attributes (`mode`, `script()`) may be changed from the test thread."""
    loop = asyncio.new_event_loop()
    started = threading.Event()
    served: list[tuple[web.AppRunner, str]] = []
    failed: list[BaseException] = []

    def serve() -> None:
        asyncio.set_event_loop(loop)
        try:
            served.append(loop.run_until_complete(start_fake(fake, host)))
        except BaseException as exc:  # pragma: no cover - surfaced below
            failed.append(exc)
            started.set()
            return
        started.set()
        loop.run_forever()
        loop.run_until_complete(served[0][0].cleanup())
        loop.close()

    thread = threading.Thread(target=serve, name=f"fake-{fake.provider}", daemon=True)
    thread.start()
    started.wait(10)
    if failed:
        raise failed[0]
    try:
        yield served[0][1]
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
