"""SparseLayer: a weight matrix stored as its non-zeros only, plus the index orders the kernels need."""

from __future__ import annotations

from dataclasses import dataclass, field

import numba
import numpy as np
from numba import njit, prange

INDEX_DTYPE = np.int32  # one neuron index; layers up to 2**31 - 1 neurons wide
KEY_DTYPE = np.int64  # one position (col * n_in + row); layers with more than 2**31 positions


@dataclass
class SparseLayer:
    """Connections of one layer, n_in -> n_out, held in output-major order (sorted by col, then row).

    rows/cols are int32 neuron indices, values float32 weights, bias float32 (n_out,).
    `in_perm` lists the same connections in input-major order (index into rows/cols/values;
    int32 below 2**31 connections, else int64, see `perm_dtype`), `cols_in` = cols[in_perm]
    (int32, so the backward kernel reads columns without a double indirection); `out_ptr` /
    `in_ptr` (int64, n_out + 1 / n_in + 1) delimit each output's / input's run in either order.
    Bytes per connection: rows 4 + cols 4 + values 4 + cols_in 4 + in_perm 4 (8 above 2**31).
    """

    n_in: int
    n_out: int
    rows: np.ndarray
    cols: np.ndarray
    values: np.ndarray
    bias: np.ndarray
    out_ptr: np.ndarray = field(init=False, repr=False)
    in_ptr: np.ndarray = field(init=False, repr=False)
    in_perm: np.ndarray = field(init=False, repr=False)
    cols_in: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.rows = np.ascontiguousarray(self.rows, dtype=INDEX_DTYPE)
        self.cols = np.ascontiguousarray(self.cols, dtype=INDEX_DTYPE)
        self.values = np.ascontiguousarray(self.values, dtype=np.float32)
        self.bias = np.ascontiguousarray(self.bias, dtype=np.float32)
        self.reindex()

    @property
    def nnz(self) -> int:
        return int(self.values.shape[0])

    @staticmethod
    def planned_bytes(n_in: int, n_out: int, nnz: int) -> int:
        """Bytes of a layer's arrays (as __post_init__ allocates them), without building one."""
        per_connection = 4 * np.dtype(INDEX_DTYPE).itemsize + np.dtype(np.float32).itemsize
        per_connection += np.dtype(perm_dtype(nnz)).itemsize - np.dtype(INDEX_DTYPE).itemsize  # in_perm
        pointers = (n_in + 1 + n_out + 1) * np.dtype(np.int64).itemsize
        return nnz * per_connection + n_out * np.dtype(np.float32).itemsize + pointers

    @property
    def n_positions(self) -> int:
        return int(self.n_in) * int(self.n_out)

    @property
    def density(self) -> float:
        return self.nnz / self.n_positions

    def keys(self) -> np.ndarray:
        """Flat position of every connection, col * n_in + row, int64, ascending."""
        return positions_to_keys(self.rows, self.cols, self.n_in)

    def reindex(self) -> None:
        """Rebuild out_ptr, in_ptr, in_perm and cols_in from rows/cols (which must be output-major)."""
        self.in_perm = self.cols_in = None  # free the old ones before building the new
        self.out_ptr = _pointers(self.cols, self.n_out)
        self.in_ptr = _pointers(self.rows, self.n_in)
        self.in_perm, self.cols_in = input_major(self.rows, self.cols, self.in_ptr)

    @classmethod
    def from_keys(cls, n_in: int, n_out: int, keys: np.ndarray, values: np.ndarray,
                  bias: np.ndarray) -> "SparseLayer":
        """Build a layer from ascending unique keys (col * n_in + row) and their values."""
        rows, cols = split_keys(keys, n_in)
        return cls(n_in, n_out, rows, cols, values, bias)


def positions_to_keys(rows: np.ndarray, cols: np.ndarray, n_in: int) -> np.ndarray:
    """Flat int64 keys col * n_in + row; ascending keys mean output-major order."""
    return cols.astype(KEY_DTYPE) * np.int64(n_in) + rows.astype(KEY_DTYPE)


def split_keys(keys: np.ndarray, n_in: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) as int32 from keys col * n_in + row, without int64 temporaries."""
    rows = np.empty(keys.shape[0], dtype=INDEX_DTYPE)
    cols = np.empty(keys.shape[0], dtype=INDEX_DTYPE)
    _split_keys(np.ascontiguousarray(keys, dtype=KEY_DTYPE), np.int64(n_in), rows, cols)
    return rows, cols


@njit(parallel=True, cache=True)
def _split_keys(keys, n_in, rows, cols):
    for k in prange(keys.shape[0]):
        c = keys[k] // n_in
        rows[k] = keys[k] - c * n_in
        cols[k] = c


def perm_dtype(nnz: int) -> type:
    """dtype of in_perm for a layer of `nnz` connections: int32 while every index fits, else int64."""
    return np.int32 if nnz < 2**31 else np.int64


def input_major(rows: np.ndarray, cols: np.ndarray, in_ptr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(in_perm, cols_in): a stable counting sort by row of output-major connections, O(nnz).

    Stable, so connections of one input stay in ascending col order: input-major (row, col) order,
    exactly what np.argsort(rows, kind="stable") gives. Parallel over contiguous chunks.
    """
    nnz = rows.shape[0]
    perm = np.empty(nnz, dtype=perm_dtype(nnz))
    cols_in = np.empty(nnz, dtype=INDEX_DTYPE)
    if nnz == 0:
        return perm, cols_in
    chunks = max(1, min(numba.get_num_threads(), nnz // 65536))
    _counting_sort(rows, cols, in_ptr, chunks, perm, cols_in)
    return perm, cols_in


@njit(parallel=True, cache=True)
def _counting_sort(rows, cols, in_ptr, chunks, perm, cols_in):
    nnz = rows.shape[0]
    n_in = in_ptr.shape[0] - 1
    bounds = np.empty(chunks + 1, dtype=np.int64)
    for c in range(chunks + 1):
        bounds[c] = nnz * c // chunks
    # next[c, r]: where chunk c writes its next connection of row r
    nxt = np.zeros((chunks, n_in), dtype=perm.dtype)
    for c in prange(chunks):
        counts = nxt[c]
        for k in range(bounds[c], bounds[c + 1]):
            counts[rows[k]] += 1
    for r in prange(n_in):
        base = in_ptr[r]
        for c in range(chunks):
            n = nxt[c, r]
            nxt[c, r] = base
            base += n
    for c in prange(chunks):
        pos = nxt[c]
        for k in range(bounds[c], bounds[c + 1]):
            r = rows[k]
            p = pos[r]
            perm[p] = k
            cols_in[p] = cols[k]
            pos[r] = p + 1


def _pointers(sorted_or_not: np.ndarray, n: int) -> np.ndarray:
    counts = np.bincount(sorted_or_not, minlength=n)
    ptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(counts, out=ptr[1:])
    return ptr
