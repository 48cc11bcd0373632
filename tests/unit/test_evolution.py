"""The SET step's invariants and the optimizer state that follows it."""

import numpy as np
import pytest

from sparsenet.evolution import prune_and_regrow, weights_to_remove
from sparsenet.model import SparseMLP
from sparsenet.optim import MomentumSGD
from sparsenet.sparse.init import erdos_renyi_layer


@pytest.fixture
def layer():
    return erdos_renyi_layer(300, 200, 10, "he_uniform", np.random.default_rng(0))


def test_removed_weights_are_those_nearest_zero_on_each_side(layer):
    values = layer.values
    removed = weights_to_remove(values, 0.3)
    n_pos, n_neg = int((values >= 0).sum()), int((values < 0).sum())
    assert removed.shape[0] == int(0.3 * n_pos) + int(0.3 * n_neg)
    mask = np.zeros(values.shape[0], dtype=bool)
    mask[removed] = True
    pos_removed, pos_kept = values[mask & (values >= 0)], values[~mask & (values >= 0)]
    neg_removed, neg_kept = values[mask & (values < 0)], values[~mask & (values < 0)]
    assert pos_removed.shape[0] == int(0.3 * n_pos) and neg_removed.shape[0] == int(0.3 * n_neg)
    assert pos_removed.max() <= pos_kept.min()
    assert neg_removed.min() >= neg_kept.max()


def test_prune_regrow_keeps_nnz_and_positions_unique(layer):
    rng = np.random.default_rng(1)
    new, source = prune_and_regrow(layer, 0.3, "he_uniform", rng)
    assert new.nnz == layer.nnz
    keys = new.keys()
    assert np.all(np.diff(keys) > 0)
    n_removed = weights_to_remove(layer.values, 0.3).shape[0]
    assert (source == -1).sum() == n_removed
    kept = source >= 0
    # surviving connections keep their position and value
    np.testing.assert_array_equal(keys[kept], layer.keys()[source[kept]])
    np.testing.assert_array_equal(new.values[kept], layer.values[source[kept]])
    # regrown ones sit where no surviving connection is and take init-range values
    assert np.intersect1d(keys[~kept], keys[kept]).size == 0
    assert np.abs(new.values[~kept]).max() <= np.sqrt(6 / 300)
    assert new.out_ptr[-1] == new.nnz and np.all(np.diff(new.rows[new.in_perm]) >= 0)


def test_new_weights_get_zero_optimizer_state():
    rng = np.random.default_rng(2)
    model = SparseMLP.initialize([20, 30, 5], epsilon=3, init="he_uniform", activation="relu", alpha=0,
                                 dropout=0, output="softmax", rng=rng)
    opt = MomentumSGD(model, 0.1, 0.9, 0.0)
    opt.velocities[0][:] = rng.standard_normal(model.layers[0].nnz).astype(np.float32) + 5.0
    old_velocity = opt.velocities[0].copy()
    new, source = prune_and_regrow(model.layers[0], 0.3, "he_uniform", rng)
    opt.follow_topology(0, source)
    assert opt.velocities[0].shape == (new.nnz,)
    np.testing.assert_array_equal(opt.velocities[0][source == -1], 0.0)
    np.testing.assert_array_equal(opt.velocities[0][source >= 0], old_velocity[source[source >= 0]])


def test_dense_layer_regrows_among_free_positions():
    rng = np.random.default_rng(3)
    layer = erdos_renyi_layer(12, 10, 4, "xavier", rng)  # density ~0.73
    for _ in range(5):
        layer, _ = prune_and_regrow(layer, 0.3, "xavier", rng)
        assert np.all(np.diff(layer.keys()) > 0)


@pytest.mark.parametrize("mode", ["coupled", "decoupled"])
def test_momentum_sgd_update_rule(mode):
    rng = np.random.default_rng(5)
    model = SparseMLP.initialize([6, 4], epsilon=1, init="he_uniform", activation="relu", alpha=0,
                                 dropout=0, output="softmax", rng=rng)
    opt = MomentumSGD(model, lr=0.1, momentum=0.9, weight_decay=0.01, weight_decay_mode=mode)
    w0 = model.layers[0].values.astype(np.float64)
    g = rng.standard_normal(w0.shape[0]).astype(np.float32)
    v = np.zeros_like(w0)
    w = w0.copy()
    for _ in range(3):
        opt.step(model, [g], [np.zeros(4, np.float32)])
        if mode == "coupled":
            v = 0.9 * v - 0.1 * (g + 0.01 * w)
            w = w + v
        else:
            v = 0.9 * v - 0.1 * g
            w = w + v - 0.01 * w
    np.testing.assert_allclose(model.layers[0].values, w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(opt.velocities[0], v, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", ["coupled", "decoupled"])
def test_fused_step_of_every_layer_matches_per_layer_updates(mode):
    """One kernel call updates every layer's weights and biases as step_partial does."""
    rng = np.random.default_rng(8)
    make = lambda: SparseMLP.initialize([7, 5, 6, 3], epsilon=2, init="he_uniform", activation="relu", alpha=0,
                                        dropout=0, output="softmax", rng=np.random.default_rng(1))
    fused, reference = make(), make()
    opt_f, opt_r = (MomentumSGD(m, lr=0.05, momentum=0.9, weight_decay=0.01, weight_decay_mode=mode)
                    for m in (fused, reference))
    for _ in range(3):
        grads = [rng.standard_normal(layer.nnz).astype(np.float32) for layer in fused.layers]
        bias_grads = [rng.standard_normal(layer.n_out).astype(np.float32) for layer in fused.layers]
        strided = [np.repeat(g, 2)[::2] for g in grads]  # not contiguous: the step copies them
        opt_f.step(fused, strided, bias_grads)
        n = len(reference.layers)
        opt_r.step_partial(reference, grads, bias_grads, [None] * n, [None] * n)
        for l in range(len(fused.layers)):
            np.testing.assert_allclose(fused.layers[l].values, reference.layers[l].values, rtol=1e-6, atol=1e-7)
            np.testing.assert_allclose(fused.layers[l].bias, reference.layers[l].bias, rtol=1e-6, atol=1e-7)
