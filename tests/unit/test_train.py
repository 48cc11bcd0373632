"""End-to-end sequential training: learning, bit-identical reruns and resumed runs, outputs."""

import json

import numpy as np
import pytest

from sparsenet.checkpoint import load_checkpoint
from sparsenet.config import load_config
from sparsenet.errors import ConfigError
from sparsenet.train import run

SMALL = ["data.name=synthetic", "data.samples=800", "data.features=40", "data.informative=8",
         "data.redundant=4", "data.classes=3", "model.hidden=[48,32]", "model.epsilon=6",
         "train.batch_size=16", "train.lr=0.03", "model.dropout=0.1", "train.progress=false", "checkpoint.every=1", "seed=5"]


def small_config(*extra):
    return load_config(None, SMALL + list(extra))


def assert_same_checkpoint(a_path, b_path):
    a, b = load_checkpoint(a_path), load_checkpoint(b_path)
    assert a.epoch == b.epoch
    assert a.rng_state == b.rng_state
    for la, lb in zip(a.layers, b.layers):
        for name in ("rows", "cols", "values", "bias"):
            np.testing.assert_array_equal(getattr(la, name), getattr(lb, name), err_msg=name)
        assert sorted(la.state) == sorted(lb.state) and la.state
        for name in la.state:
            np.testing.assert_array_equal(la.state[name], lb.state[name], err_msg=name)
    assert a.optimizer == b.optimizer and a.optimizer_scalars == b.optimizer_scalars


def strip_timings(history):
    drop = {"train_seconds", "evolution_seconds", "eval_seconds", "peak_rss_mb"}
    return [{k: v for k, v in row.items() if k not in drop} for row in history]


def test_training_learns_and_writes_outputs(tmp_path):
    state = run(small_config("train.epochs=8"), tmp_path)
    history = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in history] == [1, 2, 3, 4, 5, 6, 7, 8]
    required = {"epoch", "train_loss", "test_loss", "test_accuracy", "train_seconds", "evolution_seconds",
                "eval_seconds", "nnz", "neurons", "peak_rss_mb"}
    assert required <= set(history[0])
    assert history[0]["neurons"] == [40, 48, 32, 3]
    assert history[-1]["nnz"] == state.model.nnz
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert history[-1]["test_accuracy"] > 0.6  # 3 balanced classes: chance is 1/3
    assert (tmp_path / "config.yaml").read_text().startswith("seed: 5")
    assert load_checkpoint(tmp_path / "checkpoint.h5").epoch == 8


def test_same_seed_is_bit_identical(tmp_path):
    run(small_config("train.epochs=3"), tmp_path / "a")
    run(small_config("train.epochs=3"), tmp_path / "b")
    assert_same_checkpoint(tmp_path / "a" / "checkpoint.h5", tmp_path / "b" / "checkpoint.h5")
    ha = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    hb = [json.loads(x) for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert strip_timings(ha) == strip_timings(hb)


def test_other_seed_differs(tmp_path):
    a = run(small_config("train.epochs=1"), tmp_path / "a")
    b = run(small_config("train.epochs=1", "seed=6"), tmp_path / "b")
    assert not np.array_equal(a.model.layers[0].keys(), b.model.layers[0].keys())


def test_resumed_run_matches_uninterrupted_run(tmp_path):
    run(small_config("train.epochs=4"), tmp_path / "full")
    run(small_config("train.epochs=2"), tmp_path / "resumed")
    run(small_config("train.epochs=4"), tmp_path / "resumed", resume=True)
    assert_same_checkpoint(tmp_path / "full" / "checkpoint.h5", tmp_path / "resumed" / "checkpoint.h5")
    full = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    resumed = [json.loads(x) for x in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert strip_timings(full) == strip_timings(resumed)


def test_resume_refuses_a_changed_model(tmp_path):
    from sparsenet.errors import ConfigError

    run(small_config("train.epochs=1"), tmp_path)
    with pytest.raises(ConfigError, match="model"):
        run(small_config("train.epochs=2", "model.hidden=[40,32]"), tmp_path, resume=True)


def test_output_layer_evolves_only_when_asked(tmp_path):
    sparse_output = "model.epsilon=1"  # below density 1, so the output layer can evolve
    fixed = run(small_config("train.epochs=2", sparse_output), tmp_path / "fixed")
    first = run(small_config("train.epochs=1", sparse_output), tmp_path / "first")
    evolved = run(small_config("train.epochs=2", sparse_output, "evolution.evolve_output=true"), tmp_path / "evolved")
    assert first.model.layers[-1].density < 1
    assert np.array_equal(fixed.model.layers[-1].keys(), first.model.layers[-1].keys())
    assert not np.array_equal(evolved.model.layers[-1].keys(), first.model.layers[-1].keys())
    assert not np.array_equal(fixed.model.layers[0].keys(), first.model.layers[0].keys())


PROCESS_RUN = """
import hashlib, sys
from sparsenet.config import load_config
from sparsenet.errors import ConfigError
from sparsenet.train import run
state = run(load_config(None, sys.argv[2:]), sys.argv[1])
digest = hashlib.sha256()
for layer in state.model.layers:
    for a in (layer.rows, layer.cols, layer.values, layer.bias):
        digest.update(a.tobytes())
print(digest.hexdigest())
"""


def test_bit_identical_across_processes_compiled_or_cached(tmp_path):
    """A run that compiles the kernels and one that loads them from numba's cache agree bit for bit."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "numba_cache"))
    digests = []
    for name in ("compiled", "cached"):
        proc = subprocess.run([sys.executable, "-c", PROCESS_RUN, str(tmp_path / name), *SMALL, "train.epochs=2"],
                              capture_output=True, text=True, env=env, timeout=600)
        assert proc.returncode == 0, proc.stderr
        digests.append(proc.stdout.split()[-1])
    assert any((tmp_path / "numba_cache").rglob("*.nbi"))
    assert digests[0] == digests[1]


def test_a_stop_mid_epoch_checkpoints_at_the_next_batch_and_resumes_bit_identically(tmp_path, monkeypatch):
    """SIGUSR1 during batch 12 of epoch 2: the checkpoint holds the model after that batch and where
    the epoch stood; --resume finishes that epoch and the run as if it had never stopped."""
    import os
    import signal

    import sparsenet.train as train

    cfg = small_config("train.epochs=3", "evolution.zeta=0.3")
    run(cfg, tmp_path / "straight")
    calls, real_step = [], train.train_step
    n_batches = -(-560 // 16)  # 800 samples, 560 of them for training

    def step_then_signal(state, x, y, index):
        result = real_step(state, x, y, index)
        calls.append(state.epoch)
        if len(calls) == n_batches + 12:
            os.kill(os.getpid(), signal.SIGUSR1)
        return result

    monkeypatch.setattr(train, "train_step", step_then_signal)
    stopped = run(cfg, tmp_path / "stopped")
    assert stopped.stopped_by == "SIGUSR1" and stopped.epoch == 1
    saved = load_checkpoint(tmp_path / "stopped" / "checkpoint.h5")
    assert saved.epoch == 1 and saved.partial_epoch["step"] == 12 and saved.partial_epoch["n_steps"] == n_batches
    monkeypatch.setattr(train, "train_step", real_step)
    with pytest.raises(ConfigError, match="stopped part-way through epoch 2 at 35 batches per epoch"):
        run(small_config("train.epochs=3", "evolution.zeta=0.3", "train.batch_size=32"), tmp_path / "stopped",
            resume=True)
    resumed = run(cfg, tmp_path / "stopped", resume=True)
    assert resumed.epoch == 3 and resumed.stopped_by is None
    assert_same_checkpoint(tmp_path / "straight" / "checkpoint.h5", tmp_path / "stopped" / "checkpoint.h5")
    assert load_checkpoint(tmp_path / "stopped" / "checkpoint.h5").partial_epoch is None
    rows = {name: [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
            for name in ("straight", "stopped")}
    assert strip_timings(rows["stopped"]) == strip_timings(rows["straight"])


def test_the_workspace_released_between_epochs_changes_nothing(monkeypatch):
    """between_epochs frees the training workspace (the SET step uses its memory); the next batch gets a new
    one. Training with and without the release gives the same bits."""
    from sparsenet.config import load_config
    from sparsenet.data import load_dataset
    from sparsenet.model import SparseMLP
    from sparsenet.train import between_epochs, new_state, train_epoch

    cfg = load_config(None, ["data.name=synthetic", "data.samples=200", "data.features=30", "model.hidden=[40,30]",
                             "model.epsilon=5", "train.batch_size=16", "model.dropout=0.3", "evolution.zeta=0.3"])
    data = load_dataset(cfg.data, cfg.seed)

    def trained():
        state = new_state(cfg, data.n_features, data.n_classes)
        for epoch in range(3):
            if epoch:
                between_epochs(state, cfg)
                yield state.model._capacity
            train_epoch(state, data.x_train, data.y_train, 16)
        yield [(layer.values.copy(), layer.rows.copy()) for layer in state.model.layers]

    *released, with_release = trained()
    assert released == [0, 0]  # freed by between_epochs
    monkeypatch.setattr(SparseMLP, "release_workspace", lambda self: None)
    *kept, without = trained()
    assert kept == [16, 16]
    for (v1, r1), (v2, r2) in zip(with_release, without):
        assert np.array_equal(v1.view(np.uint32), v2.view(np.uint32)) and np.array_equal(r1, r2)


def test_resume_refusal_names_each_changed_key_with_both_values():
    """`--set model.hidden=[100,100]` for the run, then the README's `--resume` without it: the error said only
    'different model'; it names the key and both values."""
    from sparsenet.state import check_resume_compatible

    saved = load_config(None, ["model.hidden=[100,100]", "seed=0"])
    with pytest.raises(ConfigError, match=r"different seed, model \(seed 0 in the checkpoint, 3 now; model.hidden "
                                          r"\[100, 100\] in the checkpoint, \[1000, 1000, 1000\] now\); only threads"):
        check_resume_compatible(saved, load_config(None, ["model.hidden=[1000,1000,1000]", "seed=3"]))
    check_resume_compatible(saved, load_config(None, ["model.hidden=[100,100]", "train.lr=0.5"]))  # train may change
