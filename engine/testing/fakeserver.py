"""A fast, deterministic, fault-injecting OpenAI-compatible HTTP server for tests.

Why it exists
-------------
The engine under test talks real HTTP to an OpenAI-style Chat Completions API.
Mocking the client library would hide exactly the failures the engine must
survive (connection resets, hung sockets, half-written bodies, 429 storms,
server-side rate limits), so tests and benchmarks run this server instead:

* pytest starts it as a subprocess (:class:`FakeServerProcess`) or inside the
  test's own event loop (:func:`start_in_loop`);
* benchmarks in ``benchmarks/`` measure engine throughput against it, so the
  hot path is kept cheap (orjson, uvloop, no access log, compact log columns).

Replies are a pure function of the request (:func:`expected_text`), so a test
can check every text the engine recorded without asking the server.

Wire format: ``POST /v1/chat/completions`` (optionally ``stream: true``),
``GET /v1/models``, ``GET /health``; errors use OpenAI's
``{"error": {"message", "type", "param", "code"}}`` body.

Control plane (never logged, never faulted, never rate limited):

* ``GET  /_control/config``  current :class:`FakeConfig` as JSON
* ``POST /_control/config``  JSON object of fields to change; returns the new config
* ``GET  /_control/stats``   counters (see :meth:`FakeServer.stats`)
* ``GET  /_control/log``     request log (``?offset=&limit=``)
* ``POST /_control/reset``   clear log, counters, limiter and fail-first state,
  re-seed the fault RNG and release hung requests

Processing order of a chat request (documented because tests rely on it):
parse -> ``require_key`` (401) -> validation (400) -> ``echo`` -> rpm/tpm limiter (429,
no latency) -> one fault draw (reset / hang / 429 / 5xx / malformed) ->
``fail_first_n`` (503) -> latency -> reply.  Requests that pass the limiter
consume quota even if a fault is injected afterwards, as on a real server.

Run standalone::

    python -m engine.testing.fakeserver --port 0 --config '{"latency_ms": 200}'

prints exactly one line ``LISTENING http://127.0.0.1:<port>`` when ready and
serves until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import functools
import hashlib
import math
import os
import random
import selectors
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from array import array
from collections.abc import Mapping
from pathlib import Path
from typing import IO, NamedTuple

import msgspec
import orjson
from aiohttp import web

__all__ = [
    "FakeConfig",
    "FakeServer",
    "FakeServerProcess",
    "MALFORMED_KINDS",
    "body_hash",
    "count_prompt_tokens",
    "echo_request",
    "expected_text",
    "key_fingerprint",
    "main",
    "make_app",
    "start_in_loop",
    "token_charge",
]

# The folder that holds the `engine` package (the checkout, or site-packages when installed): the
# subprocess server runs from there.
REPO_ROOT = Path(__file__).resolve().parents[2]

#: FakeServer.stats(): counters, and "by_status" {outcome: count}.
Stats = dict[str, int | dict[str, int]]
#: One request log entry: t (s since start), key (fingerprint or None), body_hash, status, outcome.
LogEntry = dict[str, int | float | str | None]

#: Every kind of malformed 200 reply the server can produce.  The default
#: rotation excludes ``"cut"`` because that one is a transport failure (the
#: client sees a payload error), not a parseable-but-wrong body.
MALFORMED_KINDS = ("not_json", "truncated", "no_choices", "cut")


# --------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------


class FakeConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Server behaviour.  Immutable: a change builds a new instance, so a request
    keeps the snapshot it arrived with even if the config changes mid-flight."""

    served_model: str = "fake-model"
    #: Added before every reply that the server "processes" (200, 5xx,
    #: malformed, reset).  Rejections (400/401/429) are answered immediately.
    latency_ms: float = 0.0
    #: Uniform extra delay in [0, latency_jitter_ms], from its own RNG so that
    #: turning jitter on does not change the fault sequence.
    latency_jitter_ms: float = 0.0
    #: Latency model of a reply's tokens (one token = 4 characters of text): latency_ms (+ jitter)
    #: is the time to the first token, then each further token follows token_delay_ms later (+ a
    #: uniform [0, token_jitter_ms]). A stream sends one event per token when token_delay_ms > 0,
    #: on an absolute schedule (a late wake-up does not delay the tokens after it); a non-streamed
    #: reply comes whole once its last token is due.
    token_delay_ms: float = 0.0
    token_jitter_ms: float = 0.0
    #: Streams only: drop the connection after this many events (a stream cut mid-way).
    stream_cut_after: int | None = None
    seed: int = 0
    # Fault probabilities.  One uniform draw per admitted request picks at most
    # one fault, so they are mutually exclusive and must sum to <= 1.
    p_reset: float = 0.0
    p_hang: float = 0.0
    p_429: float = 0.0
    p_5xx: float = 0.0
    p_malformed: float = 0.0
    retry_after_s: float = 1.0
    hang_s: float = 3600.0
    malformed_kinds: tuple[str, ...] = ("not_json", "truncated", "no_choices")
    #: If set, 401 unless ``Authorization: Bearer <require_key>``.
    require_key: str | None = None
    #: The first N requests for each distinct ``messages`` list get 503.
    fail_first_n: int = 0
    #: Per-API-key limits, enforced over every sliding 1 s window as rpm/60
    #: requests and tpm/60 tokens (fractional allowed).  None = unlimited.
    rpm: float | None = None
    tpm: float | None = None
    #: Pad replies to a completion length: None = no padding, an int = that
    #: many tokens (capped at the request's max_tokens), "max_tokens" = the
    #: request's max_tokens / max_completion_tokens.
    completion_tokens: int | str | None = None
    #: {substring: reply}: if the last user message contains substring, reply
    #: with exactly that text (first match in insertion order wins).
    script: dict[str, str] = {}
    #: {substring: HTTP status}: if the last user message contains substring, answer with that
    #: status and a plain-text body that echoes the request line, every header (the key too) and
    #: the body, as some proxies and gateways do (first match wins; checked after require_key).
    echo: dict[str, int] = {}
    #: Record the per-request log (stats counters are always kept).
    log: bool = True
    #: Stop appending log entries after this many (they cost 22 bytes each).
    log_max: int = 2_000_000

    def __post_init__(self) -> None:
        probs = (self.p_reset, self.p_hang, self.p_429, self.p_5xx, self.p_malformed)
        if any(not 0.0 <= p <= 1.0 for p in probs):
            raise ValueError("fault probabilities must be within [0, 1]")
        if sum(probs) > 1.0 + 1e-9:
            raise ValueError("fault probabilities must sum to <= 1 (one draw picks one fault)")
        if min(self.latency_ms, self.latency_jitter_ms, self.hang_s, self.token_delay_ms, self.token_jitter_ms) < 0:
            raise ValueError("latency_ms, latency_jitter_ms, token_delay_ms, token_jitter_ms and hang_s must be >= 0")
        if self.retry_after_s < 0:
            raise ValueError("retry_after_s must be >= 0")
        if self.fail_first_n < 0 or self.log_max < 0:
            raise ValueError("fail_first_n and log_max must be >= 0")
        if (self.rpm is not None and self.rpm <= 0) or (self.tpm is not None and self.tpm <= 0):
            raise ValueError("rpm and tpm must be > 0 (or null for unlimited)")
        if not self.malformed_kinds or any(k not in MALFORMED_KINDS for k in self.malformed_kinds):
            raise ValueError(f"malformed_kinds must be a non-empty subset of {MALFORMED_KINDS}")
        ct = self.completion_tokens
        if isinstance(ct, str) and ct != "max_tokens":
            raise ValueError('completion_tokens must be null, an int or "max_tokens"')
        if isinstance(ct, int) and ct < 0:
            raise ValueError("completion_tokens must be >= 0")


