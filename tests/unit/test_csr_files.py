"""CSR data files (<x>_data, <x>_indices, <x>_indptr, <x>_shape in npz or HDF5): loaded as CSR end
to end, hostile parts refused in one line, planned in O(nnz), trained and scored without densifying."""

import json

import numpy as np
import pytest
import scipy.sparse as sp

from sparsenet.cli import main
from sparsenet.config import load_config
from sparsenet.data import load_dataset
from sparsenet.data.csr import CSRRows
from sparsenet.errors import DataError
from sparsenet.memory import plan_memory
from sparsenet.train import new_state, train_epoch
from tests import naive
from tests.unit.data_files import write_arrays


def words(n=300, d=2000, seed=0):
    """Bag-of-words-like CSR (n, d) whose label (0..2) is which of three 10-word vocabularies a sample uses."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    vocab = rng.choice(d, 30, replace=False).reshape(3, 10)
    rows = [np.unique(np.r_[rng.integers(0, d, 12), rng.choice(vocab[c], 3)]) for c in y]
    indptr = np.r_[0, np.cumsum([len(r) for r in rows])]
    x = sp.csr_array((rng.integers(1, 4, indptr[-1]).astype(np.float32), np.concatenate(rows), indptr), shape=(n, d))
    return x, y


def parts(name, x):
    return {f"{name}_data": x.data, f"{name}_indices": x.indices, f"{name}_indptr": x.indptr,
            f"{name}_shape": np.array(x.shape)}


def cfg_for(path, *extra):
    return load_config(None, [f"data.name={'npz' if path.suffix == '.npz' else 'hdf5'}", f"data.path={path}", *extra])


@pytest.mark.parametrize("suffix", [".npz", ".h5"])
def test_split_and_whole_files_load_as_csr(tmp_path, suffix):
    x, y = words()
    split = tmp_path / f"split{suffix}"
    write_arrays(split, {**parts("x_train", x[:200]), "y_train": y[:200], **parts("x_test", x[200:]), "y_test": y[200:]})
    d = load_dataset(cfg_for(split, "data.standardize=false").data, 0)
    assert isinstance(d.x_train, CSRRows) and d.x_train.shape == (200, 2000) and d.x_test.shape == (100, 2000)
    np.testing.assert_array_equal(naive.csr_dense(d.x_train), x[:200].toarray())
    np.testing.assert_array_equal(d.y_test, y[200:])
    d = load_dataset(cfg_for(split).data, 0)  # standardised: scale only, by the training std
    std = x[:200].toarray().std(axis=0)
    std[std == 0] = 1
    np.testing.assert_array_equal(d.mean, np.zeros(2000, np.float32))
    np.testing.assert_allclose(d.std, std, rtol=1e-5)
    np.testing.assert_array_equal(naive.csr_dense(d.x_test), x[200:].toarray() / d.std)
    whole = tmp_path / f"whole{suffix}"
    write_arrays(whole, {**parts("x", x), "y": y})
    d = load_dataset(cfg_for(whole, "data.standardize=false", "data.test_fraction=0.25").data, 3)
    assert d.x_train.shape == (225, 2000) and d.x_test.shape == (75, 2000)
    perm = np.random.default_rng(3).permutation(300)  # data.prepare.split's order
    np.testing.assert_array_equal(naive.csr_dense(d.x_train), x.toarray()[perm[75:]])


@pytest.mark.parametrize("suffix", [".npz", ".h5"])
@pytest.mark.parametrize("change,message", [
    ({"x_indptr": np.array([0, 3, 2, 5])}, "indptr must rise from 0 to nnz"),
    ({"x_indptr": np.array([0, 2, 5])}, "indptr must have samples \\+ 1 = 4 entries"),
    ({"x_indices": np.array([0, 1, 2, 9, 1])}, "column index 9 is outside \\[0, 6\\)"),
    ({"x_indices": np.array([0, 1, -2, 3, 1])}, "column index -2 is outside"),
    ({"x_shape": np.array([3, 6, 1])}, "shape must be two positive integers"),
    ({"x_shape": np.array([3, 0])}, "shape must be two positive integers"),
    ({"x_data": np.array([1.0, np.inf, 1, 1, 1])}, "non-finite value \\(inf\\) at row 0, column 1"),
    ({"x_data": np.array([1.0, 2, 3, 4])}, "indices has 5 entries but data has 4"),
    ({"x_data": np.array([1, 1, 1, 3e38, 3e38], np.float32), "x_indices": np.array([0, 1, 2, 1, 1])},
     "non-finite value \\(inf\\) at row 2, column 1"),  # a repeated column whose sum overflows float32
    ({"x_indices": np.array([0.0, 1, 2, 3, 1])}, "indices and indptr must be integers"),
    ({"x_indptr": None}, "expected x_train, y_train, x_test, y_test or x, y"),
])
def test_hostile_csr_parts_are_one_line_errors(tmp_path, suffix, change, message):
    good = {"x_data": np.ones(5, np.float32), "x_indices": np.array([0, 1, 2, 3, 1]),
            "x_indptr": np.array([0, 3, 3, 5]), "x_shape": np.array([3, 6]), "y": np.array([0, 1, 0])}
    arrays = {k: v for k, v in {**good, **change}.items() if v is not None}
    path = tmp_path / f"bad{suffix}"
    write_arrays(path, arrays)
    with pytest.raises(DataError, match=message) as err:
        load_dataset(cfg_for(path, "data.test_fraction=0.34").data, 0)
    assert "\n" not in str(err.value)


def test_unsorted_and_duplicate_columns_are_made_canonical(tmp_path):
    path = tmp_path / "dup.npz"
    write_arrays(path, {"x_data": np.array([1.0, 2, 3, 4, 5]), "x_indices": np.array([2, 0, 2, 1, 1]),
                 "x_indptr": np.array([0, 3, 3, 5]), "x_shape": np.array([3, 4]), "y": np.array([0, 1, 0])})
    d = load_dataset(cfg_for(path, "data.test_fraction=0.34", "data.standardize=false").data, 0)
    for x in (d.x_train, d.x_test):
        for r in range(x.shape[0]):
            cols = x.indices[x.indptr[r]:x.indptr[r + 1]]
            assert np.all(np.diff(cols) > 0)
    dense = np.r_[naive.csr_dense(d.x_train), naive.csr_dense(d.x_test)]
    assert sorted(map(tuple, dense.tolist())) == sorted([(2.0, 0, 4, 0), (0, 0, 0, 0), (0, 9, 0, 0)])


def test_plan_counts_nnz_and_no_input_buffer(tmp_path):
    x, y = words(400, 50_000)
    path = tmp_path / "w.npz"
    write_arrays(path, {**parts("x", x), "y": y})
    cfg = cfg_for(path, "model.hidden=[32]", "model.epsilon=2", "train.batch_size=16")
    data = load_dataset(cfg.data, cfg.seed)
    plan = plan_memory(cfg)
    items = {i.name: i.bytes for i in plan.ranks[0].items}
    held = sum(a.nbytes for x_ in (data.x_train, data.x_test) for a in (x_.data, x_.indices, x_.indptr))
    assert items["data"] == held + data.y_train.nbytes + data.y_test.nbytes
    assert items["data"] < 400 * 50_000 * 4 / 50  # O(nnz), not samples x features
    state = new_state(cfg, data.n_features, data.n_classes)
    train_epoch(state, data.x_train, data.y_train, cfg.train.batch_size)
    real_ws = sum(a.nbytes for group in state.model._flat for a in group)
    assert real_ws == 4 * 16 * (3 * 32 + 2 * data.n_classes)  # hidden: acts, f'(z), deltas; output: acts, deltas
    assert items["activations"] == 4 * 16 * (3 * 32 + 2 * plan.sizes[-1])  # the plan assumes 2 classes


def test_cli_trains_predicts_and_refuses_a_csr_file(tmp_path, capsys):
    x, y = words(600, 3000, seed=1)
    path = tmp_path / "w.h5"
    write_arrays(path, {**parts("x", x), "y": y})
    (tmp_path / "c.yaml").write_text(f"data: {{name: hdf5, path: {path}, standardize: false}}\n"
                                     "model: {hidden: [32], epsilon: 4}\n"
                                     "train: {epochs: 8, batch_size: 16, lr: 0.05, progress: false}\n")
    assert main(["train", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "run")]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["test_accuracy"] > 0.8  # chance is 1/3: the vocabularies are learnt
    test = tmp_path / "new.npz"
    write_arrays(test, {**parts("x", x[:50]), "y": y[:50]})
    assert main(["predict", str(tmp_path / "run" / "checkpoint.h5"), "--data", str(test)]) == 0
    preds = capsys.readouterr().out.strip().splitlines()
    assert preds[0] == "prediction" and len(preds) >= 51
    bad = tmp_path / "bad.npz"
    write_arrays(bad, {**parts("x", x[:50]), "x_indptr": np.zeros(51, np.int64) + 1, "y": y[:50]})
    assert main(["predict", str(tmp_path / "run" / "checkpoint.h5"), "--data", str(bad)]) == 2
    assert "CSR indptr must rise from 0 to nnz" in capsys.readouterr().err
