"""User data files: .npz, .h5/.hdf5 (arrays x_train, y_train, x_test, y_test or x, y; each x dense or
CSR as <x>_data, <x>_indices, <x>_indptr, <x>_shape, docs/data.md) and .csv."""

from __future__ import annotations

import csv
import io
import math
import warnings
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
CSR_PARTS = ("data", "indices", "indptr", "shape")  # a CSR x is these four arrays, named <x>_<part>


def csr_names(x: str) -> tuple[str, ...]:
    return tuple(f"{x}_{part}" for part in CSR_PARTS)


def _expand_csr(keys: tuple[str, ...], found) -> tuple[str, ...]:
    """keys with every x that the file stores as CSR parts (and not dense) replaced by its parts."""
    out = []
    for k in keys:
        if k.startswith("x") and k not in found and all(n in found for n in csr_names(k)):
            out.extend(csr_names(k))
        else:
            out.append(k)
    return tuple(out)


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
    """The arrays to read: the split or whole layout, each x dense or as its CSR parts."""
    for layout in (SPLIT_KEYS, WHOLE_KEYS):
        keys = _expand_csr(layout, found)
        if all(k in found for k in keys):
            return keys
    raise DataError(f"'{path}' has arrays [{', '.join(sorted(found))}]; expected "
                    f"{', '.join(SPLIT_KEYS)} or {', '.join(WHOLE_KEYS)} (an x may be CSR: "
                    f"<x>_data, <x>_indices, <x>_indptr, <x>_shape)")


def _assemble_csr(arrays: dict, where: str) -> None:
    """In place: the CSR parts of each x replaced by one validated CSRRows under the x's name."""
    from sparsenet.data.csr import from_parts

    for x in ("x_train", "x_test", "x"):
        names = csr_names(x)
        if names[0] in arrays:
            parts = [arrays.pop(n) for n in names]
            arrays[x] = from_parts(*parts, f"{where}: {x}", DataError)


def _from_arrays(cfg, name: str, arrays: dict, seed: int, where: str, row=None) -> Dataset:
    """Validate x/y arrays, encode labels (a whole file before its split), split if needed, then finish(); takes the arrays out of `arrays`."""
    _assemble_csr(arrays, where)
    if "x" in arrays:
        x = check_features(arrays.pop("x"), "x", where)
        y = label_array(arrays.pop("y"), "y", where, row)
        check_lengths(x, y, "x", "y", where)
        codes, classes = encode_whole(y, where)
        x_train, y_train, x_test, y_test = split(x, codes, cfg.test_fraction, seed, where)
        del x, y, codes  # the split copied both parts: x goes before they are converted (memory.DataShape.load_peak)
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
            check_npz_sizes(archive.zip, keys, path)
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


def check_npz_sizes(archive: zipfile.ZipFile, keys, path: Path) -> None:
    """Each array's header (shape, dtype) against its member's size, and their sum against the memory
    available, before numpy allocates what the headers declare."""
    from sparsenet.memory import check_available

    total = 0
    members = set(archive.namelist())
    for k in keys:
        info = archive.getinfo(f"{k}.npy" if f"{k}.npy" in members else k)  # np.load also names a member without .npy
        try:
            with archive.open(info) as fh:
                major, _ = np.lib.format.read_magic(fh)
                read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
                shape, _, dtype = read(fh)
                header = fh.tell()
        except MemoryError:
            raise
        except Exception as e:  # noqa: BLE001 - numpy's header parser raises tokenizer errors too
            detail = " ".join(str(e).split())[:120]
            raise DataError(f"'{path}': array '{k}' is truncated or damaged ({type(e).__name__}: {detail}); "
                            f"write the file again") from None
        if dtype.hasobject:
            continue  # refused when read (would need pickle)
        declared, stored = math.prod(shape) * dtype.itemsize, info.file_size - header
        if declared != stored:
            raise DataError(f"'{path}': array '{k}' is truncated or damaged (its header declares shape {shape} of "
                            f"{dtype}, {declared} bytes, its archive member holds {stored}); write the file again")
        total += declared
    check_available(total, f"'{path}': its arrays {', '.join(keys)} declare")


def load_hdf5(cfg, seed: int) -> Dataset:
    """x_train/y_train/x_test/y_test or x/y datasets, read only if stored in the file itself (h5safe)."""
    path = _existing_file(cfg.path, "hdf5")
    candidates = (*SPLIT_KEYS, *WHOLE_KEYS, *(n for x in ("x_train", "x_test", "x") for n in csr_names(x)))
    arrays = read_hdf5(path, candidates, lambda found: _pick_keys(found, path))
    return _from_arrays(cfg, "hdf5", arrays, seed, f"'{path}'")


