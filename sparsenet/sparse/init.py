"""Erdős–Rényi sparse initialisation in O(nnz) memory and the weight-value distributions."""

from __future__ import annotations

import numpy as np

from numba import njit

from .layer import KEY_DTYPE, SparseLayer, split_keys

WEIGHT_INITS = ("normal", "xavier", "he_uniform", "he_uniform_sparse")
# Inits whose scale comes from each output neuron's actual number of connections (its sparse
# fan-in), not from the dense layer's n_in (Evci et al. 2022).
SPARSE_FAN_IN_INITS = ("he_uniform_sparse",)


def erdos_renyi_density(n_in: int, n_out: int, epsilon: float) -> float:
    """Connection probability eps * (n_in + n_out) / (n_in * n_out), capped at 1 (SET, eq. 1)."""
    return min(1.0, epsilon * (n_in + n_out) / (n_in * n_out))


def sample_weights(n: int, n_in: int, n_out: int, init: str, rng: np.random.Generator) -> np.ndarray:
    """n float32 weights from the named init (fan-in / fan-out of the dense layer, as in SET).

    he_uniform_sparse draws U(-1, 1) here; `scale_to_fan_in` then sizes each weight for its neuron.
    Scaled in place: 4 bytes per weight, no temporaries.
    """
    if init == "normal":
        w = rng.standard_normal(n, dtype=np.float32)
        w /= np.float32(10.0)
        return w
    if init == "he_uniform_sparse":
        limit = 1.0
    elif init == "he_uniform":
        limit = np.sqrt(6.0 / n_in)
    elif init == "xavier":
        limit = np.sqrt(6.0 / (n_in + n_out))
    else:
        raise ValueError(f"unknown weight init {init!r}; allowed: {', '.join(WEIGHT_INITS)}")
    w = rng.random(n, dtype=np.float32)
    w *= np.float32(2 * limit)
    w -= np.float32(limit)
    return w


def fan_in_limits(cols: np.ndarray, n_out: int) -> np.ndarray:
    """he_uniform's limit sqrt(6 / fan_in) per output neuron from its actual connections
    (float32, n_out; 0 for a neuron without any). cols: the layer's int32 output indices."""
    fan_in = np.bincount(cols, minlength=n_out).astype(np.float32)
    limits = np.zeros(n_out, dtype=np.float32)
    np.divide(np.float32(6.0), fan_in, out=limits, where=fan_in > 0)
    return np.sqrt(limits, out=limits)


@njit(cache=True)
def _scale_by_column(values, cols, limits, only_new, new):
    for k in range(values.shape[0]):
        if not only_new or new[k]:
            values[k] *= limits[cols[k]]


def scale_to_fan_in(values: np.ndarray, cols: np.ndarray, n_out: int, new: np.ndarray | None = None) -> None:
    """Multiply U(-1, 1) draws in place by their neuron's limit sqrt(6 / actual fan-in);
    only where `new` (bool per connection) is set, if given. O(nnz) time, O(n_out) memory."""
    limits = fan_in_limits(cols, n_out)
    _scale_by_column(values, cols, limits, new is not None, np.zeros(1, dtype=np.bool_) if new is None else new)


def sample_empty_keys(n_positions: int, count: int, occupied: np.ndarray,
                      rng: np.random.Generator) -> np.ndarray:
    """`count` distinct uniformly random keys in [0, n_positions) absent from sorted `occupied`.

    Rejection sampling (O(count) memory) while the layer is sparse; a dense layer
    (positions <= 4 * (occupied + count)) enumerates its free positions, still O(nnz).
    """
    def drop(draw: np.ndarray) -> int:
        return _drop_sorted_members(draw, occupied)

    return sample_keys_avoiding(n_positions, count, occupied.shape[0], drop if occupied.shape[0] else None,
                                lambda: occupied, rng)


