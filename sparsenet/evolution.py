"""The SET step as pure functions: (layer, zeta, init, rng) -> new layer and where its connections came from."""

from __future__ import annotations

import numpy as np

from .sparse.init import sample_empty_keys, sample_weights
from .sparse.layer import SparseLayer


def weights_to_remove(values: np.ndarray, zeta: float) -> np.ndarray:
    """Indices of the zeta fraction of smallest non-negative and of largest negative weights.

    Per side, int(zeta * count) weights nearest zero go; which of several equal boundary values goes
    is up to np.argpartition (deterministic for the same input).
    """
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


def prune_and_regrow(layer: SparseLayer, zeta: float, init: str,
                     rng: np.random.Generator) -> tuple[SparseLayer, np.ndarray]:
    """One SET step on a layer: remove weights nearest zero, regrow as many at random empty positions.

    Returns the new layer (same nnz, output-major) and `source` (int64, new nnz): the old index of
    each connection, or -1 for a regrown one. New weights come from the layer's init distribution.
    """
    removed = weights_to_remove(layer.values, zeta)
    keep = np.ones(layer.nnz, dtype=bool)
    keep[removed] = False
    kept_index = np.flatnonzero(keep)
    old_keys = layer.keys()
    kept_keys = old_keys[kept_index]  # still ascending
    new_keys = sample_empty_keys(layer.n_positions, removed.shape[0], kept_keys, rng)
    new_values = sample_weights(new_keys.shape[0], layer.n_in, layer.n_out, init, rng)

    keys = np.concatenate([kept_keys, new_keys])
    order = np.argsort(keys, kind="stable")
    source = np.concatenate([kept_index, np.full(new_keys.shape[0], -1, dtype=np.int64)])[order]
    values = np.concatenate([layer.values[kept_index], new_values])[order]
    new_layer = SparseLayer.from_keys(layer.n_in, layer.n_out, keys[order], values, layer.bias)
    return new_layer, source
