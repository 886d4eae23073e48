"""Google Gemini API `generateContent` over aiohttp.

Wire format (https://ai.google.dev/api/generate-content):
  POST {base}/v1beta/models/{model}:generateContent with header `x-goog-api-key` (never the
  `?key=` query, which would put the key in URLs and logs); body
  `contents: [{role: "user"|"model", parts: [{text}]}]`, `systemInstruction: {parts: [{text}]}`,
  `generationConfig: {temperature, topP, maxOutputTokens, seed, stopSequences, responseMimeType,
  responseJsonSchema}`. Field names are camelCase; the API rejects unknown ones ("Invalid JSON
  payload received. Unknown name ...").
  Structured output: our schemas are JSON Schema (OpenAI style, with additionalProperties), so they
  go as `responseJsonSchema` with `responseMimeType: "application/json"`
  (https://ai.google.dev/gemini-api/docs/structured-output), not the OpenAPI-subset
  `responseSchema`, which rejects additionalProperties.

Reply: `candidates[0].content.parts[].text` (parts with `thought: true` are the model's thinking
and are skipped), `candidates[0].finishReason`: STOP -> "stop", MAX_TOKENS -> "length", SAFETY,
RECITATION, BLOCKLIST, PROHIBITED_CONTENT, SPII, IMAGE_SAFETY, LANGUAGE, OTHER -> "content_filter".
A prompt blocked outright has no candidates and `promptFeedback.blockReason`: that too is a
Response with finish_reason "content_filter", never an error. `usageMetadata`: promptTokenCount
(cached content included), candidatesTokenCount, thoughtsTokenCount (thinking models; counted in
completion_tokens and reported as reasoning_tokens, as OpenAI does), cachedContentTokenCount.
`modelVersion` is the server model.

Errors (https://ai.google.dev/gemini-api/docs/troubleshooting,
https://ai.google.dev/gemini-api/docs/generate-content/api-errors):
`{"error": {"code", "message", "status", "details"}}`: 400 INVALID_ARGUMENT / FAILED_PRECONDITION,
403 PERMISSION_DENIED, 404 NOT_FOUND, 429 RESOURCE_EXHAUSTED, 500 INTERNAL, 503 UNAVAILABLE,
504 DEADLINE_EXCEEDED. A wrong key is a 400 INVALID_ARGUMENT whose details carry
`google.rpc.ErrorInfo` reason API_KEY_INVALID: classified as auth. A 429 names its wait in a
`google.rpc.RetryInfo` detail (`retryDelay: "47.43s"`), not in a header. Gemini sends no rate-limit
headers, so `last_signal` stays None.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import orjson

from adapters.gemini_batch import GeminiBatches
from adapters.http import error_for_status, load_transport, new_session, open_connections, post_json
from adapters.ratelimit_headers import LimitSignal, parse_duration
from adapters.registry import BuildContext, Built, Capabilities, adapter
from adapters.sse import Event, cut_short, event_object, post_sse, stream_reader
from engine.core.adapter import AdapterError, ReadReply
from engine.core.config import AdapterOptions
from engine.core.records import ErrorKind, GenParams, Message, Response, Usage
from engine.core.retry import parse_retry_after
from engine.core.secrets import redact, remember

if TYPE_CHECKING:
    import aiohttp

__all__ = ["DEFAULT_BASE_URL", "GeminiGenerate", "build_gemini", "gemini_body", "gemini_error", "parse_generate_response"]

DEFAULT_BASE_URL = "https://generativelanguage.googleapis.com"

_FINISH = {"STOP": "stop", "MAX_TOKENS": "length", "FINISH_REASON_UNSPECIFIED": "stop",
           "MALFORMED_FUNCTION_CALL": "stop", "SAFETY": "content_filter", "RECITATION": "content_filter",
           "BLOCKLIST": "content_filter", "PROHIBITED_CONTENT": "content_filter", "SPII": "content_filter",
           "IMAGE_SAFETY": "content_filter", "LANGUAGE": "content_filter", "OTHER": "content_filter"}
_AUTH_REASONS = frozenset({"API_KEY_INVALID", "API_KEY_SERVICE_BLOCKED", "API_KEY_HTTP_REFERRER_BLOCKED",
                           "API_KEY_IP_ADDRESS_BLOCKED"})


def gemini_body(messages: tuple[Message, ...], params: GenParams) -> dict[str, object]:
    """The request body (pure). The model is in the URL, not the body. System messages become
    `systemInstruction`; assistant turns are role "model"; consecutive same-role turns are merged."""
    system: list[str] = []
    turns: list[tuple[str, list[dict[str, str]]]] = []  # (role, parts)
    for m in messages:
        if m.role in ("system", "developer"):
            system.append(m.content)
            continue
        role = "model" if m.role == "assistant" else "user"
        if turns and turns[-1][0] == role:
            turns[-1][1].append({"text": m.content})
        else:
            turns.append((role, [{"text": m.content}]))
    body: dict[str, object] = {"contents": [{"role": role, "parts": parts} for role, parts in turns]}
    if system:
        body["systemInstruction"] = {"parts": [{"text": "\n\n".join(system)}]}
    gen: dict[str, object] = {}
    if params.temperature is not None:
        gen["temperature"] = params.temperature
    if params.top_p is not None:
        gen["topP"] = params.top_p
    if params.max_tokens is not None:
        gen["maxOutputTokens"] = params.max_tokens
    if params.seed is not None:
        gen["seed"] = params.seed
    if params.stop:
        gen["stopSequences"] = list(params.stop)
    if params.json_schema is not None:
        schema = params.json_schema.get("schema", params.json_schema)
        gen["responseMimeType"] = "application/json"
        gen["responseJsonSchema"] = schema
    if gen:
        body["generationConfig"] = gen
    return body


def _retry_delay(details: object) -> float | None:
    if not isinstance(details, list):
        return None
    for d in details:
        if isinstance(d, dict) and str(d.get("@type", "")).endswith("google.rpc.RetryInfo"):
            delay = d.get("retryDelay")
            return parse_duration(delay) if isinstance(delay, str) else None
    return None


def gemini_error(status: int, raw: bytes, headers: Mapping[str, str], secrets: tuple[str, ...]) -> AdapterError:
    """Classify a non-200 reply from its status and Google's error body."""
    message = raw[:300].decode("utf-8", "replace")
    kind: ErrorKind | None = None
    retry_after = parse_retry_after(headers)
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        data = None
    err = data.get("error") if isinstance(data, dict) else None
    if isinstance(err, dict):
        message = f"{err.get('status') or 'ERROR'}: {err.get('message') or ''}"[:500]
        details = err.get("details")
        if isinstance(details, list):
            reasons = {d.get("reason") for d in details if isinstance(d, dict)}
            if reasons & _AUTH_REASONS:
                kind = "auth"
        if retry_after is None:
            retry_after = _retry_delay(details)
    return error_for_status(status, message, secrets=secrets, retry_after=retry_after, kind=kind)


