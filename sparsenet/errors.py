"""User-facing errors: the CLI prints their message on one line and exits with code 2."""


class SparsenetError(Exception):
    """Base class for errors caused by bad input (config, data, checkpoint)."""


class ConfigError(SparsenetError):
    """The configuration is invalid: unknown key, wrong type or out of range."""


class DataError(SparsenetError):
    """A dataset is missing, malformed or inconsistent."""


class CheckpointError(SparsenetError):
    """A checkpoint file is truncated, of another format version or inconsistent."""


class DivergedError(SparsenetError):
    """Training produced a non-finite loss; the last checkpoint is kept as it was."""


class InputError(DataError, ValueError):
    """Bad samples or labels handed to the Python API; also a ValueError, as Python code
    (scikit-learn among it) expects of a bad value."""


class ParameterError(ConfigError, ValueError):
    """An estimator parameter that breaks a config rule; also a ValueError (scikit-learn's convention)."""


class OutputError(SparsenetError):
    """An output file or folder cannot be written safely (unsafe folder, full disk, a file in the way)."""
