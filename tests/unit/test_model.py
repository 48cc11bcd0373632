"""Backprop of SparseMLP against dense references and finite differences; All-ReLU per layer."""

import numpy as np
import pytest

from sparsenet.activations import hidden_slopes, output_loss
from sparsenet.model import SparseMLP
from tests import naive


def tiny_model(seed=0, dropout=0.0, activation="all_relu"):
    rng = np.random.default_rng(seed)
    model = SparseMLP.initialize([9, 7, 6, 4], epsilon=2.0, init="he_uniform", activation=activation,
                                 alpha=0.6, dropout=dropout, output="softmax", rng=rng)
    for layer in model.layers:
        layer.bias[:] = rng.standard_normal(layer.n_out).astype(np.float32) * 0.1
    return model


def batch(model, size=5, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((size, model.sizes[0])).astype(np.float32)
    y = rng.integers(0, model.sizes[-1], size=size)
    np.copyto(model.input_buffer(size), x.T)
    return x, y


def model_loss(model, x, y):
    np.copyto(model.input_buffer(x.shape[0]), x.T)
    logits = model.logits(x.shape[0])
    loss, _ = output_loss("softmax", logits.astype(np.float64).astype(np.float32), y,
                          np.empty_like(logits))
    return loss / x.shape[0]


def test_gradients_match_dense_backprop():
    model = tiny_model()
    x, y = batch(model)
    loss, _ = model.gradients(5, y, np.zeros(3, dtype=np.int64))
    ws = [naive.dense_weights(l) for l in model.layers]
    bs = [l.bias.astype(np.float64) for l in model.layers]
    ref_loss, dws, dbs = naive.network_gradients(ws, bs, model.slopes, x.T.astype(np.float64), y)
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    for l, layer in enumerate(model.layers):
        np.testing.assert_allclose(model.grads[l], dws[l][layer.rows, layer.cols], rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(model.bias_grads[l], dbs[l], rtol=1e-4, atol=1e-6)


def test_gradients_match_finite_differences():
    model = tiny_model(seed=7)
    x, y = batch(model, size=6, seed=8)
    model.gradients(6, y, np.zeros(3, dtype=np.int64))
    grads = [g.copy() for g in model.grads]
    h = 1e-2
    checked = 0
    for l, layer in enumerate(model.layers):
        for k in range(0, layer.nnz, max(layer.nnz // 6, 1)):
            old = layer.values[k]
            layer.values[k] = old + h
            up = model_loss(model, x, y)
            layer.values[k] = old - h
            down = model_loss(model, x, y)
            layer.values[k] = old
            assert grads[l][k] == pytest.approx((up - down) / (2 * h), rel=2e-2, abs=2e-4)
            checked += 1
    assert checked >= 12


def test_dropout_gradients_match_dense_with_same_mask():
    model = tiny_model(seed=3, dropout=0.4)
    x, y = batch(model, size=8, seed=4)
    keys = np.array([11, 12, 13], dtype=np.int64)
    loss, _ = model.gradients(8, y, keys)
    ws = model._workspace(8)
    # The stored factor is f'(z) * mask / keep; recover the mask from it.
    masks = [(f != 0) / (1 - 0.4) for f in ws.factors[1:]]
    dense_ws = [naive.dense_weights(l) for l in model.layers]
    bs = [l.bias.astype(np.float64) for l in model.layers]
    ref_loss, dws, _ = naive.network_gradients(dense_ws, bs, model.slopes, x.T.astype(np.float64), y, masks)
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    for l, layer in enumerate(model.layers):
        np.testing.assert_allclose(model.grads[l], dws[l][layer.rows, layer.cols], rtol=1e-4, atol=1e-6)


def test_all_relu_signs_alternate_per_layer():
    assert hidden_slopes("all_relu", 0.6, 4) == [-0.6, 0.6, -0.6, 0.6]
    assert hidden_slopes("relu", 0.6, 2) == [0.0, 0.0]
    assert hidden_slopes("leaky_relu", 0.1, 3) == [0.1, 0.1, 0.1]
    # In the network: a negative pre-activation in hidden layer 1 (l = 2, even) becomes positive.
    model = tiny_model()
    x, _ = batch(model)
    model.logits(5)
    ws = model._workspace(5)
    z1 = naive.dense_weights(model.layers[0]).T @ x.T + model.layers[0].bias[:, None]
    a1 = ws.acts[1]
    neg = z1 < -1e-4
    assert neg.any()
    assert np.all(a1[neg] > 0)
    np.testing.assert_allclose(a1[neg], -0.6 * z1[neg], rtol=1e-4)
    z2 = naive.dense_weights(model.layers[1]).T @ a1 + model.layers[1].bias[:, None]
    neg2 = z2 < -1e-4
    assert neg2.any()
    assert np.all(ws.acts[2][neg2] < 0)  # layer l = 3 (odd): alpha * x keeps the sign


def test_evaluate_counts_accuracy():
    model = tiny_model()
    rng = np.random.default_rng(9)
    x = rng.standard_normal((50, 9)).astype(np.float32)
    np.copyto(model.input_buffer(50), x.T)
    predicted = model.logits(50).argmax(axis=0)
    y = predicted.copy()
    y[:10] = (y[:10] + 1) % 4
    loss, acc = model.evaluate(x, y, batch_size=16)
    assert acc == pytest.approx(0.8)
    assert loss > 0


@pytest.mark.parametrize("n", [0, 1, 17, 1000, 300_000])
def test_aligned_floats_start_on_a_cache_line_and_hold_the_fill(n):
    from sparsenet.sparse.kernels import CACHE_LINE, aligned_floats

    for fill in (0.0, 1.0):
        a = aligned_floats(n, fill)
        assert a.shape == (n,) and a.dtype == np.float32 and a.flags.c_contiguous
        assert n == 0 or a.ctypes.data % CACHE_LINE == 0  # (an empty array's pointer is numpy's own)
        assert np.all(a == fill)


def test_training_and_evaluation_buffers_start_on_cache_lines(monkeypatch):
    """Rows of a multiple of 16 floats then never straddle two cache lines (kernels 1.4-1.9x faster)."""
    from sparsenet.sparse import kernels

    model = tiny_model(dropout=0.2)
    model.input_buffer(32)
    ws = model._workspace(32)
    for a in ws.acts + ws.factors + ws.deltas:
        assert a.ctypes.data % kernels.CACHE_LINE == 0 and a.shape[1] == 32
    seen = []
    real_forward = kernels.forward

    def spy(layer, x, out, **kw):
        seen.extend([x.ctypes.data % kernels.CACHE_LINE, out.ctypes.data % kernels.CACHE_LINE])
        return real_forward(layer, x, out, **kw)

    monkeypatch.setattr(kernels, "forward", spy)
    rng = np.random.default_rng(5)
    x, y = rng.standard_normal((40, 9)).astype(np.float32), rng.integers(0, 4, 40)
    fresh = tiny_model(dropout=0.2)  # no training workspace: evaluate() allocates its own buffers
    fresh.evaluate(x, y, batch_size=16)
    assert len(seen) == 6 * 3 and set(seen) == {0}
