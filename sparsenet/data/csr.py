"""Samples held as a CSR matrix end to end: validated once, sliced by rows, scaled, never densified.

Memory is O(nnz): data float32, indices int32 (features < 2**31, as a layer's inputs), indptr int64 (n + 1).
The first layer reads batches of rows straight from these arrays (sparse/csr.py).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange


class CSRRows:
    """Samples (n_rows, n_features) in canonical CSR form (column indices sorted and unique per row).

    center: float32 (n_features,) or None: mean / std of a centring standardisation that the model's
    input would subtract; sparse/dense-agnostic inference folds it into the first layer's bias
    (W (x - m) = W x - W m), so the data itself stays sparse. Training on CSR never centres.
    """

    format = "csr"
    ndim = 2

    def __init__(self, data: np.ndarray, indices: np.ndarray, indptr: np.ndarray, shape: tuple[int, int],
                 center: np.ndarray | None = None):
        self.data, self.indices, self.indptr = data, indices, indptr
        self.shape = (int(shape[0]), int(shape[1]))
        self.center = center

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows) -> "CSRRows":
        """Rows by an integer array (a split's permutation): take(rows)."""
        return self.take(np.asarray(rows))

    @property
    def nnz(self) -> int:
        return int(self.data.shape[0])

    @property
    def nbytes(self) -> int:
        return self.data.nbytes + self.indices.nbytes + self.indptr.nbytes

    def take(self, rows: np.ndarray) -> "CSRRows":
        """Rows `rows` (int, in that order) as a new CSRRows: O(nnz of those rows)."""
        rows = np.ascontiguousarray(rows, dtype=np.int64)
        lengths = self.indptr[rows + 1] - self.indptr[rows]
        indptr = np.zeros(rows.shape[0] + 1, dtype=np.int64)
        np.cumsum(lengths, out=indptr[1:])
        data = np.empty(int(indptr[-1]), dtype=self.data.dtype)
        indices = np.empty(int(indptr[-1]), dtype=self.indices.dtype)
        _take_rows(self.data, self.indices, self.indptr, rows, indptr, data, indices)
        return CSRRows(data, indices, indptr, (rows.shape[0], self.shape[1]), self.center)

    def head(self, n: int) -> "CSRRows":
        """The first n rows (a copy, so the rest can be freed)."""
        if n >= self.shape[0]:
            return self
        end = int(self.indptr[n])
        return CSRRows(self.data[:end].copy(), self.indices[:end].copy(), self.indptr[:n + 1].copy(),
                       (n, self.shape[1]), self.center)

    def scaled(self, std: np.ndarray) -> "CSRRows":
        """Every value divided by its feature's std (float32, as the dense path divides): a new data array."""
        data = np.empty_like(self.data)
        _scale(self.data, self.indices, std, data)
        return CSRRows(data, self.indices, self.indptr, self.shape, self.center)

    def column_stats(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-feature mean and population std in float64 (zeros counted), O(nnz + n_features).

        Two passes, as the dense path (data.prepare._column_stats): E[x^2] - mean^2 left a constant
        column a std of ~1e-8 instead of 0, which standardisation then multiplied by ~1e7."""
        total = np.zeros(self.shape[1])
        counts = np.zeros(self.shape[1])
        _column_sums(self.data, self.indices, total, counts)
        n = self.shape[0]
        mean = total / n
        squares = (n - counts) * mean * mean  # the zeros' deviations
        _column_squares(self.data, self.indices, mean, squares)
        return mean, np.sqrt(squares / n)


@njit(parallel=True, cache=True)
def _take_rows(data, indices, indptr, rows, new_ptr, new_data, new_indices):
    for r in prange(rows.shape[0]):
        src = indptr[rows[r]]
        dst = new_ptr[r]
        for k in range(new_ptr[r + 1] - dst):
            new_data[dst + k] = data[src + k]
            new_indices[dst + k] = indices[src + k]


@njit(parallel=True, cache=True)
def _scale(data, indices, std, out):
    for k in prange(data.shape[0]):
        out[k] = data[k] / std[indices[k]]


@njit(cache=True)
def _column_sums(data, indices, total, counts):
    for k in range(data.shape[0]):
        total[indices[k]] += np.float64(data[k])
        counts[indices[k]] += 1.0


@njit(cache=True)
def _column_squares(data, indices, mean, squares):
    for k in range(data.shape[0]):
        d = np.float64(data[k]) - mean[indices[k]]
        squares[indices[k]] += d * d


def from_parts(data, indices, indptr, shape, where: str, error) -> CSRRows:
    """A validated canonical CSRRows from raw arrays (a file's or scipy's); anything wrong is a one-line
    `error`: shape two positive integers, indptr n_rows + 1 non-decreasing integers from 0 to nnz,
    indices integers within [0, n_features), data finite real numbers (float32 range)."""
    shape = np.asarray(shape)
    if shape.shape != (2,) or shape.dtype.kind not in "iu" or shape.min() < 1:
        raise error(f"{where}: the CSR shape must be two positive integers (samples, features), got {shape.tolist()}")
    n_rows, n_features = int(shape[0]), int(shape[1])
    if n_features > np.iinfo(np.int32).max:
        raise error(f"{where}: {n_features} features; a layer takes at most {np.iinfo(np.int32).max} inputs")
    data, indices, indptr = np.asarray(data), np.asarray(indices), np.asarray(indptr)
    if data.ndim != 1 or indices.ndim != 1 or indptr.ndim != 1:
        raise error(f"{where}: CSR data, indices and indptr must be 1-D, got shapes {data.shape}, {indices.shape}, "
                    f"{indptr.shape}")
    if data.dtype.kind not in "biuf":
        raise error(f"{where}: CSR data must hold real numbers, got dtype {data.dtype}")
    if indices.dtype.kind not in "iu" or indptr.dtype.kind not in "iu":
        raise error(f"{where}: CSR indices and indptr must be integers, got {indices.dtype} and {indptr.dtype}")
    if indices.shape != data.shape:
        raise error(f"{where}: CSR indices has {indices.shape[0]} entries but data has {data.shape[0]}")
    if indptr.shape[0] != n_rows + 1:
        raise error(f"{where}: CSR indptr must have samples + 1 = {n_rows + 1} entries, got {indptr.shape[0]}")
    indptr = indptr.astype(np.int64)
    if indptr[0] != 0 or indptr[-1] != data.shape[0] or (n_rows and np.any(indptr[1:] < indptr[:-1])):
        raise error(f"{where}: CSR indptr must rise from 0 to nnz ({data.shape[0]}) without decreasing")
    if indices.size and (int(indices.min()) < 0 or int(indices.max()) >= n_features):
        bad = int(indices.min()) if int(indices.min()) < 0 else int(indices.max())
        raise error(f"{where}: CSR column index {bad} is outside [0, {n_features})")
    with np.errstate(over="ignore", invalid="ignore"):
        data = np.ascontiguousarray(data, dtype=np.float32)
    rows = canonical(CSRRows(data, np.ascontiguousarray(indices, dtype=np.int32), np.ascontiguousarray(indptr),
                             (n_rows, n_features)))
    bad = ~np.isfinite(rows.data)  # after summing duplicates, which may overflow float32
    if bad.any():
        k = int(np.argmax(bad))
        row = int(np.searchsorted(rows.indptr, k, side="right") - 1)
        raise error(f"{where}: has a non-finite value ({rows.data[k]}) at row {row}, column {int(rows.indices[k])}; "
                    f"features must be finite float32 numbers")
    return rows


def canonical(rows: CSRRows) -> CSRRows:
    """Column indices sorted within each row and duplicates summed (scipy does it), else `rows` itself."""
    if _is_canonical(rows.indices, rows.indptr):
        return rows
    import scipy.sparse as sp

    m = sp.csr_array((rows.data, rows.indices, rows.indptr), shape=rows.shape)
    m.sum_duplicates()
    return CSRRows(np.ascontiguousarray(m.data, dtype=np.float32), np.ascontiguousarray(m.indices, dtype=rows.indices.dtype),
                   np.ascontiguousarray(m.indptr, dtype=np.int64), rows.shape, rows.center)


@njit(cache=True)
def _is_canonical(indices, indptr):
    for r in range(indptr.shape[0] - 1):
        for k in range(indptr[r] + 1, indptr[r + 1]):
            if indices[k] <= indices[k - 1]:
                return False
    return True
