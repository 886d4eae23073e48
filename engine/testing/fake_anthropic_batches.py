"""A loopback fake of Anthropic's Message Batches API, on the state machine, failure knobs and
holds of the OpenAI batch fake (engine/testing/fake_batches.py).

Documented shapes (fields not listed there are rejected with 400 invalid_request_error):

* Create, https://platform.claude.com/docs/en/api/creating-message-batches: `POST
  /v1/messages/batches` {"requests": [{"custom_id" (1-64 of [a-zA-Z0-9_-], unique), "params" (a
  Messages API body, checked as the Messages fake checks it)}]}, at most 100,000 requests and 256 MB;
  headers `x-api-key`, `anthropic-version`.
* Message Batch object, https://platform.claude.com/docs/en/api/messages-batches: id "msgbatch_...",
  type "message_batch", processing_status (in_progress, canceling, ended), request_counts
  {processing, succeeded, errored, canceled, expired}, ended_at, created_at, expires_at (RFC 3339),
  archived_at, cancel_initiated_at, results_url.
* Retrieve and list, https://platform.claude.com/docs/en/api/retrieving-message-batches and
  /listing-message-batches: `GET /v1/messages/batches/{id}`; `GET /v1/messages/batches?limit=
  &after_id=&before_id=` -> {"data" (newest first), "has_more", "first_id", "last_id"}.
* Results, https://platform.claude.com/docs/en/api/retrieving-message-batch-results: `GET
  results_url`, JSONL {"custom_id", "result": {"type": "succeeded", "message"} | {"type": "errored",
  "error": {"type": "error", "error": {"type", "message"}}} | {"type": "canceled"} | {"type": "expired"}}.

Knobs: `request_5xx` (errored with api_error), `expire_requests` (expired), `fatal_ids` (errored
with invalid_request_error), `poll_5xx`, `truncate_downloads`; holds "create_before",
"create_after", "poll", "download". Answers are `reply_text("anthropic", last user text)`.
"""

from __future__ import annotations

import itertools
import re
import time
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web

from engine.testing.fake_batches import OpenAIBatchFake, _Batch
from engine.testing.fake_providers import AnthropicFake, _anthropic_invalid, _last_user_anthropic, _tokens, reply_text

__all__ = ["AnthropicBatchFake"]

_CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
MAX_REQUESTS = 100_000
MAX_BYTES = 256 * 1024 * 1024


def _err(status: int, kind: str, message: str) -> web.Response:
    return web.Response(body=orjson.dumps({"type": "error", "error": {"type": kind, "message": message}}),
                        status=status, content_type="application/json")


