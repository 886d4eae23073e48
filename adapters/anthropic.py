"""Anthropic Messages API over aiohttp.

Wire format (https://platform.claude.com/docs/en/api/messages/create):
  POST {base}/v1/messages, headers `x-api-key`, `anthropic-version: 2023-06-01`,
  `content-type: application/json`; body `model`, `max_tokens` (required), `system` (a top-level
  string: the API has no "system" message role), `messages` of user/assistant turns,
  `temperature`, `top_p`, `stop_sequences`. Unknown fields are rejected ("Extra inputs are not
  permitted"), so nothing is sent that the API does not define (no seed, no response_format).
  The reply's `content` is a list of blocks; text is the concatenation of `{"type":"text"}` blocks
  (thinking and tool blocks are skipped). `stop_reason`
  (https://platform.claude.com/docs/en/build-with-claude/handling-stop-reasons): end_turn,
  stop_sequence, tool_use, pause_turn -> "stop"; max_tokens, model_context_window_exceeded ->
  "length"; refusal -> "content_filter" (a Response, never an error).
  `usage`: input_tokens (uncached input only), output_tokens, cache_creation_input_tokens,
  cache_read_input_tokens; prompt_tokens here is their input sum, so that it means the same as
  OpenAI's prompt_tokens, and cached_tokens is cache_read_input_tokens.

Errors (https://platform.claude.com/docs/en/api/errors): `{"type":"error","error":{"type","message"},
"request_id"}` with 400 invalid_request_error, 401 authentication_error, 403 permission_error,
404 not_found_error, 413 request_too_large, 429 rate_limit_error (with `retry-after`), 500 api_error,
529 overloaded_error; classified by adapters.http.error_for_status.

Rate-limit headers (https://platform.claude.com/docs/en/api/rate-limits) of every reply land in
`last_signal`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import orjson

from adapters.anthropic_batch import AnthropicBatches
from adapters.http import error_for_status, load_transport, new_session, open_connections, post_json
from adapters.ratelimit_headers import LimitSignal, parse_anthropic
from adapters.registry import BuildContext, Built, Capabilities, adapter
from adapters.sse import Event, cut_short, event_object, post_sse, stream_reader
from engine.core.adapter import AdapterError, ReadReply
from engine.core.config import AdapterOptions
from engine.core.records import GenParams, Message, Response, Usage
from engine.core.retry import parse_retry_after
from engine.core.secrets import redact, remember

if TYPE_CHECKING:
    import aiohttp

__all__ = ["ANTHROPIC_VERSION", "DEFAULT_BASE_URL", "DEFAULT_MAX_TOKENS", "AnthropicMessages",
           "anthropic_body", "build_anthropic", "anthropic_error_message", "parse_messages_response"]

ANTHROPIC_VERSION = "2023-06-01"
DEFAULT_BASE_URL = "https://api.anthropic.com"
# `max_tokens` is required by the API; used when the config leaves it unset.
DEFAULT_MAX_TOKENS = 1024

_STOP = {"end_turn": "stop", "stop_sequence": "stop", "tool_use": "stop", "pause_turn": "stop",
         "max_tokens": "length", "model_context_window_exceeded": "length", "refusal": "content_filter"}


def _merge_turns(messages: tuple[Message, ...]) -> tuple[str, list[dict[str, str]]]:
    """System messages -> one top-level string; the rest -> alternating user/assistant turns
    (consecutive same-role messages joined with a blank line, as the API itself would combine them)."""
    system: list[str] = []
    turns: list[dict[str, str]] = []
    for m in messages:
        if m.role in ("system", "developer"):
            system.append(m.content)
            continue
        role = "assistant" if m.role == "assistant" else "user"
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"] += "\n\n" + m.content
        else:
            turns.append({"role": role, "content": m.content})
    return "\n\n".join(system), turns


def anthropic_body(model: str, messages: tuple[Message, ...], params: GenParams) -> dict[str, object]:
    """The request body (pure). Newer Claude models reject `temperature` and `top_p` together
    ("cannot both be specified for this model. Please use only one"), so when both are set only
    `temperature` is sent. `seed` and `json_schema` have no Messages API field and are left out
    (pillars parse free text where the provider cannot constrain it)."""
    system, turns = _merge_turns(messages)
    body: dict[str, object] = {"model": model,
                               "max_tokens": params.max_tokens if params.max_tokens is not None else DEFAULT_MAX_TOKENS,
                               "messages": turns}
    if system:
        body["system"] = system
    if params.temperature is not None:
        body["temperature"] = params.temperature
    elif params.top_p is not None:
        body["top_p"] = params.top_p
    if params.stop:
        body["stop_sequences"] = list(params.stop)
    return body


def anthropic_error_message(raw: bytes) -> str:
    """`error.message` (with `error.type`) of an Anthropic error body, else the start of the body."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw[:300].decode("utf-8", "replace")
    err = data.get("error") if isinstance(data, dict) else None
    if isinstance(err, dict):
        kind, message = err.get("type"), err.get("message")
        text = f"{kind}: {message}" if kind and message else str(message or kind or err)
        return text[:500]
    return raw[:300].decode("utf-8", "replace")


