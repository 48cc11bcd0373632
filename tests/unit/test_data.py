"""Tests for sparsenet.data: IDX, CIFAR-10 binary, npz/csv/hdf5, synthetic, search and download."""

import functools
import gzip
import hashlib
import http.server
import io
import os
import struct
import tarfile
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from sparsenet.config import DataConfig
from sparsenet.data import Dataset, cifar, idx, load_dataset
from sparsenet.data.rows import ByteRows
from sparsenet.errors import DataError

DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")

# 4 training images of 1x3 pixels, chosen so that the standardised values are round numbers:
# column 0 -> [-1, 1, -1, 1]; column 1 is constant (std 0 -> 1, so it becomes 0);
# column 2 = [0, .2, .4, .6] has mean .3 and std sqrt(.05).
TRAIN_PIXELS = np.array([[[0, 10, 0]], [[255, 10, 51]], [[0, 10, 102]], [[255, 10, 153]]],
                        dtype=np.uint8)
TRAIN_LABELS = np.array([3, 1, 4, 1], dtype=np.uint8)
TEST_PIXELS = np.array([[[255, 0, 51]], [[0, 20, 255]]], dtype=np.uint8)
TEST_LABELS = np.array([9, 0], dtype=np.uint8)
S = np.sqrt(0.05)
EXPECTED_TRAIN = np.array([[-1, 0, -0.3 / S], [1, 0, -0.1 / S], [-1, 0, 0.1 / S], [1, 0, 0.3 / S]])
EXPECTED_TEST = np.array([[1, -10 / 255, -0.1 / S], [-1, 10 / 255, 0.7 / S]])


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Cache in tmp_path, no downloads, no system folders unless a test says otherwise."""
    monkeypatch.setenv("SPARSENET_DATA", str(tmp_path / "cache"))
    monkeypatch.setenv("SPARSENET_NO_DOWNLOAD", "1")
    monkeypatch.setitem(idx.SYSTEM_DIRS, "mnist", [str(tmp_path / "system-mnist")])
    monkeypatch.setitem(idx.SYSTEM_DIRS, "fashion_mnist", [str(tmp_path / "system-fashion")])


def idx_bytes(array: np.ndarray) -> bytes:
    assert array.dtype == np.uint8
    return struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(
        f">{array.ndim}I", *array.shape) + array.tobytes()


def write_idx_set(folder: Path, gz: bool, train_pixels=TRAIN_PIXELS, train_labels=TRAIN_LABELS):
    folder.mkdir(parents=True, exist_ok=True)
    files = {"train-images-idx3-ubyte": train_pixels, "train-labels-idx1-ubyte": train_labels,
             "t10k-images-idx3-ubyte": TEST_PIXELS, "t10k-labels-idx1-ubyte": TEST_LABELS}
    for name, array in files.items():
        data = idx_bytes(array)
        if gz:
            (folder / (name + ".gz")).write_bytes(gzip.compress(data))
        else:
            (folder / name).write_bytes(data)
    return folder


def mnist_cfg(**kw) -> DataConfig:
    return replace(DataConfig(name="mnist"), **kw)


def data_error(cfg, seed=0) -> str:
    with pytest.raises(DataError) as info:
        load_dataset(cfg, seed)
    message = str(info.value)
    assert "\n" not in message
    return message


# ---------------------------------------------------------------- IDX

@pytest.mark.parametrize("gz", [False, True])
def test_idx_standardised_values(tmp_path, gz):
    folder = write_idx_set(tmp_path / "d", gz)
    ds = load_dataset(mnist_cfg(path=str(folder)), 0)
    assert isinstance(ds, Dataset) and ds.name == "mnist"
    # pixels are kept as bytes and read as float32 (1 byte per feature in memory)
    assert isinstance(ds.x_train, ByteRows) and ds.x_train.dtype == np.float32
    assert ds.x_train.raw.dtype == np.uint8 and ds.x_train.raw.flags.c_contiguous
    assert ds.x_train.shape == (4, 3) and ds.x_test.shape == (2, 3) and ds.n_features == 3
    assert ds.n_classes == 10
    assert ds.y_train.dtype == np.int64 and ds.y_train.tolist() == [3, 1, 4, 1]
    assert ds.y_test.tolist() == [9, 0]
    np.testing.assert_allclose(ds.x_train, EXPECTED_TRAIN, atol=1e-6)
    np.testing.assert_allclose(ds.x_test, EXPECTED_TEST, atol=1e-6)
    np.testing.assert_allclose(np.asarray(ds.x_train).mean(axis=0), [0, 0, 0], atol=1e-6)
    np.testing.assert_allclose(np.asarray(ds.x_train).std(axis=0), [1, 0, 1], atol=1e-6)


def test_idx_pixels_scaled_exactly_without_standardisation(tmp_path):
    folder = write_idx_set(tmp_path / "d", gz=True)
    ds = load_dataset(mnist_cfg(path=str(folder), standardize=False), 0)
    expected = TRAIN_PIXELS.reshape(4, 3).astype(np.float32) / np.float32(255)
    assert np.array_equal(ds.x_train, expected)
    assert ds.x_train[1, 0] == 1.0 and ds.x_train[1, 2] == np.float32(0.2)


def test_idx_max_train_before_standardisation(tmp_path):
    folder = write_idx_set(tmp_path / "d", gz=False)
    ds = load_dataset(mnist_cfg(path=str(folder), max_train=2, max_test=1), 0)
    assert ds.x_train.shape == (2, 3) and ds.x_test.shape == (1, 3)
    assert ds.y_train.tolist() == [3, 1] and ds.y_test.tolist() == [9]
    # standardised with the statistics of the 2 kept samples only
    np.testing.assert_allclose(ds.x_train, [[-1, 0, -1], [1, 0, 1]], atol=1e-6)
    assert ds.x_train.raw.base is None   # a copy, not a view pinning the full array


def test_read_idx_shapes(tmp_path):
    path = tmp_path / "a"
    path.write_bytes(idx_bytes(TRAIN_PIXELS))
    assert np.array_equal(idx.read_idx(path), TRAIN_PIXELS)


def test_idx_truncated(tmp_path):
    folder = write_idx_set(tmp_path / "d", gz=False)
    images = folder / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-1])
    message = data_error(mnist_cfg(path=str(folder)))
    assert message == (f"'{images}' is truncated: header says shape (4, 1, 3) (12 data bytes), "
                       f"file has 11 data bytes")


def test_idx_truncated_gzip(tmp_path):
    folder = write_idx_set(tmp_path / "d", gz=True)
    labels = folder / "t10k-labels-idx1-ubyte.gz"
    labels.write_bytes(labels.read_bytes()[:-5])
    message = data_error(mnist_cfg(path=str(folder)))
    assert message.startswith(f"'{labels}' is not a valid gzip file")


def test_idx_bad_magic_and_short_header(tmp_path):
    folder = write_idx_set(tmp_path / "d", gz=False)
    images = folder / "train-images-idx3-ubyte"
    images.write_bytes(b"\x12\x34\x56\x78" + images.read_bytes()[4:])
    assert data_error(mnist_cfg(path=str(folder))).startswith(
        f"'{images}' is not an IDX file: bad magic number 0x12345678")
    images.write_bytes(b"\x00\x00\x08\x03\x00\x00")
    assert data_error(mnist_cfg(path=str(folder))) == (
        f"'{images}' is truncated: header needs 16 bytes, file has 6")


def test_idx_wrong_kind_of_file(tmp_path):
    folder = write_idx_set(tmp_path / "d", gz=False)
    images = folder / "train-images-idx3-ubyte"
    images.write_bytes(idx_bytes(TRAIN_LABELS))
    assert data_error(mnist_cfg(path=str(folder))) == (
        f"'{images}' is not an image file: expected 3-D uint8 (n, rows, cols), got 1-D uint8")


def test_idx_label_count_mismatch(tmp_path):
    folder = write_idx_set(tmp_path / "d", gz=True,
                           train_labels=np.array([1, 2, 3, 4, 5], dtype=np.uint8))
    assert data_error(mnist_cfg(path=str(folder))) == (
        f"label count mismatch: '{folder / 'train-labels-idx1-ubyte.gz'}' has 5 labels but "
        f"'{folder / 'train-images-idx3-ubyte.gz'}' has 4 images")


def test_idx_label_out_of_range(tmp_path):
    folder = write_idx_set(tmp_path / "d", gz=False,
                           train_labels=np.array([1, 2, 10, 4], dtype=np.uint8))
    assert data_error(mnist_cfg(path=str(folder))) == (
        f"'{folder / 'train-labels-idx1-ubyte'}' has label 10; labels must be in 0..9")


def test_search_order_cache_and_system(tmp_path, monkeypatch):
    write_idx_set(tmp_path / "cache" / "mnist", gz=True)
    assert load_dataset(mnist_cfg(), 0).x_train.shape == (4, 3)
    # a system folder comes before the cache
    system = write_idx_set(tmp_path / "system-mnist", gz=False,
                           train_pixels=TRAIN_PIXELS[:2], train_labels=TRAIN_LABELS[:2])
    assert load_dataset(mnist_cfg(), 0).x_train.shape == (2, 3)
    # and data.path before both; an unusable data.path falls through to the next folder
    assert load_dataset(mnist_cfg(path=str(write_idx_set(tmp_path / "u", gz=True))), 0) \
        .x_train.shape == (4, 3)
    assert load_dataset(mnist_cfg(path=str(tmp_path / "nowhere")), 0).x_train.shape == (2, 3)
    assert system.exists()


def test_missing_dataset_message(tmp_path):
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "train-images-idx3-ubyte.gz").write_bytes(b"")
    message = data_error(replace(DataConfig(), path=str(partial)))
    assert message == (
        f"dataset 'fashion_mnist' not found; looked in: {partial} (incomplete: missing "
        f"train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz]), "
        f"{tmp_path / 'system-fashion'}, {tmp_path / 'cache' / 'fashion_mnist'}; "
        f"download disabled (SPARSENET_NO_DOWNLOAD is set); install it with "
        f"'apt-get install dataset-fashion-mnist' or put the IDX files in one of those folders "
        f"or set data.path")


def test_default_cache_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("SPARSENET_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert f"{tmp_path / 'xdg' / 'sparsenet' / 'mnist'}; download disabled" in \
        data_error(mnist_cfg())


# ---------------------------------------------------------------- downloads (loopback only)

@pytest.fixture
def http_root(tmp_path):
    """A throwaway HTTP server on 127.0.0.1 serving tmp_path/www."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_download_idx_with_checksums(tmp_path, monkeypatch, http_root):
    root, url = http_root
    write_idx_set(root, gz=True)
    sums = {role: sha((root / (stem + ".gz")).read_bytes()) for role, stem in idx.IDX_FILES.items()}
    monkeypatch.setitem(idx._CATALOG, "mnist", {**idx._CATALOG["mnist"],
                                                "mirrors": ("http://127.0.0.1:9/", url),
                                                "sha256": sums})
    monkeypatch.delenv("SPARSENET_NO_DOWNLOAD")
    ds = load_dataset(mnist_cfg(), 0)
    np.testing.assert_allclose(ds.x_train, EXPECTED_TRAIN, atol=1e-6)
    cache = tmp_path / "cache" / "mnist"
    expected = sorted(stem + ".gz" for stem in idx.IDX_FILES.values())
    assert sorted(p.name for p in cache.iterdir()) == expected


