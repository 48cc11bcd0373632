"""Model selection without the test set: validation split, checkpoint_best.h5, early stopping (also resumed)."""

import json

import numpy as np
import pytest

from sparsenet.checkpoint import load_checkpoint
from sparsenet.config import load_config
from sparsenet.data import load_dataset
from sparsenet.errors import ConfigError, DataError
from sparsenet.selection import Selection, hold_out_validation, validation_split
from sparsenet.train import run

SMALL = ["data.name=synthetic", "data.samples=600", "data.features=30", "data.informative=6",
         "data.redundant=4", "data.classes=3", "model.hidden=[32,24]", "model.epsilon=6",
         "train.batch_size=16", "train.lr=0.03", "model.dropout=0.1", "train.progress=false",
         "checkpoint.every=100", "seed=3"]


def rows(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_validation_split_is_stratified_seeded_and_disjoint():
    y = np.repeat(np.arange(3), [100, 50, 10])
    fit, val = validation_split(y, 0.2, seed=7)
    assert np.bincount(y[val]).tolist() == [20, 10, 2]          # per class: round(0.2 * count)
    assert np.intersect1d(fit, val).size == 0 and fit.size + val.size == 160
    np.testing.assert_array_equal(validation_split(y, 0.2, seed=7)[1], val)   # same seed, same split
    assert not np.array_equal(validation_split(y, 0.2, seed=8)[1], val)
    with pytest.raises(DataError, match="validation_fraction 0.004 of 160 training samples leaves 0 for validation"):
        validation_split(y, 0.004, seed=0)


def test_validation_comes_from_the_training_part_never_the_test_part():
    cfg = load_config(None, SMALL + ["data.validation_fraction=0.25"])
    data = load_dataset(cfg.data, cfg.seed)
    fit, (x_val, y_val) = hold_out_validation(data, 0.25, cfg.seed)
    assert fit.x_test is data.x_test and fit.y_test is data.y_test
    assert fit.x_train.shape[0] + x_val.shape[0] == data.x_train.shape[0]
    assert x_val.shape[0] == sum(round(0.25 * c) for c in np.bincount(data.y_train))
    # every validation row is a training row, and the union is the training part
    together = np.concatenate([fit.x_train, x_val])
    assert sorted(map(bytes, together)) == sorted(map(bytes, data.x_train))
    assert hold_out_validation(data, 0.0, cfg.seed) == (data, None)


def test_validation_fraction_rule():
    with pytest.raises(ConfigError, match=r"'data.validation_fraction' must be in \[0, 1\), got 1"):
        load_config(None, ["data.validation_fraction=1"])
    with pytest.raises(ConfigError, match="'train.early_stopping_patience' must be >= 1, got 0"):
        load_config(None, ["train.early_stopping_patience=0"])
    with pytest.raises(ConfigError, match="'train.early_stopping_min_delta' must be >= 0, got -0.1"):
        load_config(None, ["train.early_stopping_min_delta=-0.1"])


def test_selection_tracks_best_and_patience():
    s = Selection("validation_accuracy", patience=2, min_delta=0.01)
    assert [s.update(v, e) for e, v in enumerate([0.5, 0.6, 0.605, 0.604, 0.7], 1)] == [True, True, True, False, True]
    assert (s.best, s.best_epoch, s.wait) == (0.7, 5, 0)
    s = Selection("train_loss", patience=2, min_delta=0.0)
    for e, v in enumerate([1.0, 0.8, 0.9, 0.85], 1):
        s.update(v, e)
    assert (s.best, s.best_epoch, s.wait, s.should_stop) == (0.8, 2, 2, True)
    # replayed from a history: the same state as seen live
    history = [{"epoch": e, "train_loss": v} for e, v in enumerate([1.0, 0.8, 0.9, 0.85], 1)]
    r = Selection.for_run(False, 2, 0.0, history)
    assert (r.best, r.best_epoch, r.wait) == (0.8, 2, 2)


def test_best_checkpoint_is_chosen_on_validation_accuracy(tmp_path):
    cfg = load_config(None, SMALL + ["data.validation_fraction=0.2", "train.epochs=6"])
    state = run(cfg, tmp_path)
    history = rows(tmp_path)
    assert all(r["selection_metric"] == "validation_accuracy" for r in history)
    best = max(history, key=lambda r: (r["validation_accuracy"], -r["epoch"]))  # the first epoch at the maximum
    assert history[-1]["best_epoch"] == best["epoch"]
    saved = load_checkpoint(tmp_path / "checkpoint_best.h5")
    assert saved.epoch == best["epoch"]
    assert state.history[-1]["validation_loss"] > 0
    n_val = sum(round(0.2 * c) for c in np.bincount(load_dataset(cfg.data, cfg.seed).y_train))
    from sparsenet.api import load

    data = load_dataset(cfg.data, cfg.seed)
    _, (x_val, y_val) = hold_out_validation(data, 0.2, cfg.seed)
    assert x_val.shape[0] == n_val
    model = load(tmp_path / "checkpoint_best.h5").network
    loss, acc = model.evaluate(x_val, y_val, 256)
    assert acc == pytest.approx(best["validation_accuracy"]) and loss == pytest.approx(best["validation_loss"], rel=1e-5)


def test_without_validation_best_is_on_training_loss_not_test(tmp_path):
    cfg = load_config(None, SMALL + ["train.epochs=5"])
    run(cfg, tmp_path)
    history = rows(tmp_path)
    assert "validation_accuracy" not in history[0] and history[-1]["selection_metric"] == "train_loss"
    best = min(history, key=lambda r: (r["train_loss"], r["epoch"]))
    assert history[-1]["best_epoch"] == best["epoch"]
    assert load_checkpoint(tmp_path / "checkpoint_best.h5").epoch == best["epoch"]
    # checkpoint.best=false: the rows still say which epoch is best, no file is written
    state = run(load_config(None, SMALL + ["train.epochs=2", "checkpoint.best=false"]), tmp_path / "nobest")
    assert not (tmp_path / "nobest" / "checkpoint_best.h5").exists() and state.history[-1]["best_epoch"] >= 1


def test_early_stopping_stops_and_is_honoured_on_resume(tmp_path):
    # min_delta so large that nothing after the first epoch counts as an improvement
    extra = ["train.epochs=30", "train.early_stopping_patience=3", "train.early_stopping_min_delta=100"]
    state = run(load_config(None, SMALL + extra), tmp_path)
    history = rows(tmp_path)
    assert state.early_stopped and state.stopped_by is None
    assert [r["epoch"] for r in history] == [1, 2, 3, 4]
    assert [r["epochs_without_improvement"] for r in history] == [0, 1, 2, 3]
    assert load_checkpoint(tmp_path / "checkpoint.h5").epoch == 4       # saved at the stop
    again = run(load_config(None, SMALL + extra), tmp_path, resume=True)
    assert again.early_stopped and again.epoch == 4 and len(rows(tmp_path)) == 4
    # a larger patience on resume continues from the replayed count: 2 more epochs, then stop
    more = run(load_config(None, SMALL + [*extra[:1], "train.early_stopping_patience=5", extra[2]]), tmp_path,
               resume=True)
    assert more.epoch == 6 and [r["epochs_without_improvement"] for r in rows(tmp_path)][-1] == 5


def test_early_stopped_resume_equals_uninterrupted(tmp_path):
    extra = ["train.epochs=8", "train.early_stopping_patience=2", "data.validation_fraction=0.2"]
    whole = run(load_config(None, SMALL + extra), tmp_path / "whole")
    run(load_config(None, SMALL + ["train.epochs=3", *extra[1:]]), tmp_path / "part")
    parts = run(load_config(None, SMALL + extra), tmp_path / "part", resume=True)
    assert [r["validation_accuracy"] for r in parts.history] == [r["validation_accuracy"] for r in whole.history]
    assert parts.epoch == whole.epoch and parts.early_stopped == whole.early_stopped


def test_library_train_holds_out_validation_and_stops_early(capsys):
    import scipy.sparse as sp

    import sparsenet

    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 12)).astype(np.float32)
    y = np.where(x[:, 0] + x[:, 1] > 0, "a", "b")
    cfg = {"model": {"hidden": [16]}, "train": {"epochs": 40, "early_stopping_patience": 2,
                                                "early_stopping_min_delta": 100.0},
           "data": {"validation_fraction": 0.2}}
    for X in (x, sp.csr_array(x)):
        _, history = sparsenet.train(cfg, X, y)
        assert len(history) == 3  # epoch 1 sets the reference, 2 and 3 do not beat it by 100
        assert history[-1]["selection_metric"] == "validation_accuracy" and history[-1]["best_epoch"] >= 1
        assert all(0 <= r["validation_accuracy"] <= 1 for r in history)
    assert capsys.readouterr() == ("", "")   # silent unless verbose
    # sparse input is standardised without centring (scale only), dense input with: compare without either
    same = {**cfg, "data": {**cfg["data"], "standardize": False}}
    dense, sparse = (sparsenet.train(same, X, y)[1] for X in (x, sp.csr_array(x)))
    assert [r["validation_loss"] for r in dense] == pytest.approx([r["validation_loss"] for r in sparse], rel=1e-5)
