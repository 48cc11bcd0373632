"""New samples to score (sparsenet predict): raw features and, when the file has them, labels.

.npz: array `x` (else `x_test`), labels `y` (else `y_test`) if present; an x may be CSR (x_data,
x_indices, x_indptr, x_shape: docs/data.md); or a scipy.sparse.save_npz matrix. .h5/.hdf5: datasets named the same. .csv: numeric columns; with one column more than the
model has inputs, the config's data.label_column holds labels. Nothing is standardised here: the
model applies the preprocessing stored in its checkpoint.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from sparsenet.data.files import check_npz_sizes, csr_names
from sparsenet.data.prepare import label_array
from sparsenet.errors import DataError


def read_features(path: str, n_features: int, label_column: int = -1):
    """(x: array (n, n_features), scipy CSR or CSRRows, labels: 1-D array or None) from a data file."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"data file '{p}' not found" if not p.exists() else f"data file '{p}' is not a regular file")
    suffix = p.suffix.lower()
    if suffix == ".npz":
        return _read_npz(p)
    if suffix in (".h5", ".hdf5"):
        return _read_hdf5(p, n_features)
    if suffix == ".csv":
        return _read_csv(p, n_features, label_column)
    raise DataError(f"data file '{p}': unknown kind '{suffix}'; use .npz, .h5/.hdf5 or .csv")


def _pick(found, path: Path) -> tuple[str, str]:
    for x_key, y_key in (("x", "y"), ("x_test", "y_test")):
        if x_key in found or all(n in found for n in csr_names(x_key)):
            return x_key, y_key
    raise DataError(f"'{path}' has arrays [{', '.join(sorted(found))}]; expected x (and optionally y) or x_test "
                    f"(dense, or CSR as <x>_data, <x>_indices, <x>_indptr, <x>_shape)")


def _x(read, found, x_key: str, path: Path):
    """The dense array x_key, or its CSR parts as a validated CSRRows."""
    from sparsenet.data.csr import from_parts

    if x_key in found:
        return read(x_key)
    return from_parts(*(read(n) for n in csr_names(x_key)), f"'{path}': {x_key}", DataError)


def _read_npz(path: Path):
    if not zipfile.is_zipfile(path):
        raise DataError(f"'{path}' is not an .npz archive (not a zip file); save it with np.savez")
    try:
        with np.load(path, allow_pickle=False) as archive:
            scipy_keys = ("data", "indices", "indptr", "shape", "format")
            if set(scipy_keys) <= set(archive.files):
                check_npz_sizes(archive.zip, scipy_keys, path)
                return _scipy_matrix(path, archive["format"]), None
            x_key, y_key = _pick(archive.files, path)
            keys = (x_key,) if x_key in archive.files else csr_names(x_key)
            check_npz_sizes(archive.zip, (*keys, *((y_key,) if y_key in archive.files else ())), path)
            x = _x(lambda k: archive[k], archive.files, x_key, path)
            y = archive[y_key] if y_key in archive.files else None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"cannot read npz file '{path}': {' '.join(str(e).split())}") from None
    return x, y


def _scipy_matrix(path: Path, fmt: np.ndarray):
    """A scipy.sparse.save_npz matrix (CSR, CSC or BSR) as scipy CSR, its index arrays checked first: scipy
    trusts them, and its conversions write out of bounds (a segmentation fault) for a column index too large."""
    import scipy.sparse as sp

    from sparsenet.inputs import check_sparse_indices
    from sparsenet.memory import check_available

    name = fmt.item() if fmt.shape == () and fmt.dtype.kind in "US" else None
    name = name.decode(errors="replace") if isinstance(name, bytes) else name
    if name not in ("csr", "csc", "bsr"):
        raise DataError(f"'{path}': a scipy.sparse matrix of format {str(fmt.tolist())[:40]!r}; save a CSR or CSC "
                        f"matrix (scipy.sparse.save_npz)")
    try:
        m = sp.load_npz(path)
        check_sparse_indices(m, f"'{path}'", DataError)
        if m.dtype.kind not in "biuf":
            raise TypeError(f"its values are {m.dtype}, not real numbers")
    except (TypeError, ValueError, KeyError) as e:
        raise DataError(f"'{path}': not a valid scipy.sparse {name} matrix: {' '.join(str(e).split())[:120]}") from None
    # CSR of a declared shape: one pointer per row
    check_available(8 * (m.shape[0] + 1) + 12 * m.nnz, f"'{path}': a {m.shape[0]:,} x {m.shape[1]:,} matrix needs",
                    " as CSR")
    return m.tocsr()


def _read_hdf5(path: Path, n_features: int):
    """x (dense or CSR parts) and y if present, through the one safe HDF5 reader (files.read_hdf5)."""
    from sparsenet.data.files import read_hdf5

    candidates = tuple(k for x_key, y_key in (("x", "y"), ("x_test", "y_test")) for k in (x_key, y_key, *csr_names(x_key)))
    chosen = {}

    def pick(found):
        chosen["x"], chosen["y"] = _pick(found, path)
        xs = (chosen["x"],) if chosen["x"] in found else csr_names(chosen["x"])
        return (*xs, *((chosen["y"],) if chosen["y"] in found else ()))

    def check(datasets):
        x = datasets.get(chosen["x"])
        if x is not None and (len(x.shape) != 2 or x.shape[1] != n_features):
            raise DataError(f"'{path}': '{chosen['x']}' has shape {x.shape}; expected a 2-D array (samples, "
                            f"{n_features} features)")
        y = datasets.get(chosen["y"])
        if y is not None and not (len(y.shape) == 1 or (len(y.shape) == 2 and y.shape[1] == 1)):
            raise DataError(f"'{path}': '{chosen['y']}' has shape {y.shape}; expected one label per sample (1-D)")

    arrays = read_hdf5(path, candidates, pick, check)
    x = _x(arrays.__getitem__, arrays, chosen["x"], path)
    return x, arrays.get(chosen["y"])


def _read_csv(path: Path, n_features: int, label_column: int):
    from sparsenet.data.files import read_csv, sniff_csv

    delimiter, first = sniff_csv(path)
    n_cols = len(first)
    if n_cols not in (n_features, n_features + 1):
        raise DataError(f"csv file '{path}' has {n_cols} columns; the model takes {n_features} features "
                        f"(give {n_features} feature columns, or {n_features + 1} with a label column)")
    label = None
    if n_cols == n_features + 1:
        label = label_column + n_cols if label_column < 0 else label_column
        if not 0 <= label < n_cols:
            raise DataError(f"data.label_column {label_column} is out of range for csv file '{path}' "
                            f"with {n_cols} columns")
    x, y, _ = read_csv(path, delimiter, first, label)
    return x, None if y is None else label_array(y, "labels", f"'{path}'")
