"""First-layer kernels on CSR input: a batch is rows `index` of a CSR matrix (data, indices, indptr),
never densified. Work is O(nnz of the batch x connections per input), plus O(nnz of the layer) to
clear the weight gradient.

The batch's non-zeros are first put in feature order (buckets of BUCKET_FEATURES features), so the
layer's input-major arrays are read in one sweep. Forward walks, for each non-zero (sample b,
feature i), feature i's outgoing connections and adds w * x into out[:, b]; parallel over blocks
of samples, each out[j, b] summed in ascending feature order. The weight gradient of connection
(i, j) is the sum over the batch's samples b of x[b, i] * delta[j, b]: parallel over ranges of
buckets (disjoint connections), each summed in sample order. Both results are the same for any
thread count.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from . import kernels, simd
from .kernels import FASTMATH, _check_activations, activate, forward_options
from .layer import SparseLayer


BUCKET_FEATURES = 64  # features per bucket of the batch's feature-ordered walk (locality in the layer's arrays)


@njit(cache=True)
def _bucket_by_feature(indices, indptr, index, shift, ptr, where, sample):
    """Stable counting sort of the batch's non-zeros by bucket (feature >> shift): ptr (n_buckets + 1)
    delimits each bucket's run in `where` (position in data) / `sample` (b); within a bucket, sample
    order, and within a sample the row's (ascending) column order."""
    n_buckets = ptr.shape[0] - 1
    counts = np.zeros(n_buckets + 1, dtype=np.int64)
    for b in range(index.shape[0]):
        r = index[b]
        for p in range(indptr[r], indptr[r + 1]):
            counts[(np.int64(indices[p]) >> shift) + 1] += 1
    ptr[0] = 0
    for c in range(n_buckets):
        ptr[c + 1] = ptr[c] + counts[c + 1]
        counts[c + 1] = ptr[c]
    for b in range(index.shape[0]):
        r = index[b]
        for p in range(indptr[r], indptr[r + 1]):
            c = (np.int64(indices[p]) >> shift) + 1
            q = counts[c]
            where[q] = p
            sample[q] = b
            counts[c] = q + 1


AHEAD = 16  # batch non-zeros ahead whose feature's connections are prefetched (in_ptr twice as far ahead)


@njit(inline="always")
def prefetch_ahead(indices, where, q, n, in_ptr, w, cols_in, v, with_v):
    """Prefetch in_ptr of the feature of entry q + 2 AHEAD, and the connections of entry q + AHEAD's
    in the input-major arrays w, cols_in (and v if with_v)."""
    if q + 2 * AHEAD < n:
        simd.prefetch(in_ptr, indices[where[q + 2 * AHEAD]])
    if q + AHEAD < n:
        i = indices[where[q + AHEAD]]
        s, e = in_ptr[i], in_ptr[i + 1] - 1
        if e >= s:
            simd.prefetch(w, s)
            simd.prefetch(w, e)
            simd.prefetch(cols_in, s)
            simd.prefetch(cols_in, e)
            if with_v:
                simd.prefetch(v, s)
                simd.prefetch(v, e)


def _define_forward(digest, input_major):
    """The forward kernel on the layer's values read through in_perm, or (input_major: lazy.py's copy)
    on weights already held input-major, read in place and prefetched; a closure over the digest of
    what it inlines (kernels.py, simd.py), which its numba cache key then includes."""

    @njit(parallel=True, fastmath=set(FASTMATH), cache=True)
    def _forward_kernel(data, indices, where, sample, blocks, in_ptr, in_perm, cols_in, values, bias, slope,
                        apply_act, keep_threshold, keep_scale, drop_key, out, grad_factor, store_factor):
        if digest == 0:  # never true; ties the cache to kernels.py and simd.py
            return
        n_out, batch = out.shape
        n_entries = where.shape[0]
        for t in prange(blocks):
            b0, b1 = batch * t // blocks, batch * (t + 1) // blocks
            for b in range(b0, b1):
                for j in range(n_out):
                    out[j, b] = bias[j]
            # The batch's non-zeros in feature order: the layer's arrays are read in one sweep. Each
            # out[j, b] still gets its terms in ascending feature order, whatever the number of blocks.
            for q in range(n_entries):
                b = sample[q]
                if b < b0 or b >= b1:
                    continue
                p = where[q]
                i = indices[p]
                v = data[p]
                if input_major:
                    prefetch_ahead(indices, where, q, n_entries, in_ptr, values, cols_in, values, False)
                    for k in range(in_ptr[i], in_ptr[i + 1]):
                        out[cols_in[k], b] += values[k] * v
                else:
                    for k in range(in_ptr[i], in_ptr[i + 1]):
                        out[cols_in[k], b] += values[in_perm[k]] * v
            if apply_act:  # the same f(z), dropout stream and factors as kernels._forward_kernel
                for j in range(n_out):
                    activate(out[j], grad_factor[j], np.uint64(j) * np.uint64(batch), b0, b1, slope, keep_threshold,
                             keep_scale, drop_key, store_factor)

    return _forward_kernel


