"""The parameter server's algorithm, driven through the seam by in-process fake workers (no MPI)."""

import copy
import os
import signal

import numpy as np
import pytest

from sparsenet.checkpoint import load_checkpoint
from sparsenet.config import load_config
from sparsenet.data import load_dataset
from sparsenet.optim import make_optimizer
from sparsenet.parallel.averaging import average_replicas
from sparsenet.parallel.server import ParameterServer
from sparsenet.sparse.layer import SparseLayer
from sparsenet.state import new_state
from tests.unit.fake_workers import FakeWorkers

SMALL = ["data.name=synthetic", "data.samples=300", "data.features=20", "data.informative=6", "data.redundant=2",
         "data.classes=3", "model.hidden=[24,16]", "model.epsilon=4", "model.dropout=0", "train.batch_size=16",
         "train.lr=0.02", "train.progress=false", "checkpoint.every=1", "seed=2"]


def serve(tmp_path, k, *extra, on_take=None):
    cfg = load_config(None, SMALL + list(extra))
    data = load_dataset(cfg.data, cfg.seed)
    state = new_state(cfg, data.n_features, data.n_classes)
    start = copy.deepcopy(state.model)
    workers = FakeWorkers(cfg, data, k, on_take)
    server = ParameterServer(cfg, data, workers, state, tmp_path)
    return server, workers, server.run(), start, cfg


def test_wassp_applies_the_sample_weighted_mean_of_each_round_once(tmp_path):
    server, workers, state, start, cfg = serve(tmp_path, 2, "parallel.algorithm=wassp", "parallel.lr_scaling=false",
                                               "train.epochs=1", "parallel.phase1_epochs=1")
    taken = workers.taken
    assert len(taken) == 2 * -(-210 // 32) and [g.source for g in taken[:4]] == [1, 2, 1, 2]  # 210 train samples
    reference, opt = start, make_optimizer(cfg, start)
    for a, b in zip(taken[0::2], taken[1::2]):
        total = a.samples + b.samples
        mean = [np.float32(a.samples / total) * x + np.float32(b.samples / total) * y
                for x, y in zip(a.arrays, b.arrays)]
        n = len(reference.layers)
        opt.step(reference, mean[:n], mean[n:], 0.02)
    for mine, theirs in zip(state.model.layers, reference.layers):
        np.testing.assert_array_equal(mine.values, theirs.values)
        np.testing.assert_array_equal(mine.bias, theirs.bias)
    row = state.history[0]
    assert (row["updates"], row["stale_updates"], row["phase"]) == (len(taken), 0, 1)
    assert row["train_loss"] == pytest.approx(sum(g.loss for g in taken) / sum(g.samples for g in taken))
    assert workers.stopped and load_checkpoint(tmp_path / "checkpoint.h5").epoch == 1


def test_wasap_carries_the_gradients_computed_before_a_set_step_onto_the_new_topology(tmp_path):
    server, workers, state, _, _ = serve(tmp_path, 3, "parallel.algorithm=wasap", "train.epochs=2",
                                         "parallel.phase1_epochs=2", "evolution.zeta=0.3")
    rows = state.history
    # the worker that handed in epoch 1's last gradient gets the new topology first; the two others
    # hand in one gradient each on the old one, carried over, then get the new topology too
    assert [r["stale_updates"] for r in rows] == [0, 2] and rows[1]["version"] == 1
    assert sorted(w for kind, w, v in workers.sent if kind == "topology" and v == 1) == [1, 2, 3]
    assert [g.version for g in workers.taken].count(0) == rows[0]["updates"] + 2
    assert rows[1]["test_loss"] < rows[0]["test_loss"]
    assert list(server.lineages) == [0]  # the map from version 0, dropped at the next SET step


def test_phase2_averages_the_replicas_and_prunes_back_to_the_targets(tmp_path):
    server, workers, state, _, _ = serve(tmp_path, 2, "train.epochs=3", "parallel.phase1_epochs=1",
                                         "parallel.algorithm=wassp")
    assert [r["phase"] for r in state.history] == [1, 2, 2] and workers.stopped
    targets = state.history[0]["nnz"]
    last = workers.replicas[-1]
    expected = average_replicas([[SparseLayer(a.n_in, a.n_out, a.rows, a.cols, a.values, a.bias) for a in r.layers]
                                 for r in last], targets)
    for mine, theirs in zip(state.model.layers, expected):
        np.testing.assert_array_equal(mine.keys(), theirs.keys())
        np.testing.assert_array_equal(mine.values, theirs.values)
    assert state.model.nnz == targets
    samples = [r.report["samples"] for r in last]
    assert state.history[-1]["train_loss"] == pytest.approx((0.5 * samples[0] + 1.0 * samples[1]) / sum(samples))
    assert workers.masks == [[], []]  # one start, one continue, no pruning
    saved = load_checkpoint(tmp_path / "checkpoint.h5")
    assert saved.phase == 2 and saved.replica_optimizer_scalars == [{"step": 1}, {"step": 2}]
    np.testing.assert_array_equal(saved.replicas[1][0].values, last[1].layers[0].values)


def test_a_stop_signal_ends_the_epoch_with_a_checkpoint_and_drains_the_workers(tmp_path):
    def stop_at(taken):
        if taken == 5:
            os.kill(os.getpid(), signal.SIGUSR1)

    server, workers, state, _, _ = serve(tmp_path, 2, "parallel.algorithm=wasap", "train.epochs=3",
                                         "parallel.phase1_epochs=3", on_take=stop_at)
    assert state.stopped_by == "SIGUSR1" and state.epoch == 1 and workers.stopped
    assert load_checkpoint(tmp_path / "checkpoint.h5").epoch == 1
    # epoch 1's gradients, then the one gradient the other worker had in flight
    assert len(workers.taken) == state.history[0]["updates"] + 1
