"""The lean (low-memory) init and SET step give bitwise the same layers as the original algorithm.

The original implementations are kept here verbatim (numpy argsort/concatenate/divmod, int64
temporaries) as the reference: same seed in, same rows/cols/values/source and the same random
stream position out.
"""

import numpy as np
import pytest

from sparsenet.evolution import prune_and_regrow, weights_to_remove
from sparsenet.sparse.init import erdos_renyi_density, erdos_renyi_layer, sample_weights
from sparsenet.sparse.layer import KEY_DTYPE, SparseLayer


# --- the original algorithm (commit 5b74128), kept as the reference ---------------------------

def _old_sample_weights(n, n_in, n_out, init, rng):
    if init == "normal":
        return (rng.standard_normal(n, dtype=np.float32) / np.float32(10.0)).astype(np.float32)
    limit = np.sqrt(6.0 / n_in) if init == "he_uniform" else np.sqrt(6.0 / (n_in + n_out))
    return (rng.random(n, dtype=np.float32) * np.float32(2 * limit) - np.float32(limit)).astype(np.float32)


def _old_free_positions(n_positions, occupied):
    bounds = np.concatenate([[-1], occupied.astype(KEY_DTYPE), [n_positions]])
    gaps = np.diff(bounds) - 1
    skipped = np.cumsum(gaps) - gaps
    return np.arange(int(gaps.sum()), dtype=KEY_DTYPE) + np.repeat(bounds[:-1] + 1 - skipped, gaps)


def _old_sorted_unique(a):
    a = np.sort(a)
    if a.shape[0] < 2:
        return a
    keep = np.empty(a.shape[0], dtype=bool)
    keep[0] = True
    np.not_equal(a[1:], a[:-1], out=keep[1:])
    return a[keep]


def _old_sample_empty_keys(n_positions, count, occupied, rng):
    if count == 0:
        return np.empty(0, dtype=KEY_DTYPE)
    if n_positions <= 4 * (occupied.shape[0] + count):
        free_keys = _old_free_positions(n_positions, occupied)
        chosen = rng.choice(free_keys.shape[0], size=count, replace=False)
        return np.sort(free_keys[chosen])
    found = np.empty(0, dtype=KEY_DTYPE)
    while found.shape[0] < count:
        draw = rng.integers(0, n_positions, size=count - found.shape[0], dtype=KEY_DTYPE)
        if occupied.shape[0]:
            where = np.searchsorted(occupied, draw)
            where[where == occupied.shape[0]] = 0
            draw = draw[occupied[where] != draw]
        found = _old_sorted_unique(np.concatenate([found, draw]))
    return found


def _old_from_keys(n_in, n_out, keys, values, bias):
    cols, rows = np.divmod(keys, np.int64(n_in))
    return rows.astype(np.int32), cols.astype(np.int32), values, bias


def _old_erdos_renyi_layer(n_in, n_out, epsilon, init, rng):
    n_positions = n_in * n_out
    p = erdos_renyi_density(n_in, n_out, epsilon)
    nnz = n_positions if p >= 1.0 else int(rng.binomial(n_positions, p))
    nnz = max(nnz, 1)
    keys = _old_sample_empty_keys(n_positions, nnz, np.empty(0, dtype=KEY_DTYPE), rng)
    values = _old_sample_weights(nnz, n_in, n_out, init, rng)
    return _old_from_keys(n_in, n_out, keys, values, np.zeros(n_out, dtype=np.float32))


def _old_weights_to_remove(values, zeta):
    nonneg = np.flatnonzero(values >= 0)
    neg = np.flatnonzero(values < 0)
    n_pos = int(zeta * nonneg.shape[0])
    n_neg = int(zeta * neg.shape[0])
    chosen = []
    if n_pos:
        chosen.append(nonneg[np.argpartition(values[nonneg], n_pos - 1, kind="introselect")[:n_pos]])
    if n_neg:
        chosen.append(neg[np.argpartition(-values[neg], n_neg - 1, kind="introselect")[:n_neg]])
    if not chosen:
        return np.empty(0, dtype=np.int64)
    return np.sort(np.concatenate(chosen))


