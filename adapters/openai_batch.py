"""OpenAI's Batch API for the OpenAI adapter (and any server implementing the same endpoints at
its base_url): the `SubmitsBatches` half of `OpenAIChat`.

Wire format (https://platform.openai.com/docs/guides/batch,
https://platform.openai.com/docs/api-reference/batch, https://platform.openai.com/docs/api-reference/files):
  input line   {"custom_id", "method": "POST", "url": "/v1/chat/completions", "body": <the chat body>}
  upload       POST {base}/files, multipart: purpose=batch, file=<the JSONL> -> File {"id": "file-..."}
  create       POST {base}/batches {"input_file_id", "endpoint": "/v1/chat/completions",
               "completion_window": "24h", "metadata": {<= 16 pairs, keys <= 64, values <= 512 chars}}
  poll         GET {base}/batches/{id} -> Batch {"status": validating | failed | in_progress | finalizing |
               completed | expired | cancelling | cancelled, "output_file_id", "error_file_id",
               "request_counts": {"total", "completed", "failed"}, "errors": {"data": [{"code", "message"}]}}
  list         GET {base}/batches?limit=&after= -> {"data": [Batch, newest first], "has_more", "last_id"}
  results      GET {base}/files/{id}/content, JSONL lines {"id", "custom_id", "response": {"status_code",
               "request_id", "body"} | null, "error": {"code", "message"} | null}; requests a batch
               expired or cancelled before they ran are in the error file with code "batch_expired"
               / "batch_cancelled"
  limits       50,000 requests and 200 MB per input file
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import orjson

from adapters.http import call_json, stream_lines
from engine.core.adapter import AdapterError
from engine.core.batch import BatchLimits, BatchResult, BatchStatus
from engine.core.records import ErrorInfo, Response
from engine.core.secrets import redact

if TYPE_CHECKING:
    import aiohttp

ENDPOINT = "/v1/chat/completions"
META_KEY = "trustmh_batch"  # metadata key carrying the local batch id (what find_batch matches)
_ENDED = frozenset({"completed", "failed", "expired", "cancelled"})
_CALL_TIMEOUT_S = 120.0
_UPLOAD_TIMEOUT_S = 3600.0  # a 200 MB file on a slow uplink


class OpenAIBatches:
    """Mixed into the OpenAI adapter, which provides the session, headers, secrets and parsers."""

    batch_limits = BatchLimits(max_requests=50_000, max_bytes=200 * 1024 * 1024)
    base: str
    _secrets: tuple[str, ...]
    _auth: dict[str, str]

    def _get_session(self) -> aiohttp.ClientSession:
        raise NotImplementedError

    def _status_error(self, status: int, raw: bytes, headers: Mapping[str, str]) -> AdapterError:
        raise NotImplementedError

    def _chat_response(self, raw: bytes) -> Response:
        raise NotImplementedError

    def batch_line(self, custom_id: str, body: dict[str, object]) -> bytes:
        return orjson.dumps({"custom_id": custom_id, "method": "POST", "url": ENDPOINT, "body": body}) + b"\n"

    async def _call(self, method: str, path: str, data: object = None, timeout: float = _CALL_TIMEOUT_S,
                    json: bool = True) -> dict[str, object]:
        headers = {**self._auth, "Content-Type": "application/json"} if json and data is not None else self._auth
        return await call_json(self._get_session(), method, self.base + path, data, headers, timeout, self._secrets,
                               self._status_error, f"{method} {path}")

    async def submit_batch(self, path: Path, local_id: str, window: str,
                           on_file: Callable[[str], None]) -> BatchStatus:
        import aiohttp  # loaded by the adapter's build (load_transport): a dict lookup

        with open(path, "rb") as f:  # noqa: ASYNC230  # aiohttp reads it in chunks as it sends (a stream)
            form = aiohttp.FormData()
            form.add_field("purpose", "batch")
            form.add_field("file", f, filename=path.name, content_type="application/jsonl")
            uploaded = await self._call("POST", "/files", form, _UPLOAD_TIMEOUT_S, json=False)
        file_id = uploaded.get("id")
        if not isinstance(file_id, str):
            raise AdapterError("malformed", "file upload answered without an id")
        on_file(file_id)
        body = {"input_file_id": file_id, "endpoint": ENDPOINT, "completion_window": window,
                "metadata": {META_KEY: local_id}}
        return _status(await self._call("POST", "/batches", orjson.dumps(body)))

    async def find_batch(self, local_id: str, keys: frozenset[str], since: float) -> BatchStatus | None:
        after = ""
        while True:
            page = await self._call("GET", f"/batches?limit=100{f'&after={after}' if after else ''}")
            data = page.get("data")
            if not isinstance(data, list):
                raise AdapterError("malformed", "batch list without `data`")
            for b in data:
                meta = b.get("metadata") or {}
                if isinstance(meta, dict) and meta.get(META_KEY) == local_id:
                    return _status(b)
            older = [b for b in data if int(b.get("created_at") or 0) < since]
            if older or not page.get("has_more") or not data:
                return None
            after = str(data[-1].get("id"))

    async def poll_batch(self, batch_id: str) -> BatchStatus:
        return _status(await self._call("GET", f"/batches/{batch_id}"))

    async def batch_results(self, status: BatchStatus) -> AsyncIterator[BatchResult]:
        for file_id in status.results:
            async for line in stream_lines(self._get_session(), f"{self.base}/files/{file_id}/content", self._auth,
                                           _CALL_TIMEOUT_S, self._secrets, self._status_error):
                yield self._result(line)

    def _result(self, line: bytes) -> BatchResult:
        try:
            obj = orjson.loads(line)
            cid = obj["custom_id"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            raise AdapterError("malformed", redact(f"batch result line is not JSON with a custom_id: {line[:120]!r}",
                                                   self._secrets)) from None
        resp, err = obj.get("response"), obj.get("error")
        if isinstance(resp, dict) and resp.get("status_code") == 200:
            try:
                return BatchResult(custom_id=cid, response=self._chat_response(orjson.dumps(resp.get("body"))))
            except AdapterError as exc:
                return BatchResult(custom_id=cid, error=ErrorInfo(kind=exc.kind, message=exc.message))
        if isinstance(resp, dict) and isinstance(resp.get("status_code"), int):
            bad = self._status_error(resp["status_code"], orjson.dumps(resp.get("body")), {})
            return BatchResult(custom_id=cid, error=ErrorInfo(kind=bad.kind, status=bad.status, message=bad.message))
        code = str(err.get("code")) if isinstance(err, dict) else ""
        message = redact(str(err.get("message") if isinstance(err, dict) else "no response"), self._secrets)
        kind = "cancelled" if code in ("batch_expired", "batch_cancelled") else "fatal"
        return BatchResult(custom_id=cid, error=ErrorInfo(kind=kind, message=f"{code}: {message}"[:500]))


def _status(b: dict[str, object]) -> BatchStatus:
    bid, state = b.get("id"), b.get("status")
    if not isinstance(bid, str) or not isinstance(state, str):
        raise AdapterError("malformed", "batch object without id or status")
    counts = b.get("request_counts") if isinstance(b.get("request_counts"), dict) else {}
    assert isinstance(counts, dict)
    errors = b.get("errors")
    data = errors.get("data") if isinstance(errors, dict) else None
    message = "; ".join(f"{e.get('code')}: {e.get('message')}" for e in data[:3] if isinstance(e, dict)) \
        if isinstance(data, list) else ""
    files = tuple(f for f in (b.get("output_file_id"), b.get("error_file_id")) if isinstance(f, str) and f)
    done = int(counts.get("completed") or 0) + int(counts.get("failed") or 0)
    return BatchStatus(id=bid, state=state, ended=state in _ENDED, failed=state == "failed",
                       results=files if state in _ENDED else (), done=done, total=int(counts.get("total") or 0),
                       message=redact(message)[:500])
