"""The one error tree. Every failure the engine reports is one of these; each message is one line:
what, where, what to do.

    TrustMHError
     ├── EngineError(exit_code)        bad input or an unusable environment: one line on stderr, exit
     │    ├── ConfigError               a config file, a flag or an option is wrong (exit 2)
     │    ├── CheckpointError           an output directory's files cannot be used as they are (exit 2)
     │    ├── LockedError               another process holds the output directory (exit 2)
     │    ├── DataError                 a dataset cannot be fetched, verified or read (exit 2)
     │    │    └── DataUnavailable      the data a subtask needs is absent (a run skips the subtask)
     │    └── ServerError               a local model server could not be started or died
     └── AdapterError(kind, status, retry_after, unreachable)
                                        one classified failure of one attempt; the lane decides
                                        what follows (retry, stop, record), never the adapter

`AdapterError.kind` is a `records.ErrorKind`, so what the lane records is what the adapter said.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # type only: the error tree loads without msgspec and orjson
    from engine.core.records import ErrorKind


class TrustMHError(Exception):
    """Base of every error raised on purpose by the engine, its adapters and its pillars."""


class EngineError(TrustMHError):
    """Bad input or an unusable environment. The message is one line: what, where, what to do."""

    exit_code = 2


class ConfigError(EngineError):
    """Several problems found at once are one error, one line each (`of`, `problems`)."""

    @classmethod
    def of(cls, problems: list[str]) -> ConfigError:
        return cls("\n".join(problems))

    @property
    def problems(self) -> list[str]:
        return str(self).split("\n")


class CheckpointError(EngineError):
    pass


class LockedError(EngineError):
    pass


class DataError(EngineError):
    """A dataset could not be fetched, verified or read."""


class DataUnavailable(DataError):
    """The data a subtask needs is not present (the run skips the subtask and says why)."""


class ServerError(EngineError):
    """A local model server (embedded llama.cpp, managed vLLM) failed to start or died."""


RETRYABLE: frozenset[str] = frozenset({"rate_limited", "transient", "timeout", "malformed"})


class AdapterError(TrustMHError):
    """A classified failure of one attempt.

    kind:
      rate_limited  429 or provider overload signal; retry after `retry_after` (seconds) at least
      transient     5xx, connection reset; retry with backoff
      malformed     a 200 whose body is not the documented JSON (truncated, missing fields); retried
      timeout       the attempt exceeded its timeout; retry with backoff
      auth          401/403: final for the item, and repeated ones stop the lane
      fatal         400/404/422, prompt too long: final, never retried

    unreachable: the attempt could not even connect (the lane stops when every attempt of an item
    was unreachable, instead of retrying a server that is not there).
    """

    def __init__(
        self,
        kind: ErrorKind,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        unreachable: bool = False,
    ) -> None:
        super().__init__(message)
        self.kind: ErrorKind = kind
        self.status = status
        self.message = message
        self.retry_after = retry_after
        self.unreachable = unreachable

    @property
    def retryable(self) -> bool:
        return self.kind in RETRYABLE
