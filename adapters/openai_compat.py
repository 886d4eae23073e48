"""OpenAI-compatible Chat Completions over aiohttp.

Works unchanged against OpenAI, vLLM's server, llama.cpp's server and other compatible endpoints:
POST {base_url}/chat/completions, Bearer auth, `choices[0].message.content`, `finish_reason`,
`usage`. One aiohttp session per lane, with a keep-alive pool at least as large as the lane's
concurrency. Errors are classified for the scheduler (see engine.core.adapter.AdapterError); transport
and status mapping are shared with the other HTTP adapters (adapters.http). Every reply's
`x-ratelimit-*` headers land in `last_signal` (adapters.ratelimit_headers).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Mapping
from typing import TYPE_CHECKING, Annotated, Any

import msgspec
import orjson

from adapters.http import error_for_status, load_transport, new_session, open_connections, post_reply
from adapters.openai_batch import OpenAIBatches
from adapters.ratelimit_headers import LimitSignal, parse_openai
from adapters.registry import BuildContext, Built, Capabilities, adapter
from adapters.sse import Event, cut_short, event_object, post_sse, stream_reader
from engine.core.adapter import AdapterError, ReadReply
from engine.core.config import AdapterOptions
from engine.core.records import ErrorKind, FinishReason, GenParams, Message, Response, Usage
from engine.core.retry import parse_retry_after
from engine.core.secrets import redact, remember

if TYPE_CHECKING:
    import aiohttp

_FINISH: dict[str, FinishReason] = {"stop": "stop", "length": "length", "content_filter": "content_filter",
           "tool_calls": "stop", "function_call": "stop", "eos": "stop"}


def openai_body(model: str, messages: tuple[Message, ...], params: GenParams,
                *, reasoning: bool = False) -> dict[str, object]:
    """The request body. Reasoning models (o-series, gpt-5*) take `max_completion_tokens` and
    reject a non-default temperature/top_p, so those are left out for them."""
    if len(messages) == 1:  # the usual item: the same list without a comprehension's frame
        only = messages[0]
        wire = [{"role": only.role, "content": only.content}]
    else:
        wire = [{"role": m.role, "content": m.content} for m in messages]
    body: dict[str, object] = {"model": model, "messages": wire}
    if params.max_tokens is not None:
        body["max_completion_tokens" if reasoning else "max_tokens"] = params.max_tokens
    if not reasoning:
        if params.temperature is not None:
            body["temperature"] = params.temperature
        if params.top_p is not None:
            body["top_p"] = params.top_p
    if params.seed is not None:
        body["seed"] = params.seed
    if params.stop:
        body["stop"] = list(params.stop)
    if params.json_schema is not None:
        body["response_format"] = {"type": "json_schema", "json_schema": params.json_schema}
    return body


def _error_message(raw: bytes) -> str:
    try:
        data = orjson.loads(raw)
        err = data.get("error") if isinstance(data, dict) else None
        if isinstance(err, dict):
            return str(err.get("message") or err)[:500]
        if isinstance(err, str):
            return err[:500]
        if isinstance(data, dict) and "message" in data:
            return str(data["message"])[:500]
    except (orjson.JSONDecodeError, TypeError):
        pass
    return raw[:300].decode("utf-8", "replace")


def classify_status(status: int, raw: bytes, headers: Mapping[str, str], secrets: tuple[str, ...]) -> AdapterError:
    message = _error_message(raw)
    # OpenAI answers a request larger than the whole per-minute limit with a 429 that no wait can
    # cure ("Request too large for gpt-4o ... on tokens per min (TPM): Limit 30000, Requested
    # 30601. The input or output tokens must be reduced ..."): final, not a retry loop.
    kind: ErrorKind | None = "fatal" if status == 429 and "request too large" in message.lower() else None
    return error_for_status(status, message, secrets=secrets, retry_after=parse_retry_after(headers), kind=kind)


# orjson reads an integer beyond 64 bits as a float; the typed path leaves such counts to the dict walk
# (msgspec bounds must fit an int64; no real count comes near 2**63)
_Count = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]


class _Message(msgspec.Struct):
    content: str | None = None


class _Choice(msgspec.Struct):
    message: _Message | None = None
    finish_reason: str | None = None


class _CompletionDetails(msgspec.Struct):
    reasoning_tokens: _Count | None = None


class _PromptDetails(msgspec.Struct):
    cached_tokens: _Count | None = None


class _Usage(msgspec.Struct):
    prompt_tokens: _Count | None = None
    completion_tokens: _Count | None = None
    completion_tokens_details: _CompletionDetails | None = None
    prompt_tokens_details: _PromptDetails | None = None


class _Completion(msgspec.Struct):
    choices: list[_Choice]
    usage: _Usage | None = None
    model: str | None = None


_completion = msgspec.json.Decoder(_Completion)


def _micros(seconds: float) -> float:
    """`seconds` to the microsecond: round(seconds, 6) goes through a decimal string, ~1 us per
    reply on the benchmark machine against 0.2 us for this (which may round a half-microsecond up
    where round() rounds it down: latency is not measured that finely)."""
    return int(seconds * 1e6 + 0.5) / 1e6


def parse_chat_response(raw: bytes, latency: float) -> Response:
    """The Response of a 200 reply. A reply of the usual shape (a string content, integer usage)
    is read by a typed decoder, 2-3 us less per reply than a dict walk; any other shape takes
    the general path below, which alone decides what is malformed."""
    try:
        doc = _completion.decode(raw)
    except msgspec.DecodeError:  # ValidationError included
        doc = None
    if doc is not None and doc.choices:
        choice = doc.choices[0]
        if choice.message is not None and choice.message.content is not None:
            u = doc.usage
            usage = Usage() if u is None else Usage(
                prompt_tokens=u.prompt_tokens or 0, completion_tokens=u.completion_tokens or 0,
                reasoning_tokens=(u.completion_tokens_details.reasoning_tokens
                                  if u.completion_tokens_details is not None else None),
                cached_tokens=u.prompt_tokens_details.cached_tokens if u.prompt_tokens_details is not None else None)
            return Response(text=choice.message.content, finish_reason=_FINISH.get(choice.finish_reason or "stop", "stop"),
                            usage=usage, latency_s=_micros(latency), server_model=doc.model)
    return _parse_chat_dict(raw, latency)


def _parse_chat_dict(raw: bytes, latency: float) -> Response:
    try:
        data = orjson.loads(raw)
        choice = data["choices"][0]
        message = choice.get("message") or {}
        text = message.get("content")
        finish = choice.get("finish_reason") or "stop"
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, AttributeError):
        # A proxy may answer 200 with the request echoed, key and all.
        raise AdapterError("malformed", redact(f"response body is not a chat completion: {raw[:120]!r}")) from None
    if text is None:
        # A refusal field (OpenAI structured outputs) or a filtered choice with no content.
        refusal = message.get("refusal")
        if refusal is None and finish != "content_filter":
            text = ""
        else:
            text, finish = refusal or "", "content_filter"
    if not isinstance(text, str):
        raise AdapterError("malformed", "message.content is not a string")
    usage_raw = data.get("usage") or {}
    details = usage_raw.get("completion_tokens_details") or {}
    prompt_details = usage_raw.get("prompt_tokens_details") or {}
    usage = Usage(
        prompt_tokens=int(usage_raw.get("prompt_tokens") or 0),
        completion_tokens=int(usage_raw.get("completion_tokens") or 0),
        reasoning_tokens=details.get("reasoning_tokens"),
        cached_tokens=prompt_details.get("cached_tokens"),
    )
    return Response(text=text, finish_reason=_FINISH.get(finish, "stop"), usage=usage,
                    latency_s=_micros(latency), server_model=data.get("model"))


def _chunk(data: bytes) -> dict[str, Any]:
    obj = event_object(data, "a chat completion chunk")
    if isinstance(obj.get("error"), dict | str) or obj.get("object") == "error":
        # vLLM and llama.cpp report a failure after the 200 as one `data: {"error": ...}` event
        # (older vLLM: `{"object": "error", "message": ...}`).
        raise AdapterError("transient", redact(f"error mid-stream: {_error_message(data)}"))
    return obj


def stream_document(events: list[Event]) -> tuple[dict[str, object], list[float]]:
    """The chat completion that a stream of `chat.completion.chunk` events adds up to (what the
    non-streamed reply would have been) and the arrival time of each non-empty text piece."""
    text: list[str] = []
    refusal: list[str] = []
    marks: list[float] = []
    finish: object = None
    usage: object = None
    model: object = None
    done = False
    for ev in events:
        if ev.data == b"[DONE]":
            done = True
            break
        obj = _chunk(ev.data)
        model = obj.get("model", model)
        if obj.get("usage"):
            usage = obj["usage"]
        choices = obj.get("choices")
        if not isinstance(choices, list) or not choices:
            continue
        choice = choices[0]
        delta = choice.get("delta") or {}
        piece = delta.get("content")
        if isinstance(piece, str) and piece:
            text.append(piece)
            marks.append(ev.at)
        if isinstance(delta.get("refusal"), str):
            refusal.append(delta["refusal"])
        finish = choice.get("finish_reason") or finish
    if not done:
        raise cut_short("its `data: [DONE]` line")
    message: dict[str, object] = {"content": "".join(text) if text or not refusal else None}
    if refusal:
        message["refusal"] = "".join(refusal)
    return {"model": model, "choices": [{"message": message, "finish_reason": finish}], "usage": usage}, marks


class OpenAIChat(OpenAIBatches):
    """Adapter for one lane. `session` may be injected (tests); otherwise one is made lazily.
    With `stream`, every `send` is streamed (`send_streamed`). Batch lanes use the Batch API at
    the same base_url (adapters/openai_batch.py)."""

    def __init__(self, *, base_url: str, model: str, api_key: str | None, concurrency: int,
                 reasoning: bool | None = None, session: aiohttp.ClientSession | None = None,
                 stream: bool = False) -> None:
        self.base = base_url.rstrip("/")
        self.url = self.base + "/chat/completions"
        self.model = model
        self.stream = stream
        self.reasoning = reasoning if reasoning is not None else model.startswith(("o1", "o3", "o4", "gpt-5"))
        self._secrets = (api_key,) if api_key else ()
        remember(api_key)  # removed from everything written, even when not read through api_key_env
        self._auth = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._headers = {"Content-Type": "application/json", **self._auth}
        self._concurrency = concurrency
        load_transport()
        self._session = session
        self._owns_session = session is None
        self.last_signal: LimitSignal | None = None  # from the latest reply's x-ratelimit-* headers

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = new_session(self._concurrency, stamp_sends=self.stream)
        return self._session

    def point_at(self, base_url: str) -> None:
        """Send to a server whose address is known only once it runs (local servers)."""
        self.base = base_url.rstrip("/")
        self.url = self.base + "/chat/completions"

    def _status_error(self, status: int, raw: bytes, headers: Mapping[str, str]) -> AdapterError:
        return classify_status(status, raw, headers, self._secrets)

    def _chat_response(self, raw: bytes) -> Response:
        return parse_chat_response(raw, 0.0)

    def build_body(self, messages: tuple[Message, ...], params: GenParams) -> dict[str, object]:
        return openai_body(self.model, messages, params, reasoning=self.reasoning)

    def send(self, body: dict[str, object], timeout: float) -> Coroutine[object, object, Response]:
        """A plain function handing back the exchange's coroutine, whose reply `_reply` reads: one
        coroutine frame fewer per request than awaiting it here."""
        if self.stream:
            return self.send_streamed(body, timeout)
        return post_reply(self._get_session(), self.url, orjson.dumps(body), self._headers, timeout, self._secrets,
                          self._reply)

    def _reply(self, status: int, raw: bytes, headers: Mapping[str, str], latency: float) -> Response:
        self.last_signal = parse_openai(headers)
        if status != 200:
            raise classify_status(status, raw, headers, self._secrets)
        return parse_chat_response(raw, latency)

    async def send_streamed(self, body: dict[str, object], timeout: float,
                            marks: list[float] | None = None, sent: list[float] | None = None,
                            not_before: asyncio.Future[None] | None = None) -> Response:
        return (await self.stream_reply(body, timeout, sent, not_before))(marks)

    async def stream_reply(self, body: dict[str, object], timeout: float, sent: list[float] | None = None,
                           not_before: asyncio.Future[None] | None = None) -> ReadReply:
        wire = {**body, "stream": True, "stream_options": {"include_usage": True}}
        got = await post_sse(self._get_session(), self.url, orjson.dumps(wire), self._headers, timeout,
                             self._secrets, sent, not_before)
        self.last_signal = parse_openai(got.headers)
        if got.status != 200:
            raise classify_status(got.status, got.raw, got.headers, self._secrets)
        return stream_reader(got, stream_document, parse_chat_response)

    async def open_connections(self, n: int, timeout: float) -> int:
        return await open_connections(self._get_session(), self.url, self._headers, n, timeout)

    async def aclose(self) -> None:
        if self._session is not None and self._owns_session:
            await self._session.close()
        self._session = None


# Defaults for `run --model openai:MODEL`: OpenAI's usage tier 1 (the lowest paid tier) allows
# 500 RPM and 30,000 TPM on gpt-4o / gpt-4.1 / o1 (gpt-4o-mini: 200,000 TPM); the lowest of the chat
# models is taken, so no tier-1 account is over its limit (https://platform.openai.com/docs/guides/
# rate-limits, "Usage tiers"; per-model limits on https://platform.openai.com/settings/organization/limits).
# Override with --model-arg tokens_per_minute=... for a higher tier.
@adapter("openai", required={"base_url": "e.g. https://api.openai.com/v1"},
         caps=Capabilities(rate_limit_headers="openai", streaming=True, chat_completions=True, batch_api=True,
                           batch_windows=("24h",),  # completion_window: "Currently only 24h is supported"
                           batch_price_factor=0.5,  # "a 50% cost discount" (https://platform.openai.com/docs/guides/batch)
                           default_base_url="https://api.openai.com/v1",
                           default_api_key_env="OPENAI_API_KEY", default_requests_per_minute=500,
                           default_tokens_per_minute=30_000, tokenizer="tiktoken"))
def build_openai(ctx: BuildContext[AdapterOptions]) -> Built:
    assert ctx.model.base_url  # required by the entry: checked when the config is read
    return Built(OpenAIChat(base_url=ctx.model.base_url, model=ctx.model_id, api_key=ctx.api_key(),
                            concurrency=ctx.model.concurrency(), stream=ctx.model.stream))
