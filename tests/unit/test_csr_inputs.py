"""First-layer kernels on CSR batches (sparse/csr.py) against dense references, finite differences
and the dense kernels; the same bits for any thread count."""

import numba
import numpy as np
import pytest
import scipy.sparse as sp

from sparsenet.activations import output_loss
from sparsenet.data.csr import CSRRows, from_parts
from sparsenet.errors import DataError
from sparsenet.model import SparseMLP
from sparsenet.sparse import csr, kernels
from sparsenet.sparse.init import erdos_renyi_layer
from tests import naive


def random_rows(n, d, density, seed, index_dtype=np.int32) -> CSRRows:
    m = sp.random(n, d, density=density, format="csr", dtype=np.float32, random_state=seed)
    m.data[:] = np.random.default_rng(seed).standard_normal(m.nnz).astype(np.float32)
    m.indptr[3:5] = m.indptr[3]  # rows 3 and 4 empty
    rows = from_parts(m.data[:m.indptr[-1]], m.indices[:m.indptr[-1]], m.indptr, m.shape, "test", DataError)
    rows.indices = rows.indices.astype(index_dtype)
    return rows


@pytest.fixture(params=[3.0, 60.0], ids=["sparse", "full"])
def layer(request):
    rng = np.random.default_rng(3)
    lay = erdos_renyi_layer(41, 23, request.param, "he_uniform", rng)
    lay.bias[:] = rng.standard_normal(23).astype(np.float32)
    return lay


INDEX = np.array([7, 0, 3, 12, 4, 7, 29, 1, 18], dtype=np.int64)  # a repeated row and two empty ones


@pytest.mark.parametrize("index_dtype", [np.int32, np.int64])
@pytest.mark.parametrize("slope", [None, 0.0, -0.6])
def test_forward_matches_dense(layer, slope, index_dtype):
    x = random_rows(30, 41, 0.15, 0, index_dtype)
    out = np.empty((23, len(INDEX)), np.float32)
    factor = np.empty_like(out)
    csr.forward(layer, x.data, x.indices, x.indptr, x.shape, INDEX, out, slope=slope,
                grad_factor=None if slope is None else factor)
    z = naive.dense_weights(layer).T @ naive.csr_dense(x)[INDEX].T + layer.bias[:, None]
    expected = z if slope is None else naive.leaky(z, slope)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    if slope is not None:
        np.testing.assert_array_equal(factor, naive.leaky_grad(z, slope).astype(np.float32))


def test_forward_dropout_mask_is_the_dense_kernels(layer):
    """Same key, same mask as kernels.forward on the densified batch (sparsenet's dropout stream)."""
    x = random_rows(30, 41, 0.3, 1)
    dense = np.ascontiguousarray(naive.csr_dense(x)[INDEX].T, dtype=np.float32)
    outs, factors = [], []
    for run in (csr.forward, kernels.forward):
        out = np.empty((23, len(INDEX)), np.float32)
        factor = np.empty_like(out)
        args = (layer, x.data, x.indices, x.indptr, x.shape, INDEX) if run is csr.forward else (layer, dense)
        run(*args, out, slope=0.2, dropout=0.5, drop_key=99, grad_factor=factor)
        outs.append(out)
        factors.append(factor)
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-5, atol=1e-5)
    kept = [np.abs(f) > 0 for f in factors]
    np.testing.assert_array_equal(kept[0], kept[1])
    assert 0.3 < kept[0].mean() < 0.7


def test_weight_grad_matches_dense(layer):
    x = random_rows(30, 41, 0.15, 2)
    delta = np.random.default_rng(4).standard_normal((23, len(INDEX))).astype(np.float32)
    grad = np.full(layer.nnz, np.nan, np.float32)  # every entry must be written
    csr.weight_grad(layer, x.data, x.indices, x.indptr, x.shape, INDEX, delta, grad)
    dense_grad = naive.csr_dense(x)[INDEX].T @ delta.T.astype(np.float64)
    np.testing.assert_allclose(grad, dense_grad[layer.rows, layer.cols], rtol=1e-5, atol=1e-6)
    assert np.count_nonzero(grad) > layer.nnz // 4


def test_same_bits_for_any_thread_count(layer):
    x = random_rows(200, 41, 0.2, 5)
    index = np.random.default_rng(6).permutation(200)[:150]
    delta = np.random.default_rng(7).standard_normal((23, 150)).astype(np.float32)
    results = []
    for threads in (1, numba.config.NUMBA_NUM_THREADS):
        numba.set_num_threads(threads)
        try:
            out = np.empty((23, 150), np.float32)
            factor = np.empty_like(out)
            csr.forward(layer, x.data, x.indices, x.indptr, x.shape, index, out, slope=0.3, dropout=0.2,
                        drop_key=5, grad_factor=factor)
            grad = np.empty(layer.nnz, np.float32)
            csr.weight_grad(layer, x.data, x.indices, x.indptr, x.shape, index, delta, grad)
            results.append((out, factor, grad))
        finally:
            numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


