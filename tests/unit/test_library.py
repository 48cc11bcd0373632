"""sparsenet as a library: estimators in scikit-learn tooling, load/train/Model, boundary checks."""

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

import sparsenet
from sparsenet.config import load_config
from sparsenet.errors import ConfigError, DataError

sklearn = pytest.importorskip("sklearn", minversion="1.6")
from sklearn.datasets import make_classification, make_regression  # noqa: E402
from sklearn.model_selection import GridSearchCV, cross_val_score  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

from sparsenet import SETClassifier, SETRegressor  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SMALL = dict(hidden=(32,), epsilon=6, epochs=15, batch_size=16, dropout=0.0, lr=0.05, threads=1)


@pytest.fixture(scope="module")
def blobs():
    x, y = make_classification(240, 10, n_informative=4, n_redundant=0, n_classes=3, class_sep=2.0,
                               random_state=0)
    return x * 5 + 2, y


def test_pipeline_cross_val_and_grid_search(blobs):
    x, y = blobs
    pipe = make_pipeline(StandardScaler(), SETClassifier(standardize=False, **SMALL))
    scores = cross_val_score(pipe, x, y, cv=3)
    assert scores.shape == (3,) and scores.min() > 0.7, scores
    grid = GridSearchCV(SETClassifier(**SMALL), {"epsilon": [2, 6], "zeta": [0.0, 0.3]}, cv=2).fit(x, y)
    assert grid.best_params_["epsilon"] in (2, 6) and grid.best_params_["zeta"] in (0.0, 0.3)
    assert grid.best_score_ > 0.7
    assert grid.score(x, y) > 0.8


def test_any_real_dtype_dataframe_and_list_give_the_same_model(blobs):
    x, y = blobs
    xi = np.round(x).astype(np.int64)  # integer-valued, so every dtype below holds the same numbers
    ref = SETClassifier(**SMALL).fit(xi.astype(np.float32), y).predict_proba(xi.astype(np.float32))
    assert ref.shape == (240, 3) and np.allclose(ref.sum(axis=1), 1.0)
    pd = pytest.importorskip("pandas")
    for data in (xi, xi.astype(np.int16), xi.astype(np.float64), xi.astype(np.float16),
                 pd.DataFrame(xi, columns=[f"f{i}" for i in range(10)]), xi.tolist()):
        got = SETClassifier(**SMALL).fit(data, y).predict_proba(data)
        np.testing.assert_array_equal(got, ref)


def test_any_hashable_labels_map_through_classes(blobs):
    x, y = blobs
    base = SETClassifier(**SMALL).fit(x, y)
    for names in (np.array(["setosa", "versicolor", "virginica"]), np.array([-7, 3, 1000]),
                  np.array([1.0, 4.0, 9.0]), np.array(["x", "y", "z"], dtype=object)):
        clf = SETClassifier(**SMALL).fit(x, names[y])
        np.testing.assert_array_equal(clf.classes_, names)  # already sorted
        np.testing.assert_array_equal(clf.predict(x), names[base.predict(x)])
        assert clf.score(x, names[y]) == base.score(x, y) > 0.8


def test_csr_input_trains_and_predicts_like_dense(blobs):
    """Sparse X runs through the CSR first-layer kernels: the same training as dense X up to float
    rounding; standardisation is scale-only (mean 0, the dense std), as StandardScaler(with_mean=False)."""
    x, y = blobs
    dense = np.where(np.abs(x - 2) > 4, x, 0.0)  # mostly zeros
    csr = sp.csr_matrix(dense)
    csr64 = sp.csr_array(dense)
    csr64.indices = csr64.indices.astype(np.int64)
    std = dense.std(axis=0)
    a = SETClassifier(**SMALL, standardize=False).fit(dense / std, y)
    for sparse in (csr, csr64, sp.coo_matrix(dense), sp.csc_array(dense)):
        b = SETClassifier(**SMALL).fit(sparse, y)
        np.testing.assert_array_equal(b.model_.preprocessing.mean, np.zeros(10, np.float32))
        np.testing.assert_allclose(b.model_.preprocessing.std, std, rtol=1e-5)
        np.testing.assert_allclose(b.predict_proba(sparse), a.predict_proba(dense / std), rtol=1e-3, atol=1e-4)
        np.testing.assert_allclose(b.predict_proba(dense), b.predict_proba(sparse), rtol=1e-5, atol=1e-6)
    assert a.score(dense / std, y) > 0.5


