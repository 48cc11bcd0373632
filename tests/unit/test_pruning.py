"""Neuron pruning: importance against dense sums, removal that really shrinks, NPSET counts, schedules."""

import json

import numpy as np
import pytest

from sparsenet.config import load_config
from sparsenet.model import SparseMLP
from sparsenet.optim import MomentumSGD
from sparsenet.pruning import (connection_counts, input_strength, keep_by_importance, keep_most_connected,
                               neuron_importance, pruning_due, remove_neurons, select_by_importance, select_npset)
from sparsenet.sparse.layer import SparseLayer
from sparsenet.train import TrainingState, apply_neuron_removal, run
from tests import naive
from tests.unit.test_train import SMALL, assert_same_checkpoint, strip_timings


def random_model(sizes=(12, 30, 25, 4), epsilon=4.0, seed=0):
    rng = np.random.default_rng(seed)
    model = SparseMLP.initialize(list(sizes), epsilon=epsilon, init="he_uniform", activation="all_relu",
                                 alpha=0.6, dropout=0.0, output="softmax", rng=rng)
    for layer in model.layers:
        layer.bias[:] = rng.standard_normal(layer.n_out).astype(np.float32) * 0.1
    return model


def outputs(model, x):
    np.copyto(model.input_buffer(x.shape[0]), x.T)
    return model.logits(x.shape[0]).copy()


def random_keep(model, rng, fraction=0.3):
    return [rng.random(n) >= fraction for n in model.sizes[1:-1]]


def test_importance_and_strength_match_dense_sums():
    model = random_model()
    for layer in model.layers:
        w = naive.dense_weights(layer)
        np.testing.assert_allclose(neuron_importance(layer), np.abs(w).sum(axis=0), rtol=1e-12)
        np.testing.assert_allclose(input_strength(layer), np.abs(w).sum(axis=1), rtol=1e-12)
    w0, w1 = naive.dense_weights(model.layers[0]), naive.dense_weights(model.layers[1])
    np.testing.assert_array_equal(connection_counts(model, 1), (w0 != 0).sum(axis=0) + (w1 != 0).sum(axis=1))


def test_removed_neurons_leave_no_connection_and_shapes_agree():
    model = random_model()
    rng = np.random.default_rng(3)
    keep = random_keep(model, rng)
    before = [naive.dense_weights(layer) for layer in model.layers]
    old_sizes = model.sizes
    removal = remove_neurons(model, keep)
    masks = [np.ones(old_sizes[0], bool), *keep, np.ones(old_sizes[-1], bool)]
    assert model.sizes == [int(m.sum()) for m in masks]
    assert removal.removed == [int((~k).sum()) for k in keep]
    for l, layer in enumerate(model.layers):
        assert layer.rows.max() < layer.n_in and layer.cols.max() < layer.n_out
        assert layer.bias.shape == (layer.n_out,) and layer.values.shape == layer.rows.shape == layer.cols.shape
        assert np.all(np.diff(layer.keys()) > 0)  # still output-major, no duplicates
        # The surviving dense block is exactly the old one restricted to kept neurons.
        expected = before[l][np.ix_(masks[l], masks[l + 1])]
        np.testing.assert_array_equal(naive.dense_weights(layer), expected)
        assert layer.nnz == np.count_nonzero(expected)
    assert [g.shape[0] for g in model.grads] == model.nnz


def test_removing_neurons_that_carry_no_weight_keeps_outputs():
    model = random_model()
    rng = np.random.default_rng(4)
    keep = random_keep(model, rng, 0.4)
    for h, mask in enumerate(keep, start=1):  # silence every connection into or out of a doomed neuron
        into, out_of = model.layers[h - 1], model.layers[h]
        into.values[~mask[into.cols]] = 0.0
        out_of.values[~mask[out_of.rows]] = 0.0
    x = rng.standard_normal((16, model.sizes[0])).astype(np.float32)
    before = outputs(model, x)
    remove_neurons(model, keep)
    np.testing.assert_allclose(outputs(model, x), before, rtol=1e-5, atol=1e-6)


def test_removed_neuron_without_inputs_is_folded_into_next_biases():
    model = random_model(seed=1)
    rng = np.random.default_rng(5)
    keep = random_keep(model, rng, 0.3)
    into = model.layers[0]
    dead = ~keep[0]
    # Dead neurons of hidden layer 1 lose their inputs but keep outputs: they emit f(bias), a constant.
    survivors = ~dead[into.cols]
    model.layers[0] = SparseLayer(into.n_in, into.n_out, into.rows[survivors], into.cols[survivors],
                                  into.values[survivors], into.bias)
    model.layers[0].bias[dead] = np.where(np.arange(dead.sum()) % 2 == 0, 0.7, -0.4)  # both sides of All-ReLU
    model.topology_changed()
    keep = [dead == False, np.ones(model.sizes[2], bool)]  # noqa: E712
    x = rng.standard_normal((10, model.sizes[0])).astype(np.float32)
    before = outputs(model, x)
    remove_neurons(model, keep)
    np.testing.assert_allclose(outputs(model, x), before, rtol=1e-5, atol=1e-6)