def parse_generate_response(raw: bytes, latency: float) -> Response:
    try:
        data = orjson.loads(raw)
        candidates = data.get("candidates")
        usage_raw = data.get("usageMetadata") or {}
        thoughts = usage_raw.get("thoughtsTokenCount")
        cached = usage_raw.get("cachedContentTokenCount")
        usage = Usage(prompt_tokens=int(usage_raw.get("promptTokenCount") or 0),
                      completion_tokens=int(usage_raw.get("candidatesTokenCount") or 0) + int(thoughts or 0),
                      reasoning_tokens=None if thoughts is None else int(thoughts),
                      cached_tokens=None if cached is None else int(cached))
        model = data.get("modelVersion")
        server_model = model if isinstance(model, str) else None
        if not candidates:
            feedback = data.get("promptFeedback") or {}
            if not feedback.get("blockReason"):
                raise KeyError("candidates")
            # The prompt itself was blocked: no candidate at all.
            return Response(text="", finish_reason="content_filter", usage=usage, latency_s=round(latency, 6),
                            server_model=server_model)
        cand = candidates[0]
        parts = (cand.get("content") or {}).get("parts") or []
        texts: list[str] = []
        for p in parts:
            if p.get("thought") is True:
                continue
            t = p.get("text")
            if t is not None:
                if not isinstance(t, str):
                    raise TypeError("text")
                texts.append(t)
        reason = cand.get("finishReason") or "STOP"
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, ValueError, AttributeError):
        # A proxy may answer 200 with the request echoed, key and all.
        raise AdapterError("malformed", redact(f"response body is not a GenerateContentResponse: {raw[:120]!r}")) from None
    return Response(text="".join(texts), finish_reason=_FINISH.get(reason, "stop"),  # type: ignore[arg-type]
                    usage=usage, latency_s=round(latency, 6), server_model=server_model)


def _chunk(ev: Event) -> dict[str, Any]:
    obj = event_object(ev.data, "a GenerateContentResponse")
    if isinstance(obj.get("error"), dict):
        raise AdapterError("transient", redact(f"error mid-stream: {str(obj['error'].get('message'))[:300]}"))
    return obj


def stream_document(events: list[Event]) -> tuple[dict[str, object], list[float]]:
    """The GenerateContentResponse that a `streamGenerateContent?alt=sse` stream adds up to: each
    event is a whole response holding the next parts of candidate 0; usageMetadata, finishReason
    and modelVersion are the latest seen. Also the arrival time of each event with new text.
    There is no end marker: the stream is complete once a candidate has a finishReason (or the
    prompt was blocked)."""
    doc: dict[str, object] = {}
    parts: list[object] = []
    finish: object = None
    marks: list[float] = []
    for ev in events:
        obj = _chunk(ev)
        for key in ("usageMetadata", "modelVersion", "promptFeedback"):
            if obj.get(key) is not None:
                doc[key] = obj[key]
        candidates = obj.get("candidates")
        if not isinstance(candidates, list) or not candidates or not isinstance(candidates[0], dict):
            continue
        cand = candidates[0]
        new = (cand.get("content") or {}).get("parts") or []
        parts.extend(new)
        if any(isinstance(p, dict) and not p.get("thought") and p.get("text") for p in new):
            marks.append(ev.at)
        finish = cand.get("finishReason") or finish
    feedback = doc.get("promptFeedback")
    blocked = isinstance(feedback, dict) and feedback.get("blockReason")
    if finish is None and not blocked:
        raise cut_short("a candidate's finishReason")
    if finish is not None or parts:
        doc["candidates"] = [{"content": {"role": "model", "parts": parts}, "finishReason": finish}]
    return doc, marks