def test_download_checksum_mismatch(tmp_path, monkeypatch, http_root):
    root, url = http_root
    write_idx_set(root, gz=True)
    sums = dict.fromkeys(idx.IDX_FILES, "0" * 64)
    monkeypatch.setitem(idx._CATALOG, "mnist", {**idx._CATALOG["mnist"],
                                                "mirrors": (url,), "sha256": sums})
    monkeypatch.delenv("SPARSENET_NO_DOWNLOAD")
    message = data_error(mnist_cfg())
    assert (f"download failed ({url}train-images-idx3-ubyte.gz: checksum mismatch: expected "
            f"sha256 {'0' * 64}, got ") in message
    assert list((tmp_path / "cache" / "mnist").iterdir()) == []   # no partial files left


def test_download_unreachable(tmp_path, monkeypatch):
    monkeypatch.setitem(idx._CATALOG, "mnist", {**idx._CATALOG["mnist"],
                                                "mirrors": ("http://127.0.0.1:9/",)})
    monkeypatch.delenv("SPARSENET_NO_DOWNLOAD")
    message = data_error(mnist_cfg())
    assert "; download failed (http://127.0.0.1:9/train-images-idx3-ubyte.gz: " in message
    assert message.endswith("or set data.path")


def test_download_http_error(monkeypatch, http_root):
    _, url = http_root
    monkeypatch.setitem(idx._CATALOG, "mnist", {**idx._CATALOG["mnist"], "mirrors": (url,)})
    monkeypatch.delenv("SPARSENET_NO_DOWNLOAD")
    assert "train-images-idx3-ubyte.gz: HTTP 404 File not found)" in data_error(mnist_cfg())


