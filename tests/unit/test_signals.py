"""Stop requests: recorded from start-up on, kept through MPI's initialisation, acted on before the first epoch."""

import json
import os
import signal
import subprocess
import sys

import pytest

from sparsenet.launch import srun_mpi_plugin, world_size_mismatch
from tests.processes import run_during, wait_for_handler
from tests.unit.test_cli import SMALL

GUARD = """
import os, signal
from sparsenet import signals
previous = signals.install_stop_handlers()
with signals.mpi_init_guard():
    signal.signal(signal.SIGUSR1, signal.SIG_DFL)  # what MPICH's initialisation does to SIGUSR1
    os.kill(os.getpid(), signal.SIGUSR1)  # held back until the guard ends: not a kill
    print("alive, recorded:", signals.stop_requested(), flush=True)
print("after the guard:", signals.stop_requested(), signal.getsignal(signal.SIGUSR1) is signals._handle)
with signals.StopRequest() as stop:
    print("run sees:", stop.signal_name)
print("after the run:", signals.stop_requested(), bool(stop))
signals.restore_handlers(previous)
print("restored:", signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL)
"""


def test_a_signal_while_mpi_initialises_is_held_and_recorded_not_fatal():
    # One OS thread: the guard blocks the signals in the calling thread only, and a BLAS thread
    # started by `import numpy` would take a process-directed signal (see docs/cluster.md).
    single = {**os.environ, **{v: "1" for v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}}
    proc = subprocess.run([sys.executable, "-c", GUARD], capture_output=True, text=True, timeout=60, env=single)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["alive, recorded: None", "after the guard: SIGUSR1 True",
                                        "run sees: SIGUSR1", "after the run: None True", "restored: True"]


def test_sigusr1_during_startup_stops_before_the_first_epoch_and_resume_starts_fresh(tmp_path):
    """The signal comes while the CLI is still importing and loading data (before, the default action killed it)."""
    args = [sys.executable, "-m", "sparsenet", "train", "configs/fashion_mnist.yaml", *SMALL, "--set", "train.epochs=2"]

    def signal_once_it_listens(proc):
        wait_for_handler(proc.pid, signal.SIGUSR1)
        proc.send_signal(signal.SIGUSR1)

    proc = run_during(args + ["--out", str(tmp_path / "stopped")], 120, during=signal_once_it_listens)
    out, err = proc.stdout, proc.stderr
    assert proc.returncode == 75, err
    assert "SIGUSR1 received during start-up: stopped before epoch 1 (nothing to save yet)" in out
    assert json.loads(out.strip().splitlines()[-1])["epoch"] == 0
    assert not (tmp_path / "stopped" / "checkpoint.h5").exists()
    resumed = subprocess.run(args + ["--out", str(tmp_path / "stopped"), "--resume"], capture_output=True, text=True,
                             timeout=300)
    straight = subprocess.run(args + ["--out", str(tmp_path / "straight")], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == straight.returncode == 0, resumed.stderr + straight.stderr
    rows = {name: [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
            for name in ("stopped", "straight")}
    assert [r["epoch"] for r in rows["stopped"]] == [1, 2]
    assert [r["test_loss"] for r in rows["stopped"]] == [r["test_loss"] for r in rows["straight"]]


@pytest.mark.parametrize("version,plugin", [
    ("MPICH Version:      5.0.2\nMPICH ABI: 18:2:6", "pmi2"),
    ("MPICH Version:\t4.0.2\nMPICH Release date:\tThu Mar 10", "pmi2"),
    ("Open MPI v4.1.4, package: Debian OpenMPI, ident: 4.1.4", "pmix"),
    ("Intel(R) MPI Library 2021.10 for Linux* OS", "pmi2"),
    ("Some other MPI 1.0", None),
])
def test_srun_plugin_follows_the_mpi_library(version, plugin):
    assert srun_mpi_plugin(version) == plugin


def test_world_size_mismatch_names_srun_and_the_fix(monkeypatch):
    for var in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "3")
    assert world_size_mismatch(3) is None
    message = world_size_mismatch(1)
    assert message.startswith("srun started 3 tasks but MPI sees 1: srun's MPI plugin does not match this mpi4py; "
                              "try srun --mpi=pmi2")
    monkeypatch.setenv("PMI_SIZE", "4")  # an MPI launcher's own count comes first
    assert world_size_mismatch(4) is None


def test_srun_without_the_mpi_plugin_is_a_one_line_error(tmp_path):
    """What every task of `srun --mpi=none -n 3` sees: Slurm says 3 tasks, MPI a world of 1."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI", "OMPI_", "PMIX", "SLURM_"))}
    args = [sys.executable, "-m", "sparsenet", "train", "configs/fashion_mnist.yaml", *SMALL, "--out", str(tmp_path)]
    first = subprocess.run(args, capture_output=True, text=True, timeout=120,
                           env={**env, "SLURM_STEP_NUM_TASKS": "3", "SLURM_PROCID": "0"})
    assert first.returncode == 2
    assert first.stderr.strip().splitlines() == [
        "sparsenet: error: srun started 3 tasks but MPI sees 1: srun's MPI plugin does not match this mpi4py; "
        "try srun --mpi=pmi2 (slurm/train.sbatch: set SPARSENET_SRUN_MPI)"]
    other = subprocess.run(args, capture_output=True, text=True, timeout=120,
                           env={**env, "SLURM_STEP_NUM_TASKS": "3", "SLURM_PROCID": "2"})
    assert other.returncode == 2 and other.stderr == ""  # only the first task explains