class GeminiGenerate(GeminiBatches):
    """Adapter for one lane. `base_url` may end in `/v1beta` (or `/v1`) or not; `session` may be
    injected (tests). `model` may be given with or without the `models/` prefix. Batch lanes use
    batch mode with inline requests (adapters/gemini_batch.py)."""

    def __init__(self, *, model: str, api_key: str | None, concurrency: int, base_url: str | None = None,
                 session: aiohttp.ClientSession | None = None, stream: bool = False) -> None:
        base = (base_url or DEFAULT_BASE_URL).rstrip("/")
        if not base.endswith(("/v1beta", "/v1")):
            base += "/v1beta"
        self.model = model.removeprefix("models/")
        self.url = f"{base}/models/{quote(self.model, safe='-._~')}:generateContent"
        self.stream_url = f"{base}/models/{quote(self.model, safe='-._~')}:streamGenerateContent?alt=sse"
        self.base = base
        self.batch_url = f"{base}/models/{quote(self.model, safe='-._~')}:batchGenerateContent"
        self.stream = stream
        self._secrets = (api_key,) if api_key else ()
        remember(api_key)  # removed from everything written, even when not read through api_key_env
        self._headers = {"Content-Type": "application/json"}
        if api_key:
            self._headers["x-goog-api-key"] = api_key
        self._concurrency = concurrency
        load_transport()
        self._session = session
        self._owns_session = session is None
        self.last_signal: LimitSignal | None = None  # Gemini sends no rate-limit headers

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = new_session(self._concurrency, stamp_sends=self.stream)
        return self._session

    def build_body(self, messages: tuple[Message, ...], params: GenParams) -> dict[str, object]:
        return gemini_body(messages, params)

    async def send(self, body: dict[str, object], timeout: float) -> Response:
        if self.stream:
            return await self.send_streamed(body, timeout)
        session = self._get_session()
        start = time.perf_counter()
        status, raw, headers = await post_json(session, self.url, orjson.dumps(body), self._headers, timeout,
                                               self._secrets)
        if status != 200:
            raise gemini_error(status, raw, headers, self._secrets)
        return parse_generate_response(raw, time.perf_counter() - start)

    async def send_streamed(self, body: dict[str, object], timeout: float,
                            marks: list[float] | None = None, sent: list[float] | None = None,
                            not_before: asyncio.Future[None] | None = None) -> Response:
        return (await self.stream_reply(body, timeout, sent, not_before))(marks)

    async def stream_reply(self, body: dict[str, object], timeout: float, sent: list[float] | None = None,
                           not_before: asyncio.Future[None] | None = None) -> ReadReply:
        got = await post_sse(self._get_session(), self.stream_url, orjson.dumps(body), self._headers, timeout,
                             self._secrets, sent, not_before)
        if got.status != 200:
            raise gemini_error(got.status, got.raw, got.headers, self._secrets)
        return stream_reader(got, stream_document, parse_generate_response)

    def _generated(self, raw: bytes) -> Response:
        return parse_generate_response(raw, 0.0)

    def _status_error(self, status: int, raw: bytes, headers: Mapping[str, str]) -> AdapterError:
        return gemini_error(status, raw, headers, self._secrets)

    async def open_connections(self, n: int, timeout: float) -> int:
        return await open_connections(self._get_session(), self.stream_url, self._headers, n, timeout)

    async def aclose(self) -> None:
        if self._session is not None and self._owns_session:
            await self._session.close()
        self._session = None


# Defaults for `run --model gemini:MODEL`: the Gemini API's tier 1 (a project with billing, the
# lowest paid tier) allows 1,000 RPM / 1,000,000 TPM on gemini-2.5-flash and 150 RPM / 2,000,000 TPM
# on gemini-2.5-pro; the lower of each is taken (https://ai.google.dev/gemini-api/docs/rate-limits,
# "Tier 1"). GEMINI_API_KEY is the variable Google's SDKs and docs use.
# Batch mode is "at 50% of the standard cost" (https://ai.google.dev/gemini-api/docs/batch-mode).
@adapter("gemini", caps=Capabilities(streaming=True, batch_api=True, batch_windows=("24h",), batch_price_factor=0.5,
                                     default_api_key_env="GEMINI_API_KEY", default_requests_per_minute=150,
                                     default_tokens_per_minute=1_000_000))
def build_gemini(ctx: BuildContext[AdapterOptions]) -> Built:
    return Built(GeminiGenerate(model=ctx.model_id, api_key=ctx.api_key(), base_url=ctx.model.base_url,
                                concurrency=ctx.model.concurrency(), stream=ctx.model.stream))
