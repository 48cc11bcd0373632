"""Samples whose features are small integers (pixels: 0..255), stored as uint8 and turned into the
model's float32 input one batch at a time: 1 byte per feature instead of 4.

`ByteRows.gather(index, out)` writes exactly the floats the float32 path stores: a table holds, for
each feature and byte value, the result of the same IEEE float32 operations (float32(v) / divisor,
then - mean, / std), computed once by numpy; a batch is then a table lookup per feature.
"""

from __future__ import annotations

import numpy as np

from sparsenet.sparse import kernels

_BLOCK_ELEMENTS = 1 << 20  # features per block when converting or scanning (a few MB of float32)


def small_integers(x: np.ndarray) -> bool:
    """True if every value of x is a whole number in 0..255 (stored exactly as uint8); scans float x in blocks.

    Floats count only without -0.0 (a uint8 cannot keep its sign) and without NaN or infinity."""
    if x.size == 0:
        return False
    if x.dtype.kind == "b":
        return True
    if x.dtype.kind in "iu":
        return bool(x.min() >= 0 and x.max() <= 255)
    if x.dtype.kind != "f":
        return False
    step = max(1, _BLOCK_ELEMENTS // max(1, x.shape[1]))
    for start in range(0, x.shape[0], step):
        b = x[start:start + step]
        if not np.all((b >= 0) & (b <= 255) & (b == np.floor(b)) & ~np.signbit(b)):
            return False
    return True


def feature_bytes(dtype) -> int:
    """Bytes per feature the loaded rows hold for x stored as `dtype`: 1 for uint8 and bool (always kept as
    ByteRows), else 4 (float32; whole numbers 0..255 in a wider dtype are found only when read: an upper bound)."""
    return 1 if np.dtype(dtype) in (np.dtype(np.uint8), np.dtype(np.bool_)) else 4


class ByteRows:
    """n samples of n_features small-integer features as uint8 (n, n_features), read as float32
    float32(v) / divisor, standardised with mean/std (float32 (n_features,)) when given.

    Indexing by rows (slice, int array) gives another ByteRows (a slice is a view); np.asarray(rows)
    gives the whole float32 array (for tests and scripts; training and evaluation gather batches).
    """

    def __init__(self, raw: np.ndarray, divisor: float = 1.0, mean: np.ndarray | None = None,
                 std: np.ndarray | None = None, table: np.ndarray | None = None):
        """table: the lookup table of these divisor/mean/std, when another ByteRows already made it."""
        if raw.dtype != np.uint8 or raw.ndim != 2:
            raise ValueError(f"raw must be a 2-D uint8 array, got {raw.dtype} {raw.shape}")
        if (mean is None) != (std is None):
            raise ValueError("mean and std go together")
        for a in (mean, std):
            if a is not None and (a.dtype != np.float32 or a.shape != (raw.shape[1],)):
                raise ValueError(f"mean and std must be float32 of shape ({raw.shape[1]},), got {a.dtype} {a.shape}")
        self.raw = raw
        self.divisor = np.float32(divisor)
        self.mean, self.std = mean, std
        self.table = self._table() if table is None else table

    def _table(self) -> np.ndarray:
        """(n_features, 256) float32 with mean/std, else (1, 256): what each byte value reads as."""
        t = self._scaled(np.arange(256, dtype=np.uint8)[None, :])
        if self.mean is not None:
            t = t - self.mean[:, None]
            t /= self.std[:, None]
        return np.ascontiguousarray(t)

    def _scaled(self, raw: np.ndarray) -> np.ndarray:
        x = raw.astype(np.float32)
        if self.divisor != 1:
            x /= self.divisor
        return x

    @property
    def shape(self) -> tuple[int, int]:
        return self.raw.shape

    @property
    def ndim(self) -> int:
        return 2

    @property
    def dtype(self) -> np.dtype:
        """The dtype of what the rows read as (the model's input), not of their storage."""
        return np.dtype(np.float32)

    @property
    def nbytes(self) -> int:
        """Bytes held: the samples (1 per feature) and the lookup table (1 KiB per feature when standardised)."""
        return self.raw.nbytes + self.table.nbytes

    def __len__(self) -> int:
        return self.raw.shape[0]

    def standardized(self, mean: np.ndarray | None, std: np.ndarray | None) -> "ByteRows":
        return ByteRows(self.raw, self.divisor, mean, std)

    def gather(self, index: np.ndarray, out: np.ndarray) -> np.ndarray:
        """out (n_features, batch) float32 = rows `index` as the model reads them, transposed."""
        return kernels.gather_bytes(self.raw, index, self.table, out)

    def __getitem__(self, key):
        if isinstance(key, tuple):  # (rows, features...): convert only the rows asked for
            rows, rest = key[0], key[1:]
            if isinstance(rows, (int, np.integer)):
                return self[rows][rest]
            return self[rows].to_float32()[(slice(None), *rest)]
        if isinstance(key, (int, np.integer)):
            n = len(self)
            if not -n <= key < n:
                raise IndexError(f"row {key} out of range for {n} rows")
            k = int(key) % n
            return ByteRows(self.raw[k:k + 1], self.divisor, self.mean, self.std, self.table).to_float32()[0]
        raw = self.raw[key]
        if raw.ndim != 2:
            raise IndexError(f"ByteRows takes a slice or an array of row indices, got {key!r}")
        return ByteRows(raw, self.divisor, self.mean, self.std, self.table)

    def to_float32(self) -> np.ndarray:
        """All rows as a float32 (n, n_features) array: the operations data.prepare applies to float32 data."""
        x = self._scaled(self.raw)
        if self.mean is not None:
            x -= self.mean
            x /= self.std
        return x

    def __array__(self, dtype=None, copy=None):
        x = self.to_float32()
        return x if dtype is None else x.astype(dtype, copy=False)

    def float_blocks(self):
        """(start, float32 block before standardisation) over the rows, a few MB at a time."""
        step = max(1, _BLOCK_ELEMENTS // max(1, self.raw.shape[1]))
        for start in range(0, self.raw.shape[0], step):
            yield start, self._scaled(self.raw[start:start + step])
