"""Kernels against the dense references in tests/naive.py."""

import numba
import numpy as np
import pytest

from sparsenet.sparse import kernels
from sparsenet.sparse.init import erdos_renyi_layer
from tests import naive


@pytest.fixture(params=[4.0, 40.0], ids=["sparse", "full"])
def layer(request):
    # eps 4: a few connections per neuron (remainder loops); eps 40: full layer (unrolled loops)
    rng = np.random.default_rng(3)
    lay = erdos_renyi_layer(37, 23, request.param, "he_uniform", rng)
    lay.bias[:] = rng.standard_normal(23).astype(np.float32)
    return lay


def test_forward_matches_dense(layer):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((37, 19)).astype(np.float32)
    out = np.empty((23, 19), np.float32)
    kernels.forward(layer, x, out)
    expected = naive.dense_weights(layer).T @ x + layer.bias[:, None]
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("slope", [0.0, 0.3, -0.6])
def test_forward_activation_and_factor(layer, slope):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((37, 16)).astype(np.float32)
    out = np.empty((23, 16), np.float32)
    factor = np.empty((23, 16), np.float32)
    kernels.forward(layer, x, out, slope=slope, grad_factor=factor)
    z = naive.dense_weights(layer).T @ x + layer.bias[:, None]
    np.testing.assert_allclose(out, naive.leaky(z, slope), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(factor, naive.leaky_grad(z, slope).astype(np.float32))


def test_dropout_mask_rate_scale_and_determinism():
    rng = np.random.default_rng(2)
    lay = erdos_renyi_layer(50, 400, 10.0, "he_uniform", rng)
    lay.bias[:] = 1.0  # all pre-activations positive enough to read the mask from the output
    lay.values[:] = 0.0
    x = np.ones((50, 256), np.float32)
    out = np.empty((400, 256), np.float32)
    factor = np.empty_like(out)
    kernels.forward(lay, x, out, slope=0.0, dropout=0.3, drop_key=123, grad_factor=factor)
    kept = out != 0
    assert abs(kept.mean() - 0.7) < 0.01
    np.testing.assert_allclose(out[kept], 1 / 0.7, rtol=1e-6)
    np.testing.assert_array_equal(factor, out)  # f'(z) = 1 where z > 0, times the same mask
    again = np.empty_like(out)
    kernels.forward(lay, x, again, slope=0.0, dropout=0.3, drop_key=123, grad_factor=factor)
    np.testing.assert_array_equal(out, again)
    kernels.forward(lay, x, again, slope=0.0, dropout=0.3, drop_key=124, grad_factor=factor)
    assert 0.4 < ((again != 0) == kept).mean() < 0.7  # another key, an independent mask


def test_backward_matches_dense(layer):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((37, 12)).astype(np.float32)
    delta = rng.standard_normal((23, 12)).astype(np.float32)
    factor = rng.standard_normal((37, 12)).astype(np.float32)
    grad = np.empty(layer.nnz, np.float32)
    dx = np.empty((37, 12), np.float32)
    sums = np.empty(37, np.float32)
    kernels.backward(layer, x, delta, grad, dx, factor, sums)
    dense_grad = x.astype(np.float64) @ delta.T.astype(np.float64)
    np.testing.assert_allclose(grad, dense_grad[layer.rows, layer.cols], rtol=1e-4, atol=1e-5)
    expected_dx = (naive.dense_weights(layer) @ delta) * factor
    np.testing.assert_allclose(dx, expected_dx, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(sums, expected_dx.sum(axis=1), rtol=1e-4, atol=1e-4)
    grad_only = np.empty(layer.nnz, np.float32)
    kernels.backward(layer, x, delta, grad_only)
    np.testing.assert_allclose(grad_only, grad, rtol=1e-5, atol=1e-6)


def test_results_do_not_depend_on_thread_count(layer):
    import numba

    rng = np.random.default_rng(5)
    x = rng.standard_normal((37, 33)).astype(np.float32)
    delta = rng.standard_normal((23, 33)).astype(np.float32)
    results = []
    for threads in (1, numba.config.NUMBA_NUM_THREADS):
        numba.set_num_threads(threads)
        out = np.empty((23, 33), np.float32)
        grad = np.empty(layer.nnz, np.float32)
        dx = np.empty((37, 33), np.float32)
        kernels.forward(layer, x, out)
        kernels.backward(layer, x, delta, grad, dx, np.ones_like(x), np.empty(37, np.float32))
        results.append((out, grad, dx))
    numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


def test_gather_batch():
    x = np.arange(20, dtype=np.float32).reshape(5, 4)
    out = np.empty((4, 3), np.float32)
    kernels.gather_batch(x, np.array([4, 0, 2]), out)
    np.testing.assert_array_equal(out, x[[4, 0, 2]].T)


def test_wrappers_reject_bad_arrays(layer):
    with pytest.raises(ValueError, match="float32"):
        kernels.forward(layer, np.zeros((37, 4)), np.zeros((23, 4), np.float32))
    with pytest.raises(ValueError, match="shape"):
        kernels.forward(layer, np.zeros((36, 4), np.float32), np.zeros((23, 4), np.float32))
    with pytest.raises(ValueError, match="grad"):
        kernels.backward(layer, np.zeros((37, 4), np.float32), np.zeros((23, 4), np.float32),
                         np.zeros(layer.nnz + 1, np.float32))


@pytest.mark.skipif(numba.config.DISABLE_JIT, reason="no compiled kernels, no cache")
def test_kernels_that_inline_other_modules_helpers_key_their_cache_on_those_modules():
    """numba's cache sees only a kernel's own file: csr.py's and lazy.py's kernels close over the digest
    chain of the modules whose helpers they inline (simd -> kernels -> csr), so editing those recompiles them."""
    from sparsenet.sparse import csr, lazy, simd

    assert kernels.SOURCE_DIGEST == simd.file_digest(kernels.__file__, simd.SOURCE_DIGEST)
    assert csr.SOURCE_DIGEST == simd.file_digest(csr.__file__, kernels.SOURCE_DIGEST)
    assert len({simd.file_digest(csr.__file__, d) for d in (1, 2, 3)}) == 3

    def closure(kernel):
        return [cell.cell_contents for cell in kernel.py_func.__closure__]

    for kernel in (csr._forward_kernel, csr.input_major_forward):
        assert kernels.SOURCE_DIGEST in closure(kernel)
    for kernel in (lazy._catch_up, lazy._grad_and_step):
        assert csr.SOURCE_DIGEST in closure(kernel)
