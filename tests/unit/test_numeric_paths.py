"""Paths that coverage showed untested or only smoke-tested, checked against tests/naive.py's dense
references, finite differences or hand-computed values: output losses, probabilities, evaluation
chunking, SET and neuron pruning at their edges, prefetching kernels, lazy updates past their plan,
Model.from_sparse and the estimators' predict_proba / score."""

import math

import numpy as np
import pytest
import scipy.sparse as sp

from sparsenet.api import Model, probabilities


def test_sigmoid_probabilities_are_the_normalised_sigmoids_even_when_all_underflow():
    """Before: logits below about -745 made every sigmoid 0 in float64 and predict_proba returned NaN (0 / 0)."""
    p = probabilities("sigmoid", np.array([[0.0, math.log(3.0)], [-800.0, -801.0], [-2000.0, 5.0]], np.float32))
    np.testing.assert_allclose(p[0], [0.5 / 1.25, 0.75 / 1.25], rtol=1e-7)  # log 3 rounded to float32
    np.testing.assert_allclose(p[1], [1 / (1 + math.exp(-1)), math.exp(-1) / (1 + math.exp(-1))], rtol=1e-6)
    np.testing.assert_array_equal(p[2], [0.0, 1.0])
    model = Model.from_sparse([sp.csr_array(np.array([[-800.0], [-801.0]]))], output="sigmoid")
    np.testing.assert_allclose(model.predict_proba(np.ones((1, 1))), p[1:2], rtol=1e-6)
    assert model.predict(np.ones((1, 1))).tolist() == [0]
    np.testing.assert_allclose(probabilities("softmax", np.array([[0.0, math.log(3.0)]])), [[0.25, 0.75]], rtol=1e-12)


def test_csr_column_statistics_match_the_dense_ones_and_a_constant_column_has_std_0():
    """Before: CSR std came from E[x^2] - mean^2, so a column of 0.1 on 1000 rows got std 6e-9 instead of 0;
    standardisation multiplied it by 1.7e7 and SETClassifier.fit on the sparse X diverged (the dense X trained)."""
    from sparsenet import SETClassifier
    from sparsenet.data.csr import CSRRows
    from sparsenet.data.prepare import _column_stats

    rng = np.random.default_rng(0)
    x = sp.random(1000, 6, density=0.3, random_state=1, format="csr", dtype=np.float32)
    x = sp.hstack([x, sp.csr_array(np.full((1000, 2), [0.1, 3.3], np.float32))], format="csr")
    rows = CSRRows(x.data, x.indices, x.indptr.astype(np.int64), x.shape)
    mean, std = rows.column_stats()
    dense_mean, dense_std = _column_stats(x.toarray())
    np.testing.assert_allclose(mean, dense_mean, rtol=1e-12)
    np.testing.assert_allclose(std, dense_std, rtol=1e-9)
    assert std[-2:].tolist() == [0.0, 0.0] and 0.1 < std[0] < 0.5
    X = rng.standard_normal((1000, 4))
    X[:, 3] = 0.1
    y = (X[:, 0] > 0).astype(int)
    clf = SETClassifier(hidden=(8,), epochs=1, seed=0).fit(sp.csr_array(X), y)
    assert clf.model_.preprocessing.std[3] == 1.0 and math.isfinite(clf.history_[0]["train_loss"])


# ------------------------------------------------------------------ output losses through the network

def _net(sizes, output, activation="leaky_relu", alpha=0.2, seed=0, epsilon=2.0):
    from sparsenet.model import SparseMLP

    rng = np.random.default_rng(seed)
    net = SparseMLP.initialize(list(sizes), epsilon=epsilon, init="he_uniform", activation=activation, alpha=alpha,
                               dropout=0.0, output=output, rng=rng)
    for layer in net.layers:
        layer.bias[:] = rng.standard_normal(layer.n_out).astype(np.float32) * 0.1
    return net


def _dense(net):
    from tests import naive

    return [naive.dense_weights(layer) for layer in net.layers], [layer.bias.astype(np.float64) for layer in net.layers]


