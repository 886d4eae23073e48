"""Where the pillar tests find the official data (read by path, never copied into the repo)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def official_dir() -> Path:
    """`<repo>/../shared/trustmh` or $TRUSTMH_DATA; the calling test skips, with the reason,
    where the official data is not on this machine."""
    env = os.environ.get("TRUSTMH_DATA")
    path = Path(env) if env else Path(__file__).resolve().parents[2] / ".." / "shared" / "trustmh"
    if not path.is_dir():
        pytest.skip(f"official TrustMH data not found at {path} (set TRUSTMH_DATA)")
    return path
