"""One model's configuration as adapters see it: the lane's own keys (`ModelConfig`) and the
adapter's keys (a subclass of `AdapterOptions`, declared by the adapter's registry entry).

Both are written flat in one `[models.<name>]` table; engine/config.py splits the table, checks
each half against its Struct (an unknown key is an error naming the keys allowed for that
adapter), and the resolved config goes to run.json flat again. Parsing and validation live in
engine/config.py; these Structs live here because adapters read them and may not import upward.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable

import msgspec

__all__ = ["AdapterOptions", "ModelConfig", "did_you_mean", "number_problem"]


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """ "; did you mean 'X'?" when `name` is close to one of `known` (difflib), else ""."""
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def number_problem(value: object, *, minimum: float = 0.0, strict: bool = False) -> str | None:
    """What is wrong with a number that must be finite and >= `minimum` (> with `strict`), or None
    (also for None and non-numbers, which the types rule on). NaN passes every comparison, so
    finiteness is checked first."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    if not math.isfinite(value):
        return f"must be a finite number, got {value}"
    if value < minimum or (strict and value == minimum):
        return f"must be {'>' if strict else '>='} {minimum:g}, got {value}"
    return None


class AdapterOptions(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Base of an adapter's own keys. An adapter without keys of its own uses this class itself.

    The methods give what a lane derives from the options when the lane's keys leave it open;
    subclasses override them next to the keys they derive from."""

    def default_concurrency(self) -> int:
        """Requests in flight when `max_concurrency` is not set."""
        return 16

    def context_window(self) -> int | None:
        """Tokens a prompt plus max_tokens must fit in when `context_tokens` is not set (None:
        unknown, nothing is truncated)."""
        return None

    def start_timeout_s(self) -> float:
        """How long the lane's model (server, in-process engine, remote actor) may take to start."""
        return 120.0

    def problems(self) -> list[tuple[str, str]]:
        """(key, what is wrong) for values the types alone do not rule out; empty when all is well."""
        return []


class ModelConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The lane's keys, common to every adapter (README "Configuration"). Field order is the order
    of run.json's `config.models.<name>` (format 1): do not reorder, only append before `options`."""

    adapter: str
    model: str = ""  # id sent to the server; empty = the [models.<name>] key
    base_url: str | None = None
    api_key_env: str | None = None
    max_concurrency: int | None = None  # None = the adapter's default (options.default_concurrency)
    requests_per_minute: float = 0.0  # 0 = no limit
    tokens_per_minute: float = 0.0  # 0 = no limit
    # "max": charge the up-front estimate, raise it when usage says more (providers that charge
    # max_tokens at admission, like OpenAI); "usage": also refund what usage says was unused.
    tpm_accounting: str = "max"
    max_tokens: int | None = 512
    temperature: float | None = 0.0
    top_p: float | None = None
    seed: int | None = None
    timeout_s: float = 120.0  # per attempt
    deadline_s: float = 1800.0  # per item, all attempts and waits included
    max_attempts: int = 6
    backoff_base_s: float = 0.5
    backoff_max_s: float = 60.0
    auth_failures_to_stop: int = 3
    # Prompt + max_tokens must fit here, or the prompt is truncated by engine/truncate.py's rule.
    # None: the adapter's default (options.context_window; unknown for API models).
    context_tokens: int | None = None
    # Circuit breaker (engine/run/breaker.py): this many systematic failures of one kind (5xx,
    # malformed body, connection refused/lost) with no success between pause the lane (0 = never);
    # probes follow after breaker_probe_s, doubling, and the lane stops once the pause would pass
    # breaker_max_pause_s.
    breaker_failures: int = 20
    breaker_probe_s: float = 5.0
    breaker_max_pause_s: float = 300.0
    # --backend ray (added after format 1: left out of run.json while default): Ray custom resources
    # the lane's actor asks for (pins the lane to nodes that offer them), and how many times a lost
    # actor is replaced before the lane fails.
    ray_resources: dict[str, float] = {}
    ray_max_restarts: int = 3
    # Ask for the reply as server-sent events (adapters whose registry entry declares
    # caps.streaming) and record ttft_s and token timing. Never part of the request key.
    stream: bool = False
    # Batch lane (README "Batch lanes"): send this lane's requests as provider batch jobs (adapters
    # whose registry entry declares caps.batch_api), at the provider's batch price. Never part of
    # the request key: a run may switch between batch and direct requests and resume.
    batch: bool = False
    batch_max_requests: int | None = None  # per batch; None: the provider's documented limit
    batch_max_bytes: int | None = None  # per batch's input; None: the provider's documented limit
    batch_wait_s: float = 60.0  # gather requests this long after the first before submitting
    batch_poll_s: float = 30.0  # first poll interval; doubles up to batch_poll_max_s
    batch_poll_max_s: float = 600.0
    batch_window: str = "24h"  # the provider's completion window (OpenAI completion_window)
    # The adapter's own keys (flat in the TOML table). Not a TOML key itself.
    options: AdapterOptions = msgspec.field(default_factory=AdapterOptions)

    def context_window(self) -> int | None:
        return self.context_tokens if self.context_tokens is not None else self.options.context_window()

    def concurrency(self) -> int:
        return self.max_concurrency if self.max_concurrency is not None else self.options.default_concurrency()
