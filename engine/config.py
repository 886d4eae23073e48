"""Run configuration: TOML decoded into frozen, typed Structs; unknown keys are rejected.

Key names are a public interface (README "Configuration"); later issues fill the reserved
sections ([judge], [data], [pillars."<pillar>/<subtask>"], [prices.<model>], run.gpus) but their
keys are typed here so that a typo is an error, not a silent default.

A `[models.<name>]` table is flat: the lane's keys (engine.core.config.ModelConfig) and the keys of
its adapter (the options Struct its registry entry declares). Parsing splits the table, and
`config_to_builtins` writes it flat again, in run.json's format-1 layout.

Errors come all at once: `parse_config` collects every unknown key (with the closest allowed one and
the keys allowed there), wrong type, out-of-range or non-finite value, and bad [pillars.*] or [judge]
name of a file, and raises one ConfigError with a line per problem (the CLI prints each as an
`error:` line). Every case a test checks is in docs/bad-inputs.md.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import TypeVar, get_args, get_origin

import msgspec

from adapters import registry
from engine.core.config import AdapterOptions, ModelConfig, did_you_mean, number_problem
from engine.core.errors import ConfigError
from engine.core.secrets import looks_like_key, remember
from engine.options import problems as pillar_problems


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
    # A response cache folder shared across runs (`run --cache DIR`; engine/store/response_cache.py);
    # None: off. Added after format 1: left out of run.json while unset.
    cache: str | None = None


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
    # A batch lane's price (README "Batch lanes"); None: the listed price times the batch discount
    # the provider documents (its registry entry's caps.batch_price_factor), else the listed price.
    batch_input_per_mtok: float | None = None
    batch_output_per_mtok: float | None = None


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

# More workers than this only cost memory (about 1 KB each: 1,000,000 took 1.07 GB and 18 s to start
# for 2,000 items) and file descriptors; no server serves that many requests of one client at once.
MAX_CONCURRENCY = 10_000


def _where(msg: str) -> tuple[str, str]:
    """Split msgspec's 'Expected `int`, got `str` - at `$.run.limit`' into (what, key path)."""
    what, _, at = msg.partition(" - at ")
    key = at.strip("`").removeprefix("$").lstrip(".") or "(top level)"
    return what, key


def _join(*parts: str) -> str:
    return ".".join(p for p in parts if p)


T = TypeVar("T", bound=msgspec.Struct)


def _struct_of(typ: object) -> type[msgspec.Struct] | None:
    return typ if isinstance(typ, type) and issubclass(typ, msgspec.Struct) else None


def _field_problems(value: object, typ: object, source: str, key: str) -> list[str]:
    """A field's value against its type; a table of Structs (or a dict of them) is checked key by key."""
    struct = _struct_of(typ)
    if struct is not None and isinstance(value, dict):
        return _problems(value, struct, source, key)
    if get_origin(typ) is dict and isinstance(value, dict):
        inner = _struct_of(get_args(typ)[1])
        if inner is not None:
            return [p for k, v in value.items() for p in _field_problems(v, inner, source, _join(key, str(k)))]
    try:
        msgspec.convert(value, typ)
    except msgspec.ValidationError as exc:
        what, sub = _where(str(exc))
        full = _join(key, sub if sub != "(top level)" else "")
        return [f"{source}: key `{full}`: {what[0].lower() + what[1:]}"]
    return []


def _problems(raw: Mapping[str, object], typ: type[msgspec.Struct], source: str, prefix: str) -> list[str]:
    """Every unknown key (with the closest allowed one), missing key and wrongly typed value of one
    table, all at once."""
    fields = {f.name: f for f in msgspec.structs.fields(typ)}
    out: list[str] = []
    for name, value in raw.items():
        key = _join(prefix, name)
        f = fields.get(name)
        if f is None:
            out.append(f"{source}: unknown key `{key}`{did_you_mean(name, fields)} "
                       f"(allowed here: {', '.join(sorted(fields))})")
        else:
            out += _field_problems(value, f.type, source, key)
    out += [f"{source}: missing required key `{_join(prefix, n)}`" for n, f in fields.items()
            if f.required and n not in raw]
    return out


