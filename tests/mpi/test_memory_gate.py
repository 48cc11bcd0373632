"""Under MPI rank 0 checks the memory plan for every rank and ends the job cleanly when it does not fit."""

from tests.mpi.conftest import run_mpi
from tests.mpi.test_parallel_training import SMALL


def _train(out, *extra):
    args = ["-m", "sparsenet", "train", "configs/fashion_mnist.yaml", "--out", str(out)]
    for item in SMALL + ["train.epochs=1", *extra]:
        args += ["--set", item]
    return run_mpi(3, args, timeout=120)


def test_refusal_ends_every_rank_with_the_planners_message(tmp_path):
    result = _train(tmp_path / "run", "memory_limit_gb=0.001")
    assert result.returncode == 2, result.stderr
    assert "sparsenet: error: not enough memory" in result.stderr
    assert "server" in result.stdout and "worker (x2)" in result.stdout and "DOES NOT FIT" in result.stdout
    assert result.stderr.count("not enough memory") == 1  # rank 0 speaks; the workers just stop
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()


def test_a_plan_that_fits_trains(tmp_path):
    result = _train(tmp_path / "run", "memory_limit_gb=8")
    assert result.returncode == 0, result.stderr
    assert "fits" in result.stdout and (tmp_path / "run" / "checkpoint.h5").exists()