def _rfc3339(t: float) -> str:
    return datetime.fromtimestamp(t, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class AnthropicBatchFake(OpenAIBatchFake):
    provider = "anthropic-batch"

    def _routes(self, r: web.UrlDispatcher) -> None:
        r.add_post("/v1/messages/batches", self._mb_create)
        r.add_get("/v1/messages/batches", self._mb_list)
        r.add_get("/v1/messages/batches/{batch_id}", self._mb_retrieve)
        r.add_get("/v1/messages/batches/{batch_id}/results", self._mb_results)
        self._seq = itertools.count(1)

    def _refused(self, request: web.Request) -> web.Response | None:
        if request.headers.get("x-api-key") != self.api_key:
            return _err(401, "authentication_error", "invalid x-api-key")
        if not request.headers.get("anthropic-version"):
            return _err(400, "invalid_request_error", "anthropic-version: header is required")
        return None

    def _mb(self, b: _Batch, base: str) -> dict[str, Any]:
        state = self._state(b, time.time())
        ended = state in ("completed", "expired")
        if ended:
            self._log_end(b, state)
        counts = {"processing": 0 if ended else len(b.lines), "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
        if ended:
            for cid, _ in b.lines:
                key = "expired" if cid in b.unrun else "errored" if cid in b.errors_5xx or cid in self.fatal_ids \
                    else "succeeded"
                counts[key] += 1
        return {"id": b.id, "type": "message_batch", "processing_status": "ended" if ended else "in_progress",
                "request_counts": counts, "ended_at": _rfc3339(time.time()) if ended else None,
                "created_at": _rfc3339(b.created), "expires_at": _rfc3339(b.created + 86400), "archived_at": None,
                "cancel_initiated_at": None,
                "results_url": f"{base}/v1/messages/batches/{b.id}/results" if ended else None}

    async def _mb_create(self, request: web.Request) -> web.StreamResponse:
        self.calls.append("create")
        if (refused := self._refused(request)) is not None:
            return refused
        await self._holding("create_before")
        raw = await request.read()
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return _err(400, "invalid_request_error", "There was an error parsing the body of your request")
        problem = _check(body, len(raw))
        if problem:
            return _err(400, "invalid_request_error", problem)
        lines = [(r["custom_id"], r["params"]) for r in body["requests"]]
        b = _Batch(f"msgbatch_{next(self._seq):06d}", "", "", "24h", {}, lines, time.time())
        self._inject(b)
        b.fate = "expired" if b.unrun else "completed"
        self.batches[b.id] = b
        self.events.append({"event": "created", "batch": b.id, "custom_ids": [c for c, _ in lines]})
        await self._holding("create_after")
        return web.Response(body=orjson.dumps(self._mb(b, _base(request))), content_type="application/json")

    async def _mb_list(self, request: web.Request) -> web.StreamResponse:
        self.calls.append("list")
        if (refused := self._refused(request)) is not None:
            return refused
        unknown = sorted(set(request.query) - {"after_id", "before_id", "limit"})
        if unknown:
            return _err(400, "invalid_request_error", f"{unknown[0]}: Extra inputs are not permitted")
        limit = max(1, min(1000, int(request.query.get("limit", "20"))))
        newest = sorted(self.batches.values(), key=lambda b: b.id, reverse=True)
        after = request.query.get("after_id")
        if after:
            ids = [b.id for b in newest]
            newest = newest[ids.index(after) + 1:] if after in ids else []
        data = [self._mb(b, _base(request)) for b in newest[:limit]]
        return web.Response(body=orjson.dumps({"data": data, "has_more": len(newest) > limit,
                                               "first_id": data[0]["id"] if data else None,
                                               "last_id": data[-1]["id"] if data else None}),
                            content_type="application/json")

    async def _mb_retrieve(self, request: web.Request) -> web.StreamResponse:
        self.calls.append("poll")
        if (refused := self._refused(request)) is not None:
            return refused
        await self._holding("poll")
        if self.poll_5xx > 0:
            self.poll_5xx -= 1
            return _err(529, "overloaded_error", "Overloaded")
        b = self.batches.get(request.match_info["batch_id"])
        if b is None:
            return _err(404, "not_found_error", "batch not found")
        return web.Response(body=orjson.dumps(self._mb(b, _base(request))), content_type="application/json")

    async def _mb_results(self, request: web.Request) -> web.StreamResponse:
        self.calls.append("download")
        if (refused := self._refused(request)) is not None:
            return refused
        b = self.batches.get(request.match_info["batch_id"])
        if b is None or self._state(b, time.time()) not in ("completed", "expired"):
            return _err(404, "not_found_error", "no results for this batch (yet)")
        return await self._send_lines(request, [self._line(b, cid, params) for cid, params in b.lines])

    def _line(self, b: _Batch, cid: str, params: dict[str, Any]) -> bytes:
        if cid in b.unrun:
            result: dict[str, Any] = {"type": "expired"}
        elif cid in b.errors_5xx or cid in self.fatal_ids:
            kind = "api_error" if cid in b.errors_5xx else "invalid_request_error"
            result = {"type": "errored", "error": {"type": "error", "error": {"type": kind, "message": "injected"}}}
        else:
            text = reply_text(AnthropicFake.provider, _last_user_anthropic(params))  # what the Messages fake answers
            in_tok = sum(_tokens(m["content"]) for m in params["messages"] if isinstance(m["content"], str))
            result = {"type": "succeeded", "message": {
                "id": f"msg_b{cid[:12]}", "type": "message", "role": "assistant",
                "content": [{"type": "text", "text": text}], "model": self.served_model,
                "stop_reason": "end_turn", "stop_sequence": None,
                "usage": {"input_tokens": in_tok, "output_tokens": _tokens(text)}}}
        return orjson.dumps({"custom_id": cid, "result": result}) + b"\n"


def _base(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}"


def _check(body: object, size: int) -> str | None:
    if not isinstance(body, dict) or set(body) != {"requests"} or not isinstance(body["requests"], list):
        return "body: exactly one field, `requests` (a list), is permitted"
    reqs = body["requests"]
    if not 1 <= len(reqs) <= MAX_REQUESTS or size > MAX_BYTES:
        return f"requests: 1 to {MAX_REQUESTS} requests and at most {MAX_BYTES} bytes"
    ids: set[str] = set()
    for n, r in enumerate(reqs):
        if not isinstance(r, dict) or set(r) != {"custom_id", "params"}:
            return f"requests.{n}: exactly custom_id and params are permitted"
        cid = r["custom_id"]
        if not isinstance(cid, str) or not _CUSTOM_ID.match(cid) or cid in ids:
            return f"requests.{n}.custom_id: 1-64 characters of [a-zA-Z0-9_-], unique in the batch"
        ids.add(cid)
        problem = _anthropic_invalid(r["params"])
        if problem:
            return f"requests.{n}.params: {problem}"
        if r["params"].get("stream"):
            return f"requests.{n}.params.stream: not permitted in a batch"
    return None
