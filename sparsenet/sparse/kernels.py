"""Numba kernels on the non-zeros of a layer; activations are feature-major (neurons, batch) float32.

Each public function validates its arrays and calls a private `_kernel`. Every output element
is written by exactly one thread in a fixed order, so results do not depend on the thread count,
and no kernel lets the compiler reassociate a sum (FASTMATH, simd.py), so a cached kernel and a
freshly compiled one give the same bits.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from . import simd
from .layer import SparseLayer

_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


@njit(inline="always")
def _uniform_bits(key, counter):
    """splitmix64 of (key, counter): 64 random bits, a counter-based RNG for dropout masks."""
    z = key + (counter + np.uint64(1)) * _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


@njit(inline="always")
def activate(z, g, counter, b0, b1, slope, keep_threshold, keep_scale, drop_key, store_factor):
    """Every forward kernel's epilogue on one unit's row z (batch,), entries b0..b1-1: z *= f'(z) * mask, where
    f(z) = z if z > 0 else slope * z and the dropout mask is keep_scale or 0 from the bits of (drop_key,
    counter + b); the factor also goes to g[b] if store_factor."""
    for b in range(b0, b1):
        zb = z[b]
        d = np.float32(1.0) if zb > 0 else slope
        m = np.float32(1.0)
        if keep_threshold != 0:
            bits = _uniform_bits(drop_key, counter + np.uint64(b)) >> np.uint64(32)
            m = keep_scale if bits < keep_threshold else np.float32(0.0)
        factor = d * m
        z[b] = zb * factor
        if store_factor:
            g[b] = factor


# fastmath without `reassoc`: LLVM may not reorder sums, so results are bitwise reproducible
# between a fresh compile and a cached one and across thread counts. `contract` (FMA) stays: it
# fuses the same multiply-adds in every compile of the same code on the same CPU (the cache is per
# CPU). Batch reductions are fixed-order vector code (simd.py), so they still vectorise.
FASTMATH = frozenset({"nnan", "ninf", "nsz", "arcp", "contract", "afn"})


def _define_kernels(simd_digest):
    """The parallel kernels, as closures over simd.py's digest so that their numba cache key
    (which hashes closure variables) changes when the inlined helpers in simd.py change."""

    @njit(parallel=True, fastmath=set(FASTMATH), cache=True)
    def _forward_kernel(x, rows, values, out_ptr, bias, slope, apply_act, keep_threshold,
                        keep_scale, drop_key, out, grad_factor, store_factor, ahead):
        if simd_digest == 0:  # never true; ties the cache to simd.py
            return
        n_out, batch = out.shape
        nnz = rows.shape[0]
        for j in prange(n_out):
            acc = out[j]
            b0 = bias[j]
            for b in range(batch):
                acc[b] = b0
            # Eight connections per sweep over the batch: one load/store of acc per eight FMAs.
            k, end = out_ptr[j], out_ptr[j + 1]
            while k + 8 <= end:
                if ahead > 0:  # x does not fit in cache: start loading the rows `ahead` connections on
                    for q in range(k + ahead, min(k + ahead + 8, nnz)):
                        simd.prefetch(x, rows[q])
                w0, w1, w2, w3 = values[k], values[k + 1], values[k + 2], values[k + 3]
                w4, w5, w6, w7 = values[k + 4], values[k + 5], values[k + 6], values[k + 7]
                x0, x1, x2, x3 = x[rows[k]], x[rows[k + 1]], x[rows[k + 2]], x[rows[k + 3]]
                x4, x5, x6, x7 = x[rows[k + 4]], x[rows[k + 5]], x[rows[k + 6]], x[rows[k + 7]]
                for b in range(batch):
                    acc[b] += (((w0 * x0[b] + w1 * x1[b]) + (w2 * x2[b] + w3 * x3[b]))
                               + ((w4 * x4[b] + w5 * x5[b]) + (w6 * x6[b] + w7 * x7[b])))
                k += 8
            while k < end:
                if ahead > 0 and k + ahead < nnz:
                    simd.prefetch(x, rows[k + ahead])
                w = values[k]
                xi = x[rows[k]]
                for b in range(batch):
                    acc[b] += w * xi[b]
                k += 1
            if apply_act:
                activate(acc, grad_factor[j], np.uint64(j) * np.uint64(batch), 0, batch, slope, keep_threshold,
                         keep_scale, drop_key, store_factor)

    @njit(parallel=True, fastmath=set(FASTMATH), cache=True)
    def _backward_kernel(x, delta, cols_in, values, in_ptr, in_perm, grad_factor, grad, dx, dx_sums, ahead):
        if simd_digest == 0:  # never true; ties the cache to simd.py
            return
        n_in, batch = x.shape
        nnz = cols_in.shape[0]
        for i in prange(n_in):
            xi = x[i]
            dxi = dx[i]
            for b in range(batch):
                dxi[b] = 0.0
            # Four connections per sweep of dx: one load/store of dx per four FMAs; the weight
            # gradients are four fixed-order dot products (simd.py), all in one sweep over the batch.
            # cols_in holds the columns in this (input-major) order: no double indirection.
            k, end = in_ptr[i], in_ptr[i + 1]
            while k + 4 <= end:
                if ahead > 0:  # delta does not fit in cache: start loading rows and weights ahead
                    for q in range(k + ahead, min(k + ahead + 4, nnz)):
                        simd.prefetch(delta, cols_in[q])
                        simd.prefetch(values, in_perm[q])
                        simd.prefetch(grad, in_perm[q])
                i0, i1, i2, i3 = in_perm[k], in_perm[k + 1], in_perm[k + 2], in_perm[k + 3]
                d0, d1 = delta[cols_in[k]], delta[cols_in[k + 1]]
                d2, d3 = delta[cols_in[k + 2]], delta[cols_in[k + 3]]
                w0, w1, w2, w3 = values[i0], values[i1], values[i2], values[i3]
                # dxi[b] += (w0 d0[b] + w1 d1[b]) + (w2 d2[b] + w3 d3[b]) in the same sweep
                grad[i0], grad[i1], grad[i2], grad[i3] = simd.dot4_update(d0, d1, d2, d3, xi, dxi,
                                                                          w0, w1, w2, w3, batch)
                k += 4
            while k < end:
                if ahead > 0 and k + ahead < nnz:
                    simd.prefetch(delta, cols_in[k + ahead])
                idx = in_perm[k]
                dj = delta[cols_in[k]]
                w = values[idx]
                for b in range(batch):
                    dxi[b] += w * dj[b]
                grad[idx] = simd.dot(dj, xi, batch)
                k += 1
            gi = grad_factor[i]
            for b in range(batch):
                dxi[b] = dxi[b] * gi[b]
            dx_sums[i] = simd.total(dxi, batch)

    @njit(parallel=True, fastmath=set(FASTMATH), cache=True)
    def _weight_grad_kernel(x, delta, rows, cols, grad, ahead):
        if simd_digest == 0:  # never true; ties the cache to simd.py
            return
        batch = x.shape[1]
        nnz = grad.shape[0]
        for k in prange(nnz):
            if ahead > 0 and k + ahead < nnz:  # x does not fit in cache
                simd.prefetch(x, rows[k + ahead])
            grad[k] = simd.dot(delta[cols[k]], x[rows[k]], batch)

    @njit(fastmath=set(FASTMATH), cache=True)
    def _row_sum_kernel(a, out):
        if simd_digest == 0:  # never true; ties the cache to simd.py
            return
        for j in range(a.shape[0]):
            out[j] = simd.total(a[j], a.shape[1])

    return _forward_kernel, _backward_kernel, _weight_grad_kernel, _row_sum_kernel


_forward_kernel, _backward_kernel, _weight_grad_kernel, _row_sum_kernel = _define_kernels(simd.SOURCE_DIGEST)

# For kernels elsewhere (csr.py, lazy.py) that inline `activate`: numba's cache sees only their own file.
SOURCE_DIGEST = simd.file_digest(__file__, simd.SOURCE_DIGEST)


PREFETCH_MIN_BYTES = 8 << 20  # gathered activations larger than this are prefetched (L2 is ~1 MB a core)
PREFETCH_AHEAD = 16  # connections ahead (measured on 500k x 500k eps 10, batch 128: 8-64 all help)


def _ahead(gathered: np.ndarray) -> int:
    """How many connections ahead the kernels prefetch rows of `gathered`: 0 while it fits in cache."""
    return PREFETCH_AHEAD if gathered.nbytes > PREFETCH_MIN_BYTES else 0


CACHE_LINE = 64  # bytes


def aligned_floats(n: int, fill: float = 0.0) -> np.ndarray:
    """float32 (n,) of `fill` starting on a cache line, for activation buffers: with rows of a multiple of 16
    floats no 512-bit load of a row straddles two lines. numpy's large arrays start 16 bytes past a page,
    and the kernels then ran 1.2x (forward) to 1.9x (weight gradient) slower (scripts/bench_kernels.py
    --offset 16 vs 0, docs/benchmarks.md)."""
    raw = np.zeros(n + CACHE_LINE // 4, dtype=np.float32)  # calloc'd: pages stay untouched until written
    start = (-raw.ctypes.data % CACHE_LINE) // 4
    out = raw[start:start + n]
    if fill != 0.0:
        out.fill(fill)
    return out


def _check_activations(name: str, a: np.ndarray, n: int, batch: int | None = None) -> None:
    if a.dtype != np.float32 or a.ndim != 2 or not a.flags.c_contiguous:
        raise ValueError(f"{name} must be a C-contiguous 2-D float32 array, got {a.dtype} {a.shape}")
    if a.shape[0] != n or (batch is not None and a.shape[1] != batch):
        raise ValueError(f"{name} must have shape ({n}, {batch if batch is not None else 'batch'}), got {a.shape}")


def forward(layer: SparseLayer, x: np.ndarray, out: np.ndarray, *, slope: float | None = None,
            dropout: float = 0.0, drop_key: int = 0, grad_factor: np.ndarray | None = None) -> np.ndarray:
    """out (n_out, batch) = W x + b, then optionally f(z) = z if z > 0 else slope * z and dropout.

    With `grad_factor` (n_out, batch), stores f'(z) * dropout-scale there for the backward pass.
    Dropout keeps each unit with probability 1 - dropout and scales it by 1 / (1 - dropout).
    """
    _check_activations("x", x, layer.n_in)
    _forward_kernel(x, layer.rows, layer.values, layer.out_ptr, layer.bias,
                    *forward_options(out, layer.n_out, x.shape[1], slope, dropout, drop_key, grad_factor), _ahead(x))
    return out


def forward_options(out: np.ndarray, n_out: int, batch: int, slope: float | None, dropout: float, drop_key: int,
                    grad_factor: np.ndarray | None) -> tuple:
    """The checked tail of every forward kernel's arguments (dense and CSR input): (slope, apply_act,
    keep_threshold, keep_scale, drop_key, out, grad_factor, store); out and grad_factor (n_out, batch)."""
    _check_activations("out", out, n_out, batch)
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    apply_act = slope is not None
    if dropout > 0.0 and not apply_act:
        raise ValueError("dropout needs an activation (slope)")
    store = grad_factor is not None
    if store:
        _check_activations("grad_factor", grad_factor, n_out, batch)
    else:
        grad_factor = out  # unused placeholder of the right type
    keep_threshold = np.uint64(0) if dropout == 0.0 else np.uint64(min(int((1.0 - dropout) * 2**32), 2**32 - 1))
    keep_scale = np.float32(1.0 / (1.0 - dropout))
    return (np.float32(slope if apply_act else 0.0), apply_act, keep_threshold, keep_scale,
            np.uint64(drop_key & 0xFFFFFFFFFFFFFFFF), out, grad_factor, store)


def backward(layer: SparseLayer, x: np.ndarray, delta: np.ndarray, grad: np.ndarray,
             dx: np.ndarray | None = None, grad_factor: np.ndarray | None = None,
             dx_sums: np.ndarray | None = None) -> None:
    """grad (nnz,) = sum over batch of delta[col] * x[row] on existing connections only.

    With `dx`, also dx (n_in, batch) = (W^T delta) * grad_factor, the delta of the layer below,
    and dx_sums (n_in,) = dx summed over the batch, the bias gradient of the layer below.
    """
    _check_activations("x", x, layer.n_in)
    _check_activations("delta", delta, layer.n_out, x.shape[1])
    if grad.dtype != np.float32 or grad.shape != (layer.nnz,):
        raise ValueError(f"grad must be float32 of shape ({layer.nnz},), got {grad.dtype} {grad.shape}")
    if dx is None:
        _weight_grad_kernel(x, delta, layer.rows, layer.cols, grad, _ahead(x))
        return
    _check_activations("dx", dx, layer.n_in, x.shape[1])
    _check_activations("grad_factor", grad_factor, layer.n_in, x.shape[1])
    if dx_sums is None or dx_sums.dtype != np.float32 or dx_sums.shape != (layer.n_in,):
        raise ValueError(f"dx_sums must be float32 of shape ({layer.n_in},)")
    _backward_kernel(x, delta, layer.cols_in, layer.values, layer.in_ptr, layer.in_perm, grad_factor, grad, dx, dx_sums,
                     _ahead(delta))


def row_sums(a: np.ndarray, out: np.ndarray) -> np.ndarray:
    """out (n,) = a (n, batch) summed over the batch: the output layer's bias gradient (serial: n is small)."""
    _row_sum_kernel(a, out)
    return out


