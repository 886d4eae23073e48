"""User-facing errors: each becomes one clear line on stderr and a non-zero exit in the CLI."""


class EngineError(Exception):
    """Bad input or an unusable environment. The message is one line: what, where, what to do."""

    exit_code = 2


class ConfigError(EngineError):
    pass


class CheckpointError(EngineError):
    pass


class LockedError(EngineError):
    pass
