"""What every HTTP adapter shares: the lane's keep-alive session, one POST with transport failures
classified, and the HTTP-status -> AdapterError kind mapping.

Protocol modules (openai_compat, anthropic, gemini) only build bodies, pick headers, read their
provider's error body and parse their success body; they never retry or sleep.

Status mapping (the providers agree on it):
  429                  rate_limited (OpenAI https://platform.openai.com/docs/guides/error-codes;
                       Anthropic https://platform.claude.com/docs/en/api/errors;
                       Gemini https://ai.google.dev/gemini-api/docs/troubleshooting)
  5xx, 408/409/425     transient (Anthropic 529 overloaded_error, Gemini 503 UNAVAILABLE included)
  401, 403             auth
  any other 4xx        fatal (400 invalid request, 404 unknown model, 413 too large, ...)
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from types import SimpleNamespace
from typing import TYPE_CHECKING, NamedTuple, TypeVar

import orjson

from engine.core.adapter import AdapterError
from engine.core.records import ErrorKind
from engine.core.secrets import redact

if TYPE_CHECKING:
    import aiohttp

T = TypeVar("T")

# aiohttp is imported when an HTTP adapter is built (`load_transport`), not with this module: the
# registry imports every adapter module to read a config, and commands that never build one
# (report, a run refused by its lock) should not pay aiohttp's import (a few hundred ms on a busy
# machine).

__all__ = ["TRANSIENT_STATUSES", "SendStamp", "call_json", "error_for_status", "load_transport", "new_session", "open_connections", "post_json",
           "post_reply", "request", "stamps_sends", "stream_lines"]


def load_transport() -> None:
    """Imports aiohttp; every HTTP adapter calls it when built, before any lane runs. Left to the
    first request, the import would block the loop after the lane's limits had admitted several
    requests, and those would reach the provider bunched together (a 429 under a tight TPM)."""
    import aiohttp  # noqa: F401  # lazy: see the note above

TRANSIENT_STATUSES = frozenset({408, 409, 425, 500, 502, 503, 504, 520, 522, 524, 529})


def error_for_status(status: int, message: str, *, secrets: tuple[str, ...] = (),
                     retry_after: float | None = None, kind: ErrorKind | None = None) -> AdapterError:
    """The classified error for a non-200 reply. `message` is the provider's own error message
    (redacted here); `kind` overrides the status mapping where the body says more (Gemini's
    API_KEY_INVALID comes as a 400)."""
    msg = redact(f"HTTP {status}: {message}", secrets)
    if kind is None:
        if status == 429:
            kind = "rate_limited"
        elif status in TRANSIENT_STATUSES or status >= 500:
            kind = "transient"
        elif status in (401, 403):
            kind = "auth"
        else:
            kind = "fatal"
    keep_retry_after = kind in ("rate_limited", "transient")
    return AdapterError(kind, msg, status=status, retry_after=retry_after if keep_retry_after else None)


def _no_json(obj: object) -> str:
    raise TypeError("adapters post bodies they encoded themselves (data=), never json=")


class SendStamp(NamedTuple):
    """A streamed request's `trace_request_ctx`: where the time its bytes went to the socket is
    appended, and what holds them back until the request is due (None: nothing)."""

    stamps: list[float]
    hold: asyncio.Future[None] | None
    reused: list[bool]  # one entry per send that took a pooled connection (adapters.sse: what is resent)


async def _note_reuse(session: aiohttp.ClientSession, ctx: SimpleNamespace,
                      params: aiohttp.TraceConnectionReuseconnParams) -> None:
    # At the connection's acquisition (ahead of a held request's release, not between it and the write).
    req = ctx.trace_request_ctx
    if isinstance(req, SendStamp):
        req.reused.append(True)


async def _stamp_sent(session: aiohttp.ClientSession, ctx: SimpleNamespace,
                      params: aiohttp.TraceRequestChunkSentParams) -> None:
    # aiohttp awaits this right before it hands the request's bytes (headers and body in one
    # write) to the transport, in the same step: nothing runs in between. A held request waits
    # here, built and on its connection, so that its release is one task step from the socket.
    req = ctx.trace_request_ctx
    if isinstance(req, SendStamp):
        if req.hold is not None and not req.hold.done():
            await req.hold
        req.stamps.append(time.perf_counter())


@functools.cache
def _send_stamps() -> aiohttp.TraceConfig:
    import aiohttp  # loaded by load_transport already: a dict lookup

    tc = aiohttp.TraceConfig()
    tc.on_request_chunk_sent.append(_stamp_sent)
    tc.on_connection_reuseconn.append(_note_reuse)
    tc.freeze()
    return tc


def stamps_sends(session: aiohttp.ClientSession) -> bool:
    """Whether `session` was made with `new_session(..., stamp_sends=True)`."""
    return _send_stamps() in session.trace_configs


def new_session(concurrency: int, stamp_sends: bool = False) -> aiohttp.ClientSession:
    """One session per lane: a keep-alive pool a little larger than the lane's concurrency.

    With `stamp_sends` (streamed lanes, `bench`), a request posted with a `SendStamp` as
    `trace_request_ctx` gets the perf_counter time at which its bytes went to the socket appended
    to its `stamps` (`adapters.sse.post_sse`'s `sent`), and its bytes wait for its `hold`. Off
    elsewhere: aiohttp's tracing costs every request of the session a few coroutine calls."""
    import aiohttp  # loaded by load_transport already: a dict lookup

    connector = aiohttp.TCPConnector(limit=concurrency + 8, limit_per_host=0, keepalive_timeout=60,
                                     ttl_dns_cache=300)
    return aiohttp.ClientSession(connector=connector, json_serialize=_no_json,
                                 timeout=aiohttp.ClientTimeout(total=None),
                                 trace_configs=[_send_stamps()] if stamp_sends else None)


# The lane's own timeout (most attempts' `timeout`) -> its frozen ClientTimeout: one dict look-up
# per request. The old lru_cache on max(0.1, round(timeout, 1)) cost a round() and a max() per
# request before the look-up (~1 us of the 0 ms benchmark's ~40 us of engine path).
_TIMEOUTS: dict[float, aiohttp.ClientTimeout] = {}


def _timeout(seconds: float) -> aiohttp.ClientTimeout:
    """aiohttp's timeout for `seconds`, at 0.1 s steps (aiohttp rounds its timer anyway), never 0."""
    got = _TIMEOUTS.get(seconds)
    if got is None:
        import aiohttp  # loaded by load_transport already: a dict lookup

        got = aiohttp.ClientTimeout(total=max(0.1, round(seconds, 1)))
        if len(_TIMEOUTS) < 64:  # attempts near their item's deadline pass a new value each time
            _TIMEOUTS[seconds] = got
    return got


def post_json(session: aiohttp.ClientSession, url: str, data: bytes, headers: Mapping[str, str],
              timeout: float, secrets: tuple[str, ...]) -> Coroutine[object, object, tuple[int, bytes, Mapping[str, str]]]:
    """One POST (await it); returns (status, body, response headers) or raises AdapterError for
    transport failures: timeout -> timeout, truncated body -> malformed, nothing listening ->
    transient with `unreachable` set (the scheduler stops a lane whose every attempt cannot
    connect), any other client error (reset, disconnect) -> transient. Messages pass through
    `redact`. A plain function handing back `request`'s coroutine: one coroutine frame fewer per
    request on the hot path."""
    return request(session, "POST", url, data, headers, timeout, secrets)


async def open_connections(session: aiohttp.ClientSession, url: str, headers: Mapping[str, str], n: int,
                           timeout: float) -> int:
    """Up to n keep-alive connections to url's server, opened together and left in the session's
    pool: each by a HEAD request to url, whose answer (a 405 from most POST endpoints) is ignored.
    Returns how many answered; a connection the server closes after its answer is not kept."""
    import aiohttp  # loaded by load_transport already: a dict lookup

    async def one() -> bool:
        try:
            async with session.head(url, headers=headers, allow_redirects=False,
                                    timeout=_timeout(timeout)) as resp:
                await resp.read()
            return True
        except (aiohttp.ClientError, TimeoutError):
            return False

    return sum(await asyncio.gather(*(one() for _ in range(n))))


def request(session: aiohttp.ClientSession, method: str, url: str, data: object, headers: Mapping[str, str],
            timeout: float, secrets: tuple[str, ...]) -> Coroutine[object, object, tuple[int, bytes, Mapping[str, str]]]:
    """`post_json` for any method and body aiohttp takes (bytes, a multipart form streamed from a
    file, an async generator of bytes): batch APIs upload files and poll with GET."""
    return _exchange(session, method, url, data, headers, timeout, secrets, _as_tuple)


def post_reply(session: aiohttp.ClientSession, url: str, data: bytes, headers: Mapping[str, str], timeout: float,
               secrets: tuple[str, ...], reply: Callable[[int, bytes, Mapping[str, str], float], T],
               ) -> Coroutine[object, object, T]:
    """`post_json` whose reply is read by `reply(status, body, headers, seconds)` (seconds: from
    just before the request to its body read) in the same coroutine: an adapter's `send` can then
    hand this back instead of awaiting it in a coroutine of its own, one frame fewer per resume."""
    return _exchange(session, "POST", url, data, headers, timeout, secrets, reply)


def _as_tuple(status: int, raw: bytes, headers: Mapping[str, str], seconds: float) -> tuple[int, bytes, Mapping[str, str]]:
    return status, raw, headers


async def _exchange(session: aiohttp.ClientSession, method: str, url: str, data: object, headers: Mapping[str, str],
                    timeout: float, secrets: tuple[str, ...], reply: Callable[[int, bytes, Mapping[str, str], float], T],
                    ) -> T:
    start = time.perf_counter()
    try:
        # Awaited, not `async with`: the context manager's __aenter__/__aexit__ (and the response's
        # own, and wait_for_close) are five coroutines per request; read() has already waited for
        # the request's writer and released the connection when it returns, and closes the
        # response itself when it fails. release() below covers a cancellation in between.
        resp = await session.request(method, url, data=data, headers=headers, timeout=_timeout(timeout))
        try:
            raw = await resp.read()
        finally:
            resp.release()
    except TimeoutError:
        raise AdapterError("timeout", f"no answer within {timeout:.1f} s") from None
    except Exception as exc:
        err = _transport_error(exc, url, secrets)
        if err is None:
            raise
        raise err from None
    return reply(resp.status, raw, resp.headers, time.perf_counter() - start)


def _transport_error(exc: Exception, url: str, secrets: tuple[str, ...]) -> AdapterError | None:
    """`request`'s classification of an aiohttp failure (None: not one of aiohttp's); aiohttp is
    looked up here, on the failure path, not once per request (0.3 us each)."""
    import aiohttp  # loaded by load_transport already: a dict lookup

    if isinstance(exc, aiohttp.ClientPayloadError):
        return AdapterError("malformed", redact(f"truncated body: {exc}", secrets))
    if isinstance(exc, aiohttp.ClientConnectorError):
        reason = exc.os_error.strerror if exc.os_error is not None and exc.os_error.strerror else str(exc)
        return AdapterError("transient", redact(f"cannot connect to {url}: {reason}", secrets), unreachable=True)
    if isinstance(exc, aiohttp.ClientError):
        return AdapterError("transient", redact(f"{type(exc).__name__}: {exc}", secrets))
    return None


async def call_json(session: aiohttp.ClientSession, method: str, url: str, data: object, headers: Mapping[str, str],
                    timeout: float, secrets: tuple[str, ...],
                    on_status: Callable[[int, bytes, Mapping[str, str]], AdapterError], what: str) -> dict[str, object]:
    """One call to a batch API: `request`, then the 200 reply's JSON object (`json_object`, named
    `what` in its error); another status raises `on_status(...)`, the provider's classification."""
    status, raw, hdrs = await request(session, method, url, data, headers, timeout, secrets)
    if status != 200:
        raise on_status(status, raw, hdrs)
    return json_object(raw, what, secrets)


def json_object(raw: bytes, what: str, secrets: tuple[str, ...]) -> dict[str, object]:
    """A 200 reply's body as the JSON object every batch API call answers with; anything else is
    `malformed`, quoting the start of the body with the keys removed (a proxy may echo them)."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        doc = None
    if not isinstance(doc, dict):
        raise AdapterError("malformed", redact(f"{what}: not a JSON object: {raw[:120]!r}", secrets))
    return doc


async def stream_lines(session: aiohttp.ClientSession, url: str, headers: Mapping[str, str], timeout: float,
                       secrets: tuple[str, ...], on_status: Callable[[int, bytes, Mapping[str, str]], AdapterError],
                       ) -> AsyncIterator[bytes]:
    """The lines of a GET's body as they arrive (a batch's results: never held whole). A status
    other than 200 raises `on_status(...)`; a body cut short raises malformed, after the whole
    lines before the cut were yielded (the caller reads again and skips what it took). `timeout`
    bounds each read, not the whole download."""
    import aiohttp  # loaded by load_transport already: a dict lookup

    try:
        async with session.get(url, headers=headers,
                               timeout=aiohttp.ClientTimeout(total=None, sock_connect=timeout, sock_read=timeout)) as resp:
            if resp.status != 200:
                raise on_status(resp.status, await resp.read(), resp.headers)
            rest = b""
            async for block in resp.content.iter_chunked(1 << 16):
                lines = (rest + block).split(b"\n")
                rest = lines.pop()
                for line in lines:
                    if line.strip():
                        yield line
            if rest.strip():
                yield rest
    except TimeoutError:
        raise AdapterError("timeout", f"no data within {timeout:.1f} s") from None
    except aiohttp.ClientPayloadError as exc:
        raise AdapterError("malformed", redact(f"results cut short: {exc}", secrets)) from None
    except aiohttp.ClientConnectorError as exc:
        raise AdapterError("transient", redact(f"cannot connect to {url}: {exc}", secrets), unreachable=True) from None
    except aiohttp.ClientError as exc:
        raise AdapterError("transient", redact(f"{type(exc).__name__}: {exc}", secrets)) from None
