"""Run output: rank-tagged log lines, JSONL metrics, a progress bar and peak memory."""

from __future__ import annotations

import json
import os
import resource
import sys
import time

from .fileio import append_text, write_text


def process_rank() -> int:
    """This process's MPI rank from the launcher's environment (0 without MPI); starts no MPI."""
    for var in ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK", "SLURM_PROCID"):
        if var in os.environ:
            try:
                return int(os.environ[var])
            except ValueError:
                pass
    return 0


def log(message: str, rank: int | None = None) -> None:
    """One line to stdout, tagged with time and the rank that speaks."""
    rank = process_rank() if rank is None else rank
    print(f"{time.strftime('%H:%M:%S')} [rank {rank}] {message}", flush=True)


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


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
    """A one-line progress bar on stderr, redrawn at most 10 times a second; silent when disabled."""

    def __init__(self, total: int, label: str, enabled: bool = True, width: int = 30):
        self.total = max(int(total), 1)
        self.label = label
        self.enabled = enabled
        self.width = width
        self.start = time.perf_counter()
        self._last_draw = 0.0
        self._drawn = False
        # A terminal gets a live bar; a log file gets a line every few seconds on long epochs.
        self._interval = 0.1 if sys.stderr.isatty() else 5.0

    def update(self, done: int, info: str = "") -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if now - self._last_draw < self._interval and done < self.total:
            return
        if not self._drawn and done >= self.total and now - self.start < self._interval:
            return  # a short epoch in a log file: the epoch line says it all
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
