"""The SET step as pure functions: (layer, zeta, init, rng) -> new layer and where its connections came from."""

from __future__ import annotations

import numpy as np
from numba import njit

from .sparse.init import SPARSE_FAN_IN_INITS, sample_keys_avoiding, sample_weights, scale_to_fan_in
from .sparse.layer import INDEX_DTYPE, SparseLayer


def weights_to_remove(values: np.ndarray, zeta: float) -> np.ndarray:
    """Indices of the zeta fraction of smallest non-negative and of largest negative weights.

    Per side, int(zeta * count) weights nearest zero go; which of several equal boundary values goes
    is up to np.argpartition (deterministic for the same input).
    """
    return np.flatnonzero(removal_mask(values, zeta))


def removal_mask(values: np.ndarray, zeta: float) -> np.ndarray:
    """weights_to_remove as a boolean mask over the connections (1 byte each, no int64 index arrays).

    Each side's values are partitioned exactly as before (np.argpartition on the same array), so the
    same connections go, ties included.
    """
    remove = np.zeros(values.shape[0], dtype=bool)
    for negative in (False, True):
        side = values < 0 if negative else values >= 0
        subset = values[side]
        del side
        if negative:
            np.negative(subset, out=subset)
        n_side = int(zeta * subset.shape[0])
        if n_side:
            chosen = np.zeros(subset.shape[0], dtype=bool)
            chosen[np.argpartition(subset, n_side - 1, kind="introselect")[:n_side]] = True
            del subset
            _mark_side(values, negative, chosen, remove)
    return remove


@njit(cache=True)
def _mark_side(values, negative, chosen, remove):
    """remove[k] = chosen[r] for the r-th connection on the given side of zero."""
    r = 0
    for k in range(values.shape[0]):
        if (values[k] < 0) if negative else (values[k] >= 0):  # NaN is on neither side
            if chosen[r]:
                remove[k] = True
            r += 1


@njit(cache=True)
def _drop_kept(draw, rows, cols_ptr, remove, n_in):
    """Move the draws (keys) not at a kept connection to the front of `draw`; return their count.

    A key col * n_in + row is occupied if column col has a connection from row (binary search in
    its sorted run of rows) that is not being removed.
    """
    m = 0
    for k in range(draw.shape[0]):
        v = draw[k]
        c = v // n_in
        r = v - c * n_in
        lo, hi = cols_ptr[c], cols_ptr[c + 1]
        while lo < hi:
            mid = (lo + hi) >> 1
            if rows[mid] < r:
                lo = mid + 1
            else:
                hi = mid
        if lo < cols_ptr[c + 1] and rows[lo] == r and not remove[lo]:
            continue
        draw[m] = v
        m += 1
    return m


@njit(cache=True)
def _merge_kept_and_new(rows, cols, values, remove, new_keys, new_values, n_in,
                        out_rows, out_cols, out_values, source):
    """Output-major merge of the kept connections and the regrown ones (disjoint keys)."""
    nnz = rows.shape[0]
    n_new = new_keys.shape[0]
    k, j, w = 0, 0, 0
    while True:
        while k < nnz and remove[k]:
            k += 1
        if k < nnz:
            kept_key = np.int64(cols[k]) * n_in + rows[k]
            if j < n_new and new_keys[j] < kept_key:
                take_new = True
            else:
                take_new = False
        elif j < n_new:
            take_new = True
        else:
            break
        if take_new:
            c = new_keys[j] // n_in
            out_rows[w] = new_keys[j] - c * n_in
            out_cols[w] = c
            out_values[w] = new_values[j]
            source[w] = -1
            j += 1
        else:
            out_rows[w] = rows[k]
            out_cols[w] = cols[k]
            out_values[w] = values[k]
            source[w] = k
            k += 1
        w += 1


REGROW_VALUES = ("init", "zero")


def prune_and_regrow(layer: SparseLayer, zeta: float, init: str,
                     rng: np.random.Generator, regrow: str = "init") -> tuple[SparseLayer, np.ndarray]:
    """One SET step on a layer: remove weights nearest zero, regrow as many at random empty positions.

    Returns the new layer (same nnz, output-major) and `source` (int64, new nnz): the old index of
    each connection, or -1 for a regrown one. regrow "init": new weights come from the layer's init
    distribution (he_uniform_sparse: sized by the neuron's fan-in after regrowth); "zero": they
    start at 0, as in RigL, so the step leaves the network's function unchanged and a new
    connection keeps its place only if training grows it. The random stream is the same either way.
    Regrown positions avoid the kept connections (a just-removed position may be drawn again).

    Memory beyond the result (new layer 20 B + source 8 B per connection): a removal mask (1 B),
    the regrown keys and values (12 B per regrown connection) and np.argpartition's temporaries
    over one sign's weights; no int64 key array of the whole layer.
    """
    remove = removal_mask(layer.values, zeta)
    n_removed = int(np.count_nonzero(remove))
    n_in = np.int64(layer.n_in)

    def drop(draw: np.ndarray) -> int:
        return _drop_kept(draw, layer.rows, layer.out_ptr, remove, n_in)

    def kept_keys() -> np.ndarray:  # only for a nearly dense layer
        return layer.keys()[~remove]

    if regrow not in REGROW_VALUES:
        raise ValueError(f"unknown regrow {regrow!r}; allowed: {', '.join(REGROW_VALUES)}")
    new_keys = sample_keys_avoiding(layer.n_positions, n_removed, layer.nnz - n_removed, drop, kept_keys, rng)
    new_values = sample_weights(new_keys.shape[0], layer.n_in, layer.n_out, init, rng)

    nnz = layer.nnz
    rows = np.empty(nnz, dtype=INDEX_DTYPE)
    cols = np.empty(nnz, dtype=INDEX_DTYPE)
    values = np.empty(nnz, dtype=np.float32)
    source = np.empty(nnz, dtype=np.int64)
    _merge_kept_and_new(layer.rows, layer.cols, layer.values, remove, new_keys, new_values, n_in,
                        rows, cols, values, source)
    del remove, new_keys, new_values
    if regrow == "zero":
        values[source < 0] = 0.0
    elif init in SPARSE_FAN_IN_INITS:
        scale_to_fan_in(values, cols, layer.n_out, new=source < 0)
    return SparseLayer(layer.n_in, layer.n_out, rows, cols, values, layer.bias), source
