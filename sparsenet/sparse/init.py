"""Erdős–Rényi sparse initialisation in O(nnz) memory and the weight-value distributions."""

from __future__ import annotations

import numpy as np

from .layer import KEY_DTYPE, SparseLayer

WEIGHT_INITS = ("normal", "xavier", "he_uniform")


def erdos_renyi_density(n_in: int, n_out: int, epsilon: float) -> float:
    """Connection probability eps * (n_in + n_out) / (n_in * n_out), capped at 1 (SET, eq. 1)."""
    return min(1.0, epsilon * (n_in + n_out) / (n_in * n_out))


def sample_weights(n: int, n_in: int, n_out: int, init: str, rng: np.random.Generator) -> np.ndarray:
    """n float32 weights from the named init (fan-in / fan-out of the dense layer, as in SET)."""
    if init == "normal":
        return (rng.standard_normal(n, dtype=np.float32) / np.float32(10.0)).astype(np.float32)
    if init == "he_uniform":
        limit = np.sqrt(6.0 / n_in)
    elif init == "xavier":
        limit = np.sqrt(6.0 / (n_in + n_out))
    else:
        raise ValueError(f"unknown weight init {init!r}; allowed: {', '.join(WEIGHT_INITS)}")
    return (rng.random(n, dtype=np.float32) * np.float32(2 * limit) - np.float32(limit)).astype(np.float32)


def sample_empty_keys(n_positions: int, count: int, occupied: np.ndarray,
                      rng: np.random.Generator) -> np.ndarray:
    """`count` distinct uniformly random keys in [0, n_positions) absent from sorted `occupied`.

    Rejection sampling in chunks (O(count) memory) while the layer is sparse; a dense layer
    (positions <= 4 * (occupied + count)) enumerates its free positions, still O(nnz).
    """
    if count < 0 or count > n_positions - occupied.shape[0]:
        raise ValueError(f"cannot place {count} connections in {n_positions - occupied.shape[0]} free positions")
    if count == 0:
        return np.empty(0, dtype=KEY_DTYPE)
    if n_positions <= 4 * (occupied.shape[0] + count):
        free_keys = free_positions(n_positions, occupied)
        chosen = rng.choice(free_keys.shape[0], size=count, replace=False)
        return np.sort(free_keys[chosen])
    found = np.empty(0, dtype=KEY_DTYPE)
    while found.shape[0] < count:
        draw = rng.integers(0, n_positions, size=count - found.shape[0], dtype=KEY_DTYPE)
        if occupied.shape[0]:
            where = np.searchsorted(occupied, draw)
            where[where == occupied.shape[0]] = 0
            draw = draw[occupied[where] != draw]
        found = sorted_unique(np.concatenate([found, draw]))
    return found


def free_positions(n_positions: int, occupied: np.ndarray) -> np.ndarray:
    """Ascending keys in [0, n_positions) absent from sorted `occupied`, built from the gaps between them."""
    bounds = np.concatenate([[-1], occupied.astype(KEY_DTYPE), [n_positions]])
    gaps = np.diff(bounds) - 1
    skipped = np.cumsum(gaps) - gaps  # free keys before each gap
    return np.arange(int(gaps.sum()), dtype=KEY_DTYPE) + np.repeat(bounds[:-1] + 1 - skipped, gaps)


def sorted_unique(a: np.ndarray) -> np.ndarray:
    """Ascending distinct values of a (np.unique is an order of magnitude slower on large int64)."""
    a = np.sort(a)
    if a.shape[0] < 2:
        return a
    keep = np.empty(a.shape[0], dtype=bool)
    keep[0] = True
    np.not_equal(a[1:], a[:-1], out=keep[1:])
    return a[keep]


def erdos_renyi_layer(n_in: int, n_out: int, epsilon: float, init: str,
                      rng: np.random.Generator) -> SparseLayer:
    """A layer whose each position is connected with the Erdős–Rényi probability; zero biases.

    The number of connections is Binomial(n_in * n_out, p), as if each position were tossed;
    positions and values are drawn without ever touching n_in * n_out memory.
    """
    n_positions = n_in * n_out
    p = erdos_renyi_density(n_in, n_out, epsilon)
    nnz = n_positions if p >= 1.0 else int(rng.binomial(n_positions, p))
    nnz = max(nnz, 1)
    keys = sample_empty_keys(n_positions, nnz, np.empty(0, dtype=KEY_DTYPE), rng)
    values = sample_weights(nnz, n_in, n_out, init, rng)
    return SparseLayer.from_keys(n_in, n_out, keys, values, np.zeros(n_out, dtype=np.float32))