@pytest.mark.parametrize("output, targets", [("sigmoid", "labels"), ("sigmoid", "floats"), ("linear", "floats")])
def test_sigmoid_and_linear_losses_backpropagate_as_the_dense_reference(output, targets):
    """The sigmoid classifier (labels), the sigmoid regressor and the linear autoencoder output (float targets)."""
    from tests import naive

    net = _net([7, 6, 5, 4], output)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((9, 7)).astype(np.float32)
    y = rng.integers(0, 4, 9) if targets == "labels" else rng.random((9, 4)).astype(np.float32)
    np.copyto(net.input_buffer(9), x.T)
    loss, correct = net.gradients(9, y, np.zeros(3, dtype=np.int64))
    ws, bs = _dense(net)
    reference = naive.sigmoid_mse if targets == "labels" else (lambda z, t: naive.mse_targets(output, z, t))
    ref_loss, dws, dbs = naive.network_gradients(ws, bs, net.slopes, x.T.astype(np.float64), y, loss=reference)
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    for l, layer in enumerate(net.layers):
        np.testing.assert_allclose(net.grads[l], dws[l][layer.rows, layer.cols], rtol=1e-4, atol=1e-7)
        np.testing.assert_allclose(net.bias_grads[l], dbs[l], rtol=1e-4, atol=1e-7)
    _, acts = naive.network_forward(ws, bs, net.slopes, x.T.astype(np.float64))
    assert correct == (int((acts[-1].argmax(axis=0) == y).sum()) if targets == "labels" else 0)


# ------------------------------------------------------------------ evaluation chunking

@pytest.mark.parametrize("output", ["softmax", "sigmoid"])
def test_evaluate_equals_the_dense_loss_whatever_the_chunks_and_the_input_kind(output):
    """Own buffers (several max_bytes, one sample per chunk included), the training workspace, CSR rows."""
    from sparsenet.data.csr import CSRRows
    from tests import naive

    net = _net([11, 8, 6, 3], output, activation="all_relu", alpha=0.6)
    rng = np.random.default_rng(2)
    xs = sp.random(37, 11, density=0.4, random_state=3, format="csr", dtype=np.float32)
    x = xs.toarray()
    y = rng.integers(0, 3, 37)
    ws, bs = _dense(net)
    _, acts = naive.network_forward(ws, bs, net.slopes, x.T.astype(np.float64))
    loss_fn = naive.softmax_ce if output == "softmax" else naive.sigmoid_mse
    expected = (loss_fn(acts[-1], y)[0] / 37, float((acts[-1].argmax(axis=0) == y).mean()))
    per_sample = 4 * (11 + 8)  # evaluate's ping-pong buffers: widest even and odd neuron layers
    results = [net.evaluate(x, y, batch_size=b, max_bytes=m) for b, m in ((64, None), (10, None), (64, per_sample),
                                                                          (64, 5 * per_sample))]
    rows = CSRRows(xs.data, xs.indices, xs.indptr.astype(np.int64), xs.shape)
    results += [net.evaluate(rows, y, batch_size=b, max_bytes=m) for b, m in ((64, None), (7, None), (64, 1))]
    np.copyto(net.input_buffer(16), x[:16].T)
    net.logits(16)  # now the model holds a training workspace of 16 samples
    results += [net.evaluate(x, y, batch_size=b) for b in (64, 5)]
    for loss, accuracy in results:
        assert loss == pytest.approx(expected[0], rel=1e-5) and accuracy == expected[1]
    assert len({r[0] for r in results[:4] + results[-2:]}) == 1  # dense input: the same bits in any chunks


def test_autoencoder_evaluation_scores_the_reconstruction_of_each_sample():
    from tests import naive

    net = _net([6, 4, 6], "linear")
    net.task = "autoencoder"
    x = np.random.default_rng(3).standard_normal((13, 6)).astype(np.float32)
    ws, bs = _dense(net)
    _, acts = naive.network_forward(ws, bs, net.slopes, x.T.astype(np.float64))
    expected = naive.mse_targets("linear", acts[-1], x.astype(np.float64))[0] / 13
    y = np.zeros(13, dtype=np.int64)  # not read
    for b, m in ((64, None), (4, None), (64, 4 * (6 + 4))):
        assert net.evaluate(x, y, batch_size=b, max_bytes=m) == (pytest.approx(expected, rel=1e-5), 0.0)
    np.copyto(net.input_buffer(5), x[:5].T)
    net.logits(5)
    assert net.evaluate(x, y, batch_size=64) == (pytest.approx(expected, rel=1e-5), 0.0)


# ------------------------------------------------------------------ SET at its edges