def _convert(raw: object, typ: type[T], source: str, prefix: str) -> T:
    """`raw` as `typ`, or a ConfigError listing every problem of the table."""
    try:
        return msgspec.convert(raw, typ)
    except msgspec.ValidationError as exc:
        problems = _problems(raw, typ, source, prefix) if isinstance(raw, dict) else []
        if not problems:
            what, key = _where(str(exc))
            full = _join(prefix, key if key != "(top level)" else "")
            problems = [f"{source}: key `{full or prefix}`: {what[0].lower() + what[1:]}"]
        raise ConfigError.of(problems) from None


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
    """`stored`: `raw` is a config as run.json holds it (`config_to_builtins`), not a TOML file.
    Every problem is reported at once: one ConfigError, one line per problem."""
    models_raw = raw.get("models", {})
    if not isinstance(models_raw, dict):
        raise ConfigError(f"{source}: `models` must be a table of [models.<name>] sections")
    rest = {k: v for k, v in raw.items() if k != "models"}
    problems: list[str] = []
    try:
        cfg: Config | None = _convert(rest, Config, source, "")
    except ConfigError as exc:
        problems += exc.problems
        cfg = None
    registry.load_modules(cfg.run.adapter_modules if cfg is not None else ())
    models: dict[str, ModelConfig] = {}
    for name, body in models_raw.items():
        if not _NAME.match(name):
            problems.append(f"{source}: model name `{name}` must be letters, digits, '.', '_' or '-' (it names files)")
            continue
        try:
            models[name] = parse_model(name, body, source, stored)
        except ConfigError as exc:
            problems += exc.problems
    # Values are checked wherever the types were right, so one pass lists both kinds of problem.
    if cfg is None:
        problems += [p for name, m in models.items() for p in _model_problems(m, f"{source}: models.{name}")]
        raise ConfigError.of(problems)
    cfg = msgspec.structs.replace(cfg, models=models)
    problems += _check(cfg, source, names=set(models_raw))
    if not stored:  # a stored config passed these when its run started; the subtasks may have changed since
        problems += [f"{source}: {p}" for p in pillar_problems(cfg.pillars, cfg.judge.rubrics)]
    if problems:
        raise ConfigError.of(problems)
    return cfg


def parse_model(name: str, body: object, source: str, stored: bool) -> ModelConfig:
    """One flat [models.<name>] table: the lane's keys, then its adapter's options."""
    prefix = f"models.{name}"
    if not isinstance(body, dict):
        model: ModelConfig = _convert(body, ModelConfig, source, prefix)  # msgspec's "expected object"
        return model
    adapter = body.get("adapter")
    entry = registry.find(adapter) if isinstance(adapter, str) else None
    if isinstance(adapter, str) and entry is None:
        raise ConfigError(f"{source}: {prefix}.adapter: unknown adapter `{adapter}` "
                          f"(known: {', '.join(registry.names())}; others through run.adapter_modules)"
                          f"{did_you_mean(adapter, registry.names())}")
    own = entry.options.__struct_fields__ if entry is not None else ()
    rest = {k: v for k, v in body.items() if k not in _LANE_KEYS
            and not (stored and k in FORMAT1_OPTION_KEYS and k not in own)}
    problems = _problems({k: v for k, v in body.items() if k in _LANE_KEYS}, ModelConfig, source, prefix)
    allowed = sorted({*_LANE_KEYS, *own})
    for k in rest:
        if entry is not None and k not in own:
            problems.append(f"{source}: unknown key `{prefix}.{k}` for adapter `{adapter}`{did_you_mean(k, allowed)} "
                            f"(allowed here: {', '.join(allowed)})")
    if entry is not None:
        problems += _problems({k: v for k, v in rest.items() if k in own}, entry.options, source, prefix)
    if problems:
        raise ConfigError.of(problems)
    model = msgspec.convert({k: v for k, v in body.items() if k in _LANE_KEYS}, ModelConfig)
    assert entry is not None  # a missing adapter key is a problem above
    options: AdapterOptions = msgspec.convert(rest, entry.options)
    return msgspec.structs.replace(model, options=options)


