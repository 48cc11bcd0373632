"""Evaluation is forward-only, in bounded chunks, and its result does not depend on the chunking."""

import numpy as np
import pytest

from sparsenet.model import EVAL_BUFFER_BYTES, SparseMLP


@pytest.mark.parametrize("output", ["softmax", "sigmoid"])
def test_chunked_evaluation_is_identical(output):
    rng = np.random.default_rng(0)
    model = SparseMLP.initialize([20, 64, 48, 5], epsilon=8.0, init="he_uniform", activation="all_relu",
                                 alpha=0.6, dropout=0.3, output=output, rng=rng)
    for layer in model.layers:
        layer.bias[:] = rng.standard_normal(layer.n_out).astype(np.float32) * 0.1
    x = rng.standard_normal((301, 20)).astype(np.float32)
    y = rng.integers(0, 5, 301)
    whole = model.evaluate(x, y, 1000)
    per_sample_bytes = 4 * (48 + 64)  # two ping-pong buffers: widths 20, 48 and 64, 5
    assert model.eval_chunk(1000, 7 * per_sample_bytes) == 7
    for batch, max_bytes in [(64, 1 << 30), (1000, 7 * per_sample_bytes), (1, 1 << 30), (301, 1)]:
        assert model.evaluate(x, y, batch, max_bytes=max_bytes) == whole
    assert not model._workspaces  # no training workspace (f'(z), deltas) was allocated


def test_eval_chunk_bounds_activation_memory():
    rng = np.random.default_rng(1)
    model = SparseMLP.initialize([100, 500_000, 500_000, 2], epsilon=0.001, init="he_uniform",
                                 activation="relu", alpha=0.0, dropout=0.0, output="softmax", rng=rng)
    chunk = model.eval_chunk(2048)
    assert 4 * (500_000 + 500_000) * chunk <= EVAL_BUFFER_BYTES
    assert chunk == EVAL_BUFFER_BYTES // (4 * 1_000_000)


def test_evaluation_after_training_uses_the_training_workspace():
    """After a training step, evaluate runs through the workspace: same numbers, no new allocation."""
    rng = np.random.default_rng(3)
    model = SparseMLP.initialize([20, 64, 48, 5], epsilon=8.0, init="he_uniform", activation="all_relu",
                                 alpha=0.6, dropout=0.3, output="softmax", rng=rng)
    x = rng.standard_normal((301, 20)).astype(np.float32)
    y = rng.integers(0, 5, 301)
    own_buffers = model.evaluate(x, y, 1000)
    model.input_buffer(32)[:] = x[:32].T
    model.gradients(32, y[:32], rng.integers(0, 2**63, size=3, dtype=np.int64))
    flat = [a for group in model._flat for a in group]
    assert model.evaluate(x, y, 1000) == own_buffers
    assert all(a is b for a, b in zip(flat, [a for group in model._flat for a in group]))
    assert max(model._workspaces) == 32