def test_csr_predict_on_a_centring_model_folds_the_mean_into_the_bias(blobs):
    """A model standardised with centring (fitted on dense X) scores sparse X without densifying it:
    W (x - m) / s = W (x / s) - W m / s. Training it further on sparse X is refused."""
    x, y = blobs
    dense = np.where(np.abs(x - 2) > 4, x, 0.0)
    clf = SETClassifier(**SMALL).fit(dense, y)
    assert np.all(clf.model_.preprocessing.mean != 0)
    np.testing.assert_allclose(clf.predict_proba(sp.csr_array(dense)), clf.predict_proba(dense), rtol=1e-4,
                               atol=1e-6)
    with pytest.raises(ValueError, match="centres its inputs"):
        SETClassifier(**SMALL, warm_start=True).fit(dense, y).fit(sp.csr_array(dense), y)


def test_parameters_use_the_config_rules_and_messages(blobs):
    x, y = blobs
    cases = {"lr": (-1, "train.lr=-1"), "hidden": ([], "model.hidden=[]"),
             "activation": ("tanh", "model.activation=tanh"), "dropout": (1.0, "model.dropout=1.0"),
             "pruning": ("magic", "pruning.method=magic"), "epochs": (0, "train.epochs=0")}
    for param, (value, override) in cases.items():
        with pytest.raises(ConfigError) as from_yaml:
            load_config(None, [override])
        key = override.split("=")[0]
        expected = "SETClassifier: " + str(from_yaml.value).replace(
            f"config key '{key}'", f"parameter '{param}' (config key '{key}')")
        clf = SETClassifier(**{**SMALL, param: value})  # init and set_params never validate (sklearn rule)
        with pytest.raises(ValueError) as err:
            clf.fit(x, y)
        assert str(err.value) == expected


def test_training_from_python_prints_and_writes_nothing_unless_verbose(blobs, tmp_path, monkeypatch, capsys):
    x, y = blobs
    monkeypatch.chdir(tmp_path)
    SETClassifier(**SMALL).fit(x, y)
    sparsenet.train({"model": {"hidden": [16]}, "train": {"epochs": 2}}, x, y)
    out, err = capsys.readouterr()
    assert (out, err) == ("", "") and os.listdir(tmp_path) == []
    SETClassifier(**{**SMALL, "epochs": 2}, verbose=True).fit(x, y)
    out, _ = capsys.readouterr()
    assert len(re.findall(r"epoch \d+ train_loss", out)) == 2 and os.listdir(tmp_path) == []


def test_warm_start_and_partial_fit_continue_exactly(blobs):
    x, y = blobs
    once = SETClassifier(**{**SMALL, "epochs": 4}).fit(x, y)
    warm = SETClassifier(**{**SMALL, "epochs": 2}, warm_start=True).fit(x, y).fit(x, y)
    part = SETClassifier(**SMALL)
    for _ in range(4):
        part.partial_fit(x, y, classes=[0, 1, 2])
    for other in (warm, part):
        assert other.n_iter_ == 4 and len(other.history_) == 4
        np.testing.assert_array_equal(other.predict_proba(x), once.predict_proba(x))
    cold = SETClassifier(**{**SMALL, "epochs": 2}).fit(x, y).fit(x, y)  # no warm start: starts over
    assert cold.n_iter_ == 2
    with pytest.raises(ValueError, match="first call needs classes"):
        SETClassifier(**SMALL).partial_fit(x, y)
    with pytest.raises(ValueError, match="label outside classes_: 7"):
        part.partial_fit(x[:3], [0, 1, 7])


def test_regressor_learns_and_maps_targets_back():
    x, y = make_regression(300, 8, n_informative=3, noise=0.5, random_state=0)
    params = {**SMALL, "epochs": 60, "activation": "relu", "lr": 0.1}
    reg = SETRegressor(**params).fit(x, y)
    assert reg.score(x, y) > 0.85
    pred = reg.predict(x)
    span = y.max() - y.min()
    assert pred.shape == (300,) and y.min() - span / 8 <= pred.min() and pred.max() <= y.max() + span / 8
    y2 = np.c_[y, -2 * y + 5]
    multi = SETRegressor(**params).fit(x, y2)
    assert multi.predict(x).shape == (300, 2) and multi.score(x, y2) > 0.85
    assert reg.history_[-1]["train_accuracy"] is None and reg.history_[-1]["train_loss"] < reg.history_[0]["train_loss"]