def _layer(n_in, n_out, rows, cols, values):
    from sparsenet.sparse.layer import SparseLayer

    return SparseLayer(n_in, n_out, np.array(rows), np.array(cols), np.array(values, np.float32),
                       np.arange(n_out, dtype=np.float32))


@pytest.mark.parametrize("init", ["he_uniform", "he_uniform_sparse"])
def test_zeta_1_replaces_every_connection_and_a_tiny_zeta_none(init):
    from sparsenet.evolution import prune_and_regrow
    from sparsenet.sparse.init import erdos_renyi_layer

    rng = np.random.default_rng(4)
    layer = erdos_renyi_layer(10, 8, 1.0, init, rng)
    new, source = prune_and_regrow(layer, 1.0, init, rng)
    assert new.nnz == layer.nnz and (source == -1).all() and np.all(np.diff(new.keys()) > 0)
    limit = np.sqrt(6 / np.bincount(new.cols, minlength=8)[new.cols]) if init == "he_uniform_sparse" else np.sqrt(6 / 10)
    assert np.all(np.abs(new.values) <= limit) and np.abs(new.values).max() > 0
    np.testing.assert_array_equal(new.bias, layer.bias)
    same, source = prune_and_regrow(layer, 0.01, init, rng)  # int(0.01 * count) = 0 on either side
    np.testing.assert_array_equal(source, np.arange(layer.nnz))
    np.testing.assert_array_equal(same.keys(), layer.keys())
    np.testing.assert_array_equal(same.values, layer.values)


def test_a_nearly_full_tiny_layer_regrows_into_its_only_free_positions():
    """2x2 with 3 connections, zeta 0.5: one weight per side goes; the new ones take exactly the free positions."""
    from sparsenet.evolution import prune_and_regrow

    layer = _layer(2, 2, [0, 1, 0], [0, 0, 1], [0.5, -0.25, 0.125])  # keys 0, 1, 2; position 3 is free
    new, source = prune_and_regrow(layer, 0.5, "he_uniform", np.random.default_rng(5), regrow="zero")
    # positive side [0.5, 0.125]: int(0.5 * 2) = 1 goes (0.125); negative side [-0.25]: int(0.5) = 0
    assert sorted(new.keys().tolist()) in ([0, 1, 2], [0, 1, 3])
    assert new.nnz == 3 and (source == -1).sum() == 1
    kept = source >= 0
    np.testing.assert_array_equal(new.values[kept], [0.5, -0.25])
    assert new.values[~kept].tolist() == [0.0]


def test_evolve_leaves_full_layers_and_the_output_alone_and_state_follows():
    from sparsenet.config import config_from_dict
    from sparsenet.state import new_state
    from sparsenet.train import evolve

    cfg = config_from_dict({"seed": 1, "model": {"hidden": [3], "epsilon": 30},  # layer 0: 4 x 3 full
                            "evolution": {"zeta": 0.5}})
    state = new_state(cfg, 4, 2)
    assert state.model.layers[0].nnz == 12 and state.model.layers[1].nnz == 6
    before = [(layer.keys().copy(), layer.values.copy()) for layer in state.model.layers]
    state.optimizer.velocities[0][:] = 1.0
    assert evolve(state, cfg) == {}
    for layer, (keys, values) in zip(state.model.layers, before):
        np.testing.assert_array_equal(layer.keys(), keys)
        np.testing.assert_array_equal(layer.values, values)
    assert (state.optimizer.velocities[0] == 1.0).all()


# ------------------------------------------------------------------ neuron pruning down to a single neuron