def _old_prune_and_regrow(layer, zeta, init, rng):
    removed = _old_weights_to_remove(layer.values, zeta)
    keep = np.ones(layer.nnz, dtype=bool)
    keep[removed] = False
    kept_index = np.flatnonzero(keep)
    old_keys = layer.keys()
    kept_keys = old_keys[kept_index]
    new_keys = _old_sample_empty_keys(layer.n_positions, removed.shape[0], kept_keys, rng)
    new_values = _old_sample_weights(new_keys.shape[0], layer.n_in, layer.n_out, init, rng)
    keys = np.concatenate([kept_keys, new_keys])
    order = np.argsort(keys, kind="stable")
    source = np.concatenate([kept_index, np.full(new_keys.shape[0], -1, dtype=np.int64)])[order]
    values = np.concatenate([layer.values[kept_index], new_values])[order]
    return _old_from_keys(layer.n_in, layer.n_out, keys[order], values, layer.bias), source


# --- the pins ----------------------------------------------------------------------------------

CASES = [(37, 23, 4.0, "he_uniform"), (300, 200, 20.0, "normal"), (50, 40, 40.0, "xavier"),
         (40, 30, 12.0, "he_uniform"), (70000, 70000, 0.05, "he_uniform"), (1, 5, 1.0, "normal")]


@pytest.mark.parametrize("n_in,n_out,eps,init", CASES)
def test_init_bitwise_as_before(n_in, n_out, eps, init):
    for seed in range(3):
        a, b = np.random.default_rng(seed), np.random.default_rng(seed)
        layer = erdos_renyi_layer(n_in, n_out, eps, init, a)
        rows, cols, values, bias = _old_erdos_renyi_layer(n_in, n_out, eps, init, b)
        np.testing.assert_array_equal(layer.rows, rows)
        np.testing.assert_array_equal(layer.cols, cols)
        assert layer.values.tobytes() == values.tobytes()
        assert a.bit_generator.state == b.bit_generator.state


@pytest.mark.parametrize("n_in,n_out,eps,init", CASES)
@pytest.mark.parametrize("zeta", [0.0, 0.3, 0.5])
def test_set_bitwise_as_before(n_in, n_out, eps, init, zeta):
    for seed in range(3):
        layer = erdos_renyi_layer(n_in, n_out, eps, init, np.random.default_rng(100 + seed))
        if seed == 1:  # ties at the removal boundary and exact zeros
            layer.values[::3] = 0.0
            layer.values[1::5] = np.float32(-0.25)
        a, b = np.random.default_rng(seed), np.random.default_rng(seed)
        np.testing.assert_array_equal(weights_to_remove(layer.values, zeta), _old_weights_to_remove(layer.values, zeta))
        new, source = prune_and_regrow(layer, zeta, init, a)
        (rows, cols, values, bias), old_source = _old_prune_and_regrow(layer, zeta, init, b)
        np.testing.assert_array_equal(new.rows, rows)
        np.testing.assert_array_equal(new.cols, cols)
        assert new.values.tobytes() == values.tobytes()
        assert new.bias is layer.bias
        assert source.dtype == old_source.dtype and np.array_equal(source, old_source)
        assert a.bit_generator.state == b.bit_generator.state


def test_sample_weights_as_before():
    for init in ("normal", "xavier", "he_uniform"):
        a, b = np.random.default_rng(1), np.random.default_rng(1)
        assert sample_weights(1001, 30, 70, init, a).tobytes() == _old_sample_weights(1001, 30, 70, init, b).tobytes()


def test_set_with_nan_weights_as_before():
    layer = erdos_renyi_layer(60, 50, 10.0, "he_uniform", np.random.default_rng(7))
    layer.values[::7] = np.nan
    np.testing.assert_array_equal(weights_to_remove(layer.values, 0.3), _old_weights_to_remove(layer.values, 0.3))
