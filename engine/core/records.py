"""Records that cross module boundaries and reach disk.

Every persisted shape is a frozen msgspec Struct. Fields only ever get added (with defaults), never
reordered or retyped, so old checkpoints keep decoding (msgspec's schema-evolution rules).
The names below are the public record shape documented in README ("Record shape").
"""

from __future__ import annotations

import hashlib
from typing import Any, Literal

import msgspec
import orjson

FinishReason = Literal["stop", "length", "content_filter"]
ErrorKind = Literal["rate_limited", "transient", "timeout", "fatal", "auth", "malformed", "cancelled"]


class Message(msgspec.Struct, frozen=True, kw_only=True):
    role: str
    content: str


class Item(msgspec.Struct, frozen=True, kw_only=True):
    """One unit of input: a prompt as chat messages plus what a scorer needs to grade the answer."""

    id: str
    pillar: str
    subtask: str
    messages: tuple[Message, ...]
    reference: Any = None
    metadata: dict[str, Any] = {}


class GenParams(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Generation settings that shape a request body (and therefore the record key)."""

    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] | None = None
    # JSON schema for constrained output ({"name":..., "schema":...}); None = free text.
    json_schema: dict[str, Any] | None = None


class Usage(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reasoning_tokens: int | None = None
    cached_tokens: int | None = None


class TokenTiming(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """When a streamed reply's text arrived, after its first piece (README "Streaming").

    tpot_s     (end - first piece) / (completion tokens - 1): time per output token after the first
    itl_*_s    gaps between consecutive text pieces (inter-token latency), median / 99th percentile
    chunks     text pieces received (a server may send several tokens in one)
    """

    tpot_s: float = 0.0
    itl_median_s: float = 0.0
    itl_p99_s: float = 0.0
    chunks: int = 0


class Response(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    text: str
    finish_reason: FinishReason
    usage: Usage = Usage()
    latency_s: float = 0.0
    server_model: str | None = None
    # Streamed replies only (`stream = true`): seconds from send to the first text piece, and the
    # timing of the rest. Absent otherwise, so non-streamed records keep their bytes.
    ttft_s: float | None = None
    timing: TokenTiming | None = None


class ErrorInfo(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    kind: str
    status: int | None = None
    message: str = ""


class Record(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One line of responses/<model>.jsonl: a final outcome. Exactly one of response / error is set."""

    key: str
    model: str
    pillar: str
    subtask: str
    item_id: str
    sample: int
    attempts: int
    response: Response | None = None
    error: ErrorInfo | None = None


class JudgmentRecord(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One line of judgments/<judge>.jsonl: a judge's raw output on one response under one rubric.
    Parsing is left to scoring (pure, re-runnable); `try_` 1 is the single retry after an
    unparseable output."""

    key: str
    response_key: str
    judge: str
    rubric: str
    rubric_version: str
    model: str
    pillar: str
    subtask: str
    item_id: str
    sample: int
    try_: int = msgspec.field(default=0, name="try")
    attempts: int = 1
    response: Response | None = None
    error: ErrorInfo | None = None


class AttemptError(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One line of errors/<model>.jsonl: a failed attempt (final=True when retries ran out)."""

    key: str
    model: str
    pillar: str
    subtask: str
    item_id: str
    sample: int
    attempt: int
    error: ErrorInfo
    final: bool = False
    at: float = 0.0


class KeyView(msgspec.Struct, frozen=True):
    """Decodes only what a resume scan needs; msgspec skips the rest of the line cheaply."""

    key: str
    error: ErrorInfo | None = None


record_encoder = msgspec.json.Encoder()
record_decoder = msgspec.json.Decoder(Record)
attempt_decoder = msgspec.json.Decoder(AttemptError)
keyview_decoder = msgspec.json.Decoder(KeyView)
item_decoder = msgspec.json.Decoder(Item)
judgment_decoder = msgspec.json.Decoder(JudgmentRecord)


def request_key(model: str, pillar: str, subtask: str, item_id: str, sample: int, body: dict[str, Any]) -> str:
    """The record key: a hash of who asked what, over the canonical request body as sent (auth and
    stream fields never enter the body we hash). Keys are what resume matches on: the bytes hashed
    here must never change."""
    h = _KEY_HASH()
    h.update(_dumps([model, pillar, subtask, item_id, sample, body], option=_SORT_KEYS))
    return h.hexdigest()


_dumps = orjson.dumps
_SORT_KEYS = orjson.OPT_SORT_KEYS
# A copy of an empty blake2b(digest_size=16) is the same hash, made in 2/3 of the constructor's time.
_KEY_HASH = hashlib.blake2b(digest_size=16).copy
