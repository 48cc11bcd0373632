"""Odd inputs a demanding user hands sparsenet (session 7 review): data files, the Python library;
each refusal is one line (exit 2) or a clear exception type, never a traceback from deep inside."""

import io
import zipfile

import h5py
import numpy as np
import pytest

from tests.unit.cli_errors import error_of
from tests.unit.data_files import write_arrays
from sparsenet.cli import main

SMALL = ["--set", "model.hidden=[8]", "--set", "model.epsilon=2", "--set", "train.epochs=1",
         "--set", "train.batch_size=16", "--set", "train.progress=false"]


def _xy(n=50, f=4, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, f)).astype(np.float32), rng.integers(0, 3, n)


def _train_argv(tmp_path, kind, path):
    cfg = tmp_path / "empty.yaml"
    cfg.write_text("{}\n")
    return ["train", str(cfg), *SMALL, "--set", f"data.name={kind}", "--set", f"data.path={path}",
            "--out", str(tmp_path / "run")]


# ---------------------------------------------------------------- data files

@pytest.mark.parametrize("layout", ["whole", "split"])
@pytest.mark.parametrize("kind", ["npz", "hdf5"])
def test_data_with_no_features_is_one_line_not_a_division_by_zero(capsys, tmp_path, kind, layout):
    """x of shape (n, 0): the memory planner divided by the 0 inputs (ZeroDivisionError traceback)."""
    x, y = _xy()
    arrays = {"x": x[:, :0], "y": y} if layout == "whole" else \
        {"x_train": x[:, :0], "y_train": y, "x_test": x[:10, :0], "y_test": y[:10]}
    path = tmp_path / ("d.npz" if kind == "npz" else "d.h5")
    write_arrays(path, arrays)
    err = error_of(capsys, _train_argv(tmp_path, kind, path))
    assert "is empty, got shape (50, 0)" in err


def _npz_without_suffix(path, arrays):
    """An npz whose members are named 'x', 'y' (no .npy); np.load reads them under the same keys."""
    with zipfile.ZipFile(path, "w") as z:
        for k, a in arrays.items():
            b = io.BytesIO()
            np.save(b, a)
            z.writestr(k, b.getvalue())
    return path


@pytest.mark.parametrize("csr", [False, True])
def test_npz_members_without_the_npy_suffix_are_read(capsys, tmp_path, csr):
    """np.load lists member 'x' as key 'x' like 'x.npy': the size check looked only for 'x.npy' (KeyError)."""
    x, y = _xy()
    arrays = {"x": x, "y": y} if not csr else {
        "x_data": x.ravel(), "x_indices": np.tile(np.arange(4), 50), "x_indptr": np.arange(0, 201, 4),
        "x_shape": np.array([50, 4]), "y": y}
    path = _npz_without_suffix(tmp_path / "d.npz", arrays)
    assert main(_train_argv(tmp_path, "npz", path)) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err


def test_npz_member_without_suffix_is_still_size_checked(capsys, tmp_path):
    """A member 'x' whose header declares more than it stores is refused before numpy allocates it."""
    x, y = _xy()
    path = tmp_path / "d.npz"
    with zipfile.ZipFile(path, "w") as z:
        b = io.BytesIO()
        np.lib.format.write_array_header_1_0(b, {"descr": "<f4", "fortran_order": False, "shape": (10**6, 10**3)})
        z.writestr("x", b.getvalue() + x.tobytes())
        b = io.BytesIO()
        np.save(b, y)
        z.writestr("y", b.getvalue())
    err = error_of(capsys, _train_argv(tmp_path, "npz", path))
    assert "its header declares shape (1000000, 1000)" in err