# Keys whose value must be a finite number >= 0 (> 0 where zero makes no sense); NaN and infinity
# would pass every comparison below unnoticed, so each is checked for finiteness first.
_AT_LEAST_0 = ("requests_per_minute", "tokens_per_minute", "backoff_base_s", "backoff_max_s", "temperature",
               "breaker_failures", "breaker_max_pause_s", "ray_max_restarts", "batch_wait_s")
_ABOVE_0 = ("timeout_s", "deadline_s", "top_p", "breaker_probe_s", "batch_poll_s", "batch_poll_max_s")
_AT_LEAST_1 = ("max_attempts", "auth_failures_to_stop", "max_tokens", "context_tokens", "batch_max_requests",
               "batch_max_bytes")


def _model_problems(m: ModelConfig, where: str) -> list[str]:
    out: list[str] = []
    checks = [(k, 0.0, False) for k in _AT_LEAST_0] + [(k, 0.0, True) for k in _ABOVE_0] + \
             [(k, 1.0, False) for k in _AT_LEAST_1]
    for key, minimum, strict in checks:
        what = number_problem(getattr(m, key), minimum=minimum, strict=strict)
        if what:
            out.append(f"{where}.{key}: {what}")
    for res, amount in m.ray_resources.items():
        if (what := number_problem(amount, strict=True)):
            out.append(f"{where}.ray_resources.{res}: {what}")
    if m.top_p is not None and m.top_p > 1:
        out.append(f"{where}.top_p: must be in (0, 1], got {m.top_p}")
    if not 1 <= m.concurrency() <= MAX_CONCURRENCY:
        out.append(f"{where}.max_concurrency: must be between 1 and {MAX_CONCURRENCY}, got {m.concurrency()} "
                   "(requests in flight at once)")
    if m.tpm_accounting not in ("max", "usage"):
        out.append(f"{where}.tpm_accounting: expected \"max\" or \"usage\", got \"{m.tpm_accounting}\"")
    if m.stream and not registry.entry(m.adapter).caps.streaming:
        out.append(f"{where}.stream: adapter `{m.adapter}` cannot stream; remove `stream = true` or use an "
                   "adapter that streams (see README \"Streaming\")")
    if m.batch and not registry.entry(m.adapter).caps.batch_api:
        out.append(f"{where}.batch: adapter `{m.adapter}` has no batch API; remove `batch = true` or use an "
                   "adapter that has one (see README \"Batch lanes\")")
    caps = registry.entry(m.adapter).caps
    if caps.batch_api and m.batch_window not in caps.batch_windows:  # `run --batch` may turn batch on
        out.append(f"{where}.batch_window: adapter `{m.adapter}` accepts {' or '.join(map(repr, caps.batch_windows))}, "
                   f"got {m.batch_window!r}; set one of those or remove the key")
    flat = model_to_builtins(m)
    for key, hint in registry.entry(m.adapter).required.items():
        if not flat.get(key):
            out.append(f"{where}.{key}: required for adapter `{m.adapter}` ({hint})")
    if m.api_key_env and looks_like_key(m.api_key_env):
        remember(m.api_key_env)  # whatever prints next must not show it either
        out.append(f"{where}.api_key_env: holds what looks like a key itself, not the name of an "
                   "environment variable (the value is not shown); export the key in a variable, e.g. "
                   "OPENAI_API_KEY, and name that variable here")
    out += [f"{where}.{key}: {what}" for key, what in m.options.problems()]
    return out


def check_config(cfg: Config, source: str) -> None:
    """The values of a config whose types are right (every problem at once)."""
    problems = _check(cfg, source)
    if problems:
        raise ConfigError.of(problems)


