"""OpenAI-compatible Chat Completions over aiohttp.

Works unchanged against OpenAI, vLLM's server, llama.cpp's server and other compatible endpoints:
POST {base_url}/chat/completions, Bearer auth, `choices[0].message.content`, `finish_reason`,
`usage`. One aiohttp session per lane, with a keep-alive pool at least as large as the lane's
concurrency. Errors are classified for the scheduler (see adapters.base.AdapterError).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import orjson

from adapters.base import AdapterError
from engine.records import GenParams, Message, Response, Usage
from engine.retry import parse_retry_after
from engine.secrets import redact

_FINISH = {"stop": "stop", "length": "length", "content_filter": "content_filter",
           "tool_calls": "stop", "function_call": "stop", "eos": "stop"}
_TRANSIENT = {408, 409, 425, 500, 502, 503, 504, 520, 522, 524, 529}


def openai_body(model: str, messages: tuple[Message, ...], params: GenParams,
                *, reasoning: bool = False) -> dict[str, Any]:
    """The request body. Reasoning models (o-series, gpt-5*) take `max_completion_tokens` and
    reject a non-default temperature/top_p, so those are left out for them."""
    body: dict[str, Any] = {"model": model, "messages": [{"role": m.role, "content": m.content} for m in messages]}
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


def classify_status(status: int, raw: bytes, headers: Any, secrets: tuple[str, ...]) -> AdapterError:
    msg = redact(f"HTTP {status}: {_error_message(raw)}", secrets)
    if status == 429:
        return AdapterError("rate_limited", msg, status=status, retry_after=parse_retry_after(headers))
    if status in _TRANSIENT or status >= 500:
        return AdapterError("transient", msg, status=status, retry_after=parse_retry_after(headers))
    if status in (401, 403):
        return AdapterError("auth", msg, status=status)
    return AdapterError("fatal", msg, status=status)


def parse_chat_response(raw: bytes, latency: float) -> Response:
    try:
        data = orjson.loads(raw)
        choice = data["choices"][0]
        message = choice.get("message") or {}
        text = message.get("content")
        finish = choice.get("finish_reason") or "stop"
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, AttributeError):
        raise AdapterError("malformed", f"response body is not a chat completion: {raw[:120]!r}") from None
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
                    latency_s=round(latency, 6), server_model=data.get("model"))


class OpenAIChat:
    """Adapter for one lane. `session` may be injected (tests); otherwise one is made lazily."""

    def __init__(self, *, base_url: str, model: str, api_key: str | None, concurrency: int,
                 reasoning: bool | None = None, session: aiohttp.ClientSession | None = None) -> None:
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.reasoning = reasoning if reasoning is not None else model.startswith(("o1", "o3", "o4", "gpt-5"))
        self._secrets = (api_key,) if api_key else ()
        self._headers = {"Content-Type": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._concurrency = concurrency
        self._session = session
        self._owns_session = session is None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self._concurrency + 8, limit_per_host=0,
                                             keepalive_timeout=60, ttl_dns_cache=300)
            self._session = aiohttp.ClientSession(connector=connector, json_serialize=None,
                                                  timeout=aiohttp.ClientTimeout(total=None))
        return self._session

    def build_body(self, messages: tuple[Message, ...], params: GenParams) -> dict[str, Any]:
        return openai_body(self.model, messages, params, reasoning=self.reasoning)

    async def send(self, body: dict[str, Any], timeout: float) -> Response:
        session = self._get_session()
        start = time.perf_counter()
        try:
            async with session.post(self.url, data=orjson.dumps(body), headers=self._headers,
                                    timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
                raw = await resp.read()
                status = resp.status
                headers = resp.headers
        except asyncio.TimeoutError:
            raise AdapterError("timeout", f"no answer within {timeout:.1f} s") from None
        except aiohttp.ClientPayloadError as exc:
            raise AdapterError("malformed", redact(f"truncated body: {exc}", self._secrets)) from None
        except aiohttp.ClientError as exc:
            raise AdapterError("transient", redact(f"{type(exc).__name__}: {exc}", self._secrets)) from None
        if status != 200:
            raise classify_status(status, raw, headers, self._secrets)
        return parse_chat_response(raw, time.perf_counter() - start)

    async def aclose(self) -> None:
        if self._session is not None and self._owns_session:
            await self._session.close()
        self._session = None