def read_hdf5(path: Path, candidates, pick, check=None) -> dict:
    """{name: array} for the datasets pick(found names among candidates) chooses, read through h5safe.

    Hard links and data stored in the file only; declared sizes checked against the file and against
    the memory available, numbers (or strings, for labels) only, and check(datasets) (shapes), all
    before anything is read. Every refusal is a one-line DataError.
    """
    where = f"'{path}'"
    try:
        import h5py
    except ImportError as e:
        raise DataError("reading HDF5 files needs h5py: pip install h5py") from e
    from sparsenet import h5safe
    from sparsenet.memory import check_available

    fh = h5safe.open_file(path, DataError, f"cannot read HDF5 file '{path}'")
    try:
        with fh:
            size = h5safe.file_size(path)
            found = [k for k in candidates if h5safe.hard_object(fh, k, where, DataError) is not None]
            keys = pick(found)
            datasets = {k: h5safe.dataset(fh, k, where, DataError, size) for k in keys}
            for k, ds in datasets.items():
                if ds.dtype.kind not in "biuf" and not h5py.check_string_dtype(ds.dtype):
                    raise DataError(f"{where}: '{k}' holds {ds.dtype}, expected numbers (or strings for labels)")
            if check is not None:
                check(datasets)
            check_available(sum(h5safe.declared_bytes(ds) for ds in datasets.values()),
                            f"{where}: its arrays {', '.join(keys)} declare")
            return {k: h5safe.read_array(ds.asstr() if h5py.check_string_dtype(ds.dtype) else ds, where, DataError)
                    for k, ds in datasets.items()}
    except (OSError, RuntimeError, KeyError, ValueError, TypeError) as e:  # h5py on a damaged file
        raise DataError(f"cannot read HDF5 file '{path}': {' '.join(str(e).split())}") from e


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def sniff_csv(path: Path) -> tuple[str, list[str]]:
    """(delimiter, fields of the first non-blank line): the most frequent of , ; and tab in that line, else ,."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            first_line = next((line for line in fh if line.strip()), "")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read csv file '{path}': {' '.join(str(e).split())}") from None
    if not first_line:
        raise DataError(f"csv file '{path}' is empty")
    delimiter = max(",;\t", key=first_line.count) if any(c in first_line for c in ",;\t") else ","
    return delimiter, next(csv.reader(io.StringIO(first_line), delimiter=delimiter))


def read_csv(path: Path, delimiter: str, first: list[str], label: int | None):
    """(x float32 (n, features), labels as str (n,) or None, header lines skipped); the first row is a header
    when one of its feature fields is not a number."""
    features = [i for i in range(len(first)) if i != label]
    header = int(any(not _is_number(first[i]) for i in features))
    options = dict(delimiter=delimiter, skiprows=header, comments=None, quotechar='"', encoding="utf-8-sig")
    check_columns(path, delimiter, len(first))
    try:
        with warnings.catch_warnings():  # a header and no rows: numpy warns, the empty x is refused after
            warnings.simplefilter("ignore", UserWarning)
            x = np.loadtxt(path, dtype=np.float32, usecols=features, ndmin=2, **options)
            y = None if label is None else np.loadtxt(path, dtype=str, usecols=label, ndmin=1, **options)
    except (ValueError, OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read csv file '{path}': {' '.join(str(e).split())}") from None
    return x, y, header


def check_columns(path: Path, delimiter: str, n_cols: int) -> None:
    """Every non-blank line has the first line's n_cols fields: np.loadtxt with usecols ignores extra fields,
    so a longer row would give its label from another column."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            for number, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                line = line.rstrip("\r\n")
                fields = line.count(delimiter) + 1 if '"' not in line else \
                    len(next(csv.reader([line], delimiter=delimiter), []))
                if fields != n_cols:
                    raise DataError(f"csv file '{path}': line {number} has {fields} fields but the first line has "
                                    f"{n_cols}; every row needs the same columns")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read csv file '{path}': {' '.join(str(e).split())}") from None


def load_csv(cfg, seed: int) -> Dataset:
    """Numeric CSV with one label column; a first row with non-numeric features is a header."""
    path = _existing_file(cfg.path, "csv")
    where = f"'{path}'"
    delimiter, first = sniff_csv(path)
    n_cols = len(first)
    if n_cols < 2:
        raise DataError(f"csv file '{path}' has {n_cols} column; need features plus a label column")
    label = cfg.label_column + n_cols if cfg.label_column < 0 else cfg.label_column
    if not 0 <= label < n_cols:
        raise DataError(f"data.label_column {cfg.label_column} is out of range for csv file "
                        f"'{path}' with {n_cols} columns (allowed {-n_cols}..{n_cols - 1})")
    x, y, header = read_csv(path, delimiter, first, label)
    arrays = {"x": x, "y": y}
    del x, y  # _from_arrays drops them once split
    return _from_arrays(cfg, "csv", arrays, seed, where, lambda i: _csv_line(path, header, i))


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
