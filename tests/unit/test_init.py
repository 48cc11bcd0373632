"""Erdős–Rényi initialisation: density, uniqueness, order, init ranges, memory."""

import subprocess
import sys

import numpy as np
import pytest

from sparsenet.sparse.init import erdos_renyi_density, erdos_renyi_layer, free_positions, sample_empty_keys


def test_density_formula_and_cap():
    assert erdos_renyi_density(784, 1000, 20) == pytest.approx(20 * 1784 / 784000)
    assert erdos_renyi_density(1000, 10, 20) == 1.0


@pytest.mark.parametrize("n_in,n_out,eps", [(784, 1000, 20), (1000, 1000, 20), (3000, 200, 5), (50, 40, 15)])
def test_er_layer_density_unique_and_ordered(n_in, n_out, eps):
    layer = erdos_renyi_layer(n_in, n_out, eps, "he_uniform", np.random.default_rng(0))
    p = erdos_renyi_density(n_in, n_out, eps)
    expected = p * n_in * n_out
    sd = np.sqrt(n_in * n_out * p * (1 - p))
    assert abs(layer.nnz - expected) <= 5 * sd + 1
    keys = layer.keys()
    assert np.all(np.diff(keys) > 0)  # unique, output-major
    assert layer.rows.min() >= 0 and layer.rows.max() < n_in
    assert layer.cols.min() >= 0 and layer.cols.max() < n_out
    # input-major permutation visits every connection once, in (row, col) order
    perm_keys = layer.rows[layer.in_perm].astype(np.int64) * n_out + layer.cols[layer.in_perm]
    assert np.all(np.diff(perm_keys) > 0)
    assert layer.out_ptr[-1] == layer.nnz and layer.in_ptr[-1] == layer.nnz


def test_full_layer_when_density_caps():
    layer = erdos_renyi_layer(100, 10, 20, "xavier", np.random.default_rng(1))
    assert layer.nnz == 1000
    np.testing.assert_array_equal(layer.keys(), np.arange(1000))


@pytest.mark.parametrize("init,limit", [("he_uniform", np.sqrt(6 / 500)), ("xavier", np.sqrt(6 / 700))])
def test_uniform_init_ranges(init, limit):
    layer = erdos_renyi_layer(500, 200, 10, init, np.random.default_rng(2))
    assert np.abs(layer.values).max() <= limit
    assert np.abs(layer.values).max() > 0.95 * limit
    assert abs(layer.values.mean()) < 0.05 * limit


def test_normal_init_scale():
    layer = erdos_renyi_layer(500, 500, 20, "normal", np.random.default_rng(3))
    assert layer.values.std() == pytest.approx(0.1, rel=0.05)


def test_sample_empty_keys_avoids_occupied_and_is_uniform():
    rng = np.random.default_rng(4)
    occupied = np.arange(0, 1000, 2, dtype=np.int64)
    found = sample_empty_keys(1000, 300, occupied, rng)
    assert found.shape == (300,) and np.unique(found).shape == (300,)
    assert np.all(found % 2 == 1)
    big = sample_empty_keys(10**12, 5000, np.array([5, 10**11], dtype=np.int64), rng)
    assert big.shape == (5000,) and big.max() < 10**12 and np.unique(big).shape == (5000,)
    assert 0.4 < np.mean(big < 5 * 10**11) < 0.6


MEMORY_PROBE = """
import resource, numpy as np
from sparsenet.sparse.init import erdos_renyi_layer
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
layer = erdos_renyi_layer(200_000, 200_000, 10, "he_uniform", np.random.default_rng(0))
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(layer.nnz, (after - before) / 1024)
"""


def test_200k_by_200k_layer_init_stays_under_300_mb():
    out = subprocess.run([sys.executable, "-c", MEMORY_PROBE], capture_output=True, text=True, check=True)
    nnz, extra_mb = out.stdout.split()
    assert abs(int(nnz) - 4_000_000) < 10_000
    assert float(extra_mb) < 300, f"init took {extra_mb} MB extra"


def test_free_positions_are_the_complement_of_occupied():
    occupied = np.array([0, 3, 4, 9], dtype=np.int64)
    np.testing.assert_array_equal(free_positions(10, occupied), [1, 2, 5, 6, 7, 8])
    np.testing.assert_array_equal(free_positions(3, np.empty(0, np.int64)), [0, 1, 2])
    assert free_positions(2, np.array([0, 1], np.int64)).shape == (0,)
