"""A loopback fake of the Gemini API's batch mode with inline requests, on the state machine,
failure knobs and holds of the OpenAI batch fake (engine/testing/fake_batches.py).

Documented shapes (https://ai.google.dev/gemini-api/docs/batch-mode, https://ai.google.dev/api/batch-mode;
unknown fields are rejected as the API does: 400 INVALID_ARGUMENT 'Invalid JSON payload received.
Unknown name "..."'):

* Create: `POST /v1beta/models/{model}:batchGenerateContent` {"batch": {"displayName" (required),
  "inputConfig": {"requests": {"requests": [{"request": <GenerateContentRequest, checked as the
  Gemini fake checks it>, "metadata": {...}}]}}, "priority"}}; inline requests at most 20 MB in all;
  header `x-goog-api-key`. Answers an Operation {"name": "batches/<id>", "metadata":
  GenerateContentBatch {"@type", "model", "displayName", "createTime", "updateTime", "batchStats":
  {"requestCount", "successfulRequestCount", "failedRequestCount", "pendingRequestCount"}, "state",
  "name"}, "done": false}.
* Get and list: `GET /v1beta/batches/{id}` -> the Operation; once done, "response": {"@type",
  "inlinedResponses": {"inlinedResponses": [{"response", "metadata"} | {"error": {"code",
  "message"}, "metadata"}]}} in request order; `GET /v1beta/batches?pageSize=&pageToken=` ->
  {"operations", "nextPageToken"}.
* States: BATCH_STATE_PENDING, BATCH_STATE_RUNNING, BATCH_STATE_SUCCEEDED, BATCH_STATE_FAILED,
  BATCH_STATE_CANCELLED, BATCH_STATE_EXPIRED.

Knobs: `request_5xx` (an inlined error with code 500), `fatal_ids` (code 400), `fail_batches`
(BATCH_STATE_FAILED), `poll_5xx` (503 UNAVAILABLE); holds "create_before", "create_after", "poll".
Answers are the Gemini fake's (`GeminiFake._answer`, mode "ok").
"""

from __future__ import annotations

import itertools
import time
from typing import Any

import orjson
from aiohttp import web

from engine.testing.fake_batches import OpenAIBatchFake, _Batch
from engine.testing.fake_providers import GeminiFake, _gemini_error, _gemini_invalid, _json, _tokens

__all__ = ["GeminiBatchFake"]

MAX_BYTES = 20 * 1024 * 1024
_BATCH_FIELDS = frozenset({"displayName", "inputConfig", "priority"})
_STATE = {"validating": "BATCH_STATE_PENDING", "in_progress": "BATCH_STATE_RUNNING",
          "finalizing": "BATCH_STATE_RUNNING", "completed": "BATCH_STATE_SUCCEEDED", "failed": "BATCH_STATE_FAILED"}


