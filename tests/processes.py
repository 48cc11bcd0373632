"""Run a command while the test acts on it (waits for a file, sends a real signal), never leaving it behind."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable

import pytest


def wait_until(condition: Callable[[], bool], timeout: float, poll: float = 0.05) -> bool:
    """Poll condition() every `poll` s until it holds or `timeout` s passed; whether it held."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll)
    return True


def wait_for_handler(pid: int, sig: int, timeout: float = 60) -> None:
    """Until process `pid` catches `sig` (its SigCgt mask in /proc): sparsenet's CLI has started."""
    def catches() -> bool:
        status = open(f"/proc/{pid}/status").read().splitlines()
        fields = dict(line.split(":\t", 1) for line in status if ":\t" in line)
        return bool(int(fields["SigCgt"], 16) >> (sig - 1) & 1)

    if not wait_until(catches, timeout, 0.005):
        pytest.fail(f"process {pid} never installed a handler for signal {sig}")


def signal_when(ready: Callable[[], bool], delay: float | Callable[[], float] = 0.0, sig: int = signal.SIGUSR1,
                wait: float = 60.0) -> Callable[[subprocess.Popen], None]:
    """A `during` for run_during: once ready() holds (at most `wait` s) and `delay` s later (a float, or a
    function called then), send `sig` to the process (mpiexec forwards it to every rank); the monotonic
    time it was sent is kept in the function's `sent` attribute."""
    def during(proc: subprocess.Popen) -> None:
        wait_until(ready, wait)
        time.sleep(delay() if callable(delay) else delay)
        os.kill(proc.pid, sig)
        during.sent = time.monotonic()
    during.sent = None
    return during


def run_during(cmd: list[str], timeout: float, during: Callable[[subprocess.Popen], None] | None = None,
               env: dict | None = None) -> subprocess.CompletedProcess:
    """Run cmd (text output captured) in a process group of its own; `during(proc)` acts on it while it
    runs, then it has `timeout` s to end, else the test fails with its output. Whatever happens (a
    timeout, an assertion in `during`), the group is killed: mpiexec's ranks too, not just hydra."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    try:
        if during is not None:
            during(proc)
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        out, err = proc.communicate()
        pytest.fail(f"{' '.join(cmd)} timed out after {timeout} s\nstdout:\n{out}\nstderr:\n{err}")
    finally:
        if proc.poll() is None:
            kill_group(proc)
            proc.communicate()
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def kill_group(proc: subprocess.Popen) -> None:
    """SIGTERM then SIGKILL the process group that proc leads."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=5)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue
