"""Fixed-order batch reductions for the kernels: `@njit(inline='always')` helpers.

The kernels compile without fastmath's `reassoc`, so LLVM may not reorder a sum by itself (a
reordered, vectorised reduction depends on how the code happened to be compiled: a freshly
compiled kernel and a cached one were seen to differ at batch 128). numba also compiles without
the SLP vectoriser, so independent scalar accumulators are not packed into SIMD registers
either. What the loop vectoriser does handle is elementwise loops, so a reduction here is a
pairwise fold of a scratch buffer: the elementwise products go into `p`, then p[b] += p[b + half]
halves the live length (each halving an elementwise, vectorised loop) down to 16 values, which a
fixed binary tree adds up. The order of every addition depends only on n, never on the compiler,
the thread count or the CPU's vector width.

The kernels' numba cache is keyed on kernels.py, not on this file: kernels.py folds SOURCE_DIGEST
(a hash of this file) into its kernels' cache key, so an edit here recompiles them.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from numba import njit

LANES = 16  # values left after the vectorised halvings; p needs at least this many elements

SOURCE_DIGEST = int(hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:15], 16) | 1


def scratch_length(n: int) -> int:
    """Length of a scratch row for reductions over n values."""
    return max(n, LANES)


@njit(inline="always")
def fold(p, n):
    """Sum of p[:n] in a fixed order; overwrites p (len(p) >= max(n, 16))."""
    h = n
    while h > 16:
        half = (h + 1) >> 1
        for b in range(h - half):
            p[b] += p[b + half]
        h = half
    for b in range(h, 16):
        p[b] = np.float32(0.0)
    return ((((p[0] + p[8]) + (p[1] + p[9])) + ((p[2] + p[10]) + (p[3] + p[11])))
            + (((p[4] + p[12]) + (p[5] + p[13])) + ((p[6] + p[14]) + (p[7] + p[15]))))


@njit(inline="always")
def _tree16(p):
    return ((((p[0] + p[8]) + (p[1] + p[9])) + ((p[2] + p[10]) + (p[3] + p[11])))
            + (((p[4] + p[12]) + (p[5] + p[13])) + ((p[6] + p[14]) + (p[7] + p[15]))))


@njit(inline="always")
def fold4(p0, p1, p2, p3, n):
    """fold() of four scratch rows at once (the same order per row, more work per loop)."""
    h = n
    while h > 16:
        half = (h + 1) >> 1
        for b in range(h - half):
            p0[b] += p0[b + half]
            p1[b] += p1[b + half]
            p2[b] += p2[b + half]
            p3[b] += p3[b + half]
        h = half
    for b in range(h, 16):
        p0[b] = p1[b] = p2[b] = p3[b] = np.float32(0.0)
    return _tree16(p0), _tree16(p1), _tree16(p2), _tree16(p3)


@njit(inline="always")
def dot(a, c, n, p):
    """sum(a[b] * c[b] for b < n) in float32, in a fixed order; p is scratch (see fold)."""
    for b in range(n):
        p[b] = a[b] * c[b]
    return fold(p, n)


@njit(inline="always")
def total(a, n, p):
    """sum(a[b] for b < n) in float32, in the same fixed order as `dot`; p is scratch."""
    for b in range(n):
        p[b] = a[b]
    return fold(p, n)
