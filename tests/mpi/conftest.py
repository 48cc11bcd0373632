"""Helpers to run scripts under mpiexec from pytest, shared by every MPI test.

On this network-less single host, MPICH from PyPI (`pip install mpich`, hydra with the ch4:ucx
device) works as is: `mpiexec -n N python ...`. The environment pins hydra's launcher to fork
(never ssh), lets Open MPI (if that is the system MPI) run as root with more ranks than cores,
and keeps every rank single-threaded, since K+1 ranks share 2 cores.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.processes import run_during

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


def run_mpi(n: int, args: list[str], timeout: float, during=None) -> subprocess.CompletedProcess:
    """Run `mpiexec -n n python ARGS` and return its result; fail the test after `timeout` seconds.
    during(proc), if given, acts on the job while it runs (tests/processes.py: wait, send a real signal).

    mpiexec gets its own process group so that a timeout kills the ranks too, not just hydra.
    """
    return run_during(mpiexec_command(n) + [sys.executable, *args], timeout, during, env=mpi_env())
