"""Provider adapters, one module per wire protocol, each registering itself in adapters.registry.

Importing this package registers the built-in adapters; the orchestrator reaches them only through
the registry (`adapters.registry.entry(name)`, `make_adapter`), never by module or name.
"""

from adapters import anthropic, embedded, gemini, openai_compat, replay, vllm, vllm_offline

__all__ = ["anthropic", "embedded", "gemini", "openai_compat", "replay", "vllm", "vllm_offline"]
