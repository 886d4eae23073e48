"""What a provider's batch API returns, in the engine's terms: the state of one batch and the
result of one request in it. Adapters translate their provider's objects into these; the batch
lane (engine/run/batching.py) never reads a provider's shapes.

A batch goes through the provider's states (OpenAI: validating, in_progress, finalizing,
completed, failed, expired, cancelling, cancelled; Anthropic: in_progress, canceling, ended;
Gemini: BATCH_STATE_PENDING, _RUNNING, _SUCCEEDED, _FAILED, _CANCELLED, _EXPIRED). `state` keeps
the provider's word (status lines show it); `ended` and `failed` are what the lane acts on.
"""

from __future__ import annotations

import msgspec

from engine.core.errors import RETRYABLE
from engine.core.records import ErrorInfo, Response

__all__ = ["BatchLimits", "BatchResult", "BatchStatus", "RETRYABLE_KINDS"]

# Kinds of a per-request error that a later batch may cure (a 5xx or 429 inside the batch, a
# request the batch expired or cancelled before it ran); any other kind is the request's result.
RETRYABLE_KINDS = RETRYABLE | {"cancelled"}


class BatchLimits(msgspec.Struct, frozen=True, kw_only=True):
    """A provider's documented limits on one batch (the defaults of batch_max_requests/_bytes)."""

    max_requests: int
    max_bytes: int


class BatchStatus(msgspec.Struct, frozen=True, kw_only=True):
    """One poll's answer.

    id          the provider's batch id (what the journal keeps)
    state       the provider's own word for it (progress and status lines)
    ended       nothing more will change: results can be read (those there are)
    failed      the batch as a whole failed (OpenAI `failed`: no request ran); retried with backoff
    results     what `batch_results` reads: file ids (OpenAI output and error files), a results
                URL (Anthropic) or the batch's name (Gemini); empty while not ended
    done/total  requests finished so far / in the batch, for progress
    message     the provider's reason when failed
    """

    id: str
    state: str
    ended: bool = False
    failed: bool = False
    results: tuple[str, ...] = ()
    done: int = 0
    total: int = 0
    message: str = ""


class BatchResult(msgspec.Struct, frozen=True, kw_only=True):
    """One request's outcome in a batch's results, matched by `custom_id` (the record key).
    Exactly one of response / error is set; an error whose kind is in RETRYABLE_KINDS is sent
    again in a later batch."""

    custom_id: str
    response: Response | None = None
    error: ErrorInfo | None = None
