"""Small-integer features kept as uint8 (data/rows.py): the same float32 values as the float32 path, bit for bit."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from sparsenet.config import DataConfig, load_config
from sparsenet.data.prepare import finish, standardize
from sparsenet.data.rows import ByteRows, small_integers
from sparsenet.sparse import kernels
from sparsenet.train import new_state, train_epoch

FASHION = Path("/usr/share/datasets/fashion-mnist")


def bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


def pixels(n: int, d: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).integers(0, 256, size=(n, d), dtype=np.uint8)
    x[:, 0] = 0      # a constant feature: std 0 -> 1
    x[:, 1] = 255
    x[: n // 2, 2] = 7  # a feature with few values
    return x


def float_path(x_train: np.ndarray, x_test: np.ndarray, scale: bool, standardise: bool):
    """What the float32 path stores: float32, / 255 for pixels, standardised in place."""
    a, b = x_train.astype(np.float32), x_test.astype(np.float32)
    if scale:
        a /= np.float32(255)
        b /= np.float32(255)
    mean = std = None
    if standardise:
        mean, std = standardize(a, b)
    return a, b, mean, std


def gathered(x, index) -> np.ndarray:
    out = np.empty((x.shape[1], len(index)), dtype=np.float32)
    return kernels.gather_batch(x, np.asarray(index), out)


@pytest.mark.parametrize("standardise", [True, False])
@pytest.mark.parametrize("scale", [True, False])
def test_bytes_read_as_the_float32_path_bit_for_bit(standardise, scale):
    xtr, xte = pixels(300, 40, 0), pixels(70, 40, 1)
    ds = finish(DataConfig(standardize=standardise), "t", xtr, np.zeros(300, dtype=np.int64), xte,
                np.zeros(70, dtype=np.int64), 10, pixels=scale)
    a, b, mean, std = float_path(xtr, xte, scale, standardise)
    assert isinstance(ds.x_train, ByteRows) and ds.x_train.raw is xtr  # whole, uint8, C-contiguous: not copied
    if standardise:
        assert np.array_equal(bits(ds.mean), bits(mean)) and np.array_equal(bits(ds.std), bits(std))
        assert ds.std[0] == 1 and ds.std[1] == 1
    else:
        assert ds.mean is None and ds.std is None
    batch = np.random.default_rng(2).permutation(300)[:64]
    assert np.array_equal(bits(gathered(ds.x_train, batch)), bits(a[batch].T))
    assert np.array_equal(bits(gathered(ds.x_train, np.arange(300))), bits(a.T))
    assert np.array_equal(bits(gathered(ds.x_test, np.arange(70))), bits(b.T))
    assert np.array_equal(bits(np.asarray(ds.x_train)), bits(a)) and np.array_equal(bits(np.asarray(ds.x_test)), bits(b))


@pytest.mark.skipif(not FASHION.is_dir(), reason="dataset-fashion-mnist not installed")
def test_fashion_mnist_gathered_equals_the_precomputed_float32_values():
    """All 70k FashionMNIST images: statistics and every standardised float32 the same bits as the float32 path."""
    from sparsenet.data import load_dataset
    from sparsenet.data.idx import find_idx_files, load_idx_pair

    ds = load_dataset(DataConfig(path=str(FASHION)), 0)
    files, _ = find_idx_files(FASHION)
    xtr, _ = load_idx_pair(files["train_images"], files["train_labels"])
    xte, _ = load_idx_pair(files["test_images"], files["test_labels"])
    a, b, mean, std = float_path(xtr, xte, True, True)
    assert isinstance(ds.x_train, ByteRows) and ds.x_train.raw.nbytes == 60000 * 784
    assert np.array_equal(bits(ds.mean), bits(mean)) and np.array_equal(bits(ds.std), bits(std))
    for rows, expected in ((ds.x_train, a), (ds.x_test, b)):
        for start in range(0, len(expected), 8192):
            index = np.arange(start, min(start + 8192, len(expected)))
            assert np.array_equal(bits(gathered(rows, index)), bits(expected[index].T))


def test_only_whole_numbers_in_0_255_are_kept_as_bytes():
    ok = [np.array([[0, 255], [3, 4]], dtype=np.int64), np.array([[0.0, 255.0], [3.0, 4.0]]),
          np.array([[True, False]]), np.array([[1, 2]], dtype=np.int8)]
    not_ok = [np.array([[0, 256]]), np.array([[-1, 3]]), np.array([[0.5, 1.0]]), np.array([[-0.0, 1.0]]),
              np.array([[np.nan, 1.0]]), np.array([[np.inf, 1.0]]), np.array([[1e-30, 1.0]], dtype=np.float32)]
    assert all(small_integers(x) for x in ok)
    assert not any(small_integers(x) for x in not_ok)
    y = np.zeros(2, dtype=np.int64)
    # a float64 file of whole numbers: stored as bytes, read as float32(v) exactly
    ds = finish(DataConfig(standardize=False), "t", np.array([[1.0, 2.0], [3.0, 200.0]]), y,
                np.array([[0.0, 9.0], [5.0, 6.0]]), y, 2)
    assert isinstance(ds.x_train, ByteRows) and np.array_equal(np.asarray(ds.x_train), [[1, 2], [3, 200]])
    # one array with a fraction: both keep float32 (train and test are read the same way)
    ds = finish(DataConfig(standardize=False), "t", np.array([[1.0, 2.0], [3.0, 4.0]]), y,
                np.array([[0.5, 9.0], [5.0, 6.0]]), y, 2)
    assert isinstance(ds.x_train, np.ndarray) and ds.x_train.dtype == np.float32
    assert isinstance(ds.x_test, np.ndarray) and ds.x_test[0, 0] == np.float32(0.5)


def test_max_train_copies_the_kept_rows_and_int64_input_becomes_uint8():
    x = pixels(50, 6, 3).astype(np.int64)
    y = np.zeros(50, dtype=np.int64)
    ds = finish(DataConfig(standardize=False, max_train=10, max_test=5), "t", x, y, x, y, 10, pixels=True)
    assert ds.x_train.raw.dtype == np.uint8 and ds.x_train.raw.base is None and ds.x_train.shape == (10, 6)
    assert ds.x_test.shape == (5, 6) and len(ds.y_train) == 10
    assert np.array_equal(bits(np.asarray(ds.x_train)), bits(x[:10].astype(np.float32) / np.float32(255)))


def test_rows_index_like_an_array_of_their_float32_values():
    raw = pixels(20, 5, 4)
    mean, std = np.full(5, 0.25, dtype=np.float32), np.full(5, 2.0, dtype=np.float32)
    rows = ByteRows(raw, 255.0, mean, std)
    full = np.asarray(rows)
    view = rows[3:9]
    assert isinstance(view, ByteRows) and np.shares_memory(view.raw, raw) and view.table is rows.table
    assert np.array_equal(np.asarray(view), full[3:9])
    pick = rows[np.array([5, 0, 19])]  # a worker's shard: a uint8 copy
    assert isinstance(pick, ByteRows) and not np.shares_memory(pick.raw, raw)
    assert np.array_equal(np.asarray(pick), full[[5, 0, 19]])
    assert np.array_equal(rows[7], full[7]) and np.array_equal(rows[-1], full[-1])
    assert rows[2, 3] == full[2, 3] and np.array_equal(rows[2:4, 1], full[2:4, 1])
    assert rows.shape == (20, 5) and len(rows) == 20 and rows.dtype == np.float32
    assert rows.nbytes == 20 * 5 + 5 * 256 * 4  # the bytes and the lookup table
    with pytest.raises(IndexError):
        rows[20]


def test_gather_bytes_checks_its_arrays():
    raw = pixels(10, 4, 5)
    out = np.empty((4, 3), dtype=np.float32)
    table = ByteRows(raw).table
    with pytest.raises(ValueError, match="row index out of range"):
        kernels.gather_bytes(raw, np.array([0, 10, 1]), table, out)
    with pytest.raises(ValueError, match="table must be"):
        kernels.gather_bytes(raw, np.array([0, 1, 2]), np.zeros((3, 256), dtype=np.float32), out)
    with pytest.raises(ValueError, match="raw must be"):
        kernels.gather_bytes(raw.astype(np.int16), np.array([0, 1, 2]), table, out)
    with pytest.raises(ValueError, match="out must have shape"):
        kernels.gather_bytes(raw, np.array([0, 1]), table, out)


def test_training_on_bytes_is_training_on_their_float32_values():
    cfg = load_config(None, ["data.name=synthetic", "model.hidden=[30,20]", "model.epsilon=4", "train.batch_size=16",
                             "train.eval_batch_size=24", "model.dropout=0.2"])
    raw = pixels(100, 12, 6)
    y = np.random.default_rng(7).integers(0, 3, size=100)
    ds = finish(replace(cfg.data, standardize=True), "t", raw, y, raw[:40].copy(), y[:40], 3, pixels=True)
    dense = np.asarray(ds.x_train)
    states = [new_state(cfg, 12, 3) for _ in range(2)]
    for state, x in zip(states, (ds.x_train, dense)):
        for _ in range(2):
            train_epoch(state, x, ds.y_train, 16)
    for a, b in zip(*(s.model.layers for s in states)):
        assert np.array_equal(bits(a.values), bits(b.values)) and np.array_equal(a.rows, b.rows)
    model = states[0].model
    test_dense = np.asarray(ds.x_test)
    assert model.evaluate(ds.x_test, ds.y_test, 24) == model.evaluate(test_dense, ds.y_test, 24)
    assert (model.evaluate(ds.x_test, ds.y_test, 7, max_bytes=1 << 20)
            == model.evaluate(test_dense, ds.y_test, 7, max_bytes=1 << 20))