def test_optimizer_state_follows_removed_neurons():
    model = random_model()
    opt = MomentumSGD(model, 0.1, 0.9, 0.0)
    rng = np.random.default_rng(6)
    for l, layer in enumerate(model.layers):  # tag every connection's and bias's state with its identity
        opt.velocities[l] = (layer.keys() + 1).astype(np.float32) * (l + 1)
        opt.bias_velocities[l] = np.arange(layer.n_out, dtype=np.float32) + 1000 * (l + 1)
    old_keys = [layer.keys() for layer in model.layers]
    old_n_in = [layer.n_in for layer in model.layers]
    keep = random_keep(model, rng)
    state = TrainingState(model, opt, rng, 0, [])
    removal = apply_neuron_removal(state, keep)
    for l, layer in enumerate(model.layers):
        assert opt.velocities[l].shape == (layer.nnz,)
        np.testing.assert_array_equal(opt.velocities[l], (old_keys[l][removal.sources[l]] + 1).astype(np.float32) * (l + 1))
        assert old_n_in[l] >= layer.n_in
        assert opt.bias_velocities[l].shape == (layer.n_out,)
    np.testing.assert_array_equal(opt.bias_velocities[0], np.flatnonzero(keep[0]) + 1000.0)
    np.testing.assert_array_equal(opt.bias_velocities[-1], np.arange(model.sizes[-1]) + 1000.0 * len(model.layers))


@pytest.mark.parametrize("bad, message", [
    (lambda m: [np.ones(3, bool), np.ones(m.sizes[2], bool)], "must be bool of shape (30,)"),
    (lambda m: [np.zeros(m.sizes[1], bool), np.ones(m.sizes[2], bool)], "removes every neuron"),
    (lambda m: [np.ones(m.sizes[1], bool)], "one keep mask per hidden layer (2)"),
])
def test_bad_keep_masks_are_refused(bad, message):
    model = random_model()
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        remove_neurons(model, bad(model))


def test_percentile_keeps_neurons_at_or_above_threshold():
    importance = np.array([5.0, 0.0, 3.0, 1.0, 4.0, 2.0, 9.0, 8.0, 7.0, 6.0])
    np.testing.assert_array_equal(keep_by_importance(importance, 25), importance >= 2.25)
    assert keep_by_importance(np.zeros(7), 50).sum() == 7  # nothing is below the percentile of equals
    assert keep_by_importance(np.array([1.0]), 99).tolist() == [True]


@pytest.mark.parametrize("n, fraction, removed", [(100, 0.04, 4), (1000, 0.04, 40), (30, 0.1, 3), (2, 0.9, 1)])
def test_npset_removes_exactly_the_requested_count(n, fraction, removed):
    rng = np.random.default_rng(n)
    degree = rng.integers(0, 20, n)
    importance = rng.random(n)
    keep = keep_most_connected(degree, importance, fraction)
    assert (~keep).sum() == removed
    assert degree[~keep].max() <= degree[keep].min()  # the fewest-connected go


def test_npset_on_a_model_removes_the_fewest_connected():
    model = random_model(sizes=(20, 200, 150, 5))
    keep = select_npset(model, 0.04)
    assert [(~k).sum() for k in keep] == [8, 6]
    for h, mask in enumerate(keep, start=1):
        degree = connection_counts(model, h)
        assert degree[~mask].max() <= degree[mask].min()
    keep_imp = select_by_importance(model, 10)
    for h, mask in enumerate(keep_imp, start=1):
        imp = neuron_importance(model.layers[h - 1])
        assert imp[~mask].max() < imp[mask].min()
        assert abs((~mask).sum() - 0.1 * model.sizes[h]) <= 1


def test_schedules():
    due = [e for e in range(1, 41) if pruning_due("importance", 10, 5, 0, e)]
    assert due == [10, 15, 20, 25, 30, 35, 40]
    assert [e for e in range(1, 60) if pruning_due("npset", 10, 1, 40, e)] == list(range(10, 50))
    assert not any(pruning_due("none", 1, 1, 100, e) for e in range(1, 50))


def test_training_with_importance_pruning_shrinks_and_resumes_exactly(tmp_path):
    extra = ["pruning.method=importance", "pruning.start_epoch=1", "pruning.every=2", "pruning.percentile=20"]
    cfg = load_config(None, SMALL + extra + ["train.epochs=6"])
    state = run(cfg, tmp_path / "full")
    history = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    neurons = [row["neurons"][1:3] for row in history]
    assert neurons[0] == [48, 32]
    # Pruned after epochs 1, 3, 5: before epochs 2, 4, 6.
    assert [sum(row["neurons_removed"]) > 0 for row in history] == [False, True, False, True, False, True]
    assert neurons[-1][0] <= int(48 * 0.8 ** 3) + 3 and neurons[-1][1] <= int(32 * 0.8 ** 3) + 3
    assert state.model.sizes[1:3] == neurons[-1]
    assert sum(history[-1]["nnz"]) < 0.75 * sum(history[0]["nnz"])
    assert history[-1]["test_accuracy"] > 0.6  # three balanced classes: chance is 1/3
    run(load_config(None, SMALL + extra + ["train.epochs=3"]), tmp_path / "resumed")
    run(cfg, tmp_path / "resumed", resume=True)
    assert_same_checkpoint(tmp_path / "full" / "checkpoint.h5", tmp_path / "resumed" / "checkpoint.h5")
    resumed = [json.loads(x) for x in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert strip_timings(history) == strip_timings(resumed)


def test_training_with_npset_removes_alpha_per_epoch(tmp_path):
    extra = ["pruning.method=npset", "pruning.start_epoch=2", "pruning.duration=2", "pruning.fraction=0.1"]
    run(load_config(None, SMALL + extra + ["train.epochs=5"]), tmp_path)
    history = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [row["neurons"][1:3] for row in history] == [[48, 32], [48, 32], [43, 29], [39, 26], [39, 26]]
    assert [row["neurons_removed"] for row in history] == [[0, 0], [0, 0], [5, 3], [4, 3], [0, 0]]