_forward_kernel = _define_forward(kernels.SOURCE_DIGEST, False)
input_major_forward = _define_forward(kernels.SOURCE_DIGEST, True)
# For lazy.py, whose kernels inline prefetch_ahead.
SOURCE_DIGEST = simd.file_digest(__file__, kernels.SOURCE_DIGEST)


@njit(parallel=True, cache=True)
def _zero(a):
    for k in prange(a.shape[0]):
        a[k] = 0.0


@njit(parallel=True, fastmath=set(FASTMATH), cache=True)
def _weight_grad_kernel(data, indices, ptr, where, sample, chunks, delta, in_ptr, in_perm, cols_in, grad):
    n_buckets = ptr.shape[0] - 1
    for c in prange(chunks):
        # buckets of this chunk: disjoint feature ranges, so disjoint connections; each gradient is
        # summed in sample order
        for q in range(ptr[n_buckets * c // chunks], ptr[n_buckets * (c + 1) // chunks]):
            p = where[q]
            i = indices[p]
            v = data[p]
            b = sample[q]
            for k in range(in_ptr[i], in_ptr[i + 1]):
                grad[in_perm[k]] += v * delta[cols_in[k], b]


class BatchOrder:
    """The non-zeros of rows `index` of a CSR matrix in feature-bucket order (see _bucket_by_feature);
    made once per batch and shared by forward and weight_grad."""

    def __init__(self, indices: np.ndarray, indptr: np.ndarray, index: np.ndarray, n_features: int):
        self.index = index = _rows(index, indptr.shape[0] - 1)
        self.shift = shift = np.int64(max(0, int(BUCKET_FEATURES).bit_length() - 1))  # bucket = feature >> shift
        n_buckets = ((n_features - 1) >> shift) + 1
        nnz_batch = int((indptr[index + 1] - indptr[index]).sum())
        self.ptr = np.empty(n_buckets + 1, dtype=np.int64)
        self.where = np.empty(nnz_batch, dtype=np.int64)
        self.sample = np.empty(nnz_batch, dtype=np.int64)
        _bucket_by_feature(indices, indptr, index, np.int64(shift), self.ptr, self.where, self.sample)


def check_csr(data: np.ndarray, indices: np.ndarray, indptr: np.ndarray, shape: tuple[int, int], n_in: int) -> None:
    """Types and the cheap structure checks every call makes (O(1)) of a CSR matrix of `shape`
    (n_rows, n_features) against a layer with n_in inputs; the caller has checked every index within
    n_features and indptr monotone once, when the matrix was made (inputs.CSRRows)."""
    if data.dtype != np.float32 or data.ndim != 1 or not data.flags.c_contiguous:
        raise ValueError(f"CSR data must be a contiguous 1-D float32 array, got {data.dtype} {data.shape}")
    if indices.dtype not in (np.int32, np.int64) or indices.shape != data.shape or not indices.flags.c_contiguous:
        raise ValueError(f"CSR indices must be contiguous int32/int64 of shape {data.shape}, got {indices.dtype} "
                         f"{indices.shape}")
    if indptr.dtype != np.int64 or indptr.ndim != 1 or indptr.shape[0] < 1 or not indptr.flags.c_contiguous:
        raise ValueError(f"CSR indptr must be a contiguous 1-D int64 array, got {indptr.dtype} {indptr.shape}")
    if indptr[0] != 0 or indptr[-1] != data.shape[0]:
        raise ValueError(f"CSR indptr must run from 0 to nnz ({data.shape[0]}), got {indptr[0]}..{indptr[-1]}")
    if indptr.shape[0] != shape[0] + 1:
        raise ValueError(f"CSR indptr must have {shape[0] + 1} entries, got {indptr.shape[0]}")
    if shape[1] != n_in:
        raise ValueError(f"CSR matrix has {shape[1]} features, the layer takes {n_in}")


def _rows(index: np.ndarray, n_rows: int) -> np.ndarray:
    index = np.ascontiguousarray(index, dtype=np.int64)
    if index.ndim != 1 or (index.size and (index.min() < 0 or index.max() >= n_rows)):
        raise ValueError(f"row index must be 1-D within [0, {n_rows})")
    return index


def forward(layer: SparseLayer, data: np.ndarray, indices: np.ndarray, indptr: np.ndarray, shape: tuple[int, int],
            index: np.ndarray, out: np.ndarray, *, slope: float | None = None, dropout: float = 0.0, drop_key: int = 0,
            grad_factor: np.ndarray | None = None, bias: np.ndarray | None = None,
            order: BatchOrder | None = None) -> np.ndarray:
    """out (n_out, batch) = W x + b for x = rows `index` of the CSR matrix of `shape` (n_rows, n_in),
    then optionally the activation and dropout exactly as kernels.forward (same dropout mask for the
    same key). `bias` (float32, n_out) replaces the layer's bias (inference with a centred input);
    `order`: the batch's BatchOrder if already made (weight_grad can reuse it)."""
    check_csr(data, indices, indptr, shape, layer.n_in)
    index = _rows(index, indptr.shape[0] - 1)
    options = forward_options(out, layer.n_out, index.shape[0], slope, dropout, drop_key, grad_factor)
    if bias is None:
        bias = layer.bias
    elif bias.dtype != np.float32 or bias.shape != (layer.n_out,):
        raise ValueError(f"bias must be float32 of shape ({layer.n_out},), got {bias.dtype} {bias.shape}")
    order = _order(order, indices, indptr, index, layer.n_in)
    blocks = max(1, min(numba.get_num_threads(), index.shape[0]))  # any count gives the same sums
    _forward_kernel(data, indices, order.where, order.sample, blocks, layer.in_ptr, layer.in_perm, layer.cols_in,
                    layer.values, bias, *options)
    return out


def _order(order: BatchOrder | None, indices, indptr, index, n_features: int) -> BatchOrder:
    if order is None:
        return BatchOrder(indices, indptr, index, n_features)
    if order.index.shape != index.shape or not np.array_equal(order.index, index):
        raise ValueError("order was made for other rows than `index`")
    return order


def weight_grad(layer: SparseLayer, data: np.ndarray, indices: np.ndarray, indptr: np.ndarray,
                shape: tuple[int, int], index: np.ndarray, delta: np.ndarray, grad: np.ndarray,
                order: BatchOrder | None = None) -> np.ndarray:
    """grad (nnz,) = sum over the batch of x[b, row] * delta[col, b] for x = rows `index` of the CSR
    matrix, on existing connections only (0 where the batch has no non-zero of the input)."""
    check_csr(data, indices, indptr, shape, layer.n_in)
    index = _rows(index, indptr.shape[0] - 1)
    _check_activations("delta", delta, layer.n_out, index.shape[0])
    if grad.dtype != np.float32 or grad.shape != (layer.nnz,) or not grad.flags.c_contiguous:
        raise ValueError(f"grad must be contiguous float32 of shape ({layer.nnz},), got {grad.dtype} {grad.shape}")
    order = _order(order, indices, indptr, index, layer.n_in)
    chunks = max(1, min(4 * numba.get_num_threads(), order.ptr.shape[0] - 1))  # any count gives the same sums
    _zero(grad)
    _weight_grad_kernel(data, indices, order.ptr, order.where, order.sample, chunks, delta, layer.in_ptr,
                        layer.in_perm, layer.cols_in, grad)
    return grad
