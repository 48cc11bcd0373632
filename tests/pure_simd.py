"""sparse/simd.py's intrinsics in Python (for NUMBA_DISABLE_JIT=1 only): float32 sums in simd's fixed order,
LANES partial sums, folded l + (l + 8), + 4, + 2, + 1, then the tail in order (no FMA)."""

import numpy as np

from sparsenet.sparse.simd import LANES


def _fixed_order_sum(terms: np.ndarray) -> np.float32:
    n_vec = terms.shape[0] // LANES
    acc = np.zeros(LANES, np.float32)
    for v in range(n_vec):
        acc = acc + terms[v * LANES:(v + 1) * LANES]
    width = LANES
    while width > 1:
        width //= 2
        acc = acc[:width] + acc[width:2 * width]
    total = acc[0]
    for t in terms[n_vec * LANES:]:
        total = np.float32(total + t)
    return np.float32(total)


def dot(a, c, n):
    return _fixed_order_sum(a[:n] * c[:n])


def total(a, n):
    return _fixed_order_sum(a[:n].astype(np.float32))


def dot4(a0, a1, a2, a3, c, n):
    return tuple(dot(a, c, n) for a in (a0, a1, a2, a3))


def dot4_update(a0, a1, a2, a3, c, dx, w0, w1, w2, w3, n):
    sums = dot4(a0, a1, a2, a3, c, n)
    dx[:n] += (w0 * a0[:n] + w1 * a1[:n]) + (w2 * a2[:n] + w3 * a3[:n])
    return sums


def prefetch(a, i):
    pass
