"""Helpers to run scripts under mpiexec from pytest, shared by every MPI test.

On this network-less single host, MPICH from PyPI (`pip install mpich`, hydra with the ch4:ucx
device) works as is: `mpiexec -n N python ...`. The environment pins hydra's launcher to fork
(never ssh), lets Open MPI (if that is the system MPI) run as root with more ranks than cores,
and keeps every rank single-threaded, since K+1 ranks share 2 cores.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

MPI_ENV = {
    "HYDRA_LAUNCHER": "fork",
    "OMPI_ALLOW_RUN_AS_ROOT": "1",
    "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
    "OMPI_MCA_rmaps_base_oversubscribe": "1",
    "OMP_NUM_THREADS": "1",
    "NUMBA_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "PYTHONUNBUFFERED": "1",
}


def find_mpiexec() -> str | None:
    """Path of mpiexec: the venv's own (PyPI mpich) first, then one on PATH; None if neither."""
    local = Path(sys.executable).parent / "mpiexec"
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    return shutil.which("mpiexec")


def mpiexec_command(n: int) -> list[str]:
    """argv prefix that starts n ranks on this host (skips the test if there is no mpiexec)."""
    mpiexec = find_mpiexec()
    if mpiexec is None:
        pytest.skip("no mpiexec: install MPI (e.g. `.venv/bin/pip install mpich`) to run MPI tests")
    return [mpiexec, "-n", str(n)]


def mpi_env() -> dict[str, str]:
    """Environment for mpiexec subprocesses: this one plus MPI_ENV."""
    return {**os.environ, **MPI_ENV}


def run_mpi(n: int, args: list[str], timeout: float) -> subprocess.CompletedProcess:
    """Run `mpiexec -n n python ARGS` and return its result; fail the test after `timeout` seconds.

    mpiexec gets its own process group so that a timeout kills the ranks too, not just hydra.
    """
    cmd = mpiexec_command(n) + [sys.executable, *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=mpi_env(), start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        out, err = proc.communicate()
        pytest.fail(f"{' '.join(cmd)} timed out after {timeout} s\nstdout:\n{out}\nstderr:\n{err}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _kill_group(proc: subprocess.Popen) -> None:
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
