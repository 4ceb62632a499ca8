"""Errors a user can act on: each names the offending key or file, the bad value and what is allowed."""


class MedtransferError(Exception):
    """Base class; the CLI prints these as one line and exits with status 2 instead of a traceback."""


class ConfigError(MedtransferError, ValueError):
    """An experiment or pre-training file is malformed or names something unknown."""


class DataError(MedtransferError, ValueError):
    """A dataset is missing, corrupt or unusable for the requested task (NaN labels, empty class, ...)."""


class CheckpointError(MedtransferError, ValueError):
    """A checkpoint cannot be read safely or does not fit the backbone it is loaded into."""


class StoreError(MedtransferError):
    """The results store cannot be read or written (read-only, corrupt, disk full, not a folder)."""


def allowed(names) -> str:
    """Render the allowed values of a key for an error message."""
    return ", ".join(sorted(str(n) for n in names))
