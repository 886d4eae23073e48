"""The adapter registry: one entry per adapter, declared in the adapter's own module with
`@adapter(...)` on its build function (inspect_ai's `@modelapi` is the model). The orchestrator
asks the entry what it needs (is it local, how many GPUs, which keys shape requests, how to build
it) and never compares adapter names.

    @adapter("vllm", options=VllmOptions, local=True, gpus=vllm_gpus, shaping=("dtype", ...))
    def build_vllm(ctx: BuildContext[VllmOptions]) -> Built: ...

The built-in adapters register when `adapters` is imported (adapters/__init__.py); others when
their module is imported, e.g. through `[run] adapter_modules` (`load_modules`). Construction does
no I/O: a lane builds request bodies (and keys) before deciding whether it needs to start a server
or open a connection.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Generic, NamedTuple, TypeVar

import msgspec

from engine.core.adapter import Adapter, ServerOpener
from engine.core.config import AdapterOptions, ModelConfig
from engine.core.errors import ConfigError
from engine.core.secrets import api_key

__all__ = ["AdapterEntry", "Built", "BuildContext", "Capabilities", "Resources", "adapter", "entry", "find", "load_modules",
           "make_adapter", "names"]

OptionsT = TypeVar("OptionsT", bound=AdapterOptions)


class Resources(NamedTuple):
    """What one lane's remote actor needs from its node (Ray: num_cpus, num_gpus)."""

    cpus: int = 0
    gpus: int = 0


class Built(NamedTuple):
    """A built adapter and, for a local one, what starts its model (None: nothing to start)."""

    adapter: Adapter
    server: ServerOpener | None = None


class BuildContext(msgspec.Struct, Generic[OptionsT], frozen=True):
    """Everything a build function gets. `with_secrets=False` builds an adapter only for
    `build_body` (verify, plan): no key is read and nothing on the machine is checked."""

    name: str  # the [models.<name>] key
    model: ModelConfig
    options: OptionsT
    log_dir: Path  # where a local server writes logs/<name>.log
    progress: Callable[[str], None] | None = None
    with_secrets: bool = True

    @property
    def model_id(self) -> str:
        """What requests name: `model`, else the models key."""
        return self.model.model or self.name

    def api_key(self) -> str | None:
        """The key from the environment variable `api_key_env` names (None: no variable named, or
        no secrets wanted); a named variable that is unset is a ConfigError."""
        return api_key(self.model.api_key_env, self.name) if self.with_secrets else None


class Capabilities(msgspec.Struct, frozen=True, kw_only=True):
    """What a provider offers that the engine may use, declared by its adapter (defaults: nothing).
    Issues that add a feature add a field here and read it from the entry; the engine never asks
    which adapter it is.

    rate_limit_headers  the family of rate-limit headers its replies carry ("openai", "anthropic"),
                        read into `last_signal`
    streaming           can stream a reply (server-sent events): its adapter is a
                        `StreamsReplies` and honours `stream = true`
    chat_completions    speaks OpenAI's Chat Completions at {base_url}/chat/completions (what
                        `engine bench --base-url` drives when no configured model is named)
    batch_api           has a provider batch API (submit many, collect later): its adapter is a
                        `SubmitsBatches` (with the provider's documented limits) and honours
                        `batch = true` / `run --batch`
    batch_windows       the completion windows its batch API accepts (`batch_window`; Anthropic and
                        Gemini take none and run a batch for up to 24 h: "24h" only); any other is
                        refused by `validate` rather than by the provider for every batch
    batch_price_factor  the batch price as a fraction of the listed one, where the provider documents
                        it (OpenAI, Anthropic, Gemini: 0.5); `[prices.<model>]` batch fields override it
    default_base_url    the provider's own endpoint, for a model named on the command line
                        (`run --model ADAPTER:MODEL`) without a base_url of its own
    default_api_key_env the variable that holds its key, for such a model (conventional names:
                        OPENAI_API_KEY, ...)
    default_requests_per_minute / default_tokens_per_minute  its published limits for the lowest
                        paid tier, for such a model (None: unknown, no limit)
    tokenizer           whose tokenizer its model ids name ("tiktoken": OpenAI's encodings, used by
                        engine/tokens.py where the id is one of theirs); None: estimated
    ignore_eos          its server takes vLLM's sampling extras `ignore_eos` and `min_tokens` in a
                        Chat Completions body (vLLM; llama.cpp's server takes ignore_eos and
                        ignores min_tokens): `engine bench` sends them so every reply is
                        --output-len tokens long, as `vllm bench serve --ignore-eos` does

    The defaults describe the provider's own endpoint: a command-line model given a base_url of
    its own (a self-hosted server speaking the same API) takes none of them; a config file's
    [models.*] table takes none either (it says what it means).
    """

    rate_limit_headers: str | None = None
    streaming: bool = False
    chat_completions: bool = False
    batch_api: bool = False
    batch_windows: tuple[str, ...] = ()
    batch_price_factor: float | None = None
    default_base_url: str | None = None
    default_api_key_env: str | None = None
    default_requests_per_minute: float | None = None
    default_tokens_per_minute: float | None = None
    tokenizer: str | None = None
    ignore_eos: bool = False


def _no_gpus(model: ModelConfig, options: AdapterOptions, pinned: bool) -> int:
    return 0


def _no_resources(options: AdapterOptions) -> Resources:
    return Resources()


