"""Turn raw arrays into a `Dataset`: truncate, label-encode, split, cast to float32 (or keep small
integers as uint8: data/rows.py), standardise."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sparsenet.data.csr import CSRRows
from sparsenet.data.rows import ByteRows, small_integers
from sparsenet.errors import DataError

# Rows per block when scanning big arrays, sized so one float64 block stays around 8 MB.
_BLOCK_ELEMENTS = 1 << 20


@dataclass
class Dataset:
    """Train/test split ready for training: x float32 (n, n_features) or, for small-integer features
    (pixels), ByteRows (uint8, read as the same float32 values batch by batch); y int64 in 0..n_classes-1."""

    x_train: np.ndarray | ByteRows
    y_train: np.ndarray
    x_test: np.ndarray | ByteRows
    y_test: np.ndarray
    n_classes: int
    name: str
    mean: np.ndarray | None = None     # float32 (n_features,): standardisation applied, or None
    std: np.ndarray | None = None
    classes: np.ndarray | None = None  # label of each class index as in the file (None: 0..n_classes-1)
    divisor: float = 1.0               # pixels: each raw value was divided by this (255) before mean/std

    @property
    def n_features(self) -> int:
        return int(self.x_train.shape[1])

    def raw_statistics(self) -> tuple[np.ndarray | None, np.ndarray | None]:
        """float32 (n_features,) mean, std turning a raw sample (pixels: 0..255) into the model's input,
        (x - mean) / std, for the checkpoint; None, None when samples are used as given."""
        if self.divisor == 1:
            return self.mean, self.std
        mean = np.zeros(self.n_features) if self.mean is None else self.mean.astype(np.float64)
        std = np.ones(self.n_features) if self.std is None else self.std.astype(np.float64)
        return (mean * self.divisor).astype(np.float32), (std * self.divisor).astype(np.float32)


def _block_rows(n_cols: int) -> int:
    return max(1, _BLOCK_ELEMENTS // max(1, n_cols))


def split(x: np.ndarray, y: np.ndarray, test_fraction: float, seed: int, where: str):
    """Seeded shuffle, then the first round(n * test_fraction) samples go to the test set."""
    n = len(x)
    n_test = int(round(n * test_fraction))
    if n_test < 1 or n_test > n - 1:
        raise DataError(f"{where}: cannot split {n} samples with test_fraction {test_fraction}; "
                        f"need at least 1 training and 1 test sample")
    perm = np.random.default_rng(seed).permutation(n)
    test, train = perm[:n_test], perm[n_test:]
    return x[train], y[train], x[test], y[test]


def _numeric_labels(y: np.ndarray, what: str, where: str, row) -> np.ndarray | None:
    """int64 labels if every text label is a whole number ('1' and '1.0' alike), else None (names).

    Empty labels and labels that read as NaN or infinity are an error naming their row."""
    empty = np.flatnonzero(y == "")
    if empty.size:
        raise DataError(f"{where}: {what} has an empty label at {row(int(empty[0]))}; every sample needs a class")
    try:
        return y.astype(np.int64)
    except (ValueError, OverflowError):
        pass
    numbers = np.empty(len(y), dtype=np.float64)
    names = False
    for i, text in enumerate(y.tolist()):
        try:
            numbers[i] = float(text)
        except ValueError:
            names = True
            continue
        if not np.isfinite(numbers[i]):
            raise DataError(f"{where}: {what} has the label {text[:40]!r} at {row(i)}, which is not a class; "
                            f"labels must be whole numbers or names")
    if names:
        return None
    bad = (numbers != np.round(numbers)) | (np.abs(numbers) >= 2.0**63)
    if bad.any():
        i = int(np.argmax(bad))
        raise DataError(f"{where}: {what} has the label {y[i][:40]!r} at {row(i)}; numeric labels must be "
                        f"whole numbers (1 and 1.0 are the same class)")
    return numbers.astype(np.int64)


def label_array(y, what: str, where: str, row=None) -> np.ndarray:
    """Labels as a 1-D array of int64 or str (numeric strings become integers: '1' and '1.0' alike).

    row(i) names sample i's place in the file for error messages (default 'index i')."""
    row = row or (lambda i: f"index {i}")
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y.ravel()
    if y.ndim != 1:
        raise DataError(f"{where}: {what} must be 1-D (one label per sample), got shape {y.shape}")
    kind = y.dtype.kind
    if kind == "O":
        if not all(isinstance(v, (str, bytes)) for v in y):
            raise DataError(f"{where}: {what} must hold integers or strings, got Python objects")
        y = np.array([v.decode() if isinstance(v, bytes) else v for v in y], dtype=str)
        kind = "U"
    if kind == "S":
        y = np.char.decode(y, "utf-8")
        kind = "U"
    if kind == "U":
        y = np.char.strip(y)
        numeric = _numeric_labels(y, what, where, row)
        return y if numeric is None else numeric
    if kind in "biu":
        return y.astype(np.int64)
    if kind == "f":
        bad = ~np.isfinite(y) | (y != np.round(y))
        if bad.any():
            raise DataError(f"{where}: {what} must hold integers or strings, got "
                            f"{y[np.argmax(bad)].item()!r} at {row(int(np.argmax(bad)))}")
        return y.astype(np.int64)
    raise DataError(f"{where}: {what} must hold integers or strings, got dtype {y.dtype}")


