"""The contract between the scheduler and a provider adapter.

An adapter speaks one wire protocol. It builds a request body (pure, deterministic: the body is
hashed into the record key), sends it, and either returns a `Response` or raises `AdapterError`
with a classified kind. It never sleeps, retries or counts: the scheduler owns all of that.
"""

from __future__ import annotations

from typing import Any, Protocol

from engine.records import GenParams, Message, Response


class AdapterError(Exception):
    """A classified failure of one attempt.

    kind:
      rate_limited  429 or provider overload signal; retry after `retry_after` (seconds) at least
      transient     5xx, connection reset; retry with backoff
      malformed     a 200 whose body is not the documented JSON (truncated, missing fields); retried
      timeout       the attempt exceeded its timeout; retry with backoff
      auth          401/403: final for the item, and repeated ones stop the lane
      fatal         400/404/422, prompt too long: final, never retried
    """

    def __init__(
        self,
        kind: str,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status
        self.message = message
        self.retry_after = retry_after

    @property
    def retryable(self) -> bool:
        return self.kind in ("rate_limited", "transient", "timeout", "malformed")


class Adapter(Protocol):
    """What the scheduler needs from a provider adapter (one instance per lane)."""

    def build_body(self, messages: tuple[Message, ...], params: GenParams) -> dict[str, Any]:
        """The request body exactly as it will be sent (minus auth and stream fields)."""
        ...

    async def send(self, body: dict[str, Any], timeout: float) -> Response:
        """One attempt. Returns a Response (a refusal is a Response with finish_reason
        "content_filter") or raises AdapterError."""
        ...

    async def aclose(self) -> None: ...
