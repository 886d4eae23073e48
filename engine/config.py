"""Run configuration: TOML decoded into frozen, typed Structs; unknown keys are rejected.

Key names are a public interface (README "Configuration"); later issues fill the reserved
sections ([judge], [data], [pillars."<pillar>/<subtask>"], [prices.<model>], run.gpus) but their
keys are typed here so that a typo is an error, not a silent default.

A `[models.<name>]` table is flat: the lane's keys (engine.core.config.ModelConfig) and the keys of
its adapter (the options Struct its registry entry declares). Parsing splits the table, and
`config_to_builtins` writes it flat again, in run.json's format-1 layout.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import TypeVar

import msgspec

from adapters import registry
from engine.core.config import AdapterOptions, ModelConfig
from engine.core.errors import ConfigError
from engine.core.secrets import looks_like_key, remember


class RunConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    output: str = "runs/default"
    pillars: tuple[str, ...] = ("all",)
    limit: int = 0  # base items per subtask, 0 = all
    samples: int = 1  # generations per item
    gpus: tuple[int, ...] | None = None
    grace_period_s: float = 10.0  # after SIGINT/SIGTERM, how long in-flight requests may finish
    progress: bool | None = None  # None = on when stderr is a terminal
    # Modules imported before the models are read, so that the adapters they register can be named
    # (README "Adding an adapter"). Added after format 1: left out of run.json while empty.
    adapter_modules: tuple[str, ...] = ()


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
    pillars: dict[str, dict[str, object]] = {}
    prices: dict[str, PriceConfig] = {}


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def valid_model_name(name: str) -> bool:
    """A models key names files (responses/<name>.jsonl): letters, digits, '.', '_', '-'."""
    return bool(_NAME.match(name))


def _where(msg: str) -> tuple[str, str]:
    """Split msgspec's 'Expected `int`, got `str` - at `$.run.limit`' into (what, key path)."""
    what, _, at = msg.partition(" - at ")
    key = at.strip("`").removeprefix("$").lstrip(".") or "(top level)"
    return what, key


T = TypeVar("T", bound=msgspec.Struct)


def _convert(raw: object, typ: type[T], source: str, prefix: str) -> T:
    try:
        return msgspec.convert(raw, typ)
    except msgspec.ValidationError as exc:
        what, key = _where(str(exc))
        if what.startswith("Object contains unknown field"):
            field = what.split("`")[1]
            key = ".".join(p for p in (prefix, key if key != "(top level)" else "", field) if p)
            allowed = ", ".join(sorted(typ.__struct_fields__))
            nested = "." in key[len(prefix) + 1:]  # a key inside a table of this one: its fields are not these
            raise ConfigError(f"{source}: unknown key `{key}`" + ("" if nested else f" (allowed here: {allowed})")) from None
        if what.startswith("Object missing required field"):
            field = what.split("`")[1]
            key = ".".join(p for p in (prefix, key if key != "(top level)" else "", field) if p)
            raise ConfigError(f"{source}: missing required key `{key}`") from None
        full = ".".join(p for p in (prefix, key if key != "(top level)" else "") if p)
        raise ConfigError(f"{source}: key `{full}`: {what[0].lower() + what[1:]}") from None


_LANE_KEYS = frozenset(ModelConfig.__struct_fields__) - {"options"}

# run.json's `config.models.<name>` has carried these keys, in this order after the lane's keys, for
# every model whatever its adapter, since format 1 had one flat ModelConfig for all adapters. They
# are still written so, so that the same TOML gives byte for byte the config older runs wrote (old
# run directories resume, verify and merge); an adapter's keys that are not here follow them. When
# a stored config is read back (`stored=True`), those of them its adapter does not take are dropped.
FORMAT1_OPTION_KEYS: dict[str, object] = {
    "model_path": None, "slots": 4, "ctx_per_slot": 2048, "threads": 1, "startup_timeout_s": 120.0,
    "path": None, "tensor_parallel_size": 1, "max_model_len": None, "gpu_memory_utilization": None,
    "dtype": None, "chat_template": None, "served_model_name": None, "extra_args": [], "vllm_command": None,
    "offline_chunk": 512,
}


