"""Run output: log lines (through logs.py), JSONL metrics, a progress bar and peak memory."""

from __future__ import annotations

import json
import logging
import os
import resource
import sys
import time

from .fileio import append_text, write_text
from .logs import shows


_RUN = logging.getLogger("sparsenet.run")


def log(message: str, rank: int | None = None, level: int = logging.INFO) -> None:
    """One line to the `sparsenet.run` logger (logs.py: `HH:MM:SS [rank R] message` from the command
    line, nothing from the library unless asked); rank: the rank that speaks (default: this process's)."""
    _RUN.log(level, message, extra={"rank": rank})


def peak_rss_mb(status: str | os.PathLike = "/proc/self/status") -> float:
    """Peak resident memory of this process so far, in MiB: VmHWM where /proc has it (ru_maxrss keeps the
    peak of the parent that forked and exec'd this process), else ru_maxrss."""
    try:
        with open(status) as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0  # kB
    except (OSError, ValueError, IndexError):
        pass
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss / 2**20 if sys.platform == "darwin" else maxrss / 1024.0  # bytes on macOS, kB elsewhere


def write_metrics(path: str | os.PathLike, history: list[dict]) -> None:
    """Rewrite the JSONL metrics file atomically from the full history."""
    write_text(path, "".join(json.dumps(row) + "\n" for row in history), "metrics file")


def append_metrics(path: str | os.PathLike, row: dict) -> None:
    """Add one row: the file is rewritten through a temporary (never opened for appending in place)."""
    append_text(path, json.dumps(row) + "\n", "metrics file")


def read_metrics(path: str | os.PathLike) -> list[dict]:
    with open(path) as fh:
        return [json.loads(line) for line in fh if line.strip()]


class ProgressBar:
    """A one-line progress bar on stderr, redrawn at most 10 times a second; drawn only on a terminal
    (a log file or Slurm output gets the epoch lines, no carriage-return fragments) and when INFO is shown."""

    def __init__(self, total: int, label: str, enabled: bool = True, width: int = 30):
        self.total = max(int(total), 1)
        self.label = label
        self.enabled = enabled and _is_terminal(sys.stderr) and shows(logging.INFO)
        self.width = width
        self.start = time.perf_counter()
        self._last_draw = 0.0
        self._drawn = False
        self._interval = 0.1

    def update(self, done: int, info: str = "") -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if now - self._last_draw < self._interval and done < self.total:
            return
        self._last_draw = now
        frac = min(done / self.total, 1.0)
        filled = int(frac * self.width)
        elapsed = now - self.start
        eta = elapsed / frac - elapsed if frac > 0 else 0.0
        bar = "#" * filled + "-" * (self.width - filled)
        sys.stderr.write(f"\r{self.label} [{bar}] {done}/{self.total} {elapsed:5.1f}s eta {eta:5.1f}s {info}   ")
        sys.stderr.flush()
        self._drawn = True

    def close(self) -> None:
        if self.enabled and self._drawn:
            sys.stderr.write("\n")
            sys.stderr.flush()


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False