class GeminiBatchFake(OpenAIBatchFake):
    provider = "gemini-batch"

    def _routes(self, r: web.UrlDispatcher) -> None:
        r.add_post("/v1beta/models/{target}", self._gb_create)
        r.add_get("/v1beta/batches", self._gb_list)
        r.add_get("/v1beta/batches/{batch_id}", self._gb_get)
        self._seq = itertools.count(1)
        self._chat = GeminiFake(api_key=self.api_key, served_model=self.served_model)
        self._names: dict[str, str] = {}  # batch id -> display name

    def _refused(self, request: web.Request) -> web.Response | None:
        if request.headers.get("x-goog-api-key") != self.api_key:
            return _gemini_error(400, "API key not valid. Please pass a valid API key.", [
                {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID"}])
        return None

    def _op(self, b: _Batch) -> dict[str, Any]:
        state = _STATE[self._state(b, time.time())]
        done = state in ("BATCH_STATE_SUCCEEDED", "BATCH_STATE_FAILED")
        if done:
            self._log_end(b, "completed" if state.endswith("SUCCEEDED") else "failed")
        failed = sum(1 for c, _ in b.lines if c in b.errors_5xx or c in self.fatal_ids) if done else 0
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(b.created))
        op: dict[str, Any] = {"name": b.id, "done": done, "metadata": {
            "@type": "type.googleapis.com/google.ai.generativelanguage.v1beta.GenerateContentBatch",
            "model": f"models/{self.served_model}", "displayName": self._names[b.id], "createTime": stamp,
            "updateTime": stamp, "batchStats": {"requestCount": str(len(b.lines)),
                                                "successfulRequestCount": str(len(b.lines) - failed if done else 0),
                                                "failedRequestCount": str(failed),
                                                "pendingRequestCount": str(0 if done else len(b.lines))},
            "state": state, "name": b.id}}
        if done and state == "BATCH_STATE_SUCCEEDED":
            op["response"] = {"@type": "type.googleapis.com/google.ai.generativelanguage.v1beta.GenerateContentBatchOutput",
                              "inlinedResponses": {"inlinedResponses": [self._inlined(b, c, r) for c, r in b.lines]}}
        return op

    def _inlined(self, b: _Batch, key: str, req: dict[str, Any]) -> dict[str, Any]:
        if key in b.errors_5xx or key in self.fatal_ids:
            code = 500 if key in b.errors_5xx else 400
            return {"error": {"code": code, "message": "injected"}, "metadata": {"key": key}}
        prompt = next(("".join(p["text"] for p in c["parts"]) for c in reversed(req["contents"])
                       if c.get("role", "user") == "user"), "")
        in_tok = sum(_tokens(p["text"]) for c in req["contents"] for p in c["parts"])
        return {"response": self._chat._answer(req, "ok", self.served_model, prompt, in_tok), "metadata": {"key": key}}

    async def _gb_create(self, request: web.Request) -> web.StreamResponse:
        self.calls.append("create")
        model, _, method = request.match_info["target"].partition(":")
        if method != "batchGenerateContent":
            return _gemini_error(404, f"Method not found: {method or '(none)'}")
        if (refused := self._refused(request)) is not None:
            return refused
        await self._holding("create_before")
        raw = await request.read()
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return _gemini_error(400, "Invalid JSON payload received. Unexpected token.")
        problem = _check(body, len(raw))
        if problem:
            return _gemini_error(400, problem)
        reqs = body["batch"]["inputConfig"]["requests"]["requests"]
        lines = [(str((r.get("metadata") or {}).get("key", n)), r["request"]) for n, r in enumerate(reqs)]
        b = _Batch(f"batches/{next(self._seq):06d}", "", "", "24h", {}, lines, time.time())
        self._inject(b)
        self.batches[b.id] = b
        self._names[b.id] = body["batch"]["displayName"]
        self.events.append({"event": "created", "batch": b.id, "custom_ids": [c for c, _ in lines]})
        await self._holding("create_after")
        return _json(self._op(b))

    async def _gb_list(self, request: web.Request) -> web.StreamResponse:
        self.calls.append("list")
        if (refused := self._refused(request)) is not None:
            return refused
        size = max(1, min(100, int(request.query.get("pageSize", "20"))))
        newest = sorted(self.batches.values(), key=lambda b: b.id, reverse=True)
        start = int(request.query.get("pageToken") or 0)
        page = newest[start:start + size]
        doc: dict[str, Any] = {"operations": [self._op(b) for b in page]}
        if start + size < len(newest):
            doc["nextPageToken"] = str(start + size)
        return _json(doc)

    async def _gb_get(self, request: web.Request) -> web.StreamResponse:
        self.calls.append("poll")
        if (refused := self._refused(request)) is not None:
            return refused
        await self._holding("poll")
        if self.poll_5xx > 0:
            self.poll_5xx -= 1
            return _gemini_error(503, "The service is currently unavailable.")
        b = self.batches.get("batches/" + request.match_info["batch_id"])
        if b is None:
            return _gemini_error(404, "Requested entity was not found.")
        return _json(self._op(b))


def _check(body: object, size: int) -> str | None:
    if size > MAX_BYTES:
        return f"Request payload size exceeds the limit: {MAX_BYTES} bytes."
    if not isinstance(body, dict) or set(body) != {"batch"} or not isinstance(body["batch"], dict):
        return 'Invalid JSON payload received. Unknown name: expected exactly "batch".'
    batch = body["batch"]
    unknown = sorted(set(batch) - _BATCH_FIELDS)
    if unknown:
        return f'Invalid JSON payload received. Unknown name "{unknown[0]}" at \'batch\': Cannot find field.'
    if not isinstance(batch.get("displayName"), str) or not batch["displayName"]:
        return "batch.display_name is required."
    cfg = batch.get("inputConfig")
    reqs = cfg.get("requests") if isinstance(cfg, dict) and set(cfg) == {"requests"} else None
    inner = reqs.get("requests") if isinstance(reqs, dict) and set(reqs) == {"requests"} else None
    if not isinstance(inner, list) or not inner:
        return "batch.input_config.requests.requests: a non-empty list is required."
    for n, r in enumerate(inner):
        if not isinstance(r, dict) or not set(r) <= {"request", "metadata"} or "request" not in r:
            return f'Invalid JSON payload received. Unknown name at \'batch.input_config.requests.requests[{n}]\'.'
        problem = _gemini_invalid(r["request"])
        if problem:
            return problem
    return None
