"""The Gemini API's batch mode, inline requests, for the Gemini adapter: the `SubmitsBatches`
half of `GeminiGenerate`.

Wire format (https://ai.google.dev/gemini-api/docs/batch-mode, https://ai.google.dev/api/batch-mode):
  create   POST {base}/models/{model}:batchGenerateContent {"batch": {"displayName", "inputConfig":
           {"requests": {"requests": [{"request": <a GenerateContentRequest>, "metadata": {"key"}}]}}}}
           -> an Operation {"name": "batches/...", "metadata": GenerateContentBatch {"state",
           "batchStats": {"requestCount", "successfulRequestCount", "failedRequestCount",
           "pendingRequestCount"}, "displayName", ...}, "done"}
  poll     GET {base}/batches/{id} -> the Operation; once done, "response": {"inlinedResponses":
           {"inlinedResponses": [{"response": <GenerateContentResponse>, "metadata": {"key"}} |
           {"error": {"code", "message"}, "metadata"}]}}, in the order of the requests
  list     GET {base}/batches?pageSize=&pageToken= -> {"operations": [...], "nextPageToken"}
  states   BATCH_STATE_PENDING, _RUNNING, _SUCCEEDED, _FAILED, _CANCELLED, _EXPIRED
  limits   inline requests: 20 MB in all (a larger run is split into more batches)
The display name carries the local batch id (what `find_batch` matches). Inline results come with
the batch itself (at most 20 MB, so they are read whole, not streamed).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import orjson

from adapters.http import call_json, error_for_status
from engine.core.adapter import AdapterError
from engine.core.batch import BatchLimits, BatchResult, BatchStatus
from engine.core.records import ErrorInfo, Response

if TYPE_CHECKING:
    import aiohttp

_CALL_TIMEOUT_S = 300.0
_ENDED = frozenset({"BATCH_STATE_SUCCEEDED", "BATCH_STATE_FAILED", "BATCH_STATE_CANCELLED", "BATCH_STATE_EXPIRED"})


class GeminiBatches:
    """Mixed into the Gemini adapter, which provides the session, headers, URLs and parser."""

    batch_limits = BatchLimits(max_requests=1_000_000, max_bytes=20 * 1024 * 1024)
    base: str
    batch_url: str
    _headers: dict[str, str]
    _secrets: tuple[str, ...]

    def _get_session(self) -> aiohttp.ClientSession:
        raise NotImplementedError

    def _generated(self, raw: bytes) -> Response:
        raise NotImplementedError

    def _status_error(self, status: int, raw: bytes, headers: Mapping[str, str]) -> AdapterError:
        raise NotImplementedError

    def batch_line(self, custom_id: str, body: dict[str, object]) -> bytes:
        return orjson.dumps({"request": body, "metadata": {"key": custom_id}}) + b"\n"

    async def _call(self, method: str, url: str, data: object = None) -> dict[str, object]:
        return await call_json(self._get_session(), method, url, data, self._headers, _CALL_TIMEOUT_S, self._secrets,
                               self._status_error, f"{method} {url}")

    async def submit_batch(self, path: Path, local_id: str, window: str,
                           on_file: Callable[[str], None]) -> BatchStatus:
        return _status(await self._call("POST", self.batch_url, _request_doc(path, local_id)))

    async def find_batch(self, local_id: str, keys: frozenset[str], since: float) -> BatchStatus | None:
        token = ""
        while True:
            page = await self._call("GET", f"{self.base}/batches?pageSize=100{f'&pageToken={token}' if token else ''}")
            ops = page.get("operations") or []
            if not isinstance(ops, list):
                raise AdapterError("malformed", "batch list without `operations`")
            for op in ops:
                meta = op.get("metadata") if isinstance(op, dict) else None
                if isinstance(meta, dict) and meta.get("displayName") == local_id:
                    return _status(op)
            token = str(page.get("nextPageToken") or "")
            if not token:
                return None

    async def poll_batch(self, batch_id: str) -> BatchStatus:
        return _status(await self._call("GET", f"{self.base}/{batch_id}"))

    async def batch_results(self, status: BatchStatus) -> AsyncIterator[BatchResult]:
        for name in status.results:
            op = await self._call("GET", f"{self.base}/{name}")
            resp = op.get("response")
            outer = resp.get("inlinedResponses") if isinstance(resp, dict) else None
            items = outer.get("inlinedResponses") if isinstance(outer, dict) else None
            for item in items if isinstance(items, list) else []:
                yield self._result(item)

    def _result(self, item: object) -> BatchResult:
        meta = item.get("metadata") if isinstance(item, dict) else None
        key = meta.get("key") if isinstance(meta, dict) else None
        if not isinstance(item, dict) or not isinstance(key, str):
            raise AdapterError("malformed", "inlined response without metadata.key")
        if isinstance(item.get("response"), dict):
            try:
                return BatchResult(custom_id=key, response=self._generated(orjson.dumps(item["response"])))
            except AdapterError as exc:
                return BatchResult(custom_id=key, error=ErrorInfo(kind=exc.kind, message=exc.message))
        err = item.get("error") if isinstance(item.get("error"), dict) else {}
        assert isinstance(err, dict)
        code = int(err.get("code") or 500)
        status = code if code >= 400 else 500  # a google.rpc.Code (13 INTERNAL, ...) rather than HTTP
        bad = error_for_status(status, str(err.get("message") or "")[:300], secrets=self._secrets)
        return BatchResult(custom_id=key, error=ErrorInfo(kind=bad.kind, status=status, message=bad.message))


async def _request_doc(path: Path, local_id: str) -> AsyncIterator[bytes]:
    """The create body, streamed from the batch's input file (one request at a time)."""
    yield b'{"batch":{"displayName":' + orjson.dumps(local_id) + b',"inputConfig":{"requests":{"requests":['
    first = True
    with open(path, "rb") as f:  # noqa: ASYNC230  # small reads of a local file between sends
        for line in f:
            line = line.rstrip(b"\n")
            if line:
                yield line if first else b"," + line
                first = False
    yield b"]}}}}"


def _status(op: dict[str, object]) -> BatchStatus:
    meta = op.get("metadata")
    name = op.get("name") or (meta.get("name") if isinstance(meta, dict) else None)
    state = meta.get("state") if isinstance(meta, dict) else None
    if not isinstance(name, str) or not isinstance(state, str) or not isinstance(meta, dict):
        raise AdapterError("malformed", "batch operation without name or metadata.state")
    stats = meta.get("batchStats")
    s = stats if isinstance(stats, dict) else {}
    total = int(s.get("requestCount") or 0)
    ended = state in _ENDED
    return BatchStatus(id=name, state=state, ended=ended, failed=state == "BATCH_STATE_FAILED",
                       results=(name,) if ended else (), done=total - int(s.get("pendingRequestCount") or 0),
                       total=total)
