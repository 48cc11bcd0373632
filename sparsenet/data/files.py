"""User data files: .npz, .h5/.hdf5 (arrays x_train, y_train, x_test, y_test or x, y) and .csv."""

from __future__ import annotations

import csv
import io
import zipfile
from pathlib import Path

import numpy as np

from sparsenet.data.prepare import (
    Dataset,
    check_features,
    check_lengths,
    encode_labels,
    encode_whole,
    finish,
    label_array,
    split,
)
from sparsenet.errors import DataError

SPLIT_KEYS = ("x_train", "y_train", "x_test", "y_test")
WHOLE_KEYS = ("x", "y")


def _existing_file(path: str | None, kind: str) -> Path:
    if path is None:
        raise DataError(f"data.path must name the {kind} file, got null")
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"{kind} file '{p}' not found")
    if not p.is_file():
        raise DataError(f"{kind} file '{p}' is not a regular file")
    return p


def _pick_keys(found, path: Path) -> tuple[str, ...]:
    if all(k in found for k in SPLIT_KEYS):
        return SPLIT_KEYS
    if all(k in found for k in WHOLE_KEYS):
        return WHOLE_KEYS
    raise DataError(f"'{path}' has arrays [{', '.join(sorted(found))}]; expected "
                    f"{', '.join(SPLIT_KEYS)} or {', '.join(WHOLE_KEYS)}")


def _from_arrays(cfg, name: str, arrays: dict, seed: int, where: str, row=None) -> Dataset:
    """Validate x/y arrays, encode labels (a whole file before its split), split if needed, then finish()."""
    if "x" in arrays:
        x = check_features(arrays["x"], "x", where)
        y = label_array(arrays["y"], "y", where, row)
        check_lengths(x, y, "x", "y", where)
        codes, classes = encode_whole(y, where)
        x_train, y_train, x_test, y_test = split(x, codes, cfg.test_fraction, seed, where)
        return finish(cfg, name, x_train, y_train, x_test, y_test, len(classes), check_finite=True,
                      classes=classes)
    x_train = check_features(arrays["x_train"], "x_train", where)
    x_test = check_features(arrays["x_test"], "x_test", where)
    y_train, y_test = arrays["y_train"], arrays["y_test"]
    check_lengths(x_train, y_train, "x_train", "y_train", where)
    check_lengths(x_test, y_test, "x_test", "y_test", where)
    y_train, y_test, classes = encode_labels(y_train, y_test, where)
    if x_train.shape[1] != x_test.shape[1]:
        raise DataError(f"{where}: x_test has {x_test.shape[1]} features but x_train has "
                        f"{x_train.shape[1]}")
    return finish(cfg, name, x_train, y_train, x_test, y_test, len(classes), check_finite=True, classes=classes)


def load_npz(cfg, seed: int) -> Dataset:
    path = _existing_file(cfg.path, "npz")
    where = f"'{path}'"
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as fh:
            zip_start = fh.read(4) == b"PK\x03\x04"
        if zip_start:
            raise DataError(f"'{path}' is a truncated or damaged .npz archive (it starts as a zip file but "
                            f"its directory is missing); write it again")
        raise DataError(f"'{path}' is not an .npz archive (not a zip file); save it with np.savez")
    try:
        with np.load(path, allow_pickle=False) as archive:
            keys = _pick_keys(archive.files, path)
            arrays = {}
            for k in keys:
                try:
                    arrays[k] = archive[k]
                except MemoryError:
                    raise
                except Exception as e:  # noqa: BLE001 - numpy's header parser raises tokenizer errors too
                    if isinstance(e, ValueError) and "pickle" in str(e):
                        raise DataError(f"'{path}': array '{k}' holds Python objects, which would "
                                        f"need pickle; store labels as numbers or fixed-width "
                                        f"strings") from None
                    detail = " ".join(str(e).split())[:120]
                    raise DataError(f"'{path}': array '{k}' is truncated or damaged "
                                    f"({type(e).__name__}: {detail}); write the file again") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"cannot read npz file '{path}': {' '.join(str(e).split())}") from e
    return _from_arrays(cfg, "npz", arrays, seed, where)


def load_hdf5(cfg, seed: int) -> Dataset:
    path = _existing_file(cfg.path, "hdf5")
    where = f"'{path}'"
    try:
        import h5py
    except ImportError as e:
        raise DataError("reading HDF5 files needs h5py: pip install h5py") from e
    try:
        with h5py.File(path, "r") as fh:
            found = [k for k in fh.keys() if isinstance(fh[k], h5py.Dataset)]
            keys = _pick_keys(found, path)
            arrays = {}
            for k in keys:
                ds = fh[k]
                arrays[k] = ds.asstr()[()] if h5py.check_string_dtype(ds.dtype) else ds[()]
    except OSError as e:
        raise DataError(f"cannot read HDF5 file '{path}': {' '.join(str(e).split())}") from e
    return _from_arrays(cfg, "hdf5", arrays, seed, where)


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def load_csv(cfg, seed: int) -> Dataset:
    """Numeric CSV with one label column; a first row with non-numeric features is a header."""
    path = _existing_file(cfg.path, "csv")
    where = f"'{path}'"
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            first_line = next((line for line in fh if line.strip()), "")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read csv file '{path}': {' '.join(str(e).split())}") from e
    if not first_line:
        raise DataError(f"csv file '{path}' is empty")
    delimiter = max(",;\t", key=first_line.count) if any(c in first_line for c in ",;\t") else ","
    first = next(csv.reader(io.StringIO(first_line), delimiter=delimiter))
    n_cols = len(first)
    if n_cols < 2:
        raise DataError(f"csv file '{path}' has {n_cols} column; need features plus a label column")
    label = cfg.label_column + n_cols if cfg.label_column < 0 else cfg.label_column
    if not 0 <= label < n_cols:
        raise DataError(f"data.label_column {cfg.label_column} is out of range for csv file "
                        f"'{path}' with {n_cols} columns (allowed {-n_cols}..{n_cols - 1})")
    features = [i for i in range(n_cols) if i != label]
    header = any(not _is_number(first[i]) for i in features)
    options = dict(delimiter=delimiter, skiprows=int(header), comments=None, quotechar='"',
                   encoding="utf-8-sig")
    try:
        x = np.loadtxt(path, dtype=np.float32, usecols=features, ndmin=2, **options)
        y = np.loadtxt(path, dtype=str, usecols=label, ndmin=1, **options)
    except (ValueError, OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read csv file '{path}': {' '.join(str(e).split())}") from e
    return _from_arrays(cfg, "csv", {"x": x, "y": y}, seed, where, lambda i: _csv_line(path, int(header), i))


def _csv_line(path: Path, skip: int, index: int) -> str:
    """Where data row `index` is in the csv file (loadtxt skips the header and blank lines)."""
    seen = -1
    with open(path, encoding="utf-8-sig", newline="") as fh:
        for number, line in enumerate(fh, start=1):
            if number <= skip or not line.strip():
                continue
            seen += 1
            if seen == index:
                return f"line {number}"
    return f"data row {index + 1}"
