"""The engine's cache root, shared by fetched models and fetched data."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """$TRUSTMH_CACHE, else <$XDG_CACHE_HOME or ~/.cache>/trustmh-engine."""
    root = os.environ.get("TRUSTMH_CACHE")
    if root:
        return Path(root).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "trustmh-engine"
