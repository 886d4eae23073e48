"""Adapter construction by config `adapter` name. Construction does no I/O: a lane builds request
bodies (and keys) before deciding whether it needs to start a server or open a connection."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

from engine.config import ModelConfig
from engine.core.adapter import Adapter
from engine.core.errors import ConfigError
from engine.core.secrets import api_key

OpenServer = Callable[[Adapter], AbstractAsyncContextManager[Any]]


def make_adapter(name: str, cfg: ModelConfig, log_dir: Path,
                 progress: Callable[[str], None] | None = None,
                 *, with_secrets: bool = True) -> tuple[Adapter, OpenServer | None]:
    """with_secrets=False builds an adapter only for `build_body` (verify, plan): no key needed."""
    from adapters.openai_compat import OpenAIChat

    if cfg.adapter == "openai":
        assert cfg.base_url
        key = api_key(cfg.api_key_env, name) if with_secrets else None
        return OpenAIChat(base_url=cfg.base_url, model=cfg.model or name, api_key=key,
                          concurrency=cfg.concurrency()), None
    if cfg.adapter == "embedded":
        return _embedded(name, cfg, log_dir, progress)
    if cfg.adapter in ("anthropic", "gemini"):
        from adapters.anthropic import AnthropicMessages
        from adapters.gemini import GeminiGenerate

        cls = AnthropicMessages if cfg.adapter == "anthropic" else GeminiGenerate
        key = api_key(cfg.api_key_env, name) if with_secrets else None
        return cls(model=cfg.model or name, api_key=key, concurrency=cfg.concurrency(), base_url=cfg.base_url), None
    if cfg.adapter == "replay":
        from adapters.replay import ReplayAdapter

        assert cfg.path
        return ReplayAdapter(Path(cfg.path), model=cfg.model or name), None
    if cfg.adapter == "vllm":
        from adapters.vllm import make_vllm

        key = api_key(cfg.api_key_env, name) if (with_secrets and cfg.api_key_env) else None
        return make_vllm(name, cfg, log_dir, with_secrets=with_secrets, api_key=key)
    if cfg.adapter == "vllm-offline":
        from adapters.vllm_offline import make_vllm_offline

        return make_vllm_offline(name, cfg, log_dir, with_secrets=with_secrets)
    raise ConfigError(f"models.{name}.adapter: `{cfg.adapter}` is not available in this version of the engine")


def _embedded(name: str, cfg: ModelConfig, log_dir: Path,
              progress: Callable[[str], None] | None) -> tuple[Adapter, OpenServer]:
    from adapters.openai_compat import OpenAIChat

    alias = cfg.model or "smollm2-135m"
    # The server's address is only known once it runs; build_body never needs it.
    adapter = OpenAIChat(base_url="http://127.0.0.1:0/v1", model=alias, api_key=None,
                         concurrency=cfg.concurrency(), reasoning=False)

    @asynccontextmanager
    async def open_server(a: Adapter) -> AsyncIterator[Any]:
        try:
            from adapters.embedded import EmbeddedOptions, embedded_server
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ConfigError(f"models.{name}: {exc}") from None
        opts = EmbeddedOptions(model_path=cfg.model_path, alias=alias, slots=cfg.slots,
                               ctx_per_slot=cfg.ctx_per_slot, threads=cfg.threads, seed=cfg.seed or 0,
                               startup_timeout_s=cfg.startup_timeout_s)
        async with embedded_server(opts, log_dir / f"{name}.log", progress=progress) as server:
            assert isinstance(a, OpenAIChat)
            a.url = server.base_url.rstrip("/") + "/chat/completions"
            yield server

    return adapter, open_server