def test_train_returns_model_and_history_and_layers_are_csr(blobs):
    x, y = blobs
    cfg = {"seed": 3, "model": {"hidden": [24, 12], "epsilon": 4, "dropout": 0.0},
           "train": {"epochs": 6, "batch_size": 16, "lr": 0.05}}
    model, history = sparsenet.train(cfg, x, y + 1, X_test=x[:60], y_test=y[:60] + 1)
    assert [r["epoch"] for r in history] == list(range(1, 7)) and model.history == history
    assert history[-1]["test_accuracy"] == model.evaluate(x[:60], y[:60] + 1)["accuracy"] > 0.6
    np.testing.assert_array_equal(model.classes_, [1, 2, 3])
    layers = model.layers
    assert [w.shape for w in layers] == [(24, 10), (12, 24), (3, 12)]
    assert all(isinstance(w, sp.csr_array) for w in layers)
    assert [w.nnz for w in layers] == model.network.nnz
    # a forward pass written with scipy alone agrees with predict_proba
    a = ((x - model.preprocessing.mean) / model.preprocessing.std).astype(np.float32).T
    for l, (w, b) in enumerate(zip(layers, model.biases)):
        z = w @ a + b[:, None]
        a = z if l == 2 else np.where(z > 0, z, model.slopes[l] * z)
    np.testing.assert_allclose(model.logits(x), a.T, rtol=1e-4, atol=1e-4)
    # and a model rebuilt from those matrices predicts identically
    rebuilt = sparsenet.Model.from_sparse(layers, model.biases, slopes=model.slopes, classes=[1, 2, 3],
                                          mean=model.preprocessing.mean, std=model.preprocessing.std)
    np.testing.assert_array_equal(rebuilt.predict_proba(x), model.predict_proba(x))
    np.testing.assert_array_equal(rebuilt.predict(x), model.predict(x))


def test_sparsenet_train_is_the_api_call_and_still_the_module():
    import sparsenet.train as module
    from sparsenet.train import run

    assert module is sparsenet.train and module.run is run  # dotted paths into the epoch-loop module work
    model, history = sparsenet.train({"model": {"hidden": [8]}, "train": {"epochs": 2}},
                                     np.random.default_rng(0).normal(size=(30, 4)), np.arange(30) % 2)
    assert isinstance(model, sparsenet.Model) and [r["epoch"] for r in history] == [1, 2]


def test_boundary_errors_are_clear(blobs):
    x, y = blobs
    model, _ = sparsenet.train({"model": {"hidden": [8]}, "train": {"epochs": 1}}, x, y + 1)
    with pytest.raises(DataError, match=r"y holds a label outside the model's classes: 0 at sample \d+; "
                                        r"the model knows 1, 2, 3"):
        model.evaluate(x, y)
    with pytest.raises(DataError, match="X has 4 features per sample, but the model takes 10"):
        model.predict(x[:, :4])
    with pytest.raises(DataError, match="non-finite value"):
        model.predict(np.full((2, 10), 1e300))  # float64 beyond float32's range
    with pytest.raises(DataError, match="must hold real numbers"):
        model.predict(np.array([["a"] * 10]))
    with pytest.raises(DataError, match="y must hold at least 2 classes"):
        sparsenet.train(None, x, np.zeros(len(x)))
    with pytest.raises(DataError, match="dense weights"):
        sparsenet.Model.from_sparse([np.ones((2, 3))])
    with pytest.raises(DataError, match=r"weights\[1\] takes 5 inputs but weights\[0\] has 4 outputs"):
        sparsenet.Model.from_sparse([sp.random(4, 3, 0.5, random_state=0), sp.random(2, 5, 0.5, random_state=0)])
    with pytest.raises(ConfigError, match="config key 'model.activation' must be one of"):
        sparsenet.Model.from_sparse([sp.random(4, 3, 0.5, random_state=0)], activation="tanh")
    # float64 input works (converted at the boundary) and matches float32 input
    np.testing.assert_array_equal(model.predict_proba(x), model.predict_proba(x.astype(np.float32)))


def test_kernel_refuses_labels_outside_the_output_layer():
    """Labels 1..3 for 3 outputs used to be read out of bounds (train loss -4.3e31); now a DataError."""
    from sparsenet.model import SparseMLP

    net = SparseMLP.initialize([4, 5, 3], epsilon=2, init="he_uniform", activation="relu", alpha=0.0,
                               dropout=0.0, output="softmax", rng=np.random.default_rng(0))
    x = np.ones((6, 4), dtype=np.float32)
    with pytest.raises(DataError, match=r"label 3 is outside the model's 3 outputs \(0..2\)"):
        net.evaluate(x, np.array([1, 2, 3, 1, 2, 3]), 8)
    loss, _ = net.evaluate(x, np.array([0, 1, 2, 0, 1, 2]), 8)
    assert 0 < loss < 10