def test_pruning_hidden_layers_to_one_neuron_gives_the_restricted_network_and_its_gradients():
    from sparsenet.pruning import keep_by_importance, keep_most_connected, neuron_importance, remove_neurons, \
        select_npset
    from tests import naive

    net = _net([8, 6, 5, 3], "softmax", activation="all_relu", alpha=0.6, seed=6, epsilon=3.0)
    keep = select_npset(net, 1.0)  # NPSET with fraction 1: all but one neuron of each hidden layer go
    assert [int(k.sum()) for k in keep] == [1, 1]
    assert keep_most_connected(np.array([3]), np.array([1.0]), 0.5).tolist() == [True]  # round(0.5) = 0
    assert keep_by_importance(np.zeros(0), 50).shape == (0,)
    assert keep_by_importance(np.array([1.0, 2.0, 2.0]), 100).tolist() == [False, True, True]
    ws, bs = _dense(net)
    restricted = [ws[0][:, keep[0]], ws[1][np.ix_(keep[0], keep[1])], ws[2][keep[1], :]]
    biases = [bs[0][keep[0]], bs[1][keep[1]], bs[2]]
    constant = [(~k) & (neuron_importance(net.layers[h]) == 0) for h, k in enumerate(keep)]
    assert not any(c.any() for c in constant)  # nothing to fold: the restricted dense net is the reference
    remove_neurons(net, keep)
    assert net.sizes == [8, 1, 1, 3]
    x = np.random.default_rng(7).standard_normal((6, 8)).astype(np.float32)
    y = np.array([0, 1, 2, 0, 1, 2])
    np.copyto(net.input_buffer(6), x.T)
    loss, _ = net.gradients(6, y, np.zeros(3, dtype=np.int64))
    ref_loss, dws, dbs = naive.network_gradients(restricted, biases, net.slopes, x.T.astype(np.float64), y)
    assert loss == pytest.approx(ref_loss, rel=1e-6)
    for l, layer in enumerate(net.layers):
        np.testing.assert_allclose(net.grads[l], dws[l][layer.rows, layer.cols], rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(net.bias_grads[l], dbs[l], rtol=1e-5, atol=1e-7)


# ------------------------------------------------------------------ kernels that prefetch

def test_prefetching_kernels_give_the_same_bits(monkeypatch):
    """Activations beyond PREFETCH_MIN_BYTES take the prefetching loops: no effect on any result."""
    from sparsenet.sparse import kernels
    from sparsenet.sparse.init import erdos_renyi_layer

    rng = np.random.default_rng(8)
    layer = erdos_renyi_layer(37, 23, 5.0, "he_uniform", rng)  # 8-wide, 4-wide and remainder loops
    layer.bias[:] = rng.standard_normal(23)
    x, delta = rng.standard_normal((37, 19)).astype(np.float32), rng.standard_normal((23, 19)).astype(np.float32)
    factor = rng.standard_normal((37, 19)).astype(np.float32)

    def run():
        out, dx = np.empty((23, 19), np.float32), np.empty((37, 19), np.float32)
        grad, grad_only, sums = np.empty(layer.nnz, np.float32), np.empty(layer.nnz, np.float32), np.empty(37, np.float32)
        kernels.forward(layer, x, out, slope=0.3)
        kernels.backward(layer, x, delta, grad, dx, factor, sums)
        kernels.backward(layer, x, delta, grad_only)
        return out, dx, grad, grad_only, sums

    plain = run()
    monkeypatch.setattr(kernels, "PREFETCH_MIN_BYTES", 0)
    assert kernels._ahead(x) == kernels.PREFETCH_AHEAD
    for a, b in zip(plain, run()):
        np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------ lazy updates past their planned steps

def test_lazy_first_layer_beyond_its_planned_steps_grows_its_power_table_and_matches_eager():
    from sparsenet.optim import _momentum_into
    from sparsenet.sparse import csr
    from sparsenet.sparse.init import erdos_renyi_layer
    from sparsenet.sparse.lazy import LazyFirstLayer
    from tests.unit.test_lazy_updates import bag

    x, _ = bag(64, 300, 5, 1)
    eager = erdos_renyi_layer(300, 7, 3.0, "he_uniform", np.random.default_rng(2))
    lazy = erdos_renyi_layer(300, 7, 3.0, "he_uniform", np.random.default_rng(2))
    rng = np.random.default_rng(9)
    eager_v = rng.standard_normal(eager.nnz).astype(np.float32) * 0.01
    lazy_v = eager_v.copy()
    session = LazyFirstLayer(lazy, lazy_v, 0.05, 0.9, 0.01, False, steps=1)
    hyper = (np.float32(0.05), np.float32(0.9), np.float32(0.01), False)
    for s in range(8):
        index = np.arange(8 * s, 8 * s + 8)
        delta = rng.standard_normal((7, 8)).astype(np.float32)
        order = csr.BatchOrder(x.indices, x.indptr, index, 300)
        session.catch_up(x, order)
        session.step(x, order, delta)
        grad = csr.weight_grad(eager, x.data, x.indices, x.indptr, x.shape, index, delta, np.empty(eager.nnz, np.float32))
        _momentum_into(eager.values, eager_v, grad, *hyper)
    assert session.powers.shape[0] > 8  # planned for 1 step, grown on the way
    session.sync()
    scale = float(np.abs(eager.values).max())
    assert np.abs(lazy.values - eager.values).max() <= 4 * 8 * 2.0**-24 * scale
    assert np.abs(lazy_v - eager_v).max() <= 4 * 8 * 2.0**-24 * scale


# ------------------------------------------------------------------ Model.from_sparse, layers, estimators

def test_from_sparse_keeps_stored_zeros_round_trips_its_layers_and_computes_the_dense_forward():
    w0 = sp.random(5, 7, density=0.4, random_state=1, format="coo", dtype=np.float64)
    w0 = sp.coo_array((np.append(w0.data, 0.0), (np.append(w0.row, 4), np.append(w0.col, 6))), shape=(5, 7))
    w1 = sp.random(3, 5, density=0.5, random_state=2, format="csc", dtype=np.float64)
    b0 = np.linspace(-1, 1, 5)
    model = Model.from_sparse([w0, w1], [b0, np.ones(3)], slopes=[0.25])
    assert model.network.nnz == [w0.nnz, w1.nnz] and model.slopes == [0.25]
    for got, want in zip(model.layers, (w0, w1)):
        assert isinstance(got, sp.csr_array) and got.shape == want.shape and got.nnz == want.nnz
        np.testing.assert_array_equal(got.toarray(), want.toarray().astype(np.float32))
    again = Model.from_sparse(model.layers, model.biases, slopes=model.slopes)
    np.testing.assert_array_equal(again.network.layers[0].keys(), model.network.layers[0].keys())
    x = np.random.default_rng(3).standard_normal((4, 7))
    h = w0 @ x.T + b0[:, None]
    z = (w1 @ np.where(h > 0, h, 0.25 * h) + 1.0).T
    np.testing.assert_allclose(model.logits(x), z, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.logits(sp.csr_array(x)), z, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(again.logits(x), model.logits(x), rtol=0, atol=0)
    from sparsenet.config import config_from_dict

    chunked = Model.from_sparse([w0, w1], [b0, np.ones(3)], slopes=[0.25])
    chunked.config = config_from_dict({"train": {"eval_batch_size": 3}})  # chunks of 3, 1 samples
    np.testing.assert_array_equal(chunked.logits(x), model.logits(x))
    np.testing.assert_array_equal(chunked.logits(sp.csr_array(x)), model.logits(sp.csr_array(x)))
    all_relu = Model.from_sparse([w0, w1], alpha=0.4)  # the default activation: first hidden layer slope -alpha
    assert all_relu.slopes == [-0.4]


@pytest.mark.parametrize("output", ["softmax", "sigmoid"])
def test_estimator_predict_proba_and_score_are_the_dense_network_s(output):
    from sparsenet import SETClassifier, SETRegressor

    rng = np.random.default_rng(10)
    X = rng.standard_normal((90, 5))
    y = np.where(X[:, 0] > 0, "b", "a")
    y[X[:, 1] > 0.8] = "c"
    clf = SETClassifier(hidden=(6, 4), epsilon=3, epochs=2, batch_size=16, output=output, seed=2).fit(X, y)
    pre = clf.model_.preprocessing
    a = ((X.astype(np.float32) - pre.mean) / pre.std).T.astype(np.float64)
    for l, (w, b) in enumerate(zip(clf.model_.layers, clf.model_.biases)):
        a = w.toarray().astype(np.float64) @ a + b[:, None]
        if l < 2:
            a = np.where(a > 0, a, clf.model_.slopes[l] * a)
    z = a.T
    e = np.exp(z - z.max(axis=1, keepdims=True)) if output == "softmax" else 1 / (1 + np.exp(-z))
    expected = e / e.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(clf.predict_proba(X), expected, rtol=1e-5, atol=1e-7)
    assert clf.predict(X).tolist() == clf.classes_[expected.argmax(axis=1)].tolist()
    assert clf.score(X, y) == pytest.approx(float((clf.classes_[expected.argmax(axis=1)] == y).mean()))
    t = 3 * X[:, 0] - 1
    reg = SETRegressor(hidden=(6,), epsilon=3, epochs=2, batch_size=16, seed=2).fit(X, t)
    p = reg.predict(X)
    assert reg.score(X, t) == pytest.approx(1 - ((t - p) ** 2).sum() / ((t - t.mean()) ** 2).sum(), rel=1e-9)
    span = t.max() - t.min()
    assert p.min() >= t.min() - span / 8 - 1e-9 and p.max() <= t.max() + span / 8 + 1e-9


def test_regressor_predicts_below_its_range_for_very_negative_logits_without_a_warning():
    """Before: logits below -709 overflowed np.exp(-z) and predict printed 'RuntimeWarning: overflow encountered
    in exp' (an estimator prints nothing unless asked); the value itself was right."""
    import warnings

    from sparsenet import SETRegressor

    X = np.random.default_rng(11).standard_normal((40, 3))
    t = X[:, 0] + 5.0
    reg = SETRegressor(hidden=(4,), epsilon=2, epochs=1, batch_size=16, seed=0).fit(X, t)
    out = reg._state.model.layers[-1]
    out.values[:] = 0.0
    out.bias[:] = -800.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        p = reg.predict(X[:2])
    span = t.max() - t.min()
    np.testing.assert_allclose(p, t.min() - span / 8, rtol=1e-12)
    out.bias[:] = 0.0  # sigmoid 0.5: the middle of the training range
    np.testing.assert_allclose(reg.predict(X[:2]), t.min() + span / 2, rtol=1e-12)


# ------------------------------------------------------------------ partial optimizer steps (the parallel server's)

@pytest.mark.parametrize("name", ["momentum", "adam"])
@pytest.mark.parametrize("mode", ["coupled", "decoupled"])
def test_step_partial_on_some_connections_and_neurons_follows_the_rule_and_leaves_the_rest(name, mode):
    from sparsenet.optim import Adam, MomentumSGD

    net = _net([9, 7, 4], "softmax", epsilon=2.0, seed=12)
    opt = (Adam if name == "adam" else MomentumSGD)(net, 0.01, 0.8, 0.05, mode)
    lr, b1, wd = 0.01, 0.8, 0.05
    where = [np.array([1, 3, 4], np.int64), np.empty(0, np.int64)]
    bias_where = [np.array([6], np.int64), np.array([0, 2], np.int64)]
    grad = np.array([0.5, -1.0, 2.0], np.float32)
    bias_grad = [np.array([-0.25], np.float32), np.array([1.0, -3.0], np.float32)]
    arrays = [net.layers[0].values, net.layers[0].bias, net.layers[1].bias]
    before = [a.astype(np.float64) for a in arrays]
    targets = [(0, where[0], grad), (1, bias_where[0], bias_grad[0]), (2, bias_where[1], bias_grad[1])]
    w = [b.copy() for b in before]
    m = [np.zeros_like(b) for b in before]
    v = [np.zeros_like(b) for b in before]
    for t in range(1, 4):
        opt.step_partial(net, [grad, np.empty(0, np.float32)], bias_grad, where, bias_where)
        for a, idx, g in targets:
            old, g = w[a][idx], g.astype(np.float64)
            if name == "adam":
                g_eff = g if mode == "decoupled" else g + wd * old
                m[a][idx] = b1 * m[a][idx] + (1 - b1) * g_eff
                v[a][idx] = 0.999 * v[a][idx] + 0.001 * g_eff ** 2
                new = old - lr * (m[a][idx] / (1 - b1 ** t)) / (np.sqrt(v[a][idx] / (1 - 0.999 ** t)) + 1e-8)
                w[a][idx] = new - (wd * old if mode == "decoupled" else 0.0)
            else:
                vel = b1 * m[a][idx] - lr * (g if mode == "decoupled" else g + wd * old)
                w[a][idx] = old + vel - (wd * old if mode == "decoupled" else 0.0)
                m[a][idx] = vel
    assert name != "adam" or opt.t == 3
    for a, (array, start) in enumerate(zip(arrays, before)):
        np.testing.assert_allclose(array, w[a], rtol=1e-5, atol=1e-7)
        untouched = np.setdiff1d(np.arange(array.shape[0]), targets[a][1])
        np.testing.assert_array_equal(array[untouched], start[untouched].astype(np.float32))
    np.testing.assert_array_equal(net.layers[1].values, _net([9, 7, 4], "softmax", epsilon=2.0, seed=12).layers[1].values)
