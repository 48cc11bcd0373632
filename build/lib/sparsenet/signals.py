"""Stop requests from the scheduler: SIGTERM or SIGUSR1 end the run at the next epoch boundary.

The run then writes its checkpoint and exits with EXIT_RESUMABLE, so a batch script knows to
requeue it with --resume (see slurm/train.sbatch).
"""

from __future__ import annotations

import signal
import threading

EXIT_RESUMABLE = 75  # EX_TEMPFAIL: stopped on request after a checkpoint; resume with --resume
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class StopRequest:
    """Context manager remembering whether a stop signal arrived (handlers only in the main thread)."""

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._previous: dict = {}

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handle) for sig in STOP_SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame) -> None:
        self.signal_name = signal.Signals(signum).name

    def __bool__(self) -> bool:
        return self.signal_name is not None


def ignore_stop_signals() -> None:
    """Workers leave stopping to the parameter server."""
    if threading.current_thread() is threading.main_thread():
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