_DEFAULT_CONFIG = FakeConfig()


def _as_config(config: FakeConfig | Mapping[str, object] | None) -> FakeConfig:
    if config is None:
        return _DEFAULT_CONFIG
    if isinstance(config, FakeConfig):
        return config
    return msgspec.convert(dict(config), FakeConfig)


def _config_dict(config: FakeConfig) -> dict[str, object]:
    fields: dict[str, object] = msgspec.to_builtins(config)
    return fields


def _update_config(config: FakeConfig, fields: Mapping[str, object]) -> FakeConfig:
    # Round-trip through convert (not structs.replace) so that types and the
    # __post_init__ checks are validated exactly as for a fresh config.
    return msgspec.convert({**_config_dict(config), **fields}, FakeConfig)


# --------------------------------------------------------------------------
# Deterministic content and token accounting (pure functions)
# --------------------------------------------------------------------------

_SORT = orjson.OPT_SORT_KEYS


def _content_text(content: object) -> str:
    """Text of a message content: a string, or OpenAI content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)
        )
    return ""


def count_prompt_tokens(body: Mapping[str, object]) -> int:
    """ceil(total characters of all message contents / 4)."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        return 0
    chars = 0
    for m in messages:
        if isinstance(m, dict):
            chars += len(_content_text(m.get("content")))
    return -(-chars // 4)


def _max_tokens(body: Mapping[str, object]) -> int:
    mt = body.get("max_tokens") or body.get("max_completion_tokens") or 0
    return mt if isinstance(mt, int) else 0


def token_charge(body: Mapping[str, object]) -> int:
    """What the tpm limiter charges up front: prompt tokens + max_tokens
    (or max_completion_tokens, or 0), mirroring OpenAI's accounting."""
    return count_prompt_tokens(body) + _max_tokens(body)


def _last_user_text(messages: object) -> str:
    if isinstance(messages, list):
        for m in reversed(messages):
            if isinstance(m, dict) and m.get("role") == "user":
                return _content_text(m.get("content"))
    return ""


def _schema_instance(schema: object, text: str, root: object, depth: int = 0) -> object:
    """A minimal value valid for the (simple) JSON schema; strings carry text.

    Best effort: handles type/properties/items/enum/const/anyOf/oneOf/allOf,
    local $refs and numeric/length bounds — enough for structured-output
    schemas made of objects, integers, numbers, strings, booleans and arrays.
    """
    if depth > 32 or not isinstance(schema, dict):
        return text
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#"):
        target = root
        for part in ref.lstrip("#").strip("/").split("/"):
            if part:
                target = target.get(part, {}) if isinstance(target, dict) else {}
        return _schema_instance(target, text, root, depth + 1)
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    for comb in ("anyOf", "oneOf"):
        options = schema.get(comb)
        if isinstance(options, list) and options:
            return _schema_instance(options[0], text, root, depth + 1)
    if isinstance(schema.get("allOf"), list):
        merged: dict[str, object] = {k: v for k, v in schema.items() if k != "allOf"}
        for sub in schema["allOf"]:
            if isinstance(sub, dict):
                for k, v in sub.items():
                    props_so_far, req_so_far = merged.get("properties"), merged.get("required")
                    if k == "properties" and isinstance(v, dict):
                        merged["properties"] = {**(props_so_far if isinstance(props_so_far, dict) else {}), **v}
                    elif k == "required" and isinstance(v, list):
                        merged["required"] = [*(req_so_far if isinstance(req_so_far, list) else []), *v]
                    else:
                        merged.setdefault(k, v)
        return _schema_instance(merged, text, root, depth + 1)

    return _typed_instance(schema, text, root, depth)


def _typed_instance(schema: dict[str, object], text: str, root: object, depth: int) -> object:
    """The instance of a schema without combinators, by its `type` (inferred when absent)."""
    typ = schema.get("type")
    if isinstance(typ, list):
        non_null = [t for t in typ if t != "null"]
        typ = non_null[0] if non_null else "null"
    if typ is None:
        typ = "object" if "properties" in schema else "array" if "items" in schema else "string"

    if typ == "object":
        props = schema.get("properties")
        if not isinstance(props, dict):
            return {}
        return {k: _schema_instance(v, text, root, depth + 1) for k, v in props.items()}
    if typ == "array":
        prefix = schema.get("prefixItems")
        out = [_schema_instance(s, text, root, depth + 1) for s in prefix] if isinstance(prefix, list) else []
        n = schema.get("minItems", 0)
        items = schema.get("items", {})
        while len(out) < (n if isinstance(n, int) else 0):
            out.append(_schema_instance(items, text, root, depth + 1))
        return out
    if typ in ("integer", "number"):
        return _number_instance(schema, integer=typ == "integer")
    if typ == "boolean":
        return False
    if typ == "null":
        return None
    # string
    if "pattern" in schema or "format" in schema:
        return ""  # cannot satisfy arbitrary patterns; "" is the usual best bet
    s = text
    lo_len = schema.get("minLength")
    hi_len = schema.get("maxLength")
    if isinstance(hi_len, int):
        s = s[:hi_len]
    if isinstance(lo_len, int) and len(s) < lo_len:
        s = s + "x" * (lo_len - len(s))
    return s


def _number_instance(schema: dict[str, object], *, integer: bool) -> float:
    """The smallest number the bounds allow near 0 (an int when `integer`)."""
    lo = schema.get("minimum")
    xlo = schema.get("exclusiveMinimum")
    hi = schema.get("maximum")
    xhi = schema.get("exclusiveMaximum")
    if isinstance(lo, (int, float)) and not isinstance(lo, bool):
        num: float = lo
    elif isinstance(xlo, (int, float)) and not isinstance(xlo, bool):
        num = math.floor(xlo) + 1
    elif isinstance(hi, (int, float)) and not isinstance(hi, bool) and hi < 0:
        num = hi
    elif isinstance(xhi, (int, float)) and not isinstance(xhi, bool) and xhi <= 0:
        num = math.ceil(xhi) - 1
    else:
        num = 0
    return int(math.ceil(num)) if integer else num


def _target_tokens(body: Mapping[str, object], mode: int | str | None) -> int:
    if mode is None:
        return 0
    mt = _max_tokens(body)
    if mode == "max_tokens":
        return mt
    assert isinstance(mode, int)
    return min(mode, mt) if mt else mode


_FILLER = " lorem ipsum dolor sit amet" * 8


def expected_text(body: Mapping[str, object], config: FakeConfig | Mapping[str, object] | None = None) -> str:
    """The exact reply content the server sends for ``body`` under ``config``.

    Pure: depends only on the request and the config's ``script`` and
    ``completion_tokens`` fields.  In order:

    1. ``script``: the first substring found in the last user message selects
       its reply verbatim (no JSON shaping, no padding);
    2. base text ``"reply:" + blake2b([model, messages], 8 bytes).hexdigest()``
       over canonical (sorted-key) JSON;
    3. ``response_format`` ``json_schema`` -> minimal instance of the schema
       (strings carry the base text); ``json_object`` -> ``{"reply": base}``;
    4. ``completion_tokens`` padding to exactly 4*N characters (JSON replies
       are padded with trailing spaces, which keeps them valid JSON).
    """
    cfg = _as_config(config)
    messages = body.get("messages")
    if cfg.script:
        last = _last_user_text(messages)
        for sub, reply in cfg.script.items():
            if sub in last:
                return reply
    base = "reply:" + hashlib.blake2b(
        orjson.dumps([body.get("model"), messages], option=_SORT), digest_size=8
    ).hexdigest()
    text = base
    is_json = False
    rf = body.get("response_format")
    if isinstance(rf, dict):
        kind = rf.get("type")
        if kind == "json_schema":
            js = rf.get("json_schema")
            schema = js.get("schema") if isinstance(js, dict) else None
            schema = schema if isinstance(schema, dict) else {"type": "object"}
            text = orjson.dumps(_schema_instance(schema, base, schema)).decode()
            is_json = True
        elif kind == "json_object":
            text = orjson.dumps({"reply": base}).decode()
            is_json = True
    target_chars = 4 * _target_tokens(body, cfg.completion_tokens)
    if len(text) < target_chars:
        need = target_chars - len(text)
        if is_json:
            text += " " * need
        else:
            reps = need // len(_FILLER) + 1
            text += (_FILLER * reps)[:need]
    return text


def echo_request(request: web.BaseRequest, raw: bytes) -> bytes:
    """What an echoing proxy answers: the request as it arrived, headers and all."""
    head = [f"{request.method} {request.path_qs} HTTP/{request.version.major}.{request.version.minor}"]
    head += [f"{k}: {v}" for k, v in request.headers.items()]
    return ("\n".join(head) + "\n\n").encode() + raw


def body_hash(body: object) -> str:
    """Canonical hash of a request body (16 hex chars), as shown in the log."""
    return f"{_body_hash_int(body):016x}"


def _body_hash_int(body: object) -> int:
    return int.from_bytes(hashlib.blake2b(orjson.dumps(body, option=_SORT), digest_size=8).digest(), "big")


@functools.lru_cache(maxsize=4096)
def _key_fp_int(key: str) -> int:
    if not key:
        return 0
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=4, person=b"fakesrv-key").digest(), "big")