def parse_config(raw: Mapping[str, object], source: str, *, stored: bool = False) -> Config:
    """`stored`: `raw` is a config as run.json holds it (`config_to_builtins`), not a TOML file."""
    models_raw = raw.get("models", {})
    if not isinstance(models_raw, dict):
        raise ConfigError(f"{source}: `models` must be a table of [models.<name>] sections")
    rest = {k: v for k, v in raw.items() if k != "models"}
    cfg: Config = _convert(rest, Config, source, "")
    registry.load_modules(cfg.run.adapter_modules)
    models: dict[str, ModelConfig] = {}
    for name, body in models_raw.items():
        if not _NAME.match(name):
            raise ConfigError(f"{source}: model name `{name}` must be letters, digits, '.', '_' or '-' (it names files)")
        models[name] = parse_model(name, body, source, stored)
    cfg = msgspec.structs.replace(cfg, models=models)
    check_config(cfg, source)
    return cfg


def parse_model(name: str, body: object, source: str, stored: bool) -> ModelConfig:
    """One flat [models.<name>] table: the lane's keys, then its adapter's options."""
    prefix = f"models.{name}"
    if not isinstance(body, dict):
        model: ModelConfig = _convert(body, ModelConfig, source, prefix)  # msgspec's "expected object"
        return model
    model = _convert({k: v for k, v in body.items() if k in _LANE_KEYS}, ModelConfig, source, prefix)
    entry = registry.find(model.adapter)
    if entry is None:
        raise ConfigError(f"{source}: {prefix}.adapter: unknown adapter `{model.adapter}` "
                          f"(known: {', '.join(registry.names())}; others through run.adapter_modules)")
    own = entry.options.__struct_fields__
    rest = {k: v for k, v in body.items() if k not in _LANE_KEYS
            and not (stored and k in FORMAT1_OPTION_KEYS and k not in own)}
    unknown = [k for k in rest if k not in own]
    if unknown:
        allowed = ", ".join(sorted({*_LANE_KEYS, *own}))
        raise ConfigError(f"{source}: unknown key `{prefix}.{unknown[0]}` for adapter `{model.adapter}` "
                          f"(allowed here: {allowed})")
    options: AdapterOptions = _convert(rest, entry.options, source, prefix)
    return msgspec.structs.replace(model, options=options)


def check_config(cfg: Config, source: str) -> None:
    if cfg.run.limit < 0 or cfg.run.samples < 1:
        raise ConfigError(f"{source}: run.limit must be >= 0 and run.samples >= 1")
    for name, m in cfg.models.items():
        where = f"{source}: models.{name}"
        flat = model_to_builtins(m)
        for key, hint in registry.entry(m.adapter).required.items():
            if not flat.get(key):
                raise ConfigError(f"{where}.{key}: required for adapter `{m.adapter}` ({hint})")
        if m.api_key_env and looks_like_key(m.api_key_env):
            remember(m.api_key_env)  # whatever prints next must not show it either
            raise ConfigError(f"{where}.api_key_env: holds what looks like a key itself, not the name of an "
                              "environment variable (the value is not shown); export the key in a variable, e.g. "
                              "OPENAI_API_KEY, and name that variable here")
        if m.concurrency() < 1 or m.max_attempts < 1:
            raise ConfigError(f"{where}: max_concurrency and max_attempts must be >= 1")
        if m.requests_per_minute < 0 or m.tokens_per_minute < 0:
            raise ConfigError(f"{where}: requests_per_minute / tokens_per_minute must be >= 0 (0 = no limit)")
        if m.tpm_accounting not in ("max", "usage"):
            raise ConfigError(f"{where}.tpm_accounting: expected \"max\" or \"usage\", got \"{m.tpm_accounting}\"")
        for key, what in m.options.problems():
            raise ConfigError(f"{where}.{key}: {what}")
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


def model_to_builtins(m: ModelConfig) -> dict[str, object]:
    """One model as run.json holds it: flat, the lane's keys then the format-1 option keys (see
    FORMAT1_OPTION_KEYS), then the adapter's other keys."""
    doc: dict[str, object] = msgspec.to_builtins(m)
    options: dict[str, object] = msgspec.to_builtins(m.options)
    del doc["options"]
    for key, default in FORMAT1_OPTION_KEYS.items():
        doc[key] = options.pop(key) if key in options else list(default) if isinstance(default, list) else default
    doc.update(options)
    return doc


def config_to_builtins(cfg: Config) -> dict[str, object]:
    """The resolved config for run.json: environment variable names only, never their values."""
    doc: dict[str, object] = msgspec.to_builtins(cfg)
    doc["models"] = {name: model_to_builtins(m) for name, m in cfg.models.items()}
    run: dict[str, object] = msgspec.to_builtins(cfg.run)
    if not cfg.run.adapter_modules:
        del run["adapter_modules"]
    doc["run"] = run
    return doc
