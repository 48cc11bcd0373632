"""Initialisation from the sparse fan-in: activations keep their variance through wide sparse layers."""

import numpy as np
import pytest

from sparsenet.evolution import prune_and_regrow
from sparsenet.model import SparseMLP
from sparsenet.sparse import kernels
from sparsenet.sparse.init import erdos_renyi_layer, fan_in_limits


def _layer_variances(model: SparseMLP, x: np.ndarray) -> list[float]:
    """Variance of every neuron layer's values for input x (n_features, batch): the input, each
    hidden layer after its activation, the output's pre-activations."""
    a, out = x, [float(x.var())]
    last = len(model.layers) - 1
    for l, layer in enumerate(model.layers):
        z = np.empty((layer.n_out, x.shape[1]), dtype=np.float32)
        kernels.forward(layer, a, z, slope=None if l == last else model.slopes[l])
        out.append(float(z.var()))
        a = z
    return out


@pytest.mark.parametrize("activation", ["all_relu", "relu"])
def test_100k_wide_three_layers_keep_variance_within_4x(activation):
    n, eps = 100_000, 10
    rng = np.random.default_rng(0)
    model = SparseMLP.initialize([n, n, n, n], epsilon=eps, init="he_uniform_sparse", activation=activation,
                                 alpha=0.5, dropout=0.0, output="softmax", rng=rng)
    assert all(20 * n * 0.9 < nnz < 20 * n * 1.1 for nnz in model.nnz)  # ~20 connections per neuron
    x = rng.standard_normal((n, 16), dtype=np.float32)
    var = _layer_variances(model, x)
    ratios = [v / var[0] for v in var[1:]]
    assert all(0.25 <= r <= 4.0 for r in ratios), ratios


def test_dense_fan_in_init_shrinks_the_signal():
    """The rule it replaces: he_uniform sized for 100k inputs on ~20 connections loses ~1/2500 per layer."""
    n = 100_000
    rng = np.random.default_rng(0)
    model = SparseMLP.initialize([n, n, n], epsilon=10, init="he_uniform", activation="all_relu",
                                 alpha=0.5, dropout=0.0, output="softmax", rng=rng)
    var = _layer_variances(model, rng.standard_normal((n, 16), dtype=np.float32))
    assert var[1] / var[0] < 1e-2 and var[2] / var[0] < 1e-5


def test_sparse_init_limits_follow_each_neurons_fan_in():
    layer = erdos_renyi_layer(3000, 400, 5, "he_uniform_sparse", np.random.default_rng(1))
    fan_in = np.bincount(layer.cols, minlength=400)
    limit = np.sqrt(6.0 / fan_in)
    for c in (0, 17, 399):
        w = layer.values[layer.out_ptr[c]:layer.out_ptr[c + 1]]
        assert np.abs(w).max() <= limit[c] * (1 + 1e-6)
        assert np.abs(w).max() > 0.5 * limit[c]
    np.testing.assert_allclose(fan_in_limits(layer.cols, 400), limit.astype(np.float32), rtol=1e-6)
    # uniform on [-limit, limit]: variance limit**2 / 3 = 2 / fan_in per neuron, summed over its inputs = 2
    per_neuron = np.bincount(layer.cols, weights=layer.values.astype(np.float64) ** 2, minlength=400)
    assert per_neuron.mean() == pytest.approx(2.0, rel=0.05)


def test_fan_in_limit_of_an_unconnected_neuron_is_zero():
    np.testing.assert_array_equal(fan_in_limits(np.array([0, 0, 2], dtype=np.int32), 4),
                                  np.array([np.sqrt(3.0), 0, np.sqrt(6.0), 0], dtype=np.float32))


