"""Errors the user can fix: each prints as one line naming the key and what is allowed."""

from hydra.errors import CompactHydraException


class LabError(Exception):
    """Base for mistakes in input (config values, data files) rather than bugs."""


class ConfigError(LabError):
    def __init__(self, key: str, value, allowed: str):
        super().__init__(f"{key}={value!r} is not allowed: {allowed}")
        self.key, self.allowed = key, allowed


class DataError(LabError):
    """The dataset's files are missing, truncated or do not match their checksums."""


class OutputError(LabError, OSError):
    """An output file cannot be written (read-only or full disk, a folder that is a file)."""


class StorageUnavailable(LabError):
    """The Optuna study's storage stopped answering (a database server stopped, a lost
    connection): a trial's job records it as its failure, a sweep ends with one line saying how
    to resume (exit status 1, like a failed sweep: not a mistake in input)."""


class SweepFailed(CompactHydraException):
    """A sweep ran but too many of its trials failed (exit status 1, not a mistake in input);
    Hydra prints it as its message alone."""
