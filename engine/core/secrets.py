"""Keeping API keys out of everything we write: keys come only from environment variables, and
any text that could carry one (server error bodies, exception messages) passes through `redact`."""

from __future__ import annotations

import os

from engine.core.errors import ConfigError


def redact(text: str, secrets: tuple[str, ...]) -> str:
    for s in secrets:
        if s and len(s) >= 4:
            text = text.replace(s, "***")
            # Providers echo keys partially ("sk-abc...wxyz"); hide the recognisable ends too.
            if len(s) >= 12:
                text = text.replace(s[:8], "***").replace(s[-4:], "***")
    return text


def api_key(env_name: str | None, model: str) -> str | None:
    if not env_name:
        return None
    value = os.environ.get(env_name)
    if not value:
        raise ConfigError(
            f"models.{model}.api_key_env: environment variable {env_name} is not set; export it (the key is never read from files)"
        )
    return value
