"""Parallel runs select and stop as sequential ones: validation split on every rank, checkpoint_best.h5,
early stopping that ends phase 1 without starting phase 2, a default --out refused for MPI."""

import json

from sparsenet.checkpoint import load_checkpoint
from tests.mpi.conftest import run_mpi

SMALL = ["data.name=synthetic", "data.samples=900", "data.features=30", "data.informative=8",
         "data.redundant=4", "data.classes=3", "model.hidden=[40,32]", "model.epsilon=5",
         "train.batch_size=16", "train.progress=false", "seed=3", "parallel.algorithm=wassp",
         "train.epochs=30", "parallel.phase1_epochs=20", "data.validation_fraction=0.2",
         "train.early_stopping_patience=2", "train.early_stopping_min_delta=0.5"]


def test_wassp_early_stops_on_validation_and_keeps_the_best(tmp_path):
    args = ["-m", "sparsenet", "train", "configs/fashion_mnist.yaml", "--out", str(tmp_path / "run")]
    for item in SMALL:
        args += ["--set", item]
    proc = run_mpi(3, args, timeout=240)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["early_stopped"] and result["epoch"] == 3 and result["selection_metric"] == "validation_accuracy"
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["phase"] for r in rows] == [1, 1, 1]          # phase 2 never started
    assert "data synthetic: 504 train / 270 test samples" in proc.stdout   # 630 training samples less 126 held out
    best = max(rows, key=lambda r: (r["validation_accuracy"], -r["epoch"]))
    assert rows[-1]["best_epoch"] == best["epoch"] == load_checkpoint(tmp_path / "run" / "checkpoint_best.h5").epoch


def test_parallel_run_needs_an_explicit_out(tmp_path):
    proc = run_mpi(2, ["-m", "sparsenet", "train", "configs/fashion_mnist.yaml"], timeout=120)
    assert proc.returncode == 2
    assert "a parallel run needs --out FOLDER" in proc.stderr