class AdapterEntry(msgspec.Struct, Generic[OptionsT], frozen=True, kw_only=True):
    """What the engine knows of one adapter. Fields other than name, options and build have
    defaults, so that a capability added later is a field here, never a name test in the engine.

    local       a model process on this machine (embedded, vLLM): shards and the report group by it
    gpus        GPUs the lane holds while its model runs, given the model's keys and whether the run
                pins GPUs (`[run] gpus`); 0 keeps it out of GPU placement
    resources   what its lane's actor needs on a Ray node
    shaping     option keys that shape requests, hashed into the model's fingerprint (resume refuses
                a changed one); ("digest key", "option key") where the digest names it otherwise
    required    keys that must be set, with a hint for the error message
    caps        what the provider offers beyond one request at a time (Capabilities)
    """

    name: str
    options: type[OptionsT]
    build: Callable[[BuildContext[OptionsT]], Built]
    local: bool = False
    gpus: Callable[[ModelConfig, OptionsT, bool], int] = _no_gpus
    resources: Callable[[OptionsT], Resources] = _no_resources
    shaping: tuple[str | tuple[str, str], ...] = ()
    required: Mapping[str, str] = msgspec.field(default_factory=dict)
    caps: Capabilities = Capabilities()

    def options_of(self, model: ModelConfig) -> OptionsT:
        opts = model.options
        if not isinstance(opts, self.options):
            raise ConfigError(f"adapter `{self.name}` takes {self.options.__name__}, "
                              f"not {type(opts).__name__}")
        return opts

    def lane_gpus(self, model: ModelConfig, pinned: bool) -> int:
        return self.gpus(model, self.options_of(model), pinned)

    def lane_resources(self, model: ModelConfig) -> Resources:
        return self.resources(self.options_of(model))

    def shaping_values(self, model: ModelConfig) -> dict[str, object]:
        """{digest key: value} of the option keys that shape this model's requests."""
        opts = msgspec.to_builtins(self.options_of(model))
        out = dict(FORMAT1_SHAPING)
        for spec in self.shaping:
            key, opt = (spec, spec) if isinstance(spec, str) else spec
            out[key] = opts.get(opt)
        return out


# Every model's fingerprint has carried these digest keys since format 1 (None unless its adapter's
# shaping fills them): kept, so that the digests of older runs' models stay the same and they resume.
FORMAT1_SHAPING: dict[str, object] = {"model_path": None, "ctx_per_slot": None, "replay": None}

_ENTRIES: dict[str, AdapterEntry[AdapterOptions]] = {}


def adapter(name: str, *, options: type[OptionsT] = AdapterOptions,  # type: ignore[assignment]  # default: no keys of its own
            local: bool = False, gpus: Callable[[ModelConfig, OptionsT, bool], int] | None = None,
            resources: Callable[[OptionsT], Resources] | None = None, shaping: Sequence[str | tuple[str, str]] = (),
            required: Mapping[str, str] | None = None, caps: Capabilities | None = None,
            ) -> Callable[[Callable[[BuildContext[OptionsT]], Built]], Callable[[BuildContext[OptionsT]], Built]]:
    """Registers the decorated build function as adapter `name`. A name registered twice is an
    error (two modules claiming one adapter)."""

    def register(build: Callable[[BuildContext[OptionsT]], Built]) -> Callable[[BuildContext[OptionsT]], Built]:
        entry_: AdapterEntry[OptionsT] = AdapterEntry(
            name=name, options=options, build=build, local=local, gpus=gpus or _no_gpus,
            resources=resources or _no_resources, shaping=tuple(shaping), required=dict(required or {}),
            caps=caps or Capabilities())
        add(entry_)
        return build

    return register


def add(new: AdapterEntry[OptionsT]) -> None:
    """Registers an entry built by hand (the decorator's other half)."""
    old = _ENTRIES.get(new.name)
    if old is not None:
        raise ConfigError(f"adapter `{new.name}` is registered twice ({_where(old)} and {_where(new)}); "
                          "rename one of them")
    _ENTRIES[new.name] = new  # type: ignore[assignment]  # stored erased; options_of checks the type back


def _where(e: AdapterEntry[OptionsT]) -> str:
    return f"{e.build.__module__}.{e.build.__qualname__}"


def names() -> list[str]:
    """Registered adapter names, sorted (error messages list them)."""
    return sorted(_ENTRIES)


def find(name: str) -> AdapterEntry[AdapterOptions] | None:
    return _ENTRIES.get(name)


def entry(name: str) -> AdapterEntry[AdapterOptions]:
    """The entry of a configured adapter (ConfigError when none is registered under `name`)."""
    e = _ENTRIES.get(name)
    if e is None:
        raise ConfigError(f"unknown adapter `{name}` (known: {', '.join(names())}; "
                          "others register through [run] adapter_modules)")
    return e


def load_modules(modules: Sequence[str]) -> None:
    """Imports modules that register adapters (`[run] adapter_modules`); already imported ones
    are not imported again."""
    for mod in modules:
        try:
            importlib.import_module(mod)
        except ImportError as exc:
            raise ConfigError(f"run.adapter_modules: cannot import `{mod}` ({exc}); "
                              "name a module importable from the working directory or PYTHONPATH") from None


def make_adapter(name: str, cfg: ModelConfig, log_dir: Path, progress: Callable[[str], None] | None = None,
                 *, with_secrets: bool = True) -> Built:
    """Builds the adapter of `[models.<name>]`; with_secrets=False: only for `build_body`."""
    e = entry(cfg.adapter)
    return e.build(BuildContext(name=name, model=cfg, options=e.options_of(cfg), log_dir=log_dir,
                                progress=progress, with_secrets=with_secrets))
