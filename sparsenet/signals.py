"""Stop requests from the scheduler: SIGTERM or SIGUSR1 end the run at its next checkpoint.

The run then writes its checkpoint and exits with EXIT_RESUMABLE, so a batch script knows to
requeue it with --resume (see slurm/train.sbatch).

A request is recorded process-wide from the moment `install_stop_handlers()` runs (the CLI calls
it first thing, before MPI or the data are loaded), so a signal during start-up is never lost:
the run acts on it as soon as it can checkpoint. MPICH replaces the SIGUSR1 handler while it
initialises, so MPI is started inside `mpi_init_guard()`, which holds the stop signals back and
re-installs the handlers before letting them through.
"""

from __future__ import annotations

import contextlib
import signal
import threading

EXIT_RESUMABLE = 75  # EX_TEMPFAIL: stopped on request after a checkpoint; resume with --resume
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

_requested: str | None = None  # name of the first stop signal received, process-wide


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _handle(signum, frame) -> None:
    global _requested
    if _requested is None:
        _requested = signal.Signals(signum).name


def install_stop_handlers() -> dict:
    """Record SIGTERM/SIGUSR1 from now on (main thread only; elsewhere a no-op); returns the
    handlers replaced, for restore_handlers."""
    if not _main_thread():
        return {}
    return {sig: signal.signal(sig, _handle) for sig in STOP_SIGNALS}


def restore_handlers(previous: dict) -> None:
    """Put back the handlers install_stop_handlers replaced and forget any request."""
    for sig, handler in previous.items():
        if handler is not None:
            signal.signal(sig, handler)
    clear_stop_request()


def stop_requested() -> str | None:
    """Name of the stop signal received since the handlers were installed, or None."""
    return _requested


def clear_stop_request() -> None:
    """Forget a request that has been acted on (a run that stopped), so the next run in this process starts clean."""
    global _requested
    _requested = None


@contextlib.contextmanager
def mpi_init_guard():
    """Block the stop signals while MPI initialises, then re-install our handlers (MPICH replaced
    SIGUSR1's) and unblock: a signal that arrived meanwhile is delivered to them, not lost."""
    if not _main_thread():
        yield
        return
    ours = [sig for sig in STOP_SIGNALS if signal.getsignal(sig) is _handle]  # else: library use, MPI's stay
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        for sig in ours:
            signal.signal(sig, _handle)  # Python still lists it, but MPI may have replaced it underneath
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


class StopRequest:
    """Context manager for one run: truthy once a stop signal arrived (also before it was entered,
    if the handlers were installed then). On exit, restores handlers it installed itself and
    forgets the request."""

    def __init__(self) -> None:
        self._previous: dict = {}
        self._seen: str | None = None  # the request this run acted on, kept after exit

    @property
    def signal_name(self) -> str | None:
        return self._seen or _requested

    def __enter__(self) -> "StopRequest":
        if not all(signal.getsignal(sig) is _handle for sig in STOP_SIGNALS):
            self._previous = install_stop_handlers()
        return self

    def __exit__(self, *exc) -> None:
        self._seen = self.signal_name
        restore_handlers(self._previous)

    def __bool__(self) -> bool:
        return self.signal_name is not None


def ignore_stop_signals() -> None:
    """Workers leave stopping to the parameter server."""
    if _main_thread():
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