def sample_keys_avoiding(n_positions: int, count: int, n_occupied: int, drop, occupied_keys,
                         rng: np.random.Generator) -> np.ndarray:
    """sample_empty_keys with the occupied set given as a filter: `drop(draw)` moves the draws not
    occupied to the front of `draw` (in order) and returns their count; `occupied_keys()` returns
    the sorted occupied keys (only called for a dense layer).

    About 8 bytes per key: the first draw is sorted and deduplicated in place and becomes the
    result buffer; top-up draws are merged into it in place. The random stream is consumed exactly
    as by the original concatenate-and-sort version (same draws, same sizes, same result).
    """
    if count < 0 or count > n_positions - n_occupied:
        raise ValueError(f"cannot place {count} connections in {n_positions - n_occupied} free positions")
    if count == 0:
        return np.empty(0, dtype=KEY_DTYPE)
    if n_positions <= 4 * (n_occupied + count):
        free_keys = free_positions(n_positions, occupied_keys())
        chosen = rng.choice(free_keys.shape[0], size=count, replace=False)
        return np.sort(free_keys[chosen])
    found = None
    n_found = 0
    while n_found < count:
        draw = rng.integers(0, n_positions, size=count - n_found, dtype=KEY_DTYPE)
        m = draw.shape[0] if drop is None else drop(draw)
        part = draw[:m]
        part.sort()
        m = _dedupe_sorted(part)
        if found is None:
            found, n_found = draw, m  # the first draw has room for all `count` keys
        else:
            m = _drop_sorted_members(draw[:m], found[:n_found])
            _merge_into(found, n_found, draw, m)
            n_found += m
        del draw, part
    return found


@njit(cache=True)
def _dedupe_sorted(a):
    """Keep the first of each run of equal values of sorted `a` at its front; return their count."""
    n = a.shape[0]
    if n == 0:
        return 0
    m = 1
    for k in range(1, n):
        if a[k] != a[m - 1]:
            a[m] = a[k]
            m += 1
    return m


@njit(cache=True)
def _drop_sorted_members(draw, members):
    """Move the values of `draw` absent from sorted `members` to its front, in order; return their count."""
    n = members.shape[0]
    m = 0
    for k in range(draw.shape[0]):
        v = draw[k]
        lo, hi = 0, n
        while lo < hi:
            mid = (lo + hi) >> 1
            if members[mid] < v:
                lo = mid + 1
            else:
                hi = mid
        if lo < n and members[lo] == v:
            continue
        draw[m] = v
        m += 1
    return m


@njit(cache=True)
def _merge_into(buf, n_buf, add, n_add):
    """Merge sorted add[:n_add] into sorted buf[:n_buf] in place (buf has room), from the back."""
    i, j, w = n_buf - 1, n_add - 1, n_buf + n_add - 1
    while j >= 0:
        if i >= 0 and buf[i] > add[j]:
            buf[w] = buf[i]
            i -= 1
        else:
            buf[w] = add[j]
            j -= 1
        w -= 1


def free_positions(n_positions: int, occupied: np.ndarray) -> np.ndarray:
    """Ascending keys in [0, n_positions) absent from sorted `occupied`, built from the gaps between them."""
    bounds = np.concatenate([[-1], occupied.astype(KEY_DTYPE), [n_positions]])
    gaps = np.diff(bounds) - 1
    skipped = np.cumsum(gaps) - gaps  # free keys before each gap
    return np.arange(int(gaps.sum()), dtype=KEY_DTYPE) + np.repeat(bounds[:-1] + 1 - skipped, gaps)


def sorted_unique(a: np.ndarray) -> np.ndarray:
    """Ascending distinct values of a (np.unique is an order of magnitude slower on large int64)."""
    a = np.sort(a)
    return a[:_dedupe_sorted(a)]


def erdos_renyi_layer(n_in: int, n_out: int, epsilon: float, init: str,
                      rng: np.random.Generator) -> SparseLayer:
    """A layer whose each position is connected with the Erdős–Rényi probability; zero biases.

    The number of connections is Binomial(n_in * n_out, p), as if each position were tossed;
    positions and values are drawn without ever touching n_in * n_out memory. Peak memory is
    about the finished layer's (20 bytes per connection): keys (8) and values (4), then the keys
    split into int32 rows and cols and dropped before the input-major index is built.
    """
    n_positions = n_in * n_out
    p = erdos_renyi_density(n_in, n_out, epsilon)
    nnz = n_positions if p >= 1.0 else int(rng.binomial(n_positions, p))
    nnz = max(nnz, 1)
    keys = sample_empty_keys(n_positions, nnz, np.empty(0, dtype=KEY_DTYPE), rng)
    values = sample_weights(nnz, n_in, n_out, init, rng)
    rows, cols = split_keys(keys, n_in)
    del keys
    if init in SPARSE_FAN_IN_INITS:
        scale_to_fan_in(values, cols, n_out)
    return SparseLayer(n_in, n_out, rows, cols, values, np.zeros(n_out, dtype=np.float32))
