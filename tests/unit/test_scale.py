"""Scale: memory of a 10M-neuron layer's init, SET beyond 2**31 positions, the int64 in_perm path.

Light on purpose (seconds, well under 3 GB): the big benchmarks are in scripts/.
"""

import os
import threading
import time

import numpy as np
import pytest

from sparsenet.evolution import prune_and_regrow
from sparsenet.sparse import kernels
from sparsenet.sparse.init import erdos_renyi_layer
from sparsenet.sparse.layer import _counting_sort, _pointers, perm_dtype

PAGE = os.sysconf("SC_PAGE_SIZE")


def _rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * PAGE


def _peak_rss_growth(fn):
    """(result, peak RSS growth in bytes while fn ran), sampling /proc/self/statm every millisecond."""
    base = _rss()
    peak = [base]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], _rss())
            time.sleep(0.001)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        result = fn()
    finally:
        stop.set()
        t.join()
    return result, max(peak[0], _rss()) - base


def test_ten_million_neuron_layer_init_memory():
    n = 5_000_000
    erdos_renyi_layer(1000, 1000, 1.0, "he_uniform", np.random.default_rng(0))  # compile outside the measurement
    layer, growth = _peak_rss_growth(lambda: erdos_renyi_layer(n, n, 1.0, "he_uniform", np.random.default_rng(1)))
    assert 9_900_000 < layer.nnz < 10_100_000
    # 20 B/nnz held by the layer (rows, cols, values, cols_in, in_perm) + pointers, bias and the
    # counting sort's per-thread counts: O(neurons). Budget 40 B/nnz + 64 B per neuron.
    budget = 40 * layer.nnz + 64 * 2 * n
    assert growth < budget, f"init grew RSS by {growth / layer.nnz:.1f} B/nnz"
    assert layer.in_perm.dtype == np.int32 and layer.cols_in.dtype == np.int32


def test_set_on_layer_with_more_than_2_31_positions():
    n = 70_000
    layer = erdos_renyi_layer(n, n, 2.0, "he_uniform", np.random.default_rng(2))
    assert layer.n_positions > 2**31
    old_keys = layer.keys()
    new, source = prune_and_regrow(layer, 0.3, "he_uniform", np.random.default_rng(3))
    assert new.nnz == layer.nnz
    keys = new.keys()
    assert keys[0] >= 0 and keys[-1] < layer.n_positions
    assert np.all(np.diff(keys) > 0)  # unique, output-major
    assert np.all((new.rows >= 0) & (new.rows < n) & (new.cols >= 0) & (new.cols < n))
    kept = source >= 0
    np.testing.assert_array_equal(keys[kept], old_keys[source[kept]])
    np.testing.assert_array_equal(new.values[kept], layer.values[source[kept]])
    regrown = keys[~kept]
    assert regrown.shape[0] == np.count_nonzero(source == -1) > 0.25 * layer.nnz
    kept_old = np.sort(old_keys[source[kept]])
    assert not np.isin(regrown, kept_old).any()  # regrown only where no kept connection is
    # Like the original SET step, a just-removed position may be drawn again (its weight restarts):
    # expected removed * removed / positions ~ 1.4 times here; every other regrown key was empty.
    assert np.count_nonzero(np.isin(regrown, old_keys)) <= 10
    np.testing.assert_array_equal(new.rows[new.in_perm], np.sort(new.rows, kind="stable"))


def test_in_perm_dtype_selection():
    assert perm_dtype(0) == np.int32
    assert perm_dtype(2**31 - 1) == np.int32
    assert perm_dtype(2**31) == np.int64
    assert perm_dtype(10**11) == np.int64


@pytest.mark.parametrize("chunks", [1, 3])
def test_int64_in_perm_path(chunks):
    """The counting sort and the backward kernel with an int64 in_perm (what layers >= 2**31 get)."""
    layer = erdos_renyi_layer(300, 200, 10.0, "he_uniform", np.random.default_rng(4))
    perm = np.empty(layer.nnz, np.int64)
    cols_in = np.empty(layer.nnz, np.int32)
    _counting_sort(layer.rows, layer.cols, _pointers(layer.rows, layer.n_in), chunks, perm, cols_in)
    np.testing.assert_array_equal(perm, np.argsort(layer.rows, kind="stable"))
    np.testing.assert_array_equal(cols_in, layer.cols[perm])
    rng = np.random.default_rng(5)
    x = rng.standard_normal((300, 33), dtype=np.float32)
    delta = rng.standard_normal((200, 33), dtype=np.float32)
    gf = rng.random((300, 33), dtype=np.float32)
    results = []
    for p in (layer.in_perm, perm):
        layer.in_perm = p
        grad, dx, sums = np.empty(layer.nnz, np.float32), np.empty_like(x), np.empty(300, np.float32)
        kernels.backward(layer, x, delta, grad, dx, gf, sums)
        results.append((grad, dx, sums))
    for a, b in zip(*results):
        assert a.tobytes() == b.tobytes()