def encode_whole(y: np.ndarray, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Labels of a whole file (label_array output) -> (codes 0..n_classes-1 by sorted unique value, classes)."""
    classes = np.unique(y)
    if len(classes) < 2:
        raise DataError(f"{where}: labels must have at least 2 distinct values, "
                        f"got {len(classes)} ({', '.join(str(c)[:40] for c in classes[:2])})")
    return np.searchsorted(classes, y).astype(np.int64), classes


def encode_labels(y_train, y_test, where: str):
    """Map labels (integers or strings) to 0..n_classes-1 by sorted unique value over both sets.

    Returns (y_train indices, y_test indices, classes): classes[i] is the label of index i.
    """
    ytr = label_array(y_train, "y_train", where)
    yte = label_array(y_test, "y_test", where)
    if (ytr.dtype.kind == "U") != (yte.dtype.kind == "U") and len(ytr) and len(yte):
        raise DataError(f"{where}: y_train and y_test must both be numbers or both strings, "
                        f"got {ytr.dtype} and {yte.dtype}")
    classes = np.unique(np.concatenate([ytr, yte]))
    if len(classes) < 2:
        raise DataError(f"{where}: labels must have at least 2 distinct values, "
                        f"got {len(classes)} ({', '.join(map(str, classes[:2]))})")
    return (np.searchsorted(classes, ytr).astype(np.int64),
            np.searchsorted(classes, yte).astype(np.int64), classes)


def check_features(x, what: str, where: str) -> np.ndarray:
    """x must be a non-empty 2-D numeric array (or CSRRows, validated when made)."""
    if isinstance(x, CSRRows):
        return x
    x = np.asarray(x)
    if x.ndim != 2:
        raise DataError(f"{where}: {what} must be 2-D (samples, features), got shape {x.shape}")
    if x.dtype.kind not in "biuf":
        raise DataError(f"{where}: {what} must hold numbers, got dtype {x.dtype}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise DataError(f"{where}: {what} is empty, got shape {x.shape}")
    return x


def check_lengths(x, y, x_name: str, y_name: str, where: str) -> None:
    if len(x) != len(y):
        raise DataError(f"label count mismatch: {where} has {len(y)} labels in {y_name} "
                        f"but {len(x)} samples in {x_name}")


def _to_float32(x: np.ndarray, keep: int | None, scale255: bool) -> np.ndarray:
    """First `keep` rows of x as a fresh-or-owned C-contiguous float32 array (CSRRows: its first rows)."""
    if isinstance(x, CSRRows):
        return x.head(keep) if keep is not None else x
    if keep is not None and keep < len(x):
        x = x[:keep]
        owned = False               # a view keeps the full array alive: always copy
    else:
        owned = x.flags.writeable and x.base is None
    if scale255 or x.dtype != np.float32 or not x.flags.c_contiguous or not owned:
        with np.errstate(over="ignore", invalid="ignore"):  # beyond float32: infinite, refused by finish's check
            x = np.array(x, dtype=np.float32, order="C", copy=True)
    if scale255:
        x /= np.float32(255)
    return x


def _check_finite(x: np.ndarray, what: str, where: str) -> None:
    step = _block_rows(x.shape[1])
    for start in range(0, len(x), step):
        block = x[start:start + step]
        bad = ~np.isfinite(block)
        if bad.any():
            row, col = np.argwhere(bad)[0]
            raise DataError(f"{where}: {what} has a non-finite value ({block[row, col]}) at row "
                            f"{start + row}, column {col}; features must be finite float32 numbers")


def _float_blocks(x: "np.ndarray | ByteRows"):
    """(start, float32 block) over the rows of x in blocks of _block_rows (ByteRows: converted, not standardised)."""
    if isinstance(x, ByteRows):
        yield from x.float_blocks()
        return
    step = _block_rows(x.shape[1])
    for start in range(0, x.shape[0], step):
        yield start, x[start:start + step]


def _column_stats(x: "np.ndarray | ByteRows") -> tuple[np.ndarray, np.ndarray]:
    """Per-column mean and population std in float64, scanning x in row blocks (no full copy)."""
    n, d = x.shape
    total = np.zeros(d)
    for _, block in _float_blocks(x):
        total += block.sum(axis=0, dtype=np.float64)
    mean = total / n
    squares = np.zeros(d)
    for _, block in _float_blocks(x):
        diff = block.astype(np.float64) - mean
        squares += np.einsum("ij,ij->j", diff, diff)
    return mean, np.sqrt(squares / n)


def fit_standardization(x_train: "np.ndarray | ByteRows") -> tuple[np.ndarray, np.ndarray]:
    """float32 (mean, std) of the training features (0 std -> 1)."""
    mean, std = _column_stats(x_train)
    std[std == 0] = 1.0
    return mean.astype(np.float32), std.astype(np.float32)


def standardize(x_train: np.ndarray, *others: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """In place: subtract the training mean and divide by the training std (0 std -> 1).

    Returns the float32 (mean, std) applied, for the checkpoint's preprocessing group.
    """
    mean32, std32 = fit_standardization(x_train)
    for x in (x_train, *others):
        x -= mean32
        x /= std32
    return mean32, std32


def scale_csr(x_train: CSRRows, x_test: CSRRows):
    """CSR standardisation without densifying: divide by the training std (0 std -> 1), no centring
    (scikit-learn's StandardScaler(with_mean=False)). Returns (x_train, x_test, mean = 0, std) float32."""
    _, std = x_train.column_stats()
    std[std == 0] = 1.0
    std32 = std.astype(np.float32)
    return x_train.scaled(std32), x_test.scaled(std32), np.zeros_like(std32), std32


def _as_bytes(x: np.ndarray, keep: int | None, pixels: bool) -> ByteRows:
    """First `keep` rows of small-integer x as ByteRows (read as float32(v) / 255 for pixels); x itself
    when it is whole, uint8 and C-contiguous (the rows are never written to)."""
    truncated = keep is not None and keep < len(x)
    if truncated:
        x = x[:keep]                # a view keeps the full array alive: always copy
    if x.dtype != np.uint8 or not x.flags.c_contiguous or truncated:
        raw = np.empty(x.shape, dtype=np.uint8)
        step = _block_rows(x.shape[1])
        for start in range(0, len(x), step):  # block by block: no full temporary of a wider dtype
            raw[start:start + step] = x[start:start + step]
        x = raw
    return ByteRows(x, 255.0 if pixels else 1.0)


def finish(cfg, name: str, x_train, y_train, x_test, y_test, n_classes: int,
           pixels: bool = False, check_finite: bool = False, classes: np.ndarray | None = None) -> Dataset:
    """Truncate to max_train/max_test, cast to float32 (pixels: /255) or keep small integers as uint8
    (ByteRows, the same floats), standardise if asked."""
    where = f"dataset '{name}'"
    check_lengths(x_train, y_train, "x_train", "y_train", where)
    check_lengths(x_test, y_test, "x_test", "y_test", where)
    if x_train.shape[1:] != x_test.shape[1:]:
        raise DataError(f"{where}: x_test has {x_test.shape[1]} features but x_train has "
                        f"{x_train.shape[1]}")
    dense = not isinstance(x_train, CSRRows) and not isinstance(x_test, CSRRows)
    if dense and small_integers(x_train) and small_integers(x_test):  # 1 byte per feature instead of 4, same floats
        xtr, xte = _as_bytes(x_train, cfg.max_train, pixels), _as_bytes(x_test, cfg.max_test, pixels)
    else:
        xtr = _to_float32(x_train, cfg.max_train, pixels)
        xte = _to_float32(x_test, cfg.max_test, pixels)
    ytr = np.ascontiguousarray(y_train[: len(xtr)], dtype=np.int64)
    yte = np.ascontiguousarray(y_test[: len(xte)], dtype=np.int64)
    for y, what in ((ytr, "y_train"), (yte, "y_test")):  # the data boundary: every label a valid class
        if len(y) and (y.min() < 0 or y.max() >= n_classes):
            bad = int(y.min()) if y.min() < 0 else int(y.max())
            raise DataError(f"{where}: {what} holds label {bad}; labels must be in 0..{int(n_classes) - 1}")
    if (isinstance(xtr, CSRRows)) != (isinstance(xte, CSRRows)):
        raise DataError(f"{where}: x_train and x_test must both be dense or both CSR")
    if check_finite and not isinstance(xtr, (CSRRows, ByteRows)):  # CSR values were checked when the matrix was made
        _check_finite(xtr, "x_train", where)
        _check_finite(xte, "x_test", where)
    mean = std = None
    if cfg.standardize and isinstance(xtr, CSRRows):
        xtr, xte, mean, std = scale_csr(xtr, xte)
    elif cfg.standardize:
        if isinstance(xtr, ByteRows):  # applied batch by batch in ByteRows.gather, the same float32 operations
            mean, std = fit_standardization(xtr)
            xtr = xtr.standardized(mean, std)
            xte = ByteRows(xte.raw, xte.divisor, mean, std, xtr.table)  # one lookup table for both
        else:
            mean, std = standardize(xtr, xte)
    return Dataset(xtr, ytr, xte, yte, int(n_classes), name, mean, std, classes, 255.0 if pixels else 1.0)
