"""Anthropic's Message Batches API for the Anthropic adapter: the `SubmitsBatches` half of
`AnthropicMessages`.

Wire format (https://platform.claude.com/docs/en/build-with-claude/batch-processing,
https://platform.claude.com/docs/en/api/creating-message-batches,
https://platform.claude.com/docs/en/api/retrieving-message-batch-results):
  create   POST {base}/v1/messages/batches {"requests": [{"custom_id", "params": <a Messages body>}]}
           (custom_id: 1-64 of [a-zA-Z0-9_-]; our keys are 32 hex characters) -> MessageBatch
           {"id": "msgbatch_...", "type": "message_batch", "processing_status": in_progress | canceling
           | ended, "request_counts": {"processing", "succeeded", "errored", "canceled", "expired"},
           "ended_at", "created_at" (RFC 3339), "expires_at", "cancel_initiated_at", "results_url"}
  poll     GET {base}/v1/messages/batches/{id}
  list     GET {base}/v1/messages/batches?limit=&after_id= -> {"data" (newest first), "has_more",
           "first_id", "last_id"}
  results  GET results_url: JSONL {"custom_id", "result": {"type": "succeeded", "message"} |
           {"type": "errored", "error": {"type": "error", "error": {"type", "message"}}} |
           {"type": "canceled"} | {"type": "expired"}}, in any order
  limits   100,000 requests or 256 MB per batch
A batch carries nothing of ours but the custom_ids, so `find_batch` matches a batch created since
the intent with as many requests, by its results' custom_ids once it has ended; while such a
candidate is still processing it cannot tell, and says so as a transient error (the caller asks
again later, and submits nothing meanwhile).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import orjson

from adapters.http import call_json, stream_lines
from engine.core.adapter import AdapterError
from engine.core.batch import BatchLimits, BatchResult, BatchStatus
from engine.core.records import ErrorInfo, ErrorKind, Response
from engine.core.secrets import redact

if TYPE_CHECKING:
    import aiohttp

_CALL_TIMEOUT_S = 120.0
_UPLOAD_TIMEOUT_S = 3600.0
# error.error.type of an errored request (https://platform.claude.com/docs/en/api/errors)
_KINDS: dict[str, ErrorKind] = {"invalid_request_error": "fatal", "not_found_error": "fatal",
                                "request_too_large": "fatal", "authentication_error": "auth",
                                "permission_error": "auth", "rate_limit_error": "rate_limited",
                                "api_error": "transient", "overloaded_error": "transient"}


class AnthropicBatches:
    """Mixed into the Anthropic adapter, which provides the session, headers, secrets and parser."""

    batch_limits = BatchLimits(max_requests=100_000, max_bytes=256 * 1024 * 1024)
    url: str
    _headers: dict[str, str]
    _secrets: tuple[str, ...]

    def _get_session(self) -> aiohttp.ClientSession:
        raise NotImplementedError

    def _message(self, raw: bytes) -> Response:
        raise NotImplementedError

    def _status_error(self, status: int, raw: bytes, headers: Mapping[str, str]) -> AdapterError:
        raise NotImplementedError

    def batch_line(self, custom_id: str, body: dict[str, object]) -> bytes:
        return orjson.dumps({"custom_id": custom_id, "params": body}) + b"\n"

    async def _call(self, method: str, url: str, data: object = None,
                    timeout: float = _CALL_TIMEOUT_S) -> dict[str, object]:
        return await call_json(self._get_session(), method, url, data, self._headers, timeout, self._secrets,
                               self._status_error, f"{method} {url}")

    async def submit_batch(self, path: Path, local_id: str, window: str,
                           on_file: Callable[[str], None]) -> BatchStatus:
        return _status(await self._call("POST", self.url + "/batches", _request_array(path), _UPLOAD_TIMEOUT_S))

    async def find_batch(self, local_id: str, keys: frozenset[str], since: float) -> BatchStatus | None:
        after = ""
        while True:
            page = await self._call("GET", self.url + f"/batches?limit=100{f'&after_id={after}' if after else ''}")
            data = page.get("data")
            if not isinstance(data, list):
                raise AdapterError("malformed", "batch list without `data`")
            recent = [b for b in data if isinstance(b, dict) and _epoch(b.get("created_at")) >= since]
            for b in recent:
                st = _status(b)
                if st.total != len(keys):
                    continue
                if not st.ended:
                    raise AdapterError("transient", f"batch {st.id}, created since the intent, is still processing; "
                                                    "its requests can be matched once it ends")
                if await self._holds(st, keys):
                    return st
            if len(recent) < len(data) or not page.get("has_more") or not data:
                return None
            after = str(data[-1].get("id"))

    async def _holds(self, st: BatchStatus, keys: frozenset[str]) -> bool:
        seen = 0
        async for res in self.batch_results(st):
            if res.custom_id not in keys:
                return False
            seen += 1
        return seen == len(keys)

    async def poll_batch(self, batch_id: str) -> BatchStatus:
        return _status(await self._call("GET", self.url + f"/batches/{batch_id}"))

    async def batch_results(self, status: BatchStatus) -> AsyncIterator[BatchResult]:
        for url in status.results:
            async for line in stream_lines(self._get_session(), url, self._headers, _CALL_TIMEOUT_S, self._secrets,
                                           self._status_error):
                yield self._result(line)

    def _result(self, line: bytes) -> BatchResult:
        try:
            obj = orjson.loads(line)
            cid, result = obj["custom_id"], obj["result"]
            kind = result["type"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            raise AdapterError("malformed", redact(f"batch result line is not a result with a custom_id: {line[:120]!r}",
                                                   self._secrets)) from None
        if kind == "succeeded":
            try:
                return BatchResult(custom_id=cid, response=self._message(orjson.dumps(result.get("message"))))
            except AdapterError as exc:
                return BatchResult(custom_id=cid, error=ErrorInfo(kind=exc.kind, message=exc.message))
        if kind in ("canceled", "expired"):
            return BatchResult(custom_id=cid, error=ErrorInfo(kind="cancelled", message=f"request {kind} in its batch"))
        err = result.get("error")
        err = err if isinstance(err, dict) else {}
        inner = err.get("error")
        inner = inner if isinstance(inner, dict) else err
        etype = str(inner.get("type") or "api_error")
        message = redact(f"{etype}: {inner.get('message') or ''}", self._secrets)[:500]
        return BatchResult(custom_id=cid, error=ErrorInfo(kind=_KINDS.get(etype, "transient"), message=message))


async def _request_array(path: Path) -> AsyncIterator[bytes]:
    """{"requests": [line, line, ...]} streamed from the batch's input file (one line at a time)."""
    yield b'{"requests":['
    first = True
    with open(path, "rb") as f:  # noqa: ASYNC230  # small reads of a local file between sends
        for line in f:
            line = line.rstrip(b"\n")
            if line:
                yield line if first else b"," + line
                first = False
    yield b"]}"


def _epoch(stamp: object) -> float:
    try:
        return datetime.fromisoformat(str(stamp)).timestamp()
    except ValueError:
        return 0.0


def _status(b: dict[str, object]) -> BatchStatus:
    bid, state = b.get("id"), b.get("processing_status")
    if not isinstance(bid, str) or not isinstance(state, str):
        raise AdapterError("malformed", "message batch without id or processing_status")
    counts = b.get("request_counts")
    c = counts if isinstance(counts, dict) else {}
    done = sum(int(c.get(k) or 0) for k in ("succeeded", "errored", "canceled", "expired"))
    url = b.get("results_url")
    return BatchStatus(id=bid, state=state, ended=state == "ended",
                       results=(url,) if state == "ended" and isinstance(url, str) else (), done=done,
                       total=done + int(c.get("processing") or 0))


__all__ = ["AnthropicBatches"]