@njit(parallel=True, cache=True)
def _gather_kernel(x, index, out):
    n_features = x.shape[1]
    for f in prange(n_features):
        row = out[f]
        for b in range(index.shape[0]):
            row[b] = x[index[b], f]


@njit(parallel=True, cache=True)
def _gather_bytes_kernel(raw, index, table, per_feature, out):
    n_features = raw.shape[1]
    for f in prange(n_features):
        row = out[f]
        values = table[f * per_feature]
        for b in range(index.shape[0]):
            row[b] = values[raw[index[b], f]]


def gather_bytes(raw: np.ndarray, index: np.ndarray, table: np.ndarray, out: np.ndarray) -> np.ndarray:
    """out (n_features, batch) = table[f, raw[index, f]].T for uint8 samples raw (n, n_features): table
    (n_features, 256) float32 holds what each byte value of each feature reads as ((1, 256): the same
    for every feature)."""
    if raw.dtype != np.uint8 or raw.ndim != 2 or not raw.flags.c_contiguous:
        raise ValueError(f"raw must be a C-contiguous 2-D uint8 array, got {raw.dtype} {raw.shape}")
    if (table.dtype != np.float32 or table.ndim != 2 or table.shape[1] != 256 or not table.flags.c_contiguous
            or table.shape[0] not in (1, raw.shape[1])):
        raise ValueError(f"table must be C-contiguous float32 of shape ({raw.shape[1]}, 256) or (1, 256), "
                         f"got {table.dtype} {table.shape}")
    _check_activations("out", out, raw.shape[1], index.shape[0])
    index = np.ascontiguousarray(index, dtype=np.int64)
    if index.size and (index.min() < 0 or index.max() >= raw.shape[0]):
        raise ValueError(f"row index out of range [0, {raw.shape[0]})")
    _gather_bytes_kernel(raw, index, table, int(table.shape[0] > 1), out)
    return out


def gather_batch(x: np.ndarray, index: np.ndarray, out: np.ndarray) -> np.ndarray:
    """out (n_features, batch) = x[index].T for samples x (n, n_features) float32, or a row source with
    a `gather(index, out)` method (uint8 pixels: sparsenet.data.rows.ByteRows). CSR samples go to the
    first layer as they are (sparse/csr.py)."""
    if not isinstance(x, np.ndarray) and hasattr(x, "gather"):
        return x.gather(index, out)
    if x.dtype != np.float32 or x.ndim != 2:
        raise ValueError(f"x must be a 2-D float32 array, got {x.dtype} {x.shape}")
    _check_activations("out", out, x.shape[1], index.shape[0])
    _gather_kernel(x, np.ascontiguousarray(index, dtype=np.int64), out)
    return out
