"""The library's input boundary: raw samples -> float32 model input, labels <-> output indices.

Everything a caller hands to sparsenet.load(...).predict, sparsenet.train or the estimators is
checked here (shape, dtype, finiteness, feature count, labels against the model's classes), so no
kernel ever sees an index it could read out of bounds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .data.prepare import _check_finite, _column_stats
from .data.csr import CSRRows, from_parts
from .errors import DataError, InputError


@dataclass
class Preprocessing:
    """What turns a raw sample into the model's input, and an output index into a label.

    mean, std: float32 (n_features,) training-set statistics (std has no zeros), or None when the
    features are used as given. classes: the label of each output neuron (int64 or str array), or
    None for 0..n_out-1.
    """

    mean: np.ndarray | None = None
    std: np.ndarray | None = None
    classes: np.ndarray | None = None

    @classmethod
    def fit(cls, x: "np.ndarray | CSRRows", standardize: bool, classes=None) -> "Preprocessing":
        """Statistics of float32 samples x when `standardize`, else none. CSR samples get mean 0 and
        their features' std (scale only, like scikit-learn's StandardScaler(with_mean=False))."""
        mean = std = None
        if standardize:
            mean, std = x.column_stats() if isinstance(x, CSRRows) else _column_stats(x)
            std[std == 0] = 1.0
            if isinstance(x, CSRRows):  # scale only: centring would make every sample dense
                mean[:] = 0.0
            mean, std = mean.astype(np.float32), std.astype(np.float32)
        return cls(mean, std, None if classes is None else np.asarray(classes))

    def check(self, n_features: int, n_out: int, where: str) -> None:
        """Sizes and values against a model with n_features inputs and n_out outputs."""
        if (self.mean is None) != (self.std is None):
            raise InputError(f"{where}: standardisation needs both mean and std, got only one")
        if self.mean is not None:
            for name, a in (("mean", self.mean), ("std", self.std)):
                if a.shape != (n_features,) or not np.all(np.isfinite(a)):
                    raise InputError(f"{where}: {name} must be {n_features} finite numbers (one per input), "
                                    f"got shape {a.shape}")
            if not np.all(self.std > 0):
                raise InputError(f"{where}: std must be > 0 for every feature")
        if self.classes is not None:
            c = self.classes
            if c.ndim != 1 or c.shape[0] != n_out or c.dtype.kind not in "iuU":
                raise InputError(f"{where}: classes must be {n_out} integers or strings (one per output), "
                                f"got {c.dtype} {c.shape}")
            if np.unique(c).shape[0] != n_out:
                raise InputError(f"{where}: classes must be distinct, got {list(c)}")

    def classes_or_range(self, n_out: int) -> np.ndarray:
        return np.arange(n_out, dtype=np.int64) if self.classes is None else self.classes


def standardize_csr(rows: CSRRows, mean: np.ndarray | None, std: np.ndarray | None) -> CSRRows:
    """CSR samples scaled by std (a new data array) without densifying; a non-zero mean (a model
    standardised on dense data) is kept as rows.center for inference to fold into the first layer."""
    if mean is None:
        return rows
    scaled = rows.scaled(std)
    if np.any(mean != 0):
        scaled.center = (mean / std).astype(np.float32)
    return scaled


def check_sparse_indices(x, where: str, error=InputError) -> None:
    """A scipy CSR/CSC/BSR matrix's pointers and indices within its shape, read only. scipy trusts them: its
    conversions (tocsr, csr_array(...)) write out of bounds for a bad one (a segmentation fault, or silent damage)."""
    fmt = getattr(x, "format", None)
    if fmt not in ("csr", "csc", "bsr"):
        return
    rows, cols = x.shape
    if fmt == "bsr":
        r, c = x.blocksize
        rows, cols = rows // r, cols // c
    major, minor = (rows, cols) if fmt in ("csr", "bsr") else (cols, rows)
    indptr, indices = np.asarray(x.indptr), np.asarray(x.indices)
    end = int(indptr[-1]) if indptr.ndim == 1 and indptr.shape[0] else -1
    used = indices[:max(end, 0)]
    if not (indptr.ndim == 1 and indices.ndim == 1 and indptr.shape[0] == major + 1 and indptr[0] == 0
            and 0 <= end <= indices.shape[0] and not np.any(indptr[1:] < indptr[:-1])
            and (used.size == 0 or (int(used.min()) >= 0 and int(used.max()) < minor))):
        raise error(f"{where}: a scipy.sparse {fmt} matrix whose index pointers or indices do not fit its shape "
                    f"{x.shape}; it is damaged")


def as_samples(x, n_features: int | None = None, pre: Preprocessing | None = None,
               where: str = "X") -> "np.ndarray | CSRRows":
    """Raw samples (n, n_features) -> a standardised float32 C-contiguous copy, or CSRRows for scipy.sparse.

    Accepts numpy arrays of any real dtype, anything np.asarray takes (pandas DataFrames, lists)
    and scipy.sparse matrices/arrays (kept sparse: the first layer reads CSR batches). Refuses non-2-D, empty,
    non-numeric or non-finite input (float64 beyond float32's range counts as infinite), and a
    feature count other than n_features.
    """
    import scipy.sparse as sp

    if isinstance(x, CSRRows):  # validated when made (data files)
        rows = x
    elif sp.issparse(x):
        check_sparse_indices(x, where)
        csr = sp.csr_array(x)
        if csr.dtype.kind not in "biuf":
            raise InputError(f"{where} must hold real numbers, got sparse dtype {csr.dtype}")
        if len(csr.shape) != 2 or csr.shape[0] == 0 or csr.shape[1] == 0:
            raise InputError(f"{where} must be a non-empty 2-D matrix (samples, features), got shape {csr.shape}")
        rows = from_parts(csr.data, csr.indices, csr.indptr, csr.shape, where, InputError)
    else:
        try:
            arr = np.asarray(x)
        except (TypeError, ValueError) as e:
            raise InputError(f"{where} must be a 2-D array of real numbers: {e}") from None
        if arr.dtype.kind not in "biuf":
            raise InputError(f"{where} must hold real numbers (any int, float or bool dtype), got dtype {arr.dtype}")
        if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
            raise InputError(f"{where} must be a non-empty 2-D array (samples, features), got shape {arr.shape}")
        with np.errstate(over="ignore", invalid="ignore"):
            rows = np.array(arr, dtype=np.float32, order="C", copy=True)
        try:
            _check_finite(rows, where, "input")
        except DataError as e:
            raise InputError(str(e)) from None
    if n_features is not None and rows.shape[1] != n_features:
        raise InputError(f"{where} has {rows.shape[1]} features per sample, but the model takes {n_features}")
    if pre is not None and pre.mean is not None:
        if isinstance(rows, CSRRows):
            return standardize_csr(rows, pre.mean, pre.std)
        rows -= pre.mean  # the same float32 operations as data.prepare.standardize
        rows /= pre.std
    return rows


def label_indices(y, classes: np.ndarray, where: str = "y") -> np.ndarray:
    """Labels -> int64 output indices; a label that is not one of `classes` is a DataError."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y.ravel()
    if y.ndim != 1:
        raise InputError(f"{where} must be 1-D (one label per sample), got shape {y.shape}")
    order = np.argsort(classes, kind="stable")
    known = classes[order]
    try:
        pos = np.clip(np.searchsorted(known, y), 0, len(known) - 1)
        found = known[pos] == y
    except (TypeError, ValueError):  # labels of another kind (strings vs numbers): none is known
        pos, found = np.zeros(len(y), dtype=np.int64), np.zeros(len(y), dtype=bool)
    found = np.asarray(found, dtype=bool)
    if found.shape != y.shape:
        found = np.zeros(len(y), dtype=bool)
    if not found.all():
        i = int(np.argmin(found))
        shown = ", ".join(map(str, classes[:20])) + (", ..." if len(classes) > 20 else "")
        raise InputError(f"{where} holds a label outside the model's classes: {y[i].item()!r} at sample {i}; "
                        f"the model knows {shown}")
    return np.ascontiguousarray(order[pos], dtype=np.int64)
