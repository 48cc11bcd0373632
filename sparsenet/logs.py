"""Logging: the `sparsenet` logger hierarchy (stdlib logging), silent unless a caller asks for output.

The command line calls `configure(level)` once: lines `HH:MM:SS [rank R] message` on stdout, R the MPI
rank that speaks. A library user gets nothing (a NullHandler) unless verbose (`to_stdout()`) or
their own logging configuration lets INFO through.
"""

from __future__ import annotations

import contextlib
import logging
import sys

ROOT = "sparsenet"
FORMAT = "%(asctime)s [rank %(rank)s] %(message)s"
DATEFMT = "%H:%M:%S"

logging.getLogger(ROOT).addHandler(logging.NullHandler())  # no lastResort output for a library user


class _RankFilter(logging.Filter):
    """Give every record a `rank`: the one the caller passed (extra={'rank': r}), else this process's."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "rank", None) is None:
            from .launch import launcher_rank  # here: `python -m sparsenet.launch` runs it as __main__

            record.rank = launcher_rank()  # from the launcher's environment; starts no MPI
        return True


def _handler(stream) -> logging.Handler:
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter(FORMAT, DATEFMT))
    handler.addFilter(_RankFilter())
    handler._sparsenet = True  # ours: configure() replaces it instead of adding a second one
    return handler


def configure(level: int = logging.INFO, stream=None) -> tuple[list[logging.Handler], int]:
    """Send `sparsenet` records of `level` and above to `stream` (stdout at call time), once;
    returns the previous (handlers, level) for restore()."""
    logger = logging.getLogger(ROOT)
    previous = (logger.handlers[:], logger.level)
    for old in [h for h in logger.handlers if getattr(h, "_sparsenet", False)]:
        logger.removeHandler(old)
    logger.addHandler(_handler(sys.stdout if stream is None else stream))
    logger.setLevel(level)
    return previous


def restore(previous: tuple[list[logging.Handler], int]) -> None:
    """Undo configure() (main() returning in-process leaves the logger as it found it)."""
    logger = logging.getLogger(ROOT)
    logger.handlers[:], logger.level = previous[0], previous[1]


@contextlib.contextmanager
def to_stdout(enabled: bool = True, level: int = logging.INFO):
    """Within the block, `sparsenet` INFO lines go to stdout (a library call with verbose=True);
    nothing changes if not enabled or if configure() already set up output."""
    logger = logging.getLogger(ROOT)
    if not enabled or any(getattr(h, "_sparsenet", False) for h in logger.handlers):
        yield
        return
    handler, old_level = _handler(sys.stdout), logger.level
    logger.addHandler(handler)
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


def shows(level: int = logging.INFO) -> bool:
    """Whether a `sparsenet` record of `level` would be emitted (progress bars follow -q)."""
    return logging.getLogger(ROOT).isEnabledFor(level)