def parse_messages_response(raw: bytes, latency: float) -> Response:
    try:
        data = orjson.loads(raw)
        if data.get("type") not in (None, "message"):
            raise TypeError(data.get("type"))
        blocks = data["content"]
        if not isinstance(blocks, list):
            raise TypeError("content")
        parts: list[str] = []
        for b in blocks:
            if b.get("type") == "text":
                if not isinstance(b.get("text"), str):
                    raise TypeError("text")
                parts.append(b["text"])
        stop_reason = data.get("stop_reason")
        usage_raw = data.get("usage") or {}
        uncached = int(usage_raw.get("input_tokens") or 0)
        cache_write = int(usage_raw.get("cache_creation_input_tokens") or 0)
        cache_read = usage_raw.get("cache_read_input_tokens")
        usage = Usage(prompt_tokens=uncached + cache_write + int(cache_read or 0),
                      completion_tokens=int(usage_raw.get("output_tokens") or 0),
                      cached_tokens=None if cache_read is None else int(cache_read))
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
        # A proxy may answer 200 with the request echoed, key and all.
        raise AdapterError("malformed", redact(f"response body is not a Messages API message: {raw[:120]!r}")) from None
    model = data.get("model")
    finish = _STOP.get(stop_reason or "end_turn", "stop")
    return Response(text="".join(parts), finish_reason=finish,  # type: ignore[arg-type]
                    usage=usage, latency_s=round(latency, 6),
                    server_model=model if isinstance(model, str) else None)


def _event(ev: Event) -> dict[str, Any]:
    obj = event_object(ev.data, "a Messages API event")
    if obj.get("type") == "error":
        # An error after the 200 (overloaded_error, api_error): the attempt failed, try again.
        raise AdapterError("transient", redact(f"error mid-stream: {anthropic_error_message(ev.data)}"))
    return obj


def stream_document(events: list[Event]) -> tuple[dict[str, object], list[float]]:
    """The Message that a stream of Messages API events adds up to (message_start's message, the
    text of each content block from its content_block_delta events, message_delta's stop_reason
    and usage) and the arrival time of each non-empty text delta."""
    message: dict[str, Any] | None = None
    blocks: dict[int, dict[str, Any]] = {}
    marks: list[float] = []
    stopped = False
    for ev in events:
        obj = _event(ev)
        kind = obj.get("type")
        if kind == "message_start" and isinstance(obj.get("message"), dict):
            message = dict(obj["message"])
        elif kind == "content_block_start" and isinstance(obj.get("content_block"), dict):
            blocks[int(obj.get("index") or 0)] = dict(obj["content_block"])
        elif kind == "content_block_delta":
            delta = obj.get("delta") or {}
            piece = delta.get("text") if isinstance(delta, dict) and delta.get("type") == "text_delta" else None
            if isinstance(piece, str) and piece:
                block = blocks.setdefault(int(obj.get("index") or 0), {"type": "text", "text": ""})
                block["text"] = str(block.get("text") or "") + piece
                marks.append(ev.at)
        elif kind == "message_delta" and message is not None:
            delta = obj.get("delta") or {}
            if isinstance(delta, dict):
                message.update({k: v for k, v in delta.items() if k in ("stop_reason", "stop_sequence")})
            if isinstance(obj.get("usage"), dict):  # cumulative counts
                message["usage"] = {**(message.get("usage") or {}), **obj["usage"]}
        elif kind == "message_stop":
            stopped = True
    if message is None or not stopped:
        raise cut_short("its message_stop event")
    message["content"] = [blocks[i] for i in sorted(blocks)]
    return message, marks


