"""run.json: what a run was asked to do and how it went, so that resume, verify, score and report
need nothing else. Written atomically (temp file + rename)."""

from __future__ import annotations

import hashlib
import os
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import orjson

from adapters import registry
from engine.config import Config, config_to_builtins
from engine.core.config import ModelConfig

RUN_JSON = "run.json"


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


def data_fingerprint(items_path: Path | None, data_dir: Path | None, pillar_options: dict[str, Any]) -> str:
    if items_path is not None:
        return _digest({"items": file_digest(items_path)})
    return _digest({"data_dir": str(data_dir.resolve()) if data_dir else "builtin", "options": pillar_options})


def packages() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in ("trustmh-engine", "aiohttp", "msgspec", "orjson", "uvloop", "tqdm", "xllamacpp"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def read_run_json(directory: Path) -> dict[str, Any] | None:
    path = directory / RUN_JSON
    if not path.exists():
        return None
    return orjson.loads(path.read_bytes())


def write_run_json(directory: Path, doc: dict[str, Any]) -> None:
    path = directory / RUN_JSON
    tmp = path.with_name(f".{RUN_JSON}.{os.getpid()}.tmp")
    tmp.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS))
    os.replace(tmp, path)


def config_doc(cfg: Config) -> dict[str, object]:
    return config_to_builtins(cfg)


def argv() -> list[str]:
    return list(sys.argv)