def test_features_beyond_float32_give_one_line_and_no_warning(capsys, tmp_path):
    """float64 1e300 became inf with numpy's 'overflow encountered in cast' RuntimeWarning on stderr (3 lines)."""
    import warnings

    x, y = _xy()
    path = tmp_path / "d.npz"
    np.savez(path, x=x.astype(np.float64) * 1e300, y=y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        err = error_of(capsys, _train_argv(tmp_path, "npz", path))
    assert "has a non-finite value (-inf) at row 0, column 0" in err


def test_hdf5_null_dataspace_is_named(capsys, tmp_path):
    """h5py.Empty (no shape): 'NoneType' object is not iterable, before."""
    _, y = _xy()
    path = tmp_path / "d.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("x", data=h5py.Empty("f4"))
        f["y"] = y
    err = error_of(capsys, _train_argv(tmp_path, "hdf5", path))
    assert "dataset '/x' is empty (an HDF5 null dataspace" in err


def test_checkpoint_with_a_null_dataspace_is_named(tmp_path):
    import shutil

    import sparsenet
    from sparsenet.errors import CheckpointError

    x, y = _xy()
    model, _ = sparsenet.train({"model": {"hidden": [8], "epsilon": 2}, "train": {"epochs": 1, "progress": False}},
                               x, y)
    good = tmp_path / "good.h5"
    model.save(good)
    bad = tmp_path / "bad.h5"
    shutil.copy(good, bad)
    with h5py.File(bad, "a") as f:
        del f["layers/0/bias"]
        f.create_dataset("layers/0/bias", data=h5py.Empty("f4"))
    with pytest.raises(CheckpointError, match="'/layers/0/bias' is empty \\(an HDF5 null dataspace"):
        sparsenet.load(bad)


# ---------------------------------------------------------------- the estimators

EST = dict(hidden=[8], epochs=1, batch_size=16, epsilon=2)


@pytest.mark.parametrize("param,value", [("hidden", [4, 4]), ("epsilon", 3), ("activation", "relu"),
                                         ("dropout", 0.2), ("standardize", False), ("seed", 7)])
def test_warm_start_refuses_a_changed_network(param, value):
    """set_params(hidden=...) then a warm fit kept training the old 5-8-2 network without a word."""
    from sparsenet import SETClassifier
    from sparsenet.errors import ParameterError

    x, y = _xy(60, 5)
    est = SETClassifier(**EST, warm_start=True).fit(x, y)
    est.set_params(**{param: value})
    with pytest.raises(ParameterError, match=f"warm_start and partial_fit continue the fitted network, but {param} "):
        est.fit(x, y)
    assert est.model_.sizes == [5, 8, 3] and est.n_iter_ == 1


def test_partial_fit_refuses_a_changed_network():
    from sparsenet import SETRegressor
    from sparsenet.errors import ParameterError

    x, y = _xy(60, 5)
    est = SETRegressor(**EST).partial_fit(x, y.astype(float))
    with pytest.raises(ParameterError, match=r"hidden \(\[8\] -> \[3\]\) changed"):
        est.set_params(hidden=[3]).partial_fit(x, y.astype(float))


def test_warm_start_applies_a_changed_learning_rate():
    """lr, momentum, weight_decay changed between warm fits were silently ignored (the optimizer kept the first
    fit's); now they apply, with the optimizer's state kept, as on `sparsenet train --resume`."""
    from sparsenet import SETClassifier

    x, y = _xy(60, 5)
    est = SETClassifier(**EST, warm_start=True, lr=0.01, momentum=0.9).fit(x, y)
    est.set_params(lr=0.5, momentum=0.5).fit(x, y)
    assert est.n_iter_ == 2 and (est._state.optimizer.lr, est._state.optimizer.momentum) == (0.5, 0.5)
    velocity = [v.copy() for v in est._state.optimizer.state["velocity"]]
    assert any(np.any(v != 0) for v in velocity)
    est.set_params(lr=0.1)
    est._continue_with(est._params_config())  # what the next warm fit does first: the velocities are kept
    assert est._state.optimizer.lr == 0.1
    for a, b in zip(est._state.optimizer.state["velocity"], velocity):
        np.testing.assert_array_equal(a, b)


def test_partial_fit_refuses_other_classes_on_a_later_call():
    """classes=[0, 1, 2] on the second call was ignored (classes_ stayed [0, 1]); scikit-learn refuses it."""
    from sparsenet import SETClassifier

    x, y = _xy(60, 5)
    y = y % 2
    est = SETClassifier(**EST).partial_fit(x, y, classes=[0, 1])
    with pytest.raises(ValueError, match=r"classes=\[0, 1, 2\] differs from the first call's classes_ \[0, 1\]"):
        est.partial_fit(x, y, classes=[0, 1, 2])
    est.partial_fit(x, y, classes=[1, 0])  # the same set, in any order
    assert est.n_iter_ == 2 and est.classes_.tolist() == [0, 1]


# ---------------------------------------------------------------- Model.from_sparse

def _weights():
    import scipy.sparse as sp

    return [sp.random(8, 5, density=0.5, format="csr", random_state=1),
            sp.random(2, 8, density=0.5, format="csr", random_state=2)]


@pytest.mark.parametrize("kwargs,expected", [
    (dict(weights="complex"), r"weights\[0\] must hold real numbers, got dtype complex128"),
    (dict(biases=[np.ones(8) * 1j, np.zeros(2)]), r"biases\[0\] must be real numbers, got dtype complex128"),
    (dict(biases=[["a"] * 8, np.zeros(2)]), r"biases\[0\] must be real numbers, got dtype <U1"),
    (dict(slopes=["a"]), "slopes must be real numbers, got dtype <U1"),
    (dict(mean=np.zeros(5) + 1j, std=np.ones(5)), "mean must be real numbers, got dtype complex128"),
])
def test_from_sparse_refuses_values_that_are_not_real_numbers(kwargs, expected):
    """Complex weights, biases or mean lost their imaginary part silently (a model predicting from other numbers);
    strings ended in numpy's 'could not convert string to float' naming no argument."""
    import warnings

    from sparsenet.api import Model
    from sparsenet.errors import InputError

    weights = _weights()
    if kwargs.pop("weights", None) == "complex":
        weights[0] = weights[0] * (1 + 1j)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's ComplexWarning was the only trace before
        with pytest.raises(InputError, match=expected):
            Model.from_sparse(weights, **kwargs)


def test_from_sparse_keeps_slopes_and_values_exact():
    from sparsenet.api import Model

    weights = _weights()
    model = Model.from_sparse(weights, slopes=[0.1], biases=[np.arange(8), np.ones(2)])
    assert model.slopes == [0.1]
    np.testing.assert_array_equal(model.biases[0], np.arange(8, dtype=np.float32))
    np.testing.assert_array_equal(model.layers[1].toarray(), weights[1].toarray().astype(np.float32))


# ---------------------------------------------------------------- checkpoints and the model's task

def _csv(tmp_path, n=80, f=6):
    x, y = _xy(n, f)
    path = tmp_path / "d.csv"
    np.savetxt(path, np.column_stack([x, y]), delimiter=",", fmt="%.5f")
    return path


def test_autoencoder_trained_on_a_labelled_file_writes_a_checkpoint_it_can_read(capsys, tmp_path):
    """The CSV's 3 classes were stored with the 6-output autoencoder: every command then refused the
    checkpoint it had just written ('preprocessing classes must be 6 distinct ...'), --resume too."""
    import json

    import sparsenet

    argv = [*_train_argv(tmp_path, "csv", _csv(tmp_path)), "--set", "model.task=autoencoder",
            "--set", "model.output=linear"]
    assert main(argv) == 0
    capsys.readouterr()
    ckpt = tmp_path / "run" / "checkpoint.h5"
    assert main(["info", "--json", str(ckpt)]) == 0
    assert json.loads(capsys.readouterr().out)["neurons"] == [6, 8, 6]
    model = sparsenet.load(ckpt)
    assert model.preprocessing.classes is None and model.logits(np.zeros((2, 6))).shape == (2, 6)
    assert main([*argv, "--set", "train.epochs=2", "--resume"]) == 0
    assert sparsenet.load(ckpt).history[-1]["epoch"] == 2


@pytest.mark.parametrize("call", ["predict", "predict_proba", "evaluate"])
def test_an_autoencoder_model_names_no_classes(tmp_path, call):
    """Model.predict of a loaded autoencoder returned argmax over its reconstructed features as 'classes'."""
    import sparsenet
    from sparsenet.errors import InputError

    argv = [*_train_argv(tmp_path, "csv", _csv(tmp_path)), "--set", "model.task=autoencoder",
            "--set", "model.output=linear", "-q"]
    assert main(argv) == 0
    model = sparsenet.load(tmp_path / "run" / "checkpoint.h5")
    x = np.zeros((3, 6))
    args = (x, [0, 1, 2]) if call == "evaluate" else (x,)
    with pytest.raises(InputError, match=f"{call}: this model is an autoencoder .* use logits"):
        getattr(model, call)(*args)


def test_evaluate_refuses_an_output_its_task_cannot_score(capsys, tmp_path):
    """A classifier checkpoint whose output attribute says linear: evaluate ended in output_loss's ValueError
    traceback ('the linear output reconstructs float targets')."""
    import shutil

    assert main([*_train_argv(tmp_path, "csv", _csv(tmp_path)), "-q"]) == 0
    bad = tmp_path / "bad.h5"
    shutil.copy(tmp_path / "run" / "checkpoint.h5", bad)
    with h5py.File(bad, "a") as f:
        f.attrs["output"] = "linear"
    err = error_of(capsys, ["evaluate", str(bad)])
    assert "the model's output is linear, which model.task classifier cannot use (it needs softmax or sigmoid)" in err


# ---------------------------------------------------------------- CSV rows

def _rows(n=40):
    return "".join(f"{i * 0.1},{i % 3 * 1.5},{(i * 7) % 5},{i % 3}\n" for i in range(n))


@pytest.mark.parametrize("extra,line_fields", [("1,2,3,4,2\n", "line 41 has 5 fields"),
                                               ("1,2\n", "line 41 has 2 fields")])
def test_csv_rows_with_other_field_counts_are_refused(capsys, tmp_path, extra, line_fields):
    """A longer row was read silently (np.loadtxt's usecols ignores extra fields: its label came from the 4th of
    its 5 fields); a shorter one gave numpy's 'invalid column index 2 at row 41'."""
    path = tmp_path / "d.csv"
    path.write_text(_rows() + extra)
    err = error_of(capsys, _train_argv(tmp_path, "csv", path))
    assert f"{line_fields} but the first line has 4; every row needs the same columns" in err


def test_csv_first_line_with_another_delimiter_is_refused(capsys, tmp_path):
    """'0.0;0.0,0,0' sniffs ',' and 3 columns: every later row's label came silently from its 3rd column."""
    path = tmp_path / "d.csv"
    path.write_text(_rows().replace(",", ";", 1))
    err = error_of(capsys, _train_argv(tmp_path, "csv", path))
    assert "line 2 has 4 fields but the first line has 3" in err


def test_csv_quoted_labels_with_the_delimiter_still_read(tmp_path, capsys):
    path = tmp_path / "d.csv"
    path.write_text("".join(f'{i},{i % 5},{i % 7},"a,{i % 2}"\n' for i in range(40)))
    assert main([*_train_argv(tmp_path, "csv", path), "-q"]) == 0


def test_csv_header_without_rows_is_one_line(capsys, tmp_path):
    """numpy's 'loadtxt: input contained no data' UserWarning went to stderr before the error (5 lines)."""
    import warnings

    path = tmp_path / "d.csv"
    path.write_text("a,b,c,label\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        err = error_of(capsys, _train_argv(tmp_path, "csv", path))
    assert "x is empty, got shape (0, 3)" in err


# ---------------------------------------------------------------- output folders

def test_out_that_is_another_users_symlink_is_refused(tmp_path, monkeypatch, capsys):
    """--out planted as a symlink by another user (to a folder of ours) was followed: its owner could repoint
    it between two checkpoint writes. Our own symlinks still work."""
    import os

    from sparsenet import fileio

    mine = tmp_path / "mine"
    mine.mkdir(mode=0o755)
    ours = tmp_path / "ours"
    ours.symlink_to(mine)
    assert fileio.check_folder(ours) == ours
    planted = tmp_path / "planted"
    planted.symlink_to(mine)
    if os.geteuid() == 0:
        os.lchown(planted, 65534, -1)
    else:
        monkeypatch.setattr(fileio, "_my_uid", lambda: os.geteuid() + 1)
    err = error_of(capsys, ["train", "configs/fashion_mnist.yaml", "--set", "data.name=synthetic", "--out",
                            str(planted)])
    assert f"output folder '{planted}' is a symbolic link of another user (uid" in err
    err = error_of(capsys, ["data", "synth", "--out", str(planted / "d.h5")])
    assert "is a symbolic link of another user" in err
    assert list(mine.iterdir()) == []


# ---------------------------------------------------------------- the library plans its memory

@pytest.mark.parametrize("entry", ["train", "fit", "partial_fit"])
def test_library_training_plans_memory_before_building_the_network(entry):
    """hidden=[10**9] ended in numpy's 'Unable to allocate 37.3 GiB' from sparse/init.py (smaller widths were
    really allocated, up to an OOM kill); the CLI planned, the library did not."""
    import sparsenet
    from sparsenet.memory import InsufficientMemoryError

    x, y = _xy(60, 5)
    with pytest.raises(InsufficientMemoryError, match=r"not enough memory: training 5-1000000000-3 with "
                                                      r"[\d,]+ connections needs about [\d.]+ GiB"):
        if entry == "train":
            sparsenet.train({"model": {"hidden": [10**9]}, "train": {"epochs": 1, "progress": False}}, x, y)
        else:
            est = sparsenet.SETClassifier(hidden=[10**9], epochs=1)
            est.fit(x, y) if entry == "fit" else est.partial_fit(x, y, classes=[0, 1, 2])


def test_library_training_respects_memory_limit_gb():
    import sparsenet
    from sparsenet.memory import InsufficientMemoryError

    x, y = _xy(60, 5)
    cfg = {"model": {"hidden": [8], "epsilon": 2}, "train": {"epochs": 1, "progress": False}}
    with pytest.raises(InsufficientMemoryError, match=r"only 0\.01 GiB is available \(memory_limit_gb = 0\.01\)"):
        sparsenet.train({**cfg, "memory_limit_gb": 0.01}, x, y)
    model, history = sparsenet.train(cfg, x, y)
    assert model.sizes == [5, 8, 3] and len(history) == 1


def test_resume_refuses_data_whose_classes_changed(capsys, tmp_path):
    """The data file rewritten with labels 5, 6, 7 under the same path: --resume went on silently, output 0 now
    standing for '5', and the checkpoint's stored classes were replaced."""
    import sparsenet

    x, y = _xy(80, 6)
    path = tmp_path / "d.csv"
    np.savetxt(path, np.column_stack([x, y]), delimiter=",", fmt="%.5f")
    argv = [*_train_argv(tmp_path, "csv", path), "-q"]
    assert main(argv) == 0
    np.savetxt(path, np.column_stack([x, y + 5]), delimiter=",", fmt="%.5f")
    capsys.readouterr()
    err = error_of(capsys, [*argv, "--set", "train.epochs=2", "--resume"])
    assert "stand for the classes ['0', '1', '2'], but the data's are ['5', '6', '7']" in err
    assert sparsenet.load(tmp_path / "run" / "checkpoint.h5").classes_.tolist() == [0, 1, 2]
    np.savetxt(path, np.column_stack([x, y]), delimiter=",", fmt="%.5f")  # the same data again: resumes
    assert main([*argv, "--set", "train.epochs=2", "--resume"]) == 0


def test_evaluate_scores_labels_by_name_not_by_their_rank(capsys, tmp_path):
    """evaluate re-encoded the data's labels 0..k-1 by their sorted order and ignored the classes stored with the
    model: test labels 1, 2 were scored as outputs 0, 1, and labels 1, 2, 3 as 0, 1, 2 (no error)."""
    import json

    import sparsenet

    rng = np.random.default_rng(1)
    x = rng.normal(size=(400, 6)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0)
    train = tmp_path / "train.npz"
    np.savez(train, x_train=x[:300], y_train=y[:300], x_test=x[300:], y_test=y[300:])
    assert main([*_train_argv(tmp_path, "npz", train), "--set", "train.epochs=3", "-q"]) == 0
    ckpt = tmp_path / "run" / "checkpoint.h5"
    capsys.readouterr()

    keep = y[300:] > 0  # a test file holding only the classes 1 and 2
    sub = tmp_path / "sub.npz"
    np.savez(sub, x_train=x[:300], y_train=np.maximum(y[:300], 1), x_test=x[300:][keep], y_test=y[300:][keep])
    assert main(["evaluate", str(ckpt), "--set", f"data.path={sub}"]) == 0
    scored = json.loads(capsys.readouterr().out)
    expected = sparsenet.load(ckpt).evaluate(x[300:][keep], y[300:][keep])
    assert scored["test_samples"] == int(keep.sum())
    assert scored["test_accuracy"] == pytest.approx(expected["accuracy"])
    assert scored["test_loss"] == pytest.approx(expected["loss"], rel=1e-6)

    shifted = tmp_path / "shifted.npz"
    np.savez(shifted, x_train=x[:300], y_train=y[:300] + 1, x_test=x[300:], y_test=y[300:] + 1)
    err = error_of(capsys, ["evaluate", str(ckpt), "--set", f"data.path={shifted}"])
    assert "has labels the model in" in err and "does not know: 3; its outputs stand for 0, 1, 2" in err


def test_evaluate_refuses_data_standardised_otherwise_than_the_model(capsys, tmp_path):
    """--set data.path=other: its own training part's mean/std standardised the test samples, not the stored
    ones the model was trained with, and evaluate printed the resulting numbers as the model's."""
    x, y = _xy(200, 6)
    train = tmp_path / "train.npz"
    np.savez(train, x_train=x[:150], y_train=y[:150], x_test=x[150:], y_test=y[150:])
    assert main([*_train_argv(tmp_path, "npz", train), "-q"]) == 0
    other = tmp_path / "other.npz"
    np.savez(other, x_train=x[:150] * 3 + 1, y_train=y[:150], x_test=x[150:], y_test=y[150:])
    capsys.readouterr()
    err = error_of(capsys, ["evaluate", str(tmp_path / "run" / "checkpoint.h5"), "--set", f"data.path={other}"])
    assert "with its own training part's statistics, which are not those the model in" in err
    assert "sparsenet predict" in err
    assert main(["evaluate", str(tmp_path / "run" / "checkpoint.h5")]) == 0  # its own data: as before


def test_cifar_batches_larger_than_memory_are_refused_before_allocation(tmp_path, monkeypatch):
    """read_batches allocated sum(file sizes) at once: a sparse file (declared size, nothing stored) of some
    GB was allocated and then read in full as zeros; now the declared total is checked first (as for IDX)."""
    from sparsenet import memory
    from sparsenet.data import cifar
    from sparsenet.errors import DataError

    path = tmp_path / "data_batch_1.bin"
    with open(path, "wb") as fh:
        fh.truncate(1000 * cifar.RECORD)  # sparse: 3 MB declared, nothing stored
    monkeypatch.setattr(memory, "available_memory", lambda limit_gb=None: (2**20, "test: 1 MiB"))
    with pytest.raises(DataError, match=r"hold 0\.00 GiB, more than the 0\.00 GiB available \(test: 1 MiB\)"):
        cifar.read_batches([path])
    monkeypatch.setattr(memory, "available_memory", lambda limit_gb=None: (2**30, "test: 1 GiB"))
    pixels, labels = cifar.read_batches([path])
    assert pixels.shape == (1000, 3072) and not labels.any()


# ---------------------------------------------------------------- damaged scipy.sparse matrices

_DAMAGED_CSC = """
import numpy as np, scipy.sparse as sp
import sparsenet
from sparsenet.api import Model
from sparsenet.errors import InputError
m = sp.random(10, 6, density=0.5, format="csc", random_state=0)
bad = sp.csc_matrix((m.data, m.indices + 100, m.indptr), shape=(10, 6))  # row indices beyond the 10 rows
x, y = np.random.default_rng(0).normal(size=(10, 6)), np.arange(10) % 2
model = Model.from_sparse([sp.random(2, 6, density=0.5, format="csr", random_state=1)])
est = sparsenet.SETClassifier(hidden=[4], epochs=1, epsilon=2).fit(x, y)
calls = {"Model.predict": lambda: model.predict(bad), "SETClassifier.predict": lambda: est.predict(bad),
         "sparsenet.train": lambda: sparsenet.train({"model": {"hidden": [4]}, "train": {"epochs": 1}}, bad, y),
         "Model.from_sparse": lambda: Model.from_sparse([bad])}
for name, call in calls.items():
    try:
        call()
        print(name, "accepted")
    except InputError as e:
        print(name, "refused:", e)
"""


def test_damaged_scipy_matrices_are_refused_not_converted(tmp_path):
    """scipy trusts a CSC matrix's indices: converting one whose row indices exceed its shape wrote out of bounds,
    a segmentation fault (predict, the estimators, from_sparse) or, in sparsenet.train, training on damaged memory."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", _DAMAGED_CSC], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-500:]
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 4, lines
    for line in lines:
        assert "refused:" in line and "a scipy.sparse csc matrix whose index pointers or indices do not fit its " \
               "shape (10, 6); it is damaged" in line, line


def test_predict_refuses_a_damaged_scipy_npz(tmp_path):
    """sparsenet predict --data on a scipy.sparse.save_npz file with bad indices: segmentation fault (exit -11)."""
    import subprocess
    import sys

    import scipy.sparse as sp

    import sparsenet

    model = sparsenet.Model.from_sparse([sp.random(2, 6, density=0.5, format="csr", random_state=1)])
    model.save(tmp_path / "m.h5")
    m = sp.random(10, 6, density=0.5, format="csc", random_state=0)
    np.savez(tmp_path / "bad.npz", data=m.data, indices=m.indices + 100, indptr=m.indptr, shape=np.array([10, 6]),
             format=np.array("csc"))
    done = subprocess.run([sys.executable, "-m", "sparsenet", "predict", str(tmp_path / "m.h5"), "--data",
                           str(tmp_path / "bad.npz")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, (done.returncode, done.stderr[-300:])
    assert done.stderr.strip().count("\n") == 0
    assert "a scipy.sparse csc matrix whose index pointers or indices do not fit its shape (10, 6)" in done.stderr


# ---------------------------------------------------------------- plot

_ROW = {"epoch": 1, "train_loss": 1.0, "test_loss": 1.0, "test_accuracy": 0.5, "train_seconds": 1.0,
        "nnz": [3, 2], "neurons": [4, 3, 2]}


@pytest.mark.parametrize("text,expected", [
    ("[1, 2]\n", "line 1 is not an object but a list"),
    ('{"train_loss": 1}\n', "line 1 has epoch None, expected a whole number"),
    ("ROW\n" + '{"epoch": 2}\n', "line 2 has train_loss None, expected a number"),
    ("ROW\n".replace("ROW", '{"epoch": 1, "train_loss": 1.0, "test_loss": 1.0, "test_accuracy": null}'),
     "line 1 has test_accuracy None, expected a number"),
    ("ROW\n".replace("ROW", '{"epoch": 1, "train_loss": 1.0, "test_loss": 1.0, "nnz": 5}'),
     "line 1 has nnz 5, expected a list of numbers"),
    ("[" * 100000 + "]" * 100000 + "\n", "its JSON nests too deeply"),
])
def test_plot_refuses_metrics_it_cannot_draw(capsys, tmp_path, text, expected):
    """Rows that are not the metrics of a run ended in KeyError/TypeError/ValueError/RecursionError tracebacks."""
    import json

    pytest.importorskip("matplotlib")
    path = tmp_path / "metrics.jsonl"
    path.write_text(text.replace("ROW", json.dumps(_ROW)))
    err = error_of(capsys, ["plot", str(path), "--out", str(tmp_path / "p.png")])
    assert expected in err


def test_plot_draws_classifier_and_autoencoder_rows(capsys, tmp_path):
    import json

    pytest.importorskip("matplotlib")
    ae = {k: v for k, v in _ROW.items() if k != "test_accuracy"}
    for name, row in (("c.jsonl", _ROW), ("a.jsonl", ae)):
        (tmp_path / name).write_text("".join(json.dumps({**row, "epoch": e, "validation_loss": None}) + "\n"
                                             for e in (1, 2)))
    assert main(["plot", str(tmp_path / "c.jsonl"), str(tmp_path / "a.jsonl"), "--out", str(tmp_path / "p.png")]) == 0
    assert (tmp_path / "p.png").stat().st_size > 1000


# ---------------------------------------------------------------- data synth

def test_data_synth_refuses_what_memory_cannot_hold(capsys, tmp_path, monkeypatch):
    """--features/--samples drove allocations unchecked: --features 3000000000 asked for 11.2 GiB for one row
    (and more for the column choice), a plan sparsenet train makes for the same data."""
    from sparsenet import memory

    monkeypatch.setattr(memory, "available_memory", lambda limit_gb=None: (2 << 20, "test: 2 MiB"))
    out = tmp_path / "s.h5"
    err = error_of(capsys, ["data", "synth", "--samples", "100", "--features", "10000", "--out", str(out)])
    assert "writing 100 samples of 10,000 features needs about 0.01 GiB at once, more than the 0.00 GiB available " \
           "(test: 2 MiB)" in err
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_data_synth_reserves_its_file_before_hdf5_writes(tmp_path):
    """Without the reservation a disk (or file-size limit) too small for the file failed inside HDF5: a
    segmentation fault (exit -11) or a traceback, after writing tens of GB on a full disk."""
    import resource
    import signal
    import subprocess
    import sys

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))

    out = tmp_path / "s.h5"
    proc = subprocess.run([sys.executable, "-m", "sparsenet", "data", "synth", "--samples", "1000", "--features",
                           "1000", "--out", str(out)], capture_output=True, text=True, preexec_fn=limit, timeout=300)
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-400:])
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"sparsenet: error: cannot write synthetic data file '{out}': ")
    assert list(tmp_path.iterdir()) == []


def test_idx_with_more_dimensions_than_numpy_holds(tmp_path):
    """ndim 255 (one byte of the magic number): numpy's 'maximum supported dimension ... 64' ValueError traceback."""
    import struct

    from sparsenet.data import idx
    from sparsenet.errors import DataError

    path = tmp_path / "x.idx"
    path.write_bytes(struct.pack(">HBB", 0, 0x08, 255) + struct.pack(">255I", *(1,) * 255) + b"\x00")
    with pytest.raises(DataError, match="header says 255 dimensions; an IDX array here has at most 32"):
        idx.read_idx(path)


# ---------------------------------------------------------------- the memory plan of generated data

_SYNTH_PEAK = """
import json
from sparsenet.config import load_config
from sparsenet.data import load_dataset
from sparsenet.memory import LOAD_SCRATCH_BYTES, data_shape, plan_memory
from sparsenet.metrics import peak_rss_mb  # this process's own peak (ru_maxrss may hold the parent's)
import sklearn.datasets  # its import (~40 MiB) is the interpreter's share of the plan, not the data's
cfg = load_config(None, ["data.name=synthetic", "data.samples=20000", "data.features=500", "model.hidden=[10]"])
shape = data_shape(cfg)
items = {i.name: i for i in plan_memory(cfg).ranks[0].items}
before = peak_rss_mb()
load_dataset(cfg.data, cfg.seed)
grown = (peak_rss_mb() - before) * 2**20
print(json.dumps({"grown": grown, "load_peak": shape.load_peak, "data": items["data"].bytes,
                  "transient": items["transient peak"].bytes, "scratch": LOAD_SCRATCH_BYTES}))
"""


def test_the_plan_counts_generating_synthetic_data():
    """data.name synthetic: make_classification's float64 x and its copies peaked at ~27 B per value while the plan
    counted the 4 B float32 result only (20000 x 2000: 1020 MiB grown, 153 MiB planned)."""
    import json
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", _SYNTH_PEAK], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-500:]
    m = json.loads(done.stdout)
    assert m["load_peak"] == 28 * 20000 * 500
    assert m["transient"] == m["load_peak"] - m["data"] + m["scratch"]  # loading is the largest transient here
    assert m["grown"] <= m["load_peak"] + m["scratch"]
    assert m["grown"] > 4 * m["data"]  # the float32 data the plan counted before is far below it
