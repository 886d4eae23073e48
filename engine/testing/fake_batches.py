"""A loopback fake of OpenAI's Batch API (files + batches) for batch-lane tests and benchmarks.

Documented shapes (each cited; fields the documentation does not list are rejected with 400):

* Upload, https://platform.openai.com/docs/api-reference/files/create: `POST /v1/files`, multipart
  form with exactly `purpose` (here: "batch") and `file`; answers a File object
  {"id", "object": "file", "bytes", "created_at", "filename", "purpose"}.
* Input lines, https://platform.openai.com/docs/api-reference/batch/request-input: one JSON object
  per line with exactly `custom_id` (unique in the file), `method` ("POST"), `url` (the batch's
  endpoint) and `body`; at most 50,000 lines and 200 MB
  (https://platform.openai.com/docs/api-reference/batch/create, `input_file_id`).
* Create, https://platform.openai.com/docs/api-reference/batch/create: `POST /v1/batches` with
  `input_file_id`, `endpoint`, `completion_window` ("24h" only), optional `metadata` (16 pairs at
  most, keys <= 64 and values <= 512 characters) and `output_expires_after`; answers the Batch.
* Batch object, https://platform.openai.com/docs/api-reference/batch/object: id, object "batch",
  endpoint, errors, input_file_id, completion_window, status (validating, failed, in_progress,
  finalizing, completed, expired, cancelling, cancelled), output_file_id, error_file_id,
  created_at, in_progress_at, expires_at, finalizing_at, completed_at, failed_at, expired_at,
  cancelling_at, cancelled_at, request_counts {total, completed, failed}, metadata.
* Retrieve and list, https://platform.openai.com/docs/api-reference/batch/retrieve and /list:
  `GET /v1/batches/{id}`; `GET /v1/batches?after=&limit=` -> {"object": "list", "data" (newest
  first), "first_id", "last_id", "has_more"}.
* Results, https://platform.openai.com/docs/api-reference/batch/request-output and
  https://platform.openai.com/docs/guides/batch: `GET /v1/files/{id}/content`; output lines
  {"id", "custom_id", "response": {"status_code", "request_id", "body"}, "error": null}; failed
  requests go to the error file; requests not run before the batch expired are there with
  error.code "batch_expired".
* Errors, https://platform.openai.com/docs/guides/error-codes: {"error": {"message", "type",
  "param", "code"}}.

Time is compressed: a batch is `validating` for the first 10 % of `complete_after_s`, then
`in_progress`, `finalizing` for the last 10 %, then `completed`. Answers are those of the chat
fake (engine/testing/fakeserver.py `expected_text`), so a batch run records the same texts as a
direct run against that server.

Injectable failures (attributes, settable from the test thread): `request_5xx` (the next N
requests answered 500 inside their batch), `expire_requests` (the next N requests left unrun by a
batch that ends `expired`), `fatal_ids` (custom_ids answered 400: final), `fail_batches` (the next
N batches end `failed`), `reject_creates` (the next N create calls answered 400: a batch refused
as a whole), `poll_5xx` (the next N polls answered 503), `truncate_downloads` (the
next N result downloads cut halfway). `hold` = "upload" | "create_before" | "create_after" |
"poll" | "download" blocks the next such call forever (a download after sending half) and sets
`held`, so that a test can kill the engine at that point.

`events` logs every batch created and how it ended, with its custom_ids: what the exactly-once
tests check (`completed_twice`: no custom_id answered by two batches that both completed).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import threading
import time
from typing import Any

import orjson
from aiohttp import BodyPartReader, web

from engine.testing.fake_providers import _json
from engine.testing.fakeserver import FakeConfig, _abort, count_prompt_tokens, expected_text, serve_until_signal

__all__ = ["OpenAIBatchFake", "main"]

MAX_REQUESTS = 50_000
MAX_BYTES = 200 * 1024 * 1024
_LINE_FIELDS = frozenset({"custom_id", "method", "url", "body"})
_CREATE_FIELDS = frozenset({"input_file_id", "endpoint", "completion_window", "metadata", "output_expires_after"})
_ENDPOINTS = frozenset({"/v1/chat/completions"})


def _error(status: int, message: str, type_: str = "invalid_request_error", code: str | None = None,
           param: str | None = None) -> web.Response:
    return web.json_response({"error": {"message": message, "type": type_, "param": param, "code": code}},
                             status=status, dumps=lambda o: orjson.dumps(o).decode())


class _Batch:
    def __init__(self, bid: str, file_id: str, endpoint: str, window: str, metadata: dict[str, str],
                 lines: list[tuple[str, dict[str, Any]]], created: float) -> None:
        self.id = bid
        self.file_id = file_id
        self.endpoint = endpoint
        self.window = window
        self.metadata = metadata
        self.lines = lines
        self.created = created
        self.fate = "completed"  # completed | failed | expired
        self.errors_5xx: set[str] = set()
        self.unrun: set[str] = set()
        self.output_file_id: str | None = None
        self.error_file_id: str | None = None
        self.logged_end = False


class OpenAIBatchFake:
    provider = "openai-batch"  # the thread name in run_in_thread

    def __init__(self, *, api_key: str = "test-key-0123456789", complete_after_s: float = 0.3,
                 served_model: str = "fake-model") -> None:
        self.api_key = api_key
        self.complete_after_s = complete_after_s
        self.served_model = served_model
        self.request_5xx = 0
        self.expire_requests = 0
        self.fatal_ids: set[str] = set()
        self.fail_batches = 0
        self.reject_creates = 0
        self.poll_5xx = 0
        self.truncate_downloads = 0
        self.hold: str | None = None
        self.held = threading.Event()
        self.files: dict[str, tuple[str, bytes]] = {}  # id -> (filename, content) of uploads
        self.outputs: dict[str, tuple[str, str]] = {}  # file id -> (batch id, "output" | "error")
        self.batches: dict[str, _Batch] = {}
        self.events: list[dict[str, Any]] = []
        self.calls: list[str] = []
        self._ids = itertools.count(1)
        self._chat_config = FakeConfig(served_model=served_model)
        self.app = web.Application(client_max_size=MAX_BYTES + (1 << 20))
        self._routes(self.app.router)

    def _routes(self, r: web.UrlDispatcher) -> None:
        r.add_post("/v1/files", self._upload)
        r.add_get("/v1/files/{file_id}/content", self._content)
        r.add_post("/v1/batches", self._create)
        r.add_get("/v1/batches", self._list)
        r.add_get("/v1/batches/{batch_id}", self._retrieve)

    # -- helpers ------------------------------------------------------------------------------------

    def _authorized(self, request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"Bearer {self.api_key}"

    async def _holding(self, phase: str) -> None:
        if self.hold == phase:
            self.hold = None
            self.held.set()
            await asyncio.sleep(3600)

    def _log_end(self, b: _Batch, state: str) -> None:
        """The batch's end in `events`, once (the first answer that shows it ended)."""
        if not b.logged_end:
            b.logged_end = True
            self.events.append({"event": "ended", "batch": b.id, "state": state})

    def _state(self, b: _Batch, now: float) -> str:
        age = (now - b.created) / max(self.complete_after_s, 1e-9)
        if b.fate == "failed":
            return "validating" if age < 0.1 else "failed"
        if age < 0.1:
            return "validating"
        if age < 0.9:
            return "in_progress"
        if age < 1.0:
            return "finalizing"
        return b.fate

    def _object(self, b: _Batch) -> dict[str, Any]:
        now = time.time()
        state = self._state(b, now)
        ended = state in ("completed", "expired", "failed")
        if ended:
            self._log_end(b, state)
        failed = len(b.errors_5xx) + len(b.unrun) + sum(1 for c, _ in b.lines if c in self.fatal_ids)
        if ended and state != "failed":
            if b.output_file_id is None:
                b.output_file_id = f"file-out{next(self._ids)}"
                self.outputs[b.output_file_id] = (b.id, "output")
            if failed and b.error_file_id is None:
                b.error_file_id = f"file-err{next(self._ids)}"
                self.outputs[b.error_file_id] = (b.id, "error")
        c = int(b.created)
        return {
            "id": b.id, "object": "batch", "endpoint": b.endpoint,
            "errors": {"object": "list", "data": [{"code": "invalid_request", "message": "injected batch failure",
                                                   "param": None, "line": None}]} if state == "failed" else None,
            "input_file_id": b.file_id, "completion_window": b.window, "status": state,
            "output_file_id": b.output_file_id if ended else None, "error_file_id": b.error_file_id if ended else None,
            "created_at": c, "in_progress_at": c if state not in ("validating", "failed") else None,
            "expires_at": c + 86400, "finalizing_at": c if state in ("finalizing", "completed", "expired") else None,
            "completed_at": int(now) if state == "completed" else None,
            "failed_at": int(now) if state == "failed" else None,
            "expired_at": int(now) if state == "expired" else None, "cancelling_at": None, "cancelled_at": None,
            "request_counts": {"total": len(b.lines), "completed": len(b.lines) - failed if ended else 0,
                               "failed": failed if ended else 0},
            "metadata": b.metadata or None,
        }

    # -- endpoints ----------------------------------------------------------------------------------

    async def _upload(self, request: web.Request) -> web.StreamResponse:
        self.calls.append("upload")
        if not self._authorized(request):
            return _error(401, "Incorrect API key provided", code="invalid_api_key")
        await self._holding("upload")
        fields: dict[str, bytes] = {}
        filename = ""
        reader = await request.multipart()
        async for part in reader:
            if not isinstance(part, BodyPartReader):
                return _error(400, "nested multipart is not accepted")
            name = part.name or ""
            if name not in ("purpose", "file") or name in fields:
                return _error(400, f"Unrecognized or repeated form field: {name!r}", param=name)
            if name == "file":
                filename = part.filename or ""
            fields[name] = bytes(await part.read())
        if fields.get("purpose") != b"batch" or "file" not in fields:
            return _error(400, "'purpose' must be 'batch' and a 'file' is required", param="purpose")
        problem = _check_lines(fields["file"])
        if problem:
            return _error(400, problem, param="file")
        fid = f"file-in{next(self._ids)}"
        self.files[fid] = (filename, fields["file"])
        return _json({"id": fid, "object": "file", "bytes": len(fields["file"]), "created_at": int(time.time()),
                      "filename": filename, "purpose": "batch"})

    async def _create(self, request: web.Request) -> web.StreamResponse:
        self.calls.append("create")
        if not self._authorized(request):
            return _error(401, "Incorrect API key provided", code="invalid_api_key")
        await self._holding("create_before")
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return _error(400, "We could not parse the JSON body of your request.")
        if not isinstance(body, dict):
            return _error(400, "The body must be a JSON object.")
        unknown = sorted(set(body) - _CREATE_FIELDS)
        if unknown:
            return _error(400, f"Unrecognized request argument supplied: {unknown[0]}", param=unknown[0])
        problem = _check_create(body, self.files)
        if not problem and self.reject_creates > 0:
            self.reject_creates -= 1
            problem = "The batch was refused (injected)."
        if problem:
            return _error(400, problem)
        lines = [(o["custom_id"], o["body"]) for o in map(orjson.loads, self.files[body["input_file_id"]][1].splitlines())]
        b = _Batch(f"batch_{next(self._ids):06d}", body["input_file_id"], body["endpoint"], body["completion_window"],
                   dict(body.get("metadata") or {}), lines, time.time())
        self._inject(b)
        self.batches[b.id] = b
        self.events.append({"event": "created", "batch": b.id, "custom_ids": [c for c, _ in lines]})
        await self._holding("create_after")
        return _json(self._object(b))

    def _inject(self, b: _Batch) -> None:
        if self.fail_batches > 0:
            self.fail_batches -= 1
            b.fate = "failed"
            return
        for cid, _ in b.lines:
            if self.request_5xx > 0:
                self.request_5xx -= 1
                b.errors_5xx.add(cid)
            elif self.expire_requests > 0:
                self.expire_requests -= 1
                b.unrun.add(cid)
                b.fate = "expired"

    async def _list(self, request: web.Request) -> web.StreamResponse:
        self.calls.append("list")
        if not self._authorized(request):
            return _error(401, "Incorrect API key provided", code="invalid_api_key")
        unknown = sorted(set(request.query) - {"after", "limit"})
        if unknown:
            return _error(400, f"Unrecognized query parameter: {unknown[0]}", param=unknown[0])
        limit = max(1, min(100, int(request.query.get("limit", "20"))))
        newest = sorted(self.batches.values(), key=lambda b: b.id, reverse=True)
        after = request.query.get("after")
        if after:
            ids = [b.id for b in newest]
            newest = newest[ids.index(after) + 1:] if after in ids else []
        page = newest[:limit]
        data = [self._object(b) for b in page]
        return _json({"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
                      "last_id": data[-1]["id"] if data else None, "has_more": len(newest) > limit})

    async def _retrieve(self, request: web.Request) -> web.StreamResponse:
        self.calls.append("poll")
        if not self._authorized(request):
            return _error(401, "Incorrect API key provided", code="invalid_api_key")
        await self._holding("poll")
        if self.poll_5xx > 0:
            self.poll_5xx -= 1
            return _error(503, "The server is overloaded or not ready yet.", type_="server_error")
        b = self.batches.get(request.match_info["batch_id"])
        if b is None:
            return _error(404, "No batch found with that id", code="not_found")
        return _json(self._object(b))

    async def _content(self, request: web.Request) -> web.StreamResponse:
        self.calls.append("download")
        if not self._authorized(request):
            return _error(401, "Incorrect API key provided", code="invalid_api_key")
        ref = self.outputs.get(request.match_info["file_id"])
        if ref is None:
            return _error(404, "No such File object", code="not_found")
        b = self.batches[ref[0]]
        return await self._send_lines(request, list(self._result_lines(b, ref[1])))

    async def _send_lines(self, request: web.Request, lines: list[bytes]) -> web.StreamResponse:
        """A results download; cut halfway (the connection reset) when a truncation is due, and
        held there when the download is the hold."""
        size = sum(len(x) for x in lines)
        resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)})
        await resp.prepare(request)
        cut = self.truncate_downloads > 0 or self.hold == "download"
        sent = 0
        for line in lines:
            if cut and sent + len(line) > size // 2:
                await resp.write(line[: len(line) // 2])
                if self.hold == "download":
                    await self._holding("download")
                self.truncate_downloads -= 1
                _abort(request)
                return resp
            await resp.write(line)
            sent += len(line)
        await resp.write_eof()
        return resp

    def _result_lines(self, b: _Batch, which: str) -> Any:
        for n, (cid, body) in enumerate(b.lines):
            rid = f"batch_req_{b.id}_{n}"
            if cid in b.unrun:
                if which == "error":
                    yield orjson.dumps({"id": rid, "custom_id": cid, "response": None, "error": {
                        "code": "batch_expired",
                        "message": "This request could not be executed before the completion window expired."}}) + b"\n"
            elif cid in b.errors_5xx or cid in self.fatal_ids:
                status = 500 if cid in b.errors_5xx else 400
                if which == "error":
                    err = {"message": "injected", "type": "server_error" if status == 500 else "invalid_request_error",
                           "param": None, "code": None}
                    yield orjson.dumps({"id": rid, "custom_id": cid, "response": {
                        "status_code": status, "request_id": f"req_{n}", "body": {"error": err}}, "error": None}) + b"\n"
            elif which == "output":
                yield orjson.dumps({"id": rid, "custom_id": cid, "response": {
                    "status_code": 200, "request_id": f"req_{n}", "body": self._completion(body, n)}, "error": None}) + b"\n"

    def _completion(self, body: dict[str, Any], n: int) -> dict[str, Any]:
        text = expected_text(body, self._chat_config)
        prompt = count_prompt_tokens(body)
        completion = -(-len(text) // 4)
        return {"id": f"chatcmpl-b{n:08x}", "object": "chat.completion", "created": int(time.time()),
                "model": self.served_model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                          "total_tokens": prompt + completion}}

    # -- what the tests read ------------------------------------------------------------------------

    def completed_twice(self) -> set[str]:
        """custom_ids answered (a 200 in the output file) by two batches that both completed: what
        must never happen. A request that failed inside one batch and was sent again is not one."""
        ended = {e["batch"] for e in self.events if e["event"] == "ended" and e["state"] in ("completed", "expired")}
        seen: set[str] = set()
        twice: set[str] = set()
        for bid in sorted(ended):
            b = self.batches[bid]
            for cid, _ in b.lines:
                if cid not in b.errors_5xx and cid not in b.unrun and cid not in self.fatal_ids:
                    (twice if cid in seen else seen).add(cid)
        return twice


def _check_lines(data: bytes) -> str | None:
    if len(data) > MAX_BYTES:
        return f"File is too large: {len(data)} bytes (the limit is {MAX_BYTES})."
    ids: set[str] = set()
    for n, raw in enumerate(data.splitlines(), 1):
        if n > MAX_REQUESTS:
            return f"The file has more than {MAX_REQUESTS} requests."
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return f"Line {n}: not valid JSON."
        if not isinstance(obj, dict) or set(obj) != _LINE_FIELDS:
            return f"Line {n}: expected exactly the fields custom_id, method, url, body."
        if obj["method"] != "POST" or obj["url"] not in _ENDPOINTS or not isinstance(obj["body"], dict):
            return f"Line {n}: method must be POST and url a supported endpoint."
        cid = obj["custom_id"]
        if not isinstance(cid, str) or cid in ids:
            return f"Line {n}: custom_id must be a string unique in the file."
        ids.add(cid)
    return None if ids else "The file holds no requests."


def _check_create(body: dict[str, Any], files: dict[str, tuple[str, bytes]]) -> str | None:
    if body.get("input_file_id") not in files:
        return "input_file_id: no such file with purpose 'batch'"
    if body.get("endpoint") not in _ENDPOINTS:
        return "endpoint: this server supports /v1/chat/completions"
    if body.get("completion_window") != "24h":
        return "completion_window: only '24h' is supported"
    meta = body.get("metadata")
    if meta is not None:
        if not isinstance(meta, dict) or len(meta) > 16:
            return "metadata: at most 16 key-value pairs"
        for k, v in meta.items():
            if not isinstance(v, str) or len(k) > 64 or len(v) > 512:
                return "metadata: keys at most 64 characters, values strings of at most 512"
    lines = files[body["input_file_id"]][1].splitlines()
    for raw in lines:
        if orjson.loads(raw)["url"] != body.get("endpoint"):
            return "every request's url must be the batch's endpoint"
    return None


async def _serve(fake: OpenAIBatchFake, port: int) -> None:
    runner = web.AppRunner(fake.app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    await serve_until_signal(runner, f"http://127.0.0.1:{runner.addresses[0][1]}")


def main(argv: list[str] | None = None) -> int:
    """`python -m engine.testing.fake_batches --port 0`: serves until SIGTERM (benchmarks run it in
    its own process so that its memory is not the engine's)."""
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--complete-after-s", type=float, default=0.3)
    args = p.parse_args(argv)
    asyncio.run(_serve(OpenAIBatchFake(complete_after_s=args.complete_after_s), args.port))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
