"""Run configuration: TOML decoded into frozen, typed Structs; unknown keys are rejected.

Key names are a public interface (README "Configuration"); later issues fill the reserved
sections ([judge], [data], [pillars."<pillar>/<subtask>"], [prices.<model>], run.gpus) but their
keys are typed here so that a typo is an error, not a silent default.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any

import msgspec

from engine.core.errors import ConfigError

ADAPTERS = ("openai", "embedded", "replay", "anthropic", "gemini", "vllm", "vllm-offline")


class RunConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    output: str = "runs/default"
    pillars: tuple[str, ...] = ("all",)
    limit: int = 0  # base items per subtask, 0 = all
    samples: int = 1  # generations per item
    gpus: tuple[int, ...] | None = None
    grace_period_s: float = 10.0  # after SIGINT/SIGTERM, how long in-flight requests may finish
    progress: bool | None = None  # None = on when stderr is a terminal


class ModelConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    adapter: str
    model: str = ""  # id sent to the server; empty = the [models.<name>] key
    base_url: str | None = None
    api_key_env: str | None = None
    max_concurrency: int | None = None  # None = adapter default (16; embedded: slots)
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
    # None: unknown (API models); embedded models default to ctx_per_slot.
    context_tokens: int | None = None
    # embedded (llama.cpp) options
    model_path: str | None = None
    slots: int = 4
    ctx_per_slot: int = 2048
    threads: int = 1
    startup_timeout_s: float = 120.0
    # replay
    path: str | None = None
    # vLLM (adapter "vllm": `vllm serve` launched per model unless base_url is set; "vllm-offline")
    tensor_parallel_size: int = 1  # GPUs per model (also what an embedded lane asks for under run.gpus)
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
    offline_chunk: int = 512  # vllm-offline: requests per LLM.chat call (records are written per chunk)

    def context_window(self) -> int | None:
        if self.context_tokens is not None:
            return self.context_tokens
        if self.adapter in ("vllm", "vllm-offline"):
            return self.max_model_len
        return self.ctx_per_slot if self.adapter == "embedded" else None

    def concurrency(self) -> int:
        if self.max_concurrency is not None:
            return self.max_concurrency
        if self.adapter == "vllm-offline":
            return self.offline_chunk  # the workers fill exactly one chunk
        if self.adapter == "vllm":
            return 256  # the server batches continuously; let it see plenty of requests
        return self.slots if self.adapter == "embedded" else 16


class JudgeConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    models: tuple[str, ...] = ()  # the first is the ranked judge
    rubrics: dict[str, str] = {}  # rubric name -> models key that judges it
    max_tokens: int | None = None  # caps every rubric's own max_tokens (small local judges ramble)


class DataConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    dir: str | None = None  # official data laid out like shared/trustmh; None = built-in items
    mirror: str | None = None  # base URL of a mirror for `data fetch`
    cache: str | None = None


class PriceConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    input_per_mtok: float = 0.0
    output_per_mtok: float = 0.0


class Config(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    run: RunConfig = RunConfig()
    models: dict[str, ModelConfig] = {}
    judge: JudgeConfig = JudgeConfig()
    data: DataConfig = DataConfig()
    pillars: dict[str, dict[str, Any]] = {}
    prices: dict[str, PriceConfig] = {}


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def _where(msg: str) -> tuple[str, str]:
    """Split msgspec's 'Expected `int`, got `str` - at `$.run.limit`' into (what, key path)."""
    what, _, at = msg.partition(" - at ")
    key = at.strip("`").removeprefix("$").lstrip(".") or "(top level)"
    return what, key


def _convert(raw: Any, typ: type, source: str, prefix: str) -> Any:
    try:
        return msgspec.convert(raw, typ)
    except msgspec.ValidationError as exc:
        what, key = _where(str(exc))
        if what.startswith("Object contains unknown field"):
            field = what.split("`")[1]
            key = ".".join(p for p in (prefix, key if key != "(top level)" else "", field) if p)
            allowed = ", ".join(sorted(typ.__struct_fields__)) if hasattr(typ, "__struct_fields__") else ""
            raise ConfigError(f"{source}: unknown key `{key}`" + (f" (allowed here: {allowed})" if allowed and "." not in key[len(prefix) + 1 :] else "")) from None
        if what.startswith("Object missing required field"):
            field = what.split("`")[1]
            key = ".".join(p for p in (prefix, key if key != "(top level)" else "", field) if p)
            raise ConfigError(f"{source}: missing required key `{key}`") from None
        full = ".".join(p for p in (prefix, key if key != "(top level)" else "") if p)
        raise ConfigError(f"{source}: key `{full}`: {what[0].lower() + what[1:]}") from None