def test_load_scores_raw_samples_exactly_as_training_scored_its_test_set(tmp_path):
    from sparsenet.train import run

    x, y = make_classification(300, 12, n_informative=5, n_classes=3, random_state=1)
    x = x * 7 + 3
    names = np.array(["cat", "dog", "eel"])[y]
    np.savez(tmp_path / "d.npz", x_train=x[:200], y_train=names[:200], x_test=x[200:], y_test=names[200:])
    cfg = load_config(None, [f"data.name=npz", f"data.path={tmp_path / 'd.npz'}", "model.hidden=[32]",
                             "model.epsilon=5", "train.epochs=3", "train.batch_size=32", "train.progress=false"])
    state = run(cfg, tmp_path / "run")
    model = sparsenet.load(tmp_path / "run" / "checkpoint.h5")
    np.testing.assert_array_equal(model.classes_, ["cat", "dog", "eel"])
    assert model.preprocessing.mean.shape == (12,)
    scored = model.evaluate(x[200:], names[200:])
    assert scored["accuracy"] == state.history[-1]["test_accuracy"]
    assert scored["loss"] == state.history[-1]["test_loss"]
    # the checkpoint written by Model.save loads back to the same predictions
    model.save(tmp_path / "copy.h5")
    again = sparsenet.load(tmp_path / "copy.h5")
    np.testing.assert_array_equal(again.predict_proba(x), model.predict_proba(x))
    np.testing.assert_array_equal(again.predict(x[:5]), model.predict(x[:5]))


def test_estimator_model_saves_for_the_command_line(blobs, tmp_path):
    x, y = blobs
    names = np.array(["a", "b", "c"])[y]
    clf = SETClassifier(**SMALL).fit(x, names)
    clf.model_.save(tmp_path / "clf.h5")
    loaded = sparsenet.load(tmp_path / "clf.h5")
    np.testing.assert_array_equal(loaded.predict(x), clf.predict(x))
    np.testing.assert_array_equal(loaded.predict_proba(x), clf.predict_proba(x))


def test_estimator_model_keeps_object_and_float_labels(blobs, tmp_path):
    """pandas string labels (object dtype) and whole-number float labels: model_ and its checkpoint named the
    outputs 0..n-1 before, so model_.predict and `sparsenet predict` printed 2, 0, ... where clf.predict said 'c', 'a'."""
    x, y = blobs
    for names in (np.array(["x", "y", "z"], dtype=object), np.array([1.0, 4.0, 9.0])):
        clf = SETClassifier(**dict(SMALL, epochs=2)).fit(x, names[y])
        expected = clf.predict(x)
        assert list(clf.model_.classes_) == list(names)
        assert list(clf.model_.predict(x)) == list(expected)
        clf.model_.save(tmp_path / "clf.h5")
        assert list(sparsenet.load(tmp_path / "clf.h5").predict(x)) == list(expected)


