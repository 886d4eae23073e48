"""The config a command line asks for: a config file, else the shipped default, plus the models
named on the command line (`run`/`plan --model ADAPTER:MODEL [--model-arg KEY=VALUE ...]
[--judge ADAPTER:MODEL]`), the one-liner of `inspect eval --model` and `lm_eval --model_args`.

Each named model becomes a `[models.<key>]` table, built as a file's would be and checked by the
same code (engine/config.py), so the resolved config goes to run.json like a file config and resume
and `verify` work the same. The table starts from what the adapter's registry entry declares for
the provider's own endpoint (Capabilities: base URL, conventional key variable, lowest paid tier's
limits); a `--model-arg base_url=...` (a self-hosted server speaking the same API) starts from
nothing instead, and every other --model-arg sets its key, TOML-typed. The models key is the name
after the last `/` of the model (`vllm:Qwen/Qwen3-8B` -> `Qwen3-8B`) unless `--model-arg key=NAME`.

Without a config file the run has exactly the models named (the shipped default applies only when
neither a config nor --model is given); with one they are added to its models. `--judge` makes its
model the run's only judge (a models key of the config or of a --model names one already there).
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Sequence
from typing import NamedTuple

import msgspec

from adapters import registry
from engine.config import Config, JudgeConfig, check_config, default_config, load_config, parse_model, valid_model_name
from engine.core.config import ModelConfig
from engine.core.errors import ConfigError

__all__ = ["MODEL_FLAG", "JUDGE_FLAG", "Resolved", "model_key", "model_table", "resolve"]

MODEL_FLAG = "--model"
JUDGE_FLAG = "--judge"
_BAD = re.compile(r"[^A-Za-z0-9._-]+")


class Resolved(NamedTuple):
    cfg: Config
    source: str  # run.json's config_source: the file, "default", or what the command line added
    targets: tuple[str, ...]  # the models to generate with, before --models picks among them


def _value(text: str) -> object:
    """A --model-arg value as a TOML scalar (64, 0.7, true, ["a"], "quoted"), else the text itself
    (a URL or a model id needs no quotes on a command line)."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def model_key(model: str) -> str:
    """The models key of a model id: its last path part, with characters a file name should not
    carry replaced by '-' (`Qwen/Qwen3-8B` -> `Qwen3-8B`, `ft:gpt-4o:org` -> `ft-gpt-4o-org`)."""
    return _BAD.sub("-", model.rstrip("/").rsplit("/", 1)[-1]).strip("-.")


def model_table(flag: str, spec: str, args: Sequence[str]) -> tuple[str, dict[str, object]]:
    """(models key, [models.<key>] table) of one `--model ADAPTER:MODEL` and its --model-args."""
    where = f"{flag} {spec}"
    adapter, sep, model = spec.partition(":")
    if not sep or not adapter or not model:
        raise ConfigError(f"{where}: expected ADAPTER:MODEL, e.g. {flag} openai:gpt-4o-mini "
                          f"(adapters: {', '.join(registry.names())})")
    entry = registry.find(adapter)
    if entry is None:
        raise ConfigError(f"{where}: unknown adapter `{adapter}` (known: {', '.join(registry.names())}; "
                          "others through [run] adapter_modules in a config file)")
    given: dict[str, object] = {}
    for arg in args:
        k, eq, v = arg.partition("=")
        if not eq or not k.strip():  # the text itself is not echoed: it might be a pasted key
            raise ConfigError(f"{where}: a --model-arg without KEY=: expected KEY=VALUE, e.g. --model-arg max_tokens=256")
        given[k.strip()] = _value(v.strip())
    key = given.pop("key", None)
    if key is not None and not isinstance(key, str):
        raise ConfigError(f"{where}: --model-arg key=...: a models key is a name, e.g. key=gpt4o")
    table: dict[str, object] = {"adapter": adapter, "model": model}
    caps = entry.caps
    if "base_url" not in given:  # the provider's own endpoint: its declared defaults apply
        defaults = {"base_url": caps.default_base_url, "api_key_env": caps.default_api_key_env,
                    "requests_per_minute": caps.default_requests_per_minute,
                    "tokens_per_minute": caps.default_tokens_per_minute}
        table.update({k: v for k, v in defaults.items() if v is not None})
    table.update(given)
    name = key if key is not None else model_key(model)
    if not valid_model_name(name):
        raise ConfigError(f"{where}: `{name}` cannot be a models key (letters, digits, '.', '_' or '-'; it "
                          "names files); add --model-arg key=NAME")
    return name, table


def _add_models(cfg: Config, named: Sequence[Sequence[str]], source: str,
                from_file: bool) -> tuple[Config, tuple[str, ...], str | None]:
    """cfg with the named models added: (config, target keys, judge key or None)."""
    models: dict[str, ModelConfig] = dict(cfg.models)
    targets: list[str] = list(cfg.models) if from_file else []
    judge: str | None = None
    for flag, spec, *args in named:
        if flag == JUDGE_FLAG and ":" not in spec and not args:
            if spec not in models:
                raise ConfigError(f"{flag} {spec}: not a models key (known: {', '.join(models) or 'none'}); "
                                  f"name a model as ADAPTER:MODEL, e.g. {flag} openai:gpt-4.1")
            judge = spec
            continue
        name, table = model_table(flag, spec, args)
        model = parse_model(name, table, f"{flag} {spec}", False)
        if models.get(name, model) != model:  # the same model named twice (a target as --judge) is one
            raise ConfigError(f"{flag} {spec}: models key `{name}` is taken"
                              f"{' by the config' if name in cfg.models else ''}; "
                              "add --model-arg key=OTHER_NAME after it")
        models[name] = model
        if flag == JUDGE_FLAG:
            judge = name
        elif name not in targets:
            targets.append(name)
    new = msgspec.structs.replace(cfg, models=models)
    if judge is not None:
        new = msgspec.structs.replace(new, judge=JudgeConfig(models=(judge,), max_tokens=cfg.judge.max_tokens))
    check_config(new, source)
    return new, tuple(targets), judge


def resolve(path: str | None, named: Sequence[Sequence[str]] = ()) -> Resolved:
    """The config of a command: `path` (None: the shipped default, unless --model names models)
    with the models named on the command line ([flag, spec, *model_args] each, in command-line
    order)."""
    models_named = any(flag == MODEL_FLAG for flag, *_ in named)
    if path is not None:
        cfg, source = load_config(path), path
    elif models_named:
        cfg, source = Config(), ""
    else:
        cfg, source = default_config(), "default"
    if not named:
        return Resolved(cfg, source, tuple(cfg.models))
    # Flags and models only: the --model-args are in the resolved config, and a value pasted by
    # mistake (a key) must not reach run.json or an error message.
    shown = " ".join(f"{flag} {spec}" for flag, spec, *_ in named)
    source = f"{source} + {shown}" if source else shown
    new, targets, _ = _add_models(cfg, named, source, from_file=path is not None or not models_named)
    return Resolved(new, source, targets)
