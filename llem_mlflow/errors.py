"""Errors a user can act on.

Every error raised on purpose by llem-mlflow derives from `LlemError`. The CLI
prints its message (no traceback) and exits with `exit_code` (2: bad input).
"""


class LlemError(Exception):
    """An error whose message tells the user what is wrong and how to fix it."""

    exit_code = 2


class ConfigError(LlemError):
    """The experiment config (file, field or override) is invalid."""


class ModelLoadError(LlemError):
    """The model (hub id, local path, random: preset or models:/ URI) cannot be loaded."""


class DatasetError(LlemError):
    """The prompt source is missing, empty or lacks the requested column."""


class TrackingError(LlemError):
    """MLflow cannot be reached or refused a request (auth, limits)."""


class EnergyError(LlemError):
    """An energy meter the config requires (e.g. energy.gpu: nvml) cannot measure."""