def test_regrow_zero_keeps_the_function_and_random_stream():
    layer = erdos_renyi_layer(500, 300, 10, "he_uniform_sparse", np.random.default_rng(2))
    a, src_a = prune_and_regrow(layer, 0.3, "he_uniform_sparse", np.random.default_rng(3), regrow="zero")
    b, src_b = prune_and_regrow(layer, 0.3, "he_uniform_sparse", np.random.default_rng(3), regrow="init")
    np.testing.assert_array_equal(a.keys(), b.keys())
    np.testing.assert_array_equal(src_a, src_b)
    new = src_a < 0
    assert new.sum() > 0.25 * layer.nnz
    assert np.all(a.values[new] == 0) and np.all(b.values[new] != 0)
    np.testing.assert_array_equal(a.values[~new], layer.values[src_a[~new]])
    # regrown he_uniform_sparse weights are sized for their neuron's fan-in after the step
    limit = fan_in_limits(b.cols, 300)
    assert np.all(np.abs(b.values[new]) <= limit[b.cols[new]] * (1 + 1e-6))
    np.testing.assert_array_equal(b.values[~new], layer.values[src_b[~new]])


def test_unknown_regrow_is_refused():
    layer = erdos_renyi_layer(50, 40, 5, "he_uniform", np.random.default_rng(4))
    with pytest.raises(ValueError, match="unknown regrow 'random'; allowed: init, zero"):
        prune_and_regrow(layer, 0.3, "he_uniform", np.random.default_rng(5), regrow="random")


def test_zero_input_init_zeroes_only_the_first_layer_and_keeps_the_stream():
    def model(input_init):
        return SparseMLP.initialize([40, 30, 20, 3], epsilon=4.0, init="he_uniform_sparse", activation="all_relu",
                                    alpha=0.5, dropout=0.0, output="softmax", rng=np.random.default_rng(0),
                                    input_init=input_init)
    a, b = model("init"), model("zero")
    for la, lb in zip(a.layers, b.layers):
        np.testing.assert_array_equal(la.keys(), lb.keys())
    for la, lb in zip(a.layers[1:], b.layers[1:]):
        np.testing.assert_array_equal(la.values, lb.values)
    assert np.all(b.layers[0].values == 0) and np.all(a.layers[0].values != 0)
    with pytest.raises(ValueError, match="unknown input_init 'small'; allowed: init, zero"):
        model("small")


def test_zero_input_init_grows_the_connections_of_the_predictive_input():
    """One gradient step from a zero first layer: only x_i * delta_j moves a weight, so the connections
    of the input that carries the label outgrow those of pure-noise inputs."""
    rng = np.random.default_rng(5)
    model = SparseMLP.initialize([50, 200, 100, 2], epsilon=20.0, init="he_uniform_sparse", activation="all_relu",
                                 alpha=0.5, dropout=0.0, output="softmax", rng=rng, input_init="zero")
    n = 512
    y = rng.integers(0, 2, size=n)
    x = rng.standard_normal((50, n), dtype=np.float32)
    x[7] = (2 * y - 1) + 0.5 * rng.standard_normal(n, dtype=np.float32)   # input 7 predicts the label
    np.copyto(model.input_buffer(n), x)
    model.gradients(n, y, np.zeros(3, dtype=np.int64))
    strength = np.bincount(model.layers[0].rows, weights=np.abs(model.grads[0]), minlength=50)
    degree = np.bincount(model.layers[0].rows, minlength=50)
    per_connection = strength / np.maximum(degree, 1)
    assert int(np.argmax(per_connection)) == 7
    assert per_connection[7] > 5 * np.median(per_connection)


def test_config_keys_reach_the_model():
    from sparsenet.config import ConfigError, load_config
    from sparsenet.train import new_state

    cfg = load_config(None, ["model.hidden=[30,20]", "model.input_init=zero", "model.init=he_uniform_sparse",
                             "evolution.regrow=zero"])
    state = new_state(cfg, 40, 3)
    assert np.all(state.model.layers[0].values == 0) and np.all(state.model.layers[1].values != 0)
    assert cfg.evolution.regrow == "zero"
    for bad, message in [("model.input_init=small", "config key 'model.input_init' must be one of init, zero"),
                         ("evolution.regrow=random", "config key 'evolution.regrow' must be one of init, zero"),
                         ("model.init=sparse", "config key 'model.init' must be one of normal, xavier, he_uniform, "
                                               "he_uniform_sparse, got 'sparse'")]:
        with pytest.raises(ConfigError, match=message):
            load_config(None, [bad])