def parse_config(raw: dict[str, Any], source: str) -> Config:
    models_raw = raw.get("models", {})
    if not isinstance(models_raw, dict):
        raise ConfigError(f"{source}: `models` must be a table of [models.<name>] sections")
    models: dict[str, ModelConfig] = {}
    for name, body in models_raw.items():
        if not _NAME.match(name):
            raise ConfigError(f"{source}: model name `{name}` must be letters, digits, '.', '_' or '-' (it names files)")
        models[name] = _convert(body, ModelConfig, source, f"models.{name}")
    rest = {k: v for k, v in raw.items() if k != "models"}
    cfg: Config = _convert(rest, Config, source, "")
    cfg = msgspec.structs.replace(cfg, models=models)
    _check(cfg, source)
    return cfg


def _check(cfg: Config, source: str) -> None:
    if cfg.run.limit < 0 or cfg.run.samples < 1:
        raise ConfigError(f"{source}: run.limit must be >= 0 and run.samples >= 1")
    for name, m in cfg.models.items():
        where = f"{source}: models.{name}"
        if m.adapter not in ADAPTERS:
            raise ConfigError(f"{where}.adapter: unknown adapter `{m.adapter}` (known: {', '.join(ADAPTERS)})")
        if m.adapter == "openai" and not m.base_url:
            raise ConfigError(f"{where}.base_url: required for adapter `openai` (e.g. https://api.openai.com/v1)")
        if m.adapter == "replay" and not m.path:
            raise ConfigError(f"{where}.path: required for adapter `replay` (a JSONL file of recorded responses)")
        if m.concurrency() < 1 or m.max_attempts < 1:
            raise ConfigError(f"{where}: max_concurrency and max_attempts must be >= 1")
        if m.requests_per_minute < 0 or m.tokens_per_minute < 0:
            raise ConfigError(f"{where}: requests_per_minute / tokens_per_minute must be >= 0 (0 = no limit)")
        if m.tpm_accounting not in ("max", "usage"):
            raise ConfigError(f"{where}.tpm_accounting: expected \"max\" or \"usage\", got \"{m.tpm_accounting}\"")
        if m.tensor_parallel_size < 1:
            raise ConfigError(f"{where}.tensor_parallel_size: must be >= 1 (GPUs per model)")
        if m.max_model_len is not None and m.max_model_len < 1:
            raise ConfigError(f"{where}.max_model_len: must be >= 1")
        if m.gpu_memory_utilization is not None and not 0 < m.gpu_memory_utilization <= 1:
            raise ConfigError(f"{where}.gpu_memory_utilization: must be in (0, 1], e.g. 0.9")
        if m.offline_chunk < 1:
            raise ConfigError(f"{where}.offline_chunk: must be >= 1 (e.g. 512)")
        if m.vllm_command is not None and not m.vllm_command:
            raise ConfigError(f"{where}.vllm_command: must name a command (a non-empty list of strings)")
    if cfg.run.gpus is not None and (any(g < 0 for g in cfg.run.gpus) or len(set(cfg.run.gpus)) != len(cfg.run.gpus)):
        raise ConfigError(f"{source}: run.gpus must be distinct GPU indices >= 0, e.g. [0, 1]")
    for j in cfg.judge.models:
        if j not in cfg.models:
            raise ConfigError(f"{source}: judge.models names `{j}`, which is not a [models.{j}] section")
    for rubric, j in cfg.judge.rubrics.items():
        if j not in cfg.models:
            raise ConfigError(f"{source}: judge.rubrics.{rubric} names `{j}`, which is not a [models.{j}] section")


def load_config(path: str | os.PathLike[str]) -> Config:
    p = Path(path)
    try:
        text = p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read config {p}: {exc.strerror}; pass an existing TOML file") from None
    try:
        raw = tomllib.loads(text.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: not valid TOML: {exc}") from None
    return parse_config(raw, str(p))


def default_config() -> Config:
    """The config shipped in the package: what `python -m engine run` uses with no CONFIG."""
    from importlib.resources import files

    res = files("engine").joinpath("default.toml")
    return parse_config(tomllib.loads(res.read_text("utf-8")), "default config (engine/default.toml)")


def config_to_builtins(cfg: Config) -> dict[str, Any]:
    """The resolved config for run.json: environment variable names only, never their values."""
    return msgspec.to_builtins(cfg)