def test_wrong_shapes_and_rows_are_refused_before_the_kernel(layer):
    x = random_rows(30, 41, 0.15, 0)
    out = np.empty((23, 3), np.float32)
    with pytest.raises(ValueError, match="row index"):
        csr.forward(layer, x.data, x.indices, x.indptr, x.shape, np.array([0, 1, 30]), out)
    with pytest.raises(ValueError, match="features"):
        csr.forward(layer, x.data, x.indices, x.indptr, (30, 40), np.array([0, 1, 2]), out)
    with pytest.raises(ValueError, match="shape"):
        csr.forward(layer, x.data, x.indices, x.indptr, x.shape, np.array([0, 1]), out)
    with pytest.raises(ValueError, match="float32"):
        csr.weight_grad(layer, x.data.astype(np.float64), x.indices, x.indptr, x.shape, np.array([0]),
                        np.zeros((23, 1), np.float32), np.zeros(layer.nnz, np.float32))
    with pytest.raises(ValueError, match="grad"):
        csr.weight_grad(layer, x.data, x.indices, x.indptr, x.shape, np.array([0]),
                        np.zeros((23, 1), np.float32), np.zeros(layer.nnz + 1, np.float32))


def tiny_model(seed, dropout=0.0):
    rng = np.random.default_rng(seed)
    model = SparseMLP.initialize([40, 9, 7, 4], epsilon=3.0, init="he_uniform", activation="all_relu",
                                 alpha=0.6, dropout=dropout, output="softmax", rng=rng)
    for lay in model.layers:
        lay.bias[:] = rng.standard_normal(lay.n_out).astype(np.float32) * 0.1
    return model


def test_model_gradients_on_csr_match_dense_backprop():
    model = tiny_model(0)
    x = random_rows(12, 40, 0.2, 8)
    index = np.array([5, 1, 0, 9, 3, 11, 2], dtype=np.int64)
    y = np.random.default_rng(9).integers(0, 4, size=7)
    loss, _ = model.gradients(7, y, np.zeros(3, dtype=np.int64), rows=(x, index))
    assert model._workspace(7, True).acts[0].size == 0  # no (n_features, batch) input buffer
    ws = [naive.dense_weights(l) for l in model.layers]
    bs = [l.bias.astype(np.float64) for l in model.layers]
    ref_loss, dws, dbs = naive.network_gradients(ws, bs, model.slopes, naive.csr_dense(x)[index].T, y)
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    for l, lay in enumerate(model.layers):
        np.testing.assert_allclose(model.grads[l], dws[l][lay.rows, lay.cols], rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(model.bias_grads[l], dbs[l], rtol=1e-4, atol=1e-6)


def test_model_gradients_on_csr_match_finite_differences():
    model = tiny_model(7)
    x = random_rows(10, 40, 0.3, 10)
    index = np.arange(10, dtype=np.int64)
    y = np.random.default_rng(11).integers(0, 4, size=10)

    def loss_now():
        z = model._forward(model._workspace(10, True), None, (x, index, None))
        return output_loss("softmax", z, y, np.empty_like(z))[0] / 10

    model.gradients(10, y, np.zeros(3, dtype=np.int64), rows=(x, index))
    grads = [g.copy() for g in model.grads]
    h, checked = 1e-2, 0
    for l, lay in enumerate(model.layers):
        for k in range(0, lay.nnz, max(lay.nnz // 8, 1)):
            old = lay.values[k]
            lay.values[k] = old + h
            up = loss_now()
            lay.values[k] = old - h
            down = loss_now()
            lay.values[k] = old
            assert grads[l][k] == pytest.approx((up - down) / (2 * h), rel=2e-2, abs=2e-4)
            checked += 1
    assert checked >= 20 and np.count_nonzero(grads[0]) > 10


def test_evaluate_on_csr_equals_dense_evaluate():
    model = tiny_model(2)
    x = random_rows(50, 40, 0.2, 12)
    y = np.random.default_rng(13).integers(0, 4, size=50)
    dense = naive.csr_dense(x).astype(np.float32)
    for chunk in (7, 50):
        loss, acc = model.evaluate(x, y, chunk)
        ref_loss, ref_acc = SparseMLP.evaluate(model, dense, y, 64, max_bytes=1 << 20)
        assert loss == pytest.approx(ref_loss, rel=1e-5) and acc == ref_acc


def test_many_feature_buckets_match_dense_and_any_thread_count():
    """A wide input (many buckets of csr.BUCKET_FEATURES, several gradient chunks and sample blocks)."""
    rng = np.random.default_rng(21)
    lay = erdos_renyi_layer(5000, 40, 4.0, "he_uniform", rng)
    x = random_rows(300, 5000, 0.01, 22)
    index = rng.permutation(300)[:97]
    delta = rng.standard_normal((40, 97)).astype(np.float32)
    order = csr.BatchOrder(x.indices, x.indptr, index, 5000)
    assert order.ptr.shape[0] - 1 == -(-5000 // csr.BUCKET_FEATURES)
    results = []
    for threads in (1, numba.config.NUMBA_NUM_THREADS):
        numba.set_num_threads(threads)
        try:
            out = np.empty((40, 97), np.float32)
            grad = np.empty(lay.nnz, np.float32)
            csr.forward(lay, x.data, x.indices, x.indptr, x.shape, index, out, order=order)
            csr.weight_grad(lay, x.data, x.indices, x.indptr, x.shape, index, delta, grad, order)
            results.append((out, grad))
        finally:
            numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)
    dense = naive.csr_dense(x)[index]
    np.testing.assert_allclose(results[0][0], naive.dense_weights(lay).T @ dense.T + lay.bias[:, None], rtol=1e-5,
                               atol=1e-5)
    np.testing.assert_allclose(results[0][1], (dense.T @ delta.T.astype(np.float64))[lay.rows, lay.cols], rtol=1e-5,
                               atol=1e-6)
    with pytest.raises(ValueError, match="other rows"):
        csr.forward(lay, x.data, x.indices, x.indptr, x.shape, index[:5], np.empty((40, 5), np.float32), order=order)