def key_fingerprint(key: str | None) -> str | None:
    """Non-reversible 8-hex-char tag of an API key, as shown in the log
    (None for requests without a key).  The key itself is never stored."""
    fp = _key_fp_int(key or "")
    return f"{fp:08x}" if fp else None


# --------------------------------------------------------------------------
# Server
# --------------------------------------------------------------------------

# Non-HTTP outcomes, stored in the int16 status column of the log.
_RESET, _HANG, _MALFORMED = -1, -2, -3
_OUTCOME_NAMES = {_RESET: "reset", _HANG: "hang", _MALFORMED: "malformed"}


def _outcome_name(code: int) -> str:
    return _OUTCOME_NAMES.get(code) or str(code)


def _fmt_seconds(seconds: float) -> str:
    return str(int(seconds)) if float(seconds).is_integer() else f"{seconds:.3f}"


def _error(
    status: int,
    message: str,
    type_: str,
    code: str | None,
    param: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    body = orjson.dumps({"error": {"message": message, "type": type_, "param": param, "code": code}})
    return web.Response(body=body, status=status, content_type="application/json", headers=headers)


def _validate(body: object) -> str | None:
    """Return an error message for an invalid request, else None (cheap checks only)."""
    if not isinstance(body, dict):
        return "We could not parse the JSON body of your request."
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "'messages' must be a non-empty array."
    for m in messages:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            return "Each message must be an object with a string 'role'."
    for field in ("max_tokens", "max_completion_tokens"):
        v = body.get(field)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
            return f"'{field}' must be a positive integer."
    return None


def _abort(request: web.BaseRequest) -> None:
    """Drop the connection with a TCP RST so the client sees a reset, not a
    clean close (SO_LINGER 0 makes close() send RST instead of FIN)."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except (OSError, AttributeError):
            pass
    transport.abort()


def _token_due(rng: random.Random, cfg: FakeConfig, t0: float, k: int) -> float:
    """When token k (0 = the first, sent at t0) is due: the schedule is absolute, so a late wake-up
    under load does not push back every token after it."""
    due = t0 + k * cfg.token_delay_ms / 1000.0
    return due + rng.uniform(0.0, cfg.token_jitter_ms) / 1000.0 if cfg.token_jitter_ms else due


async def _sleep_until(when: float) -> None:
    delay = when - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)


class _Arrival(NamedTuple):
    """When a request arrived, from which key fingerprint, with which body hash (for the log)."""

    t: float
    kfp: int
    bh: int


class _Window:
    """One API key's sliding rate-limit window: (arrival time, token charge) per admitted request,
    and the sum of the charges."""

    __slots__ = ("entries", "tokens")

    def __init__(self) -> None:
        self.entries: collections.deque[tuple[float, int]] = collections.deque()
        self.tokens = 0


class FakeServer:
    """State and handlers of one fake server; ``.app`` is the aiohttp app."""

    def __init__(self, config: FakeConfig | Mapping[str, object] | None = None) -> None:
        self.config = _as_config(config)
        self._t0 = time.monotonic()
        self._reset_state()
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/health", self._health)
        app.router.add_get("/version", self._version)
        app.router.add_get("/_control/config", self._ctl_get_config)
        app.router.add_post("/_control/config", self._ctl_set_config)
        app.router.add_get("/_control/stats", self._ctl_stats)
        app.router.add_get("/_control/log", self._ctl_log)
        app.router.add_post("/_control/reset", self._ctl_reset)
        app.on_shutdown.append(self._on_shutdown)
        app[SERVER_KEY] = self
        self.app = app

    # ---- state -----------------------------------------------------------

    def _reset_state(self) -> None:
        seed = self.config.seed
        self._rng = random.Random(seed)
        # Separate streams so jitter does not perturb the fault sequence.
        self._jitter_rng = random.Random(seed + 1)
        # Hung requests wait on this event; reset/shutdown sets it and replaces it.
        old = getattr(self, "_release", None)
        if old is not None:
            old.set()
        self._release = asyncio.Event()
        self.requests = 0
        self.ok = 0
        self.n_429 = 0
        self.n_429_limiter = 0
        self.duplicates_ok = 0
        # in_flight is a live gauge (handlers still running decrement it), so
        # a reset keeps it and restarts the high-water mark from it.
        self.in_flight = getattr(self, "in_flight", 0)
        self.max_in_flight = self.in_flight
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self._by_code: dict[int, int] = {}
        self._ok_hashes: set[int] = set()
        self._fail_counts: dict[int, int] = {}
        # key fingerprint -> [deque[(t, charge)], token sum in window]
        self._windows: dict[int, _Window] = {}
        self._n_malformed = 0
        self._next_id = 0
        # Column-oriented log: 8+4+8+2 bytes per request instead of ~200 for tuples.
        self._log_t = array("d")
        self._log_key = array("I")
        self._log_hash = array("Q")
        self._log_code = array("h")
        self._log_dropped = 0

    def reset(self) -> None:
        """Clear log, counters, limiter and fail-first state; re-seed; release hangs."""
        self._reset_state()

    def set_config(self, **fields: object) -> FakeConfig:
        """Change config fields (validated); a new ``seed`` re-seeds the RNGs."""
        new = _update_config(self.config, fields)
        self.config = new
        if "seed" in fields:
            self._rng = random.Random(new.seed)
            self._jitter_rng = random.Random(new.seed + 1)
        return new

    def stats(self) -> Stats:
        return {
            "requests": self.requests,
            "ok": self.ok,
            "by_status": {_outcome_name(c): n for c, n in sorted(self._by_code.items())},
            "duplicates_ok": self.duplicates_ok,
            "distinct_ok": len(self._ok_hashes),
            "n_429": self.n_429,
            "n_429_limiter": self.n_429_limiter,
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "log_entries": len(self._log_t),
            "log_dropped": self._log_dropped,
        }

    def log_entries(self, offset: int = 0, limit: int | None = None) -> list[LogEntry]:
        end = len(self._log_t) if limit is None else min(len(self._log_t), offset + limit)
        out: list[LogEntry] = []
        for i in range(max(0, offset), end):
            code = self._log_code[i]
            kfp = self._log_key[i]
            out.append(
                {
                    "t": self._log_t[i],
                    "key": f"{kfp:08x}" if kfp else None,
                    "body_hash": f"{self._log_hash[i]:016x}",
                    "status": code if code > 0 else (200 if code == _MALFORMED else 0),
                    "outcome": _outcome_name(code),
                }
            )
        return out

    def _record(self, t: float, kfp: int, bh: int, code: int) -> None:
        by = self._by_code
        by[code] = by.get(code, 0) + 1
        if code == 200:
            self.ok += 1
            if bh in self._ok_hashes:
                self.duplicates_ok += 1
            else:
                self._ok_hashes.add(bh)
        elif code == 429:
            self.n_429 += 1
        cfg = self.config
        if cfg.log:
            if len(self._log_t) < cfg.log_max:
                self._log_t.append(t - self._t0)
                self._log_key.append(kfp)
                self._log_hash.append(bh)
                self._log_code.append(code)
            else:
                self._log_dropped += 1

    # ---- rate limiter ----------------------------------------------------

    def _admit(self, cfg: FakeConfig, kfp: int, t: float, charge: int) -> tuple[float, str] | None:
        """Sliding-window check over (t-1, t].  Admits (and records) the request
        and returns None, or returns (seconds until it would fit, limit type)
        where seconds is inf if it can never fit."""
        win = self._windows.get(kfp)
        if win is None:
            win = self._windows[kfp] = _Window()
        dq = win.entries
        cutoff = t - 1.0
        while dq and dq[0][0] <= cutoff:
            win.tokens -= dq.popleft()[1]
        req_cap = cfg.rpm / 60.0 + 1e-9 if cfg.rpm is not None else math.inf
        tok_cap = cfg.tpm / 60.0 + 1e-9 if cfg.tpm is not None else math.inf
        n, toks = len(dq), win.tokens
        if n + 1 <= req_cap and toks + charge <= tok_cap:
            dq.append((t, charge))
            win.tokens = toks + charge
            return None
        kind = "requests" if n + 1 > req_cap else "tokens"
        if req_cap < 1 or charge > tok_cap:
            return math.inf, kind  # cannot fit even in an empty window
        # Drop the oldest entries (they leave the window at ts + 1) until both
        # limits fit; the last one dropped fixes the wait.
        for ts, c in dq:
            n -= 1
            toks -= c
            if n + 1 <= req_cap and toks + charge <= tok_cap:
                return ts + 1.0 - t, kind
        return 0.0, kind  # unreachable: an empty window fits

    # ---- handlers --------------------------------------------------------

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        t = time.monotonic()
        self.requests += 1
        self.in_flight += 1
        if self.in_flight > self.max_in_flight:
            self.max_in_flight = self.in_flight
        try:
            return await self._chat_inner(request, t)
        finally:
            self.in_flight -= 1

    async def _chat_inner(self, request: web.Request, t: float) -> web.StreamResponse:
        cfg = self.config
        raw = await request.read()
        auth = request.headers.get("Authorization", "")
        key = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
        kfp = _key_fp_int(key)
        try:
            body = orjson.loads(raw)
            bh = _body_hash_int(body)
        except (orjson.JSONDecodeError, orjson.JSONEncodeError):
            body = None
            bh = int.from_bytes(hashlib.blake2b(raw, digest_size=8).digest(), "big")

        if cfg.require_key is not None and key != cfg.require_key:
            self._record(t, kfp, bh, 401)
            return _error(
                401,
                "Incorrect API key provided. You can find your API key at https://platform.openai.com/account/api-keys.",
                "invalid_request_error",
                "invalid_api_key",
            )
        problem = _validate(body)
        if problem is not None:
            self._record(t, kfp, bh, 400)
            return _error(400, problem, "invalid_request_error", None, "messages" if "messages" in problem else None)

        if cfg.echo and (echoed := self._echo(request, raw, cfg, body, _Arrival(t, kfp, bh))) is not None:
            return echoed
        prompt_tokens = count_prompt_tokens(body)
        if cfg.rpm is not None or cfg.tpm is not None:
            rejected = self._limit_rejection(cfg, kfp, bh, t, body, prompt_tokens)
            if rejected is not None:
                return rejected

        fault = self._draw_fault(cfg)
        if fault == 2:  # hang: record now, the request never completes
            self._record(t, kfp, bh, _HANG)
            release = self._release
            try:
                await asyncio.wait_for(release.wait(), cfg.hang_s)
            except TimeoutError:
                pass
            _abort(request)
            return web.Response(status=204)  # never reaches the client
        if fault == 3:
            self._record(t, kfp, bh, 429)
            ra = cfg.retry_after_s
            return _error(
                429,
                "Rate limit reached for requests. Please try again later.",
                "requests",
                "rate_limit_exceeded",
                headers={"Retry-After": _fmt_seconds(ra), "retry-after-ms": str(math.ceil(ra * 1000.0))},
            )

        delay = cfg.latency_ms
        if cfg.latency_jitter_ms:
            delay += self._jitter_rng.uniform(0.0, cfg.latency_jitter_ms)
        if delay > 0:
            await asyncio.sleep(delay / 1000.0)

        if fault == 1:
            self._record(t, kfp, bh, _RESET)
            _abort(request)
            return web.Response(status=204)  # never reaches the client
        if fault == 4:
            status = 500 if self._rng.random() < 0.5 else 503
            self._record(t, kfp, bh, status)
            return _error(
                status,
                "The server had an error while processing your request. Sorry about that!",
                "server_error",
                None,
            )

        if cfg.fail_first_n and self._fails_first(cfg, body["messages"]):
            self._record(t, kfp, bh, 503)
            return _error(503, "The engine is currently overloaded, please try again later.", "server_error", None)
        return await self._reply(request, body, cfg, _Arrival(t, kfp, bh), prompt_tokens, malformed=fault == 5)

    def _echo(self, request: web.Request, raw: bytes, cfg: FakeConfig, body: dict[str, object],
              arrival: _Arrival) -> web.Response | None:
        """The `echo` reply for this request, or None when its messages match no echo substring."""
        last = _last_user_text(body["messages"])
        status = next((code for sub, code in cfg.echo.items() if sub in last), None)
        if status is None:
            return None
        t, kfp, bh = arrival
        self._record(t, kfp, bh, _MALFORMED if status == 200 else status)  # a 200 echo is no answer
        return web.Response(status=status, body=echo_request(request, raw), content_type="text/plain")

    def _fails_first(self, cfg: FakeConfig, messages: object) -> bool:
        """True for the first fail_first_n requests with these messages (each is counted)."""
        mh = _body_hash_int(messages)
        seen = self._fail_counts.get(mh, 0)
        if seen >= cfg.fail_first_n:
            return False
        self._fail_counts[mh] = seen + 1
        return True

    def _draw_fault(self, cfg: FakeConfig) -> int:
        """One draw per admitted request (the fault sequence depends only on the seed and arrival
        order): 0 none, 1 reset, 2 hang, 3 429, 4 5xx, 5 malformed."""
        u = self._rng.random()
        for i, p in enumerate((cfg.p_reset, cfg.p_hang, cfg.p_429, cfg.p_5xx, cfg.p_malformed), 1):
            if u < p:
                return i
            u -= p
        return 0

    def _limit_rejection(self, cfg: FakeConfig, kfp: int, bh: int, t: float, body: Mapping[str, object],
                         prompt_tokens: int) -> web.Response | None:
        """The limiter's 429 for a request over the key's rpm/tpm, or None when it is admitted."""
        verdict = self._admit(cfg, kfp, t, prompt_tokens + _max_tokens(body))
        if verdict is None:
            return None
        wait, kind = verdict
        self.n_429_limiter += 1
        self._record(t, kfp, bh, 429)
        if math.isinf(wait):
            # Like OpenAI's "Request too large": retrying cannot help.
            # OpenAI's wording (type "tokens", code "rate_limit_exceeded"), e.g. "Request too
            # large for gpt-4o in organization org-... on tokens per min (TPM): Limit 30000,
            # Requested 30601. The input or output tokens must be reduced in order to run
            # successfully. Visit https://platform.openai.com/account/rate-limits to learn more."
            unit, limit = ("tokens per min (TPM)", cfg.tpm) if kind == "tokens" else ("requests per min (RPM)", cfg.rpm)
            return _error(
                429,
                f"Request too large for {body.get('model')} in organization org-fake on {unit}: "
                f"Limit {limit}, Requested {prompt_tokens + _max_tokens(body)}. The input or output tokens "
                "must be reduced in order to run successfully. Visit "
                "https://platform.openai.com/account/rate-limits to learn more.",
                kind,
                "rate_limit_exceeded",
                headers={"Retry-After": "60", "retry-after-ms": "60000"},
            )
        wait_ms = max(1, math.ceil(wait * 1000.0))
        return _error(
            429,
            f"Rate limit reached on {kind} per min. Please try again in {wait_ms}ms.",
            kind,
            "rate_limit_exceeded",
            headers={"Retry-After": _fmt_seconds(wait_ms / 1000.0), "retry-after-ms": str(wait_ms)},
        )

    async def _reply(self, request: web.Request, body: dict[str, object], cfg: FakeConfig, arrival: _Arrival,
                     prompt_tokens: int, *, malformed: bool) -> web.StreamResponse:
        """The answer to an admitted, unfaulted request (or its malformed variant)."""
        text = expected_text(body, cfg)
        completion_tokens = -(-len(text) // 4)
        self._next_id += 1
        rid = f"chatcmpl-fake{self._next_id:012x}"
        created = int(time.time())
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        t, kfp, bh = arrival
        if malformed:
            return await self._malformed(request, t, kfp, bh, cfg, rid, created, usage)

        self._record(t, kfp, bh, 200)
        self.prompt_tokens += prompt_tokens
        self.completion_tokens += completion_tokens
        if body.get("stream") is True:
            return await self._stream(request, body, cfg, rid, created, text, usage)
        if cfg.token_delay_ms > 0 and completion_tokens > 1:
            await _sleep_until(_token_due(self._jitter_rng, cfg, time.monotonic(), completion_tokens - 1))
        payload = {
            "id": rid,
            "object": "chat.completion",
            "created": created,
            "model": cfg.served_model,
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
            ],
            "usage": usage,
        }
        return web.Response(body=orjson.dumps(payload), content_type="application/json")

    async def _malformed(
        self,
        request: web.Request,
        t: float,
        kfp: int,
        bh: int,
        cfg: FakeConfig,
        rid: str,
        created: int,
        usage: dict[str, int],
    ) -> web.StreamResponse:
        # Rotate deterministically so a handful of requests covers every kind.
        # Streaming requests get the same (non-SSE) bodies: equally unusable.
        kind = cfg.malformed_kinds[self._n_malformed % len(cfg.malformed_kinds)]
        self._n_malformed += 1
        self._record(t, kfp, bh, _MALFORMED)
        full = orjson.dumps(
            {
                "id": rid,
                "object": "chat.completion",
                "created": created,
                "model": cfg.served_model,
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": "malformed"}, "finish_reason": "stop"}
                ],
                "usage": usage,
            }
        )
        if kind == "not_json":
            # A proxy error page served with a JSON content type.
            body = b"<html><body><h1>502 Bad Gateway</h1></body></html>"
        elif kind == "truncated":
            body = full[: len(full) // 2]  # complete HTTP body, incomplete JSON
        elif kind == "no_choices":
            body = orjson.dumps(
                {"id": rid, "object": "chat.completion", "created": created, "model": cfg.served_model, "usage": usage}
            )
        else:  # "cut": headers promise the full length, the connection dies halfway
            resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
            resp.content_length = len(full)
            await resp.prepare(request)
            await resp.write(full[: len(full) // 2])
            _abort(request)
            return resp
        return web.Response(body=body, content_type="application/json")

    async def _stream(
        self,
        request: web.Request,
        body: dict[str, object],
        cfg: FakeConfig,
        rid: str,
        created: int,
        text: str,
        usage: dict[str, int],
    ) -> web.StreamResponse:
        resp = web.StreamResponse(
            status=200, headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await resp.prepare(request)
        head = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": cfg.served_model}

        def chunk(delta: dict[str, str], finish: str | None) -> bytes:
            obj = {**head, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            return b"data: " + orjson.dumps(obj) + b"\n\n"

        paced = cfg.token_delay_ms > 0
        step = 4 if paced else max(1, -(-len(text) // 4))  # one token per event, else at most 4 events
        pieces = [chunk({"content": text[i : i + step]}, None) for i in range(0, len(text), step)]
        tail = [chunk({}, "stop")]
        opts = body.get("stream_options")
        if isinstance(opts, dict) and opts.get("include_usage"):
            tail.append(b"data: " + orjson.dumps({**head, "choices": [], "usage": usage}) + b"\n\n")
        tail.append(b"data: [DONE]\n\n")
        await self._send_events(request, resp, cfg, [chunk({"role": "assistant", "content": ""}, None)], pieces, tail)
        return resp

    async def _send_events(self, request: web.Request, resp: web.StreamResponse, cfg: FakeConfig,
                           head: list[bytes], pieces: list[bytes], tail: list[bytes]) -> None:
        """Writes a stream: `head` events, then the token `pieces` on the latency model's schedule
        (the first one now), then `tail`; drops the connection after `stream_cut_after` events."""
        t0 = time.monotonic()
        sent = 0
        for i, event in enumerate([*head, *pieces, *tail]):
            if cfg.stream_cut_after is not None and sent >= cfg.stream_cut_after:
                _abort(request)
                return
            k = i - len(head)
            if cfg.token_delay_ms > 0 and 0 < k < len(pieces):
                await _sleep_until(_token_due(self._jitter_rng, cfg, t0, k))
            await resp.write(event)
            sent += 1
        await resp.write_eof()

    async def _models(self, request: web.Request) -> web.Response:
        data = {"object": "list", "data": [{"id": self.config.served_model, "object": "model", "owned_by": "fake"}]}
        return web.Response(body=orjson.dumps(data), content_type="application/json")

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(body=b'{"status":"ok"}', content_type="application/json")

    async def _version(self, request: web.Request) -> web.Response:
        # vLLM's OpenAI server answers GET /version with {"version": "<vllm version>"}.
        return web.Response(body=b'{"version":"0.0.0-fake"}', content_type="application/json")

    async def _ctl_get_config(self, request: web.Request) -> web.Response:
        return web.Response(body=orjson.dumps(_config_dict(self.config)), content_type="application/json")

    async def _ctl_set_config(self, request: web.Request) -> web.Response:
        try:
            fields = orjson.loads(await request.read())
            if not isinstance(fields, dict):
                raise ValueError("expected a JSON object of config fields")
            new = self.set_config(**fields)
        except (orjson.JSONDecodeError, ValueError, TypeError, msgspec.ValidationError) as exc:
            return _error(400, f"invalid config: {exc}", "invalid_request_error", None)
        return web.Response(body=orjson.dumps(_config_dict(new)), content_type="application/json")

    async def _ctl_stats(self, request: web.Request) -> web.Response:
        return web.Response(body=orjson.dumps(self.stats()), content_type="application/json")

    async def _ctl_log(self, request: web.Request) -> web.Response:
        try:
            offset = int(request.query.get("offset", "0"))
            limit = int(request.query["limit"]) if "limit" in request.query else None
        except ValueError:
            return _error(400, "offset and limit must be integers", "invalid_request_error", None)
        data = {
            "total": len(self._log_t),
            "dropped": self._log_dropped,
            "offset": offset,
            "entries": self.log_entries(offset, limit),
        }
        return web.Response(body=orjson.dumps(data), content_type="application/json")

    async def _ctl_reset(self, request: web.Request) -> web.Response:
        self.reset()
        return web.Response(body=b'{"status":"reset"}', content_type="application/json")

    async def _on_shutdown(self, app: web.Application) -> None:
        # Let hung handlers finish (by aborting their connection) so that
        # shutdown does not wait out aiohttp's shutdown timeout.
        self._release.set()


SERVER_KEY = web.AppKey("fake_server", FakeServer)


def make_app(config: FakeConfig | Mapping[str, object] | None = None) -> web.Application:
    """An aiohttp app serving a fresh :class:`FakeServer` (at ``app[SERVER_KEY]``)."""
    return FakeServer(config).app


def _make_runner(app: web.Application) -> web.AppRunner:
    # No access log: formatting a log line per request costs more than the reply.
    return web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=2.0)


async def start_in_loop(
    config: FakeConfig | Mapping[str, object] | None = None, host: str = "127.0.0.1", port: int = 0
) -> tuple[web.AppRunner, str]:
    """Start a server in the running event loop.

    Returns ``(runner, url)`` with ``url`` ending in ``/v1``; the state is
    ``runner.app[SERVER_KEY]`` (a :class:`FakeServer`).  Stop it with
    ``await runner.cleanup()``.
    """
    runner = _make_runner(make_app(config))
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024)
    await site.start()
    bound_port = runner.addresses[0][1]
    return runner, f"http://{host}:{bound_port}/v1"


# --------------------------------------------------------------------------
# Subprocess helper for sync tests and benchmarks
# --------------------------------------------------------------------------


class FakeServerProcess:
    """Run the fake server as a subprocess (``python -m engine.testing.fakeserver``).

    Usage::

        with FakeServerProcess({"latency_ms": 50}) as srv:
            client.base_url = srv.url          # http://127.0.0.1:PORT/v1
            srv.set_config(p_429=0.2)
            assert srv.stats()["duplicates_ok"] == 0
    """

    def __init__(
        self,
        config: Mapping[str, object] | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        startup_timeout: float = 30.0,
        python: str | None = None,
    ) -> None:
        self._config = dict(config) if config else None
        self.host = host
        self.want_port = port  # 0: any free port
        self.startup_timeout = startup_timeout
        self.python = python or sys.executable
        self.proc: subprocess.Popen[bytes] | None = None
        self.base_url = ""
        self.port = 0
        self._stderr: IO[bytes] | None = None

    @property
    def url(self) -> str:
        """Base URL for an OpenAI client, ending in ``/v1``."""
        return self.base_url + "/v1"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self, config: Mapping[str, object] | None = None) -> FakeServerProcess:
        if self.proc is not None:
            raise RuntimeError("fake server already started")
        if config is not None:
            self._config = dict(config)
        cmd = [self.python, "-m", "engine.testing.fakeserver", "--host", self.host, "--port", str(self.want_port)]
        if self._config:
            cmd += ["--config", orjson.dumps(self._config).decode()]
        # stderr goes to a file, not a pipe: nobody drains it while the server
        # runs, and a full pipe would block the server.
        self._stderr = tempfile.TemporaryFile()
        env = dict(os.environ)
        env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self.proc = subprocess.Popen(
            cmd, cwd=str(REPO_ROOT), stdout=subprocess.PIPE, stderr=self._stderr, stdin=subprocess.DEVNULL, env=env
        )
        try:
            line = self._read_listening_line()
        except BaseException:
            self._kill()
            raise
        self.base_url = line.split(" ", 1)[1].strip()
        self.port = int(self.base_url.rsplit(":", 1)[1])
        return self

    def _read_listening_line(self) -> str:
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + self.startup_timeout
        buf = b""
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while b"\n" not in buf:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RuntimeError(f"fake server did not start within {self.startup_timeout}s{self._stderr_tail()}")
                if not sel.select(left):
                    continue
                chunk = os.read(fd, 4096)
                if not chunk:
                    self.proc.wait(timeout=5)
                    raise RuntimeError(
                        f"fake server exited with code {self.proc.returncode} before listening{self._stderr_tail()}"
                    )
                buf += chunk
        line = buf.split(b"\n", 1)[0].decode()
        if not line.startswith("LISTENING "):
            raise RuntimeError(f"unexpected first line from fake server: {line!r}{self._stderr_tail()}")
        return line

    def _stderr_tail(self) -> str:
        if self._stderr is None:
            return ""
        try:
            self._stderr.seek(0)
            text = self._stderr.read()[-8000:].decode(errors="replace")
        except (OSError, ValueError):
            return ""
        return f"\n--- fake server stderr ---\n{text}" if text else ""

    def stderr_text(self) -> str:
        """Everything the server wrote to stderr so far (for debugging)."""
        return self._stderr_tail()

    def _control(self, method: str, path: str, payload: object = None) -> object:
        if not self.base_url:
            raise RuntimeError("fake server not started")
        data = orjson.dumps(payload) if payload is not None else (b"" if method == "POST" else None)
        req = urllib.request.Request(self.base_url + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return orjson.loads(resp.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")
            raise ValueError(f"{method} {path} failed: HTTP {exc.code}: {detail}") from None

    def set_config(self, **fields: object) -> dict[str, object]:
        """Change config fields at runtime; returns the full new config."""
        return msgspec.convert(self._control("POST", "/_control/config", fields), dict[str, object])

    def config(self) -> dict[str, object]:
        return msgspec.convert(self._control("GET", "/_control/config"), dict[str, object])

    def stats(self) -> Stats:
        return msgspec.convert(self._control("GET", "/_control/stats"), Stats)

    def log(self, offset: int = 0, limit: int | None = None) -> list[LogEntry]:
        """Log entries: {t, key, body_hash, status, outcome}."""
        q = f"?offset={offset}" + (f"&limit={limit}" if limit is not None else "")
        page = msgspec.convert(self._control("GET", "/_control/log" + q), dict[str, object])
        return msgspec.convert(page["entries"], list[LogEntry])

    def reset(self) -> None:
        self._control("POST", "/_control/reset")

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; always reaps.  Returns the exit code."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            try:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._kill()
        self._close_files()
        return proc.returncode

    def _kill(self) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        self._close_files()

    def _close_files(self) -> None:
        if self.proc is not None and self.proc.stdout is not None and not self.proc.stdout.closed:
            self.proc.stdout.close()
        if self._stderr is not None:
            self._stderr.close()

    def __enter__(self) -> FakeServerProcess:
        if self.proc is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __del__(self) -> None:
        # Last resort against orphans if a test forgot stop().
        proc = getattr(self, "proc", None)
        if proc is not None and proc.poll() is None:
            proc.kill()


# --------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------


_STRING_FIELDS = frozenset({"served_model", "require_key"})


def _parse_flag_value(name: str, text: str) -> object:
    # Flags take JSON values (numbers, null, true, objects); bare words are
    # strings.  String fields are taken verbatim so "--require-key 123" works.
    if name in _STRING_FIELDS:
        return None if text == "null" else text
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text


def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m engine.testing.fakeserver", description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port")
    p.add_argument("--workers", type=int, default=1, help="only 1 is supported")
    p.add_argument("--config", default=None, help="JSON object of FakeConfig fields, or @path/to/file.json")
    for name in FakeConfig.__struct_fields__:
        p.add_argument(
            "--" + name.replace("_", "-"),
            dest="cfg_" + name,
            default=None,
            metavar="JSON",
            help=f"FakeConfig.{name} (JSON value; overrides --config)",
        )
    return p


def config_from_args(args: argparse.Namespace) -> FakeConfig:
    fields: dict[str, object] = {}
    if args.config:
        text = Path(args.config[1:]).read_text() if args.config.startswith("@") else args.config
        loaded = orjson.loads(text)
        if not isinstance(loaded, dict):
            raise ValueError("--config must be a JSON object")
        fields.update(loaded)
    for name in FakeConfig.__struct_fields__:
        value = getattr(args, "cfg_" + name)
        if value is not None:
            fields[name] = _parse_flag_value(name, value)
    return msgspec.convert(fields, FakeConfig)


async def serve_until_signal(runner: web.AppRunner, root_url: str) -> None:
    """Prints the one line a parent process reads (``LISTENING <root_url>``, FakeServerProcess and
    the benchmarks wait for it), then serves until SIGTERM or SIGINT and cleans `runner` up."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        sys.stdout.write(f"LISTENING {root_url}\n")
        sys.stdout.flush()
        await stop.wait()
    finally:
        await runner.cleanup()


async def _serve(config: FakeConfig, host: str, port: int) -> None:
    runner, url = await start_in_loop(config, host, port)
    await serve_until_signal(runner, url.removesuffix("/v1"))


def main(argv: list[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.workers != 1:
        parser.error("--workers: only 1 worker is supported")
    try:
        config = config_from_args(args)
    except (ValueError, OSError, msgspec.ValidationError) as exc:
        parser.error(f"invalid config: {exc}")
    try:
        import uvloop
    except ImportError:
        asyncio.run(_serve(config, args.host, args.port))
    else:
        uvloop.run(_serve(config, args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