# ---------------------------------------------------------------- CIFAR-10

def cifar_records(labels, seed):
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(len(labels), 3072), dtype=np.uint8)
    records = np.concatenate([np.array(labels, dtype=np.uint8)[:, None], pixels], axis=1)
    return records, pixels


def write_cifar(folder: Path):
    folder.mkdir(parents=True, exist_ok=True)
    train_pixels, train_labels = [], []
    for i in range(1, 6):
        labels = [i, (i + 3) % 10]
        records, pixels = cifar_records(labels, i)
        (folder / f"data_batch_{i}.bin").write_bytes(records.tobytes())
        train_pixels.append(pixels)
        train_labels += labels
    records, test_pixels = cifar_records([7, 8, 9], 0)
    (folder / "test_batch.bin").write_bytes(records.tobytes())
    return np.concatenate(train_pixels), train_labels, test_pixels


def test_cifar_binary(tmp_path):
    train_pixels, train_labels, test_pixels = write_cifar(tmp_path / "cifar-10-batches-bin")
    cfg = DataConfig(name="cifar10", path=str(tmp_path), standardize=False)
    ds = load_dataset(cfg, 0)
    assert ds.x_train.shape == (10, 3072) and ds.x_test.shape == (3, 3072) and ds.n_classes == 10
    assert ds.y_train.tolist() == train_labels and ds.y_test.tolist() == [7, 8, 9]
    assert np.array_equal(ds.x_train, train_pixels.astype(np.float32) / np.float32(255))
    assert np.array_equal(ds.x_test, test_pixels.astype(np.float32) / np.float32(255))
    inner = str(tmp_path / "cifar-10-batches-bin")      # the folder itself works too
    ds = load_dataset(replace(cfg, standardize=True, path=inner), 0)
    np.testing.assert_allclose(np.asarray(ds.x_train).mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(np.asarray(ds.x_train).std(axis=0), 1, atol=1e-4)


def test_cifar_bad_size_and_label(tmp_path):
    write_cifar(tmp_path)
    cfg = DataConfig(name="cifar10", path=str(tmp_path))
    bad = tmp_path / "data_batch_3.bin"
    bad.write_bytes(bad.read_bytes()[:-1])
    assert data_error(cfg) == (f"'{bad}' is not a CIFAR-10 binary batch: size 6145 bytes is not a "
                               f"positive multiple of the 3073-byte record")
    records, _ = cifar_records([1, 12], 3)
    bad.write_bytes(records.tobytes())
    assert data_error(cfg) == f"'{bad}' record 1 has label 12; CIFAR-10 labels must be in 0..9"


def test_cifar_download_extracts_only_expected_members(tmp_path, monkeypatch, http_root):
    root, url = http_root
    source = tmp_path / "src"
    _, train_labels, _ = write_cifar(source)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for path in sorted(source.iterdir()):
            tar.add(path, arcname=f"cifar-10-batches-bin/{path.name}")
        evil = tarfile.TarInfo("../evil.txt")
        evil.size = 4
        tar.addfile(evil, io.BytesIO(b"evil"))
    archive = buffer.getvalue()
    (root / "cifar-10-binary.tar.gz").write_bytes(archive)
    monkeypatch.setattr(cifar, "_URLS", (url + "cifar-10-binary.tar.gz",))
    monkeypatch.setattr(cifar, "_SHA256", sha(archive))
    monkeypatch.delenv("SPARSENET_NO_DOWNLOAD")
    ds = load_dataset(DataConfig(name="cifar10"), 0)
    assert ds.y_train.tolist() == train_labels
    cache = tmp_path / "cache" / "cifar10"
    assert [p.name for p in cache.iterdir()] == ["cifar-10-batches-bin"]   # archive removed
    assert len(list((cache / "cifar-10-batches-bin").iterdir())) == 6
    assert not (tmp_path / "cache" / "evil.txt").exists()


def test_cifar_missing(tmp_path):
    message = data_error(DataConfig(name="cifar10"))
    assert message.startswith(f"dataset 'cifar10' not found; looked in: "
                              f"{tmp_path / 'cache' / 'cifar10'}; download disabled")


# ---------------------------------------------------------------- npz / hdf5 / csv

X_TRAIN = np.array([[1, 2], [3, 4], [5, 6], [7, 8]], dtype=np.float64)
X_TEST = np.array([[0, 1], [2, 3]], dtype=np.float64)
Y_TRAIN = np.array(["dog", "cat", "ant", "dog"])
Y_TEST = np.array(["cat", "emu"])


def file_cfg(name, path, **kw):
    return DataConfig(name=name, path=str(path), standardize=False, **kw)


def check_string_label_round_trip(ds):
    # whole numbers in 0..255 (even as float64) are kept as bytes; they read as the same float32 values
    assert isinstance(ds.x_train, ByteRows) and ds.x_train.dtype == np.float32 and ds.x_train.raw.dtype == np.uint8
    assert np.array_equal(ds.x_train, X_TRAIN.astype(np.float32))
    assert np.array_equal(ds.x_test, X_TEST.astype(np.float32))
    assert ds.n_classes == 4      # ant, cat, dog, emu
    assert ds.y_train.tolist() == [2, 1, 0, 2] and ds.y_test.tolist() == [1, 3]


def test_npz_split_keys_string_labels(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x_train=X_TRAIN, y_train=Y_TRAIN, x_test=X_TEST, y_test=Y_TEST)
    check_string_label_round_trip(load_dataset(file_cfg("npz", path), 0))


def test_npz_whole_split_is_seeded(tmp_path):
    path = tmp_path / "d.npz"
    x = np.arange(40, dtype=np.float32).reshape(20, 2)
    y = np.arange(20) % 3 + 10
    np.savez(path, x=x, y=y)
    cfg = file_cfg("npz", path, test_fraction=0.25)
    a, b, c = load_dataset(cfg, 1), load_dataset(cfg, 1), load_dataset(cfg, 2)
    assert a.x_train.shape == (15, 2) and a.x_test.shape == (5, 2) and a.n_classes == 3
    assert np.array_equal(a.x_train, b.x_train) and not np.array_equal(a.x_train, c.x_train)
    # every sample lands in exactly one split, with its label (10, 11, 12 -> 0, 1, 2)
    rows = np.concatenate([a.x_train, a.x_test])
    assert sorted(rows[:, 0].tolist()) == x[:, 0].tolist()
    labels = np.concatenate([a.y_train, a.y_test])
    assert np.array_equal(labels, (rows[:, 0].astype(int) // 2) % 3)


def test_npz_errors(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x_train=X_TRAIN, labels=Y_TRAIN)
    assert data_error(file_cfg("npz", path)) == (
        f"'{path}' has arrays [labels, x_train]; expected x_train, y_train, x_test, y_test or x, y "
        "(an x may be CSR: <x>_data, <x>_indices, <x>_indptr, <x>_shape)")
    np.savez(path, x=X_TRAIN, y=Y_TRAIN[:3])
    assert data_error(file_cfg("npz", path)) == (
        f"label count mismatch: '{path}' has 3 labels in y but 4 samples in x")
    np.savez(path, x=X_TRAIN[:, 0], y=Y_TRAIN)
    assert data_error(file_cfg("npz", path)) == (
        f"'{path}': x must be 2-D (samples, features), got shape (4,)")
    bad = X_TRAIN.copy()
    bad[2, 1] = np.nan
    np.savez(path, x_train=bad, y_train=Y_TRAIN, x_test=X_TEST, y_test=Y_TEST)
    assert data_error(file_cfg("npz", path)) == (
        "dataset 'npz': x_train has a non-finite value (nan) at row 2, column 1; "
        "features must be finite float32 numbers")
    np.savez(path, x=X_TRAIN, y=np.array([0.5, 1, 2, 3]))
    assert data_error(file_cfg("npz", path)) == (
        f"'{path}': y must hold integers or strings, got 0.5 at index 0")
    np.savez(path, x=X_TRAIN, y=np.array([1, 2, 3, 4], dtype=object))
    assert "holds Python objects" in data_error(file_cfg("npz", path))
    path.write_bytes(b"not a zip")
    assert data_error(file_cfg("npz", path)).startswith(f"'{path}' is not an .npz archive")
    assert data_error(file_cfg("npz", tmp_path / "no.npz")) == (
        f"npz file '{tmp_path / 'no.npz'}' not found")


def test_hdf5_round_trip_and_errors(tmp_path):
    h5py = pytest.importorskip("h5py")
    path = tmp_path / "d.h5"
    with h5py.File(path, "w") as fh:
        fh["x_train"], fh["x_test"] = X_TRAIN, X_TEST
        fh.create_dataset("y_train", data=Y_TRAIN.tolist(), dtype=h5py.string_dtype())
        fh.create_dataset("y_test", data=np.char.encode(Y_TEST))      # fixed-width bytes
        fh.create_group("extra")
    check_string_label_round_trip(load_dataset(file_cfg("hdf5", path), 0))
    with h5py.File(path, "w") as fh:
        fh["x"] = X_TRAIN
    assert data_error(file_cfg("hdf5", path)) == (
        f"'{path}' has arrays [x]; expected x_train, y_train, x_test, y_test or x, y "
        "(an x may be CSR: <x>_data, <x>_indices, <x>_indptr, <x>_shape)")
    path.write_bytes(b"garbage")
    assert data_error(file_cfg("hdf5", path)).startswith(f"cannot read HDF5 file '{path}': ")


def test_csv_header_string_labels(tmp_path):
    path = tmp_path / "d.csv"
    rows = [f"{a:g},{b:g},{y}" for (a, b), y in zip(X_TRAIN.tolist() + X_TEST.tolist(),
                                                    Y_TRAIN.tolist() + Y_TEST.tolist())]
    path.write_text("f1,f2,label\n" + "\n".join(rows) + "\n")
    ds = load_dataset(file_cfg("csv", path, test_fraction=0.5), 0)
    assert ds.x_train.shape == (3, 2) and ds.x_test.shape == (3, 2) and ds.n_classes == 4
    rows = np.concatenate([ds.x_train, ds.x_test])
    labels = np.concatenate([ds.y_train, ds.y_test])
    by_first = dict(zip(rows[:, 0].tolist(), labels.tolist()))
    assert by_first == {1: 2, 3: 1, 5: 0, 7: 2, 0: 1, 2: 3}


def test_csv_no_header_label_first_numeric(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("10,0.5,1\n2,1.5,2\n10,2.5,3\n2,3.5,4\n")
    ds = load_dataset(file_cfg("csv", path, label_column=0, test_fraction=0.5), 3)
    assert ds.n_classes == 2 and ds.x_train.shape == (2, 2)
    rows = np.concatenate([ds.x_train, ds.x_test])
    labels = np.concatenate([ds.y_train, ds.y_test])
    # numeric labels sort numerically: 2 -> 0, 10 -> 1
    assert dict(zip(rows[:, 0].tolist(), labels.tolist())) == {0.5: 1, 1.5: 0, 2.5: 1, 3.5: 0}


@pytest.mark.parametrize("text", [
    "\ufefff1;f2;label\n1.5;2;a\n3;4;b\n5;6;a\n7;8;b\n",   # BOM, semicolons, a header
    "\n1.5\t2\ta\n3\t4\tb\n\n5\t6\ta\n7\t8\tb\n",        # tabs, blank lines, no header
    "1.5,2,a\n3,4,b\n5,6,a\n7,8,b\n",
])
def test_csv_training_and_predict_files_are_read_alike(tmp_path, text):
    """One sniffing (files.sniff_csv/read_csv) for data.path and for sparsenet predict's --data."""
    from sparsenet.data.features import read_features

    path = tmp_path / "d.csv"
    path.write_text(text, encoding="utf-8")
    x, y = read_features(str(path), 2)
    np.testing.assert_array_equal(x, np.array([[1.5, 2], [3, 4], [5, 6], [7, 8]], dtype=np.float32))
    assert y.tolist() == ["a", "b", "a", "b"]
    ds = load_dataset(file_cfg("csv", path, test_fraction=0.5), 0)
    rows = np.concatenate([ds.x_train, ds.x_test])
    assert sorted(map(tuple, rows.tolist())) == sorted(map(tuple, x.tolist())) and ds.classes.tolist() == ["a", "b"]


def test_csv_errors(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("1,2,0\n3,x,1\n")
    assert data_error(file_cfg("csv", path)).startswith(f"cannot read csv file '{path}': ")
    path.write_text("1,2,0\n3,nan,1\n4,5,1\n")
    assert "non-finite value (nan)" in data_error(file_cfg("csv", path, test_fraction=0.4))
    path.write_text("1,2,0\n")
    assert data_error(file_cfg("csv", path, label_column=3)) == (
        f"data.label_column 3 is out of range for csv file '{path}' with 3 columns "
        f"(allowed -3..2)")
    path.write_text("")
    assert data_error(file_cfg("csv", path)) == f"csv file '{path}' is empty"


def _csv_with_labels(path, labels):
    rows = [f"{i},{2 * i},{label}" for i, label in enumerate(labels)]
    path.write_text("a,b,label\n" + "\n".join(rows) + "\n")


@pytest.mark.parametrize("bad,message", [
    ("nan", "y has the label 'nan' at line 8, which is not a class; labels must be whole numbers or names"),
    ("NaN", "y has the label 'NaN' at line 8, which is not a class; labels must be whole numbers or names"),
    ("inf", "y has the label 'inf' at line 8, which is not a class; labels must be whole numbers or names"),
    ("", "y has an empty label at line 8; every sample needs a class"),
    (" ", "y has an empty label at line 8; every sample needs a class"),
    ("1.5", "y has the label '1.5' at line 8; numeric labels must be whole numbers (1 and 1.0 are the same class)"),
])
def test_csv_bad_label_is_an_error_whatever_the_split(tmp_path, bad, message):
    """Labels are checked on the whole file before the split: every seed gives the same error."""
    path = tmp_path / "d.csv"
    labels = [str(i % 2) for i in range(30)]
    labels[6] = bad  # line 8: header + 6 rows before it
    _csv_with_labels(path, labels)
    for seed in range(6):
        assert data_error(file_cfg("csv", path, test_fraction=0.2), seed) == f"'{path}': {message}"


def test_csv_bad_label_among_names_is_an_error(tmp_path):
    path = tmp_path / "d.csv"
    labels = ["cat", "dog"] * 10
    labels[13] = "nan"
    _csv_with_labels(path, labels)
    assert data_error(file_cfg("csv", path)) == (
        f"'{path}': y has the label 'nan' at line 15, which is not a class; labels must be whole numbers or names")


def test_csv_one_and_one_point_zero_are_one_class(tmp_path):
    path = tmp_path / "d.csv"
    labels = ["1", "1.0", "0", "0.0", "2", "2.00", "1e0", "0"] * 3
    _csv_with_labels(path, labels)
    for seed in range(4):
        ds = load_dataset(file_cfg("csv", path, test_fraction=0.25), seed)
        assert ds.n_classes == 3
        rows = np.concatenate([ds.x_train, ds.x_test])[:, 0].astype(int)
        codes = np.concatenate([ds.y_train, ds.y_test])
        assert dict(zip(rows.tolist(), codes.tolist())) == {i: int(float(labels[i])) for i in range(len(labels))}


def test_npz_string_labels_that_only_a_split_would_make_numeric(tmp_path):
    """Names and numbers mixed: the classes come from the whole file, not from each part of a split."""
    path = tmp_path / "d.npz"
    y = np.array(["cat"] + ["1", "2"] * 10)
    np.savez(path, x=np.arange(42, dtype=np.float32).reshape(21, 2), y=y)
    for seed in range(6):
        ds = load_dataset(file_cfg("npz", path, test_fraction=0.3), seed)
        assert ds.n_classes == 3


def test_truncated_npz_says_so(tmp_path):
    import io
    import zipfile

    path = tmp_path / "d.npz"
    np.savez(path, x=X_TRAIN, y=np.array([0, 1, 0, 1]))
    whole = path.read_bytes()
    path.write_bytes(whole[:len(whole) // 2])
    assert data_error(file_cfg("npz", path)) == (
        f"'{path}' is a truncated or damaged .npz archive (it starts as a zip file but its directory is missing); "
        f"write it again")
    x = io.BytesIO()
    np.save(x, np.random.default_rng(0).random((200, 10)))
    y = io.BytesIO()
    np.save(y, np.arange(200) % 2)
    for damaged in (x.getvalue()[:1000], x.getvalue()[:20] + b"garbage" * 20):
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("x.npy", damaged)
            z.writestr("y.npy", y.getvalue())
        message = data_error(file_cfg("npz", path))
        assert message.startswith(f"'{path}': array 'x' is truncated or damaged (") and "pickle" not in message


# ---------------------------------------------------------------- synthetic

def test_synthetic_shapes_and_determinism():
    cfg = DataConfig(name="synthetic", samples=100, features=20, informative=3, redundant=2,
                     classes=3)
    a, b, c = load_dataset(cfg, 5), load_dataset(cfg, 5), load_dataset(cfg, 6)
    assert a.x_train.shape == (70, 20) and a.x_test.shape == (30, 20) and a.n_classes == 3
    assert a.x_train.dtype == np.float32 and a.y_train.dtype == np.int64
    assert set(np.concatenate([a.y_train, a.y_test]).tolist()) == {0, 1, 2}
    assert np.array_equal(a.x_train, b.x_train) and np.array_equal(a.y_test, b.y_test)
    assert not np.array_equal(a.x_train, c.x_train)
    np.testing.assert_allclose(a.x_train.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(a.x_train.std(axis=0), 1, atol=1e-5)


def test_synthetic_impossible_combination():
    cfg = DataConfig(name="synthetic", samples=100, features=20, informative=1, redundant=0,
                     classes=3)
    assert data_error(cfg).startswith("cannot make synthetic data with samples=100")


# ---------------------------------------------------------------- the real Debian package

@pytest.mark.skipif(not DEBIAN_FASHION.is_dir(), reason="dataset-fashion-mnist not installed")
def test_debian_fashion_mnist(monkeypatch):
    monkeypatch.setitem(idx.SYSTEM_DIRS, "fashion_mnist", [str(DEBIAN_FASHION)])
    ds = load_dataset(DataConfig(max_train=1000), 0)
    assert ds.name == "fashion_mnist"
    assert ds.x_train.shape == (1000, 784) and ds.x_test.shape == (10000, 784)
    assert ds.n_classes == 10 and ds.n_features == 784
    assert ds.y_train.min() >= 0 and ds.y_train.max() <= 9 and len(set(ds.y_train.tolist())) == 10
    assert ds.y_test.min() >= 0 and ds.y_test.max() <= 9
    assert isinstance(ds.x_train, ByteRows) and ds.x_train.raw.shape == (1000, 784)
    assert np.isfinite(np.asarray(ds.x_train)).all() and abs(float(np.asarray(ds.x_train).mean())) < 1e-3
    assert os.path.isdir(DEBIAN_FASHION)


def test_download_message_is_shown_on_the_command_line_log_and_silent_in_the_library(
        tmp_path, monkeypatch, http_root, capsys):
    import io
    import logging

    from sparsenet import logs

    root, url = http_root
    write_idx_set(root, gz=True)
    sums = {role: sha((root / (stem + ".gz")).read_bytes()) for role, stem in idx.IDX_FILES.items()}
    monkeypatch.setitem(idx._CATALOG, "mnist", {**idx._CATALOG["mnist"], "mirrors": (url,), "sha256": sums})
    monkeypatch.delenv("SPARSENET_NO_DOWNLOAD")
    load_dataset(mnist_cfg(), 0)   # library use: no output (stderr holds only the test server's request log)
    out, err = capsys.readouterr()
    assert out == "" and "downloading" not in err
    for p in (tmp_path / "cache" / "mnist").iterdir():
        p.unlink()
    logger = logging.getLogger("sparsenet")
    saved = logger.handlers[:], logger.level
    stream = io.StringIO()
    try:
        logs.configure(logging.INFO, stream)   # what `sparsenet train` sets up
        load_dataset(mnist_cfg(), 0)
    finally:
        logger.handlers[:], logger.level = saved
    lines = stream.getvalue().splitlines()
    shown = [line for line in lines if "downloading" in line]
    assert len(shown) == len(idx.IDX_FILES)
    assert f"[rank 0] downloading {url}train-images-idx3-ubyte.gz -> {tmp_path / 'cache' / 'mnist'}" in shown[0]
