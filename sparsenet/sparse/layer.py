"""SparseLayer: a weight matrix stored as its non-zeros only, plus the index orders the kernels need."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

INDEX_DTYPE = np.int32  # one neuron index; layers up to 2**31 - 1 neurons wide
KEY_DTYPE = np.int64  # one position (col * n_in + row); layers with more than 2**31 positions


@dataclass
class SparseLayer:
    """Connections of one layer, n_in -> n_out, held in output-major order (sorted by col, then row).

    rows/cols are int32 neuron indices, values float32 weights, bias float32 (n_out,).
    `in_perm` lists the same connections in input-major order; `out_ptr` / `in_ptr` delimit
    each output's / input's run in the respective order.
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

    def __post_init__(self) -> None:
        self.rows = np.ascontiguousarray(self.rows, dtype=INDEX_DTYPE)
        self.cols = np.ascontiguousarray(self.cols, dtype=INDEX_DTYPE)
        self.values = np.ascontiguousarray(self.values, dtype=np.float32)
        self.bias = np.ascontiguousarray(self.bias, dtype=np.float32)
        self.reindex()

    @property
    def nnz(self) -> int:
        return int(self.values.shape[0])

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
        """Rebuild out_ptr, in_ptr and in_perm from rows/cols (which must be output-major)."""
        self.out_ptr = _pointers(self.cols, self.n_out)
        self.in_ptr = _pointers(self.rows, self.n_in)
        # A stable sort by row of output-major data gives (row, col) order.
        self.in_perm = np.argsort(self.rows, kind="stable").astype(np.int64)

    @classmethod
    def from_keys(cls, n_in: int, n_out: int, keys: np.ndarray, values: np.ndarray,
                  bias: np.ndarray) -> "SparseLayer":
        """Build a layer from ascending unique keys (col * n_in + row) and their values."""
        cols, rows = np.divmod(keys, np.int64(n_in))
        return cls(n_in, n_out, rows, cols, values, bias)


def positions_to_keys(rows: np.ndarray, cols: np.ndarray, n_in: int) -> np.ndarray:
    """Flat int64 keys col * n_in + row; ascending keys mean output-major order."""
    return cols.astype(KEY_DTYPE) * np.int64(n_in) + rows.astype(KEY_DTYPE)


def _pointers(sorted_or_not: np.ndarray, n: int) -> np.ndarray:
    counts = np.bincount(sorted_or_not, minlength=n)
    ptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(counts, out=ptr[1:])
    return ptr