def _check(cfg: Config, source: str, names: set[str] | None = None) -> list[str]:
    """Values the types alone do not rule out, every one of them. `names`: every models key the
    config has (those whose table has problems of its own too), which judge keys may name."""
    names = set(cfg.models) if names is None else names
    out: list[str] = []
    if cfg.run.limit < 0:
        out.append(f"{source}: run.limit: must be >= 0 (0 = all items), got {cfg.run.limit}")
    if cfg.run.samples < 1:
        out.append(f"{source}: run.samples: must be >= 1, got {cfg.run.samples}")
    if (what := number_problem(cfg.run.grace_period_s)):
        out.append(f"{source}: run.grace_period_s: {what}")
    if not cfg.run.output.strip():
        out.append(f"{source}: run.output: must name a directory, got an empty string")
    for name, m in cfg.models.items():
        out += _model_problems(m, f"{source}: models.{name}")
    if cfg.run.gpus is not None and (any(g < 0 for g in cfg.run.gpus) or len(set(cfg.run.gpus)) != len(cfg.run.gpus)):
        out.append(f"{source}: run.gpus must be distinct GPU indices >= 0, e.g. [0, 1]")
    for j in cfg.judge.models:
        if j not in names:
            out.append(f"{source}: judge.models names `{j}`, which is not a [models.{j}] section"
                       f"{did_you_mean(j, cfg.models)}")
    for rubric, j in cfg.judge.rubrics.items():
        if j not in names:
            out.append(f"{source}: judge.rubrics.{rubric} names `{j}`, which is not a [models.{j}] section"
                       f"{did_you_mean(j, cfg.models)}")
    if (what := number_problem(cfg.judge.max_tokens, minimum=1)):
        out.append(f"{source}: judge.max_tokens: {what}")
    for name, price in cfg.prices.items():
        for key in ("input_per_mtok", "output_per_mtok", "batch_input_per_mtok", "batch_output_per_mtok"):
            if (what := number_problem(getattr(price, key))):
                out.append(f"{source}: prices.{name}.{key}: {what}")
    return out


def batched(cfg: Config) -> Config:
    """`run --batch`: `batch = true` on every model whose adapter has a provider batch API."""
    models = {name: msgspec.structs.replace(m, batch=True) if registry.entry(m.adapter).caps.batch_api else m
              for name, m in cfg.models.items()}
    return msgspec.structs.replace(cfg, models=models)


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


_LATER_LANE_KEYS: dict[str, object] = {"ray_resources": {}, "ray_max_restarts": 3, "stream": False, "batch": False,
                                       "batch_max_requests": None, "batch_max_bytes": None, "batch_wait_s": 60.0,
                                       "batch_poll_s": 30.0, "batch_poll_max_s": 600.0, "batch_window": "24h"}


def model_to_builtins(m: ModelConfig) -> dict[str, object]:
    """One model as run.json holds it: flat, the lane's keys then the format-1 option keys (see
    FORMAT1_OPTION_KEYS), then the adapter's other keys."""
    doc: dict[str, object] = msgspec.to_builtins(m)
    options: dict[str, object] = msgspec.to_builtins(m.options)
    del doc["options"]
    for key, default in _LATER_LANE_KEYS.items():
        if doc.get(key) == default:
            del doc[key]  # run.json written before these keys existed stays byte-identical
    for key, default in FORMAT1_OPTION_KEYS.items():
        doc[key] = options.pop(key) if key in options else list(default) if isinstance(default, list) else default
    doc.update(options)
    return doc


def config_to_builtins(cfg: Config) -> dict[str, object]:
    """The resolved config for run.json: environment variable names only, never their values."""
    doc: dict[str, object] = msgspec.to_builtins(cfg)
    doc["models"] = {name: model_to_builtins(m) for name, m in cfg.models.items()}
    prices: dict[str, dict[str, object]] = msgspec.to_builtins(cfg.prices)
    for price in prices.values():  # run.json written before the batch prices existed stays byte-identical
        for key in ("batch_input_per_mtok", "batch_output_per_mtok"):
            if price.get(key) is None:
                del price[key]
    doc["prices"] = prices
    run: dict[str, object] = msgspec.to_builtins(cfg.run)
    if not cfg.run.adapter_modules:
        del run["adapter_modules"]
    if cfg.run.cache is None:
        del run["cache"]
    doc["run"] = run
    return doc
