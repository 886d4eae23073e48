"""What run.json records about a run's inputs: the request-shaping fingerprint of each model, the
data fingerprint, the package versions and the config as stored. The document itself is
engine/core/rundoc.py `RunDoc`, composed by engine/run/document.py and read and written by
engine/store/rundoc_io.py."""

from __future__ import annotations

import hashlib
import platform
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path

import orjson

from adapters import registry
from engine.config import Config, config_to_builtins
from engine.core.config import ModelConfig


def _digest(obj: object) -> str:
    return hashlib.blake2b(orjson.dumps(obj, option=orjson.OPT_SORT_KEYS), digest_size=8).hexdigest()


def model_fingerprint(cfg: ModelConfig) -> str:
    """What shapes this model's requests; limits and concurrency do not: the lane's keys, then the
    option keys its adapter's registry entry declares as shaping."""
    shaping: dict[str, object] = {
        "adapter": cfg.adapter, "model": cfg.model, "endpoint": cfg.base_url, "max_tokens": cfg.max_tokens,
        "temperature": cfg.temperature, "top_p": cfg.top_p, "seed": cfg.seed}
    shaping.update(registry.entry(cfg.adapter).shaping_values(cfg))
    return _digest(shaping)


def file_digest(path: Path) -> str:
    h = hashlib.blake2b(digest_size=8)
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


# Keys of a [pillars."<key>"] section that run.json's per-subtask protocol records (engine.spec
# .protocols) instead of the data fingerprint: stating an old default explicitly (constrained =
# true) resumes a run made under it, and a flip is refused naming what changed.
PROTOCOL_KEYS = frozenset({"constrained", "judge_constrained", "judge_hardened"})


def data_fingerprint(items_path: Path | None, data_dir: Path | None, pillar_options: Mapping[str, object],
                     protocol: Mapping[str, str] | None = None) -> str:
    """The items file, or the data dir with the [pillars.*] options and the prompt protocol of the
    subtasks that have one (engine.spec.protocol_of; left out when empty, so runs without such
    subtasks keep the fingerprint they had)."""
    if items_path is not None:
        return _digest({"items": file_digest(items_path)})
    options = {k: kept for k, v in pillar_options.items()
               if (kept := {o: x for o, x in v.items() if o not in PROTOCOL_KEYS} if isinstance(v, Mapping) else v)}
    doc: dict[str, object] = {"data_dir": str(data_dir.resolve()) if data_dir else "builtin", "options": options}
    if protocol:
        doc["protocol"] = dict(protocol)
    return _digest(doc)


def packages() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in ("trustmh-engine", "aiohttp", "msgspec", "orjson", "uvloop", "tqdm", "xllamacpp"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def config_doc(cfg: Config) -> dict[str, object]:
    return config_to_builtins(cfg)