def test_sequential_use_needs_no_mpi4py(tmp_path):
    """mpi4py hidden (import fails): importing, the estimators, train() and `sparsenet train` still work."""
    np.savez(tmp_path / "d.npz", x=np.random.default_rng(0).normal(size=(60, 5)),
             y=np.arange(60) % 2)
    code = f"""
import sys
sys.modules["mpi4py"] = None  # any import of mpi4py now raises ImportError
import numpy as np
import sparsenet
from sparsenet import SETClassifier
from sparsenet.cli import main
x = np.random.default_rng(1).normal(size=(40, 5)); y = np.arange(40) % 2
SETClassifier(hidden=(8,), epochs=2, threads=1).fit(x, y).predict(x)
sparsenet.train({{"model": {{"hidden": [8]}}, "train": {{"epochs": 1}}}}, x, y)
rc = main(["train", "{tmp_path / 'cfg.yaml'}", "--out", "{tmp_path / 'run'}"])
assert rc == 0, rc
assert not any(name.startswith("mpi4py.") for name in sys.modules), "mpi4py was imported"
print("ok")
"""
    (tmp_path / "cfg.yaml").write_text(f"data: {{name: npz, path: {tmp_path / 'd.npz'}}}\n"
                                       "model: {hidden: [8]}\ntrain: {epochs: 1, progress: false}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "OMPI_", "PMIX_", "SLURM_"))}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, env=env,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith("ok")


def test_importing_sparsenet_imports_neither_sklearn_nor_mpi4py():
    code = "import sys, sparsenet; print(sorted(m for m in ('sklearn', 'mpi4py') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stderr[-2000:]


def test_package_metadata_names_license_extras_and_version():
    tomllib = pytest.importorskip("tomllib")

    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert meta["license"] == "MIT" and (ROOT / "LICENSE").read_text().startswith("MIT License")
    assert "mpi4py" not in " ".join(meta["dependencies"])
    assert meta["optional-dependencies"]["mpi"] == ["mpi4py>=4.0"]
    assert "synth" not in meta["optional-dependencies"] and "synthetic" not in meta["optional-dependencies"]
    assert "Operating System :: POSIX" in meta["classifiers"]
    assert "version" in meta["dynamic"]


def test_csr_duplicate_entries_count_as_their_sum():
    dense = np.array([[3.0, 0, 1], [0, 2, 0], [1, 1, 1], [0, 0, 4], [2, 0, 0], [0, 5, 1]])
    dup = sp.csr_array((np.array([1.0, 2, 1, 2, 1, 1, 1, 4, 2, 5, 1]),
                        np.array([0, 0, 2, 1, 0, 1, 2, 2, 0, 1, 2]),
                        np.array([0, 3, 4, 7, 8, 9, 11])), shape=(6, 3))
    assert not dup.has_canonical_format
    y = np.array([0, 1, 0, 1, 0, 1])
    cfg = {"model": {"hidden": [8], "epsilon": 2, "dropout": 0.0}, "train": {"epochs": 2, "batch_size": 4}}
    a, _ = sparsenet.train(cfg, dense, y)
    b, _ = sparsenet.train(cfg, dup, y)
    np.testing.assert_allclose(a.preprocessing.std, b.preprocessing.std, rtol=1e-6)
    np.testing.assert_allclose(b.predict_proba(dup), b.predict_proba(dense), rtol=1e-5)
    c, _ = sparsenet.train(cfg, sp.csr_array(dense), y)
    np.testing.assert_array_equal(b.predict_proba(dup), c.predict_proba(dense))


def test_mpi_launch_without_mpi4py_says_which_extra(tmp_path):
    (tmp_path / "cfg.yaml").write_text("model: {hidden: [8]}\n")
    code = f"""
import sys
sys.modules["mpi4py"] = None
from sparsenet.cli import main
sys.exit(main(["train", "{tmp_path / 'cfg.yaml'}", "--out", "{tmp_path / 'run'}"]))
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "OMPI_", "PMIX_", "SLURM_"))}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**env, "PMI_SIZE": "3"})
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip() == ("sparsenet: error: launched on 3 MPI ranks, but mpi4py is not installed: "
                                   "pip install 'sparsenet[mpi]' (sequential training needs no MPI)")


def test_train_returns_the_epoch_best_on_validation_and_says_which(tmp_path):
    """With a validation split sparsenet.train returns the best epoch's weights (as checkpoint_best.h5), else the last."""
    x, y = make_classification(240, 10, n_informative=4, n_redundant=0, n_classes=3, class_sep=1.0, flip_y=0.2,
                               random_state=0)
    cfg = {"model": {"hidden": [64], "epsilon": 10}, "train": {"epochs": 12, "batch_size": 16, "lr": 0.05},
           "data": {"validation_fraction": 0.25}, "threads": 1}
    model, history = sparsenet.train(cfg, x, y)
    accuracies = [r["validation_accuracy"] for r in history]
    best = 1 + int(np.argmax(accuracies))  # the first of equal bests
    assert len(history) == 12 and best == history[-1]["best_epoch"] == model.epoch == 9
    shorter, _ = sparsenet.train({**cfg, "train": {**cfg["train"], "epochs": best}}, x, y)
    np.testing.assert_array_equal(model.predict_proba(x), shorter.predict_proba(x))
    np.testing.assert_array_equal(model.layers[0].data, shorter.layers[0].data)
    model.save(tmp_path / "best.h5")
    saved = sparsenet.load(tmp_path / "best.h5")
    assert saved.epoch == 9 and len(saved.history) == 9
    np.testing.assert_array_equal(saved.predict_proba(x), model.predict_proba(x))
    # no validation split: the last epoch
    last, history = sparsenet.train({**cfg, "data": {"validation_fraction": 0.0}}, x, y)
    assert last.epoch == len(history) == 12


def test_estimators_take_validation_and_early_stopping_as_mlpclassifier_names_them(blobs):
    from sklearn.base import clone

    x, y = blobs
    clf = SETClassifier(**SMALL, validation_fraction=0.2, n_iter_no_change=3, tol=0.01)
    params = clf.get_params()
    assert (params["validation_fraction"], params["n_iter_no_change"], params["tol"]) == (0.2, 3, 0.01)
    assert clone(clf).get_params() == params
    clf.set_params(validation_fraction=0.3, n_iter_no_change=None, tol=0.0)
    assert (clf.validation_fraction, clf.n_iter_no_change, clf.tol) == (0.3, None, 0.0)
    cfg = SETRegressor(validation_fraction=0.25, n_iter_no_change=4, tol=0.5)._params_config()
    assert (cfg.data.validation_fraction, cfg.train.early_stopping_patience, cfg.train.early_stopping_min_delta) == (
        0.25, 4, 0.5)
    defaults = SETClassifier().get_params()  # the config's defaults: no validation split, no early stopping
    assert (defaults["validation_fraction"], defaults["n_iter_no_change"], defaults["tol"]) == (0.0, None, 0.0)
    with pytest.raises(ValueError, match=r"parameter 'validation_fraction' \(config key 'data.validation_fraction'\) "
                                         r"must be in \[0, 1\), got 1"):
        SETClassifier(**SMALL, validation_fraction=1).fit(x, y)
    with pytest.raises(ValueError, match="validation_fraction 0.001 of 240 training samples leaves 0 for validation"):
        SETClassifier(**SMALL, validation_fraction=0.001).fit(x, y)


@pytest.mark.parametrize("validation_fraction", [0.0, 0.2])
def test_estimators_stop_early(blobs, validation_fraction):
    x, y = blobs
    for est in (SETClassifier(**{**SMALL, "epochs": 40}, validation_fraction=validation_fraction, n_iter_no_change=2,
                              tol=100.0),
                SETRegressor(**{**SMALL, "epochs": 40}, validation_fraction=validation_fraction, n_iter_no_change=2,
                             tol=100.0)):
        est.fit(x, y)
        assert est.n_iter_ == 3 and len(est.history_) == 3  # epoch 1 sets the reference, 2 and 3 do not beat it by 100
        metric = est.history_[-1]["selection_metric"]
        assert metric == ("train_loss" if not validation_fraction else
                          "validation_accuracy" if isinstance(est, SETClassifier) else "validation_loss")
        est.set_params(warm_start=True).fit(x, y)  # a warm fit is its own early-stopping episode
        assert est.n_iter_ == 6


def test_estimator_with_validation_predicts_with_its_best_epoch_as_sparsenet_train_does():
    x, y = make_classification(240, 10, n_informative=4, n_redundant=0, n_classes=3, class_sep=1.0, flip_y=0.2,
                               random_state=0)
    clf = SETClassifier(hidden=(64,), epsilon=10, epochs=12, batch_size=16, lr=0.05, threads=1,
                        validation_fraction=0.25).fit(x, y)
    model, history = sparsenet.train({"model": {"hidden": [64], "epsilon": 10}, "data": {"validation_fraction": 0.25},
                                      "train": {"epochs": 12, "batch_size": 16, "lr": 0.05}, "threads": 1}, x, y)
    assert clf.best_epoch_ == clf.model_.epoch == model.epoch == 9 and clf.n_iter_ == 12
    assert [r["validation_accuracy"] for r in clf.history_] == [r["validation_accuracy"] for r in history]
    np.testing.assert_array_equal(clf.predict_proba(x), model.predict_proba(x))
    np.testing.assert_array_equal(clf.model_.predict_proba(x), model.predict_proba(x))
    last = SETClassifier(hidden=(64,), epsilon=10, epochs=12, batch_size=16, lr=0.05, threads=1,
                         validation_fraction=0.25).fit(x, y).partial_fit(x, y)  # partial_fit: no validation, the last
    assert last.best_epoch_ == last.n_iter_ == 13 and "validation_loss" not in last.history_[-1]
    # the regressor selects on validation loss; its rows carry no accuracy
    reg = SETRegressor(**SMALL, validation_fraction=0.2).fit(x, x[:, 0])
    losses = [r["validation_loss"] for r in reg.history_]
    assert reg.best_epoch_ == 1 + int(np.argmin(losses)) and all(r["validation_accuracy"] is None for r in reg.history_)