class AnthropicMessages(AnthropicBatches):
    """Adapter for one lane. `base_url` may end in `/v1` or not; `session` may be injected (tests).
    Batch lanes use the Message Batches API at the same base (adapters/anthropic_batch.py)."""

    def __init__(self, *, model: str, api_key: str | None, concurrency: int, base_url: str | None = None,
                 session: aiohttp.ClientSession | None = None, stream: bool = False) -> None:
        base = (base_url or DEFAULT_BASE_URL).rstrip("/")
        self.url = base + ("/messages" if base.endswith("/v1") else "/v1/messages")
        self.model = model
        self.stream = stream
        self._secrets = (api_key,) if api_key else ()
        remember(api_key)  # removed from everything written, even when not read through api_key_env
        self._headers = {"content-type": "application/json", "anthropic-version": ANTHROPIC_VERSION}
        if api_key:
            self._headers["x-api-key"] = api_key
        self._concurrency = concurrency
        load_transport()
        self._session = session
        self._owns_session = session is None
        self.last_signal: LimitSignal | None = None  # from the latest reply's anthropic-ratelimit-* headers

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = new_session(self._concurrency, stamp_sends=self.stream)
        return self._session

    def build_body(self, messages: tuple[Message, ...], params: GenParams) -> dict[str, object]:
        return anthropic_body(self.model, messages, params)

    def _message(self, raw: bytes) -> Response:
        return parse_messages_response(raw, 0.0)

    def _status_error(self, status: int, raw: bytes, headers: Mapping[str, str]) -> AdapterError:
        return error_for_status(status, anthropic_error_message(raw), secrets=self._secrets,
                                retry_after=parse_retry_after(headers))

    async def send(self, body: dict[str, object], timeout: float) -> Response:
        if self.stream:
            return await self.send_streamed(body, timeout)
        session = self._get_session()
        start = time.perf_counter()
        status, raw, headers = await post_json(session, self.url, orjson.dumps(body), self._headers, timeout,
                                               self._secrets)
        self.last_signal = parse_anthropic(headers)
        if status != 200:
            raise error_for_status(status, anthropic_error_message(raw), secrets=self._secrets,
                                   retry_after=parse_retry_after(headers))
        return parse_messages_response(raw, time.perf_counter() - start)

    async def send_streamed(self, body: dict[str, object], timeout: float,
                            marks: list[float] | None = None, sent: list[float] | None = None,
                            not_before: asyncio.Future[None] | None = None) -> Response:
        return (await self.stream_reply(body, timeout, sent, not_before))(marks)

    async def stream_reply(self, body: dict[str, object], timeout: float, sent: list[float] | None = None,
                           not_before: asyncio.Future[None] | None = None) -> ReadReply:
        got = await post_sse(self._get_session(), self.url, orjson.dumps({**body, "stream": True}), self._headers,
                             timeout, self._secrets, sent, not_before)
        self.last_signal = parse_anthropic(got.headers)
        if got.status != 200:
            raise error_for_status(got.status, anthropic_error_message(got.raw), secrets=self._secrets,
                                   retry_after=parse_retry_after(got.headers))
        return stream_reader(got, stream_document, parse_messages_response)

    async def open_connections(self, n: int, timeout: float) -> int:
        return await open_connections(self._get_session(), self.url, self._headers, n, timeout)

    async def aclose(self) -> None:
        if self._session is not None and self._owns_session:
            await self._session.close()
        self._session = None


# Defaults for `run --model anthropic:MODEL`: Anthropic's tier 1 (the lowest paid tier) allows
# 50 RPM and, for Claude Sonnet 4.x, 30,000 input tokens per minute (8,000 output tokens per minute,
# charged from max_tokens when a request starts); our one token window takes the input limit and the
# anthropic-ratelimit-* headers slow the lane before the output limit is hit
# (https://docs.claude.com/en/api/rate-limits, "Rate limits" table, Tier 1).
@adapter("anthropic", caps=Capabilities(rate_limit_headers="anthropic", streaming=True, batch_api=True,
                                        batch_windows=("24h",),  # no window to choose: a batch runs for up to 24 h
                                        # "50% of standard API prices" (https://platform.claude.com/docs/en/build-with-claude/batch-processing)
                                        batch_price_factor=0.5,
                                        default_api_key_env="ANTHROPIC_API_KEY",
                                        default_requests_per_minute=50, default_tokens_per_minute=30_000))
def build_anthropic(ctx: BuildContext[AdapterOptions]) -> Built:
    return Built(AnthropicMessages(model=ctx.model_id, api_key=ctx.api_key(), base_url=ctx.model.base_url,
                                   concurrency=ctx.model.concurrency(), stream=ctx.model.stream))
