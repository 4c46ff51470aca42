"""Errors a user can fix: the CLI prints them without a traceback and exits with 2."""


class UserError(Exception):
    """Bad input (file, key, field or option) with a message that says what was expected."""

    exit_code = 2


class DataError(UserError):
    """A data file or image folder is missing, malformed or inconsistent."""


class ConfigError(UserError):
    """A configuration value or file is invalid."""


class ModelDirError(UserError):
    """An exported model directory is missing, incomplete or inconsistent."""


class RunFailed(Exception):
    """A training or tuning run failed beyond its retries; its checkpoints are kept."""

    exit_code = 1


class CheckpointError(UserError):
    """A training checkpoint is incomplete or damaged."""
