"""IDX files (plain or gzipped): reader, folder probe, and the MNIST and Fashion-MNIST datasets."""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from sparsenet.data.download import fetch, mirror_urls
from sparsenet.data.prepare import Dataset, finish
from sparsenet.data.sources import Source, locate, missing_note
from sparsenet.errors import DataError

# IDX type byte -> numpy dtype (big-endian, as the format stores it).
_IDX_DTYPES = {0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"),
               0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}

# role -> file name without .gz, as published by the dataset authors
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

# SHA-256 of the official .gz files (identical on every mirror listed).
_CATALOG = {
    "fashion_mnist": {
        "mirrors": (
            "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        ),
        "sha256": {
            "train_images": "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
            "train_labels": "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
            "test_images": "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
            "test_labels": "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
        },
        "hint": "install it with 'apt-get install dataset-fashion-mnist' or put the IDX files "
                "in one of those folders or set data.path",
    },
    "mnist": {
        "mirrors": ("https://ossci-datasets.s3.amazonaws.com/mnist/",
                    "https://storage.googleapis.com/cvdf-datasets/mnist/"),
        "sha256": {
            "train_images": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
            "train_labels": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
            "test_images": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
            "test_labels": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
        },
        "hint": "put the IDX files (train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], "
                "t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz]) in one of those "
                "folders or set data.path",
    },
}

# Folders where distribution packages install the files (Debian: dataset-fashion-mnist).
SYSTEM_DIRS = {
    "fashion_mnist": ["/usr/share/datasets/fashion-mnist",
                      "/usr/local/share/datasets/fashion-mnist"],
    "mnist": ["/usr/share/datasets/mnist", "/usr/share/mnist", "/usr/local/share/datasets/mnist"],
}


_READ_BLOCK = 1 << 22  # bytes per read from a (gzip) stream


def _open(path: Path):
    """The file as a binary stream, decompressed on the fly if it is gzip (whatever its name)."""
    fh = open(path, "rb")
    if fh.read(2) == b"\x1f\x8b":
        fh.seek(0)
        return gzip.GzipFile(fileobj=fh, mode="rb"), True
    fh.seek(0)
    return fh, False


def _read_exactly(stream, n: int) -> bytearray:
    """Up to n bytes, fewer only at the end of the stream; never more than n are read or decompressed.

    The buffer grows with what really arrives, so a header declaring more than a gzip stream holds
    costs only what the stream holds."""
    buf = bytearray()
    while len(buf) < n:
        part = stream.read(min(_READ_BLOCK, n - len(buf)))
        if not part:
            break
        buf += part
    return buf


MAX_DIMS = 32  # images are 3-D, labels 1-D; numpy itself stops at 64


def read_idx(path: str | Path, max_bytes: int | None = None) -> np.ndarray:
    """Read an IDX file (optionally gzipped) into an array of the shape its header gives.

    The header is read and checked first; then exactly the bytes it declares (at most max_bytes, by
    default the memory available) are read or decompressed, one more byte tells trailing data apart.
    """
    path = Path(path)
    try:
        raw, gzipped = _open(path)
    except OSError as e:
        raise DataError(f"cannot read '{path}': {e.strerror or e}") from e
    try:
        with raw:
            head = _read_exactly(raw, 4)
            if len(head) < 4:
                raise DataError(f"'{path}' is not an IDX file: only {len(head)} bytes")
            zero, type_code, ndim = struct.unpack(">HBB", head)
            if zero != 0 or type_code not in _IDX_DTYPES or ndim == 0:
                raise DataError(f"'{path}' is not an IDX file: bad magic number 0x{head.hex()} "
                                f"(expected 0x000008NN with NN the number of dimensions)")
            if ndim > MAX_DIMS:  # numpy arrays have at most 64
                raise DataError(f"'{path}' header says {ndim} dimensions; an IDX array here has at most {MAX_DIMS}")
            dim_bytes = _read_exactly(raw, 4 * ndim)
            if len(dim_bytes) < 4 * ndim:
                raise DataError(f"'{path}' is truncated: header needs {4 + 4 * ndim} bytes, file has "
                                f"{4 + len(dim_bytes)}")
            dims = struct.unpack(f">{ndim}I", dim_bytes)
            dtype = _IDX_DTYPES[type_code]
            count = math.prod(dims)  # Python ints: no overflow
            expected = count * dtype.itemsize
            if dims[0] == 0 or count == 0:
                raise DataError(f"'{path}' holds no data: header says shape {dims}")
            if count > np.iinfo(np.int64).max // dtype.itemsize:
                raise DataError(f"'{path}' header says shape {dims}, more elements than an array can hold")
            limit = _memory_limit() if max_bytes is None else max_bytes
            if expected > limit:
                raise DataError(f"'{path}' header says shape {dims} ({expected / 2**30:.2f} GiB of data), "
                                f"more than the {limit / 2**30:.2f} GiB available")
            if not gzipped:
                have = os.fstat(raw.fileno()).st_size - 4 - 4 * ndim
                if have != expected:
                    what = "is truncated" if have < expected else "has trailing bytes"
                    raise DataError(f"'{path}' {what}: header says shape {dims} ({expected} data bytes), "
                                    f"file has {have} data bytes")
            data = _read_exactly(raw, expected)
            extra = raw.read(1)
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise DataError(f"'{path}' is not a valid gzip file: {e}") from e
    except OSError as e:
        raise DataError(f"cannot read '{path}': {e.strerror or e}") from e
    if len(data) != expected or extra:
        what = "is truncated" if len(data) < expected else "has trailing bytes"
        have = f"{len(data)}" if len(data) < expected else f"more than {expected}"
        raise DataError(f"'{path}' {what}: header says shape {dims} ({expected} data bytes), "
                        f"file has {have} data bytes")
    return np.frombuffer(data, dtype=dtype, count=count).reshape(dims)


def _memory_limit() -> int:
    from sparsenet.memory import available_memory

    return available_memory()[0]


def _read_images(path: Path) -> np.ndarray:
    images = read_idx(path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DataError(f"'{path}' is not an image file: expected 3-D uint8 (n, rows, cols), "
                        f"got {images.ndim}-D {images.dtype}")
    return images.reshape(len(images), -1)


def _read_labels(path: Path, n_classes: int) -> np.ndarray:
    labels = read_idx(path)
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise DataError(f"'{path}' is not a label file: expected 1-D uint8, "
                        f"got {labels.ndim}-D {labels.dtype}")
    if len(labels) and labels.max() >= n_classes:
        raise DataError(f"'{path}' has label {labels.max()}; labels must be in 0..{n_classes - 1}")
    return labels


def load_idx_pair(images_path: Path, labels_path: Path, n_classes: int = 10):
    """Images flattened to (n, rows*cols) uint8 and labels (n,) uint8, counts checked."""
    images = _read_images(images_path)
    labels = _read_labels(labels_path, n_classes)
    if len(labels) != len(images):
        raise DataError(f"label count mismatch: '{labels_path}' has {len(labels)} labels but "
                        f"'{images_path}' has {len(images)} images")
    return images, labels


def find_idx_files(folder: Path) -> tuple[dict[str, Path] | None, str]:
    """The four IDX files in folder (plain or .gz), or None and why the folder does not count."""
    if not folder.exists():
        return None, ""
    if not folder.is_dir():
        return None, "not a folder"
    found, missing = {}, []
    for role, stem in IDX_FILES.items():
        # also accept the dotted names some archives use (train-images.idx3-ubyte)
        dotted = stem.replace("-idx", ".idx")
        names = [stem, stem + ".gz", dotted, dotted + ".gz"]
        hit = next((folder / n for n in names if (folder / n).is_file()), None)
        if hit is None:
            missing.append(stem + "[.gz]")
        else:
            found[role] = hit
    if not missing:
        return found, ""
    return None, missing_note(missing) if found else ""


def _fetch_idx(name: str, cache: Path) -> None:
    entry = _CATALOG[name]
    for role, stem in IDX_FILES.items():
        if (cache / stem).is_file() or (cache / (stem + ".gz")).is_file():
            continue
        fetch(mirror_urls(entry["mirrors"], stem + ".gz"), cache / (stem + ".gz"),
              entry["sha256"][role])


def load_mnist_like(cfg, name: str) -> Dataset:
    """fashion_mnist or mnist: 784 pixel features scaled to [0, 1], 10 classes."""
    def probe(folder: Path) -> tuple[Path | None, str]:
        files, note = find_idx_files(folder)
        return (folder if files else None), note

    source = Source(name, probe, lambda cache: _fetch_idx(name, cache), _CATALOG[name]["hint"])
    folder = locate(source, cfg.path, SYSTEM_DIRS[name])
    files, _ = find_idx_files(folder)
    x_train, y_train = load_idx_pair(files["train_images"], files["train_labels"])
    x_test, y_test = load_idx_pair(files["test_images"], files["test_labels"])
    return finish(cfg, name, x_train, y_train, x_test, y_test, 10, pixels=True)

