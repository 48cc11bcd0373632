"""CIFAR-10, binary version (cifar-10-batches-bin): records of 1 label byte + 3072 pixel bytes."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sparsenet.data.download import extract_members, fetch
from sparsenet.data.prepare import Dataset, finish
from sparsenet.data.sources import Source, locate, missing_note
from sparsenet.errors import DataError

RECORD = 1 + 3 * 32 * 32
TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
TEST_FILES = ("test_batch.bin",)
SUBDIR = "cifar-10-batches-bin"

_URLS = ("https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",)
_ARCHIVE = "cifar-10-binary.tar.gz"
_SHA256 = "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd"
_HINT = (f"put the {SUBDIR} files ({', '.join(TRAIN_FILES + TEST_FILES)}) in one of those "
         f"folders or set data.path")


def read_batches(paths: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """Pixels (n, 3072) uint8 in CHW order and labels (n,) uint8 from CIFAR-10 binary files."""
    sizes = []
    for path in paths:
        try:
            size = path.stat().st_size
        except OSError as e:
            raise DataError(f"cannot read '{path}': {e.strerror or e}") from e
        if size == 0 or size % RECORD:
            raise DataError(f"'{path}' is not a CIFAR-10 binary batch: size {size} bytes is not "
                            f"a positive multiple of the {RECORD}-byte record")
        sizes.append(size // RECORD)
    from sparsenet.memory import check_available

    # a file's size is only declared (a sparse file stores nothing): checked before allocating
    check_available(sum(sizes) * RECORD, f"CIFAR-10 batches {', '.join(p.name for p in paths)} hold")
    # One preallocated buffer: no concatenate copy of ~150 MB of training records.
    records = np.empty((sum(sizes), RECORD), dtype=np.uint8)
    start = 0
    for path, n in zip(paths, sizes):
        try:
            with open(path, "rb") as fh:
                got = fh.readinto(memoryview(records[start:start + n]).cast("B"))
        except OSError as e:
            raise DataError(f"cannot read '{path}': {e.strerror or e}") from e
        if got != n * RECORD:
            raise DataError(f"'{path}' is truncated: expected {n * RECORD} bytes, read {got}")
        start += n
    labels = records[:, 0]
    if labels.max() > 9:
        bad = int(np.argmax(labels > 9))
        ends = np.cumsum(sizes)
        i = int(np.searchsorted(ends, bad, side="right"))
        raise DataError(f"'{paths[i]}' record {bad - (ends[i - 1] if i else 0)} has label "
                        f"{labels[bad]}; CIFAR-10 labels must be in 0..9")
    return records[:, 1:], labels.copy()


def _probe(folder: Path) -> tuple[Path | None, str]:
    """folder itself or folder/cifar-10-batches-bin, when it holds all six batch files."""
    if not folder.exists():
        return None, ""
    if not folder.is_dir():
        return None, "not a folder"
    note = ""
    for candidate in (folder, folder / SUBDIR):
        missing = [n for n in TRAIN_FILES + TEST_FILES if not (candidate / n).is_file()]
        if not missing:
            return candidate, ""
        if len(missing) < len(TRAIN_FILES + TEST_FILES) and not note:
            note = missing_note(missing)
    return None, note


def _fetch(cache: Path) -> None:
    archive = cache / _ARCHIVE
    fetch(_URLS, archive, _SHA256)
    members = {f"{SUBDIR}/{n}": n for n in TRAIN_FILES + TEST_FILES}
    extract_members(archive, members, cache / SUBDIR)
    archive.unlink()


def load_cifar10(cfg) -> Dataset:
    """50000 train / 10000 test images, 3072 features (R, G, B planes of 32x32) in [0, 1]."""
    folder = locate(Source("cifar10", _probe, _fetch, _HINT), cfg.path, ())
    x_train, y_train = read_batches([folder / n for n in TRAIN_FILES])
    x_test, y_test = read_batches([folder / n for n in TEST_FILES])
    return finish(cfg, "cifar10", x_train, y_train, x_test, y_test, 10, pixels=True)
