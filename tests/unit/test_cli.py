"""The command line: train/evaluate/info, and bad input -> one-line error, exit code 2, no traceback."""

import json
import re
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest

from tests.unit.cli_errors import error_of
from sparsenet.cli import main

SMALL = ["--set", "data.name=synthetic", "--set", "data.samples=300", "--set", "data.features=20",
         "--set", "model.hidden=[24,16]", "--set", "model.epsilon=4", "--set", "train.epochs=2",
         "--set", "train.batch_size=32", "--set", "train.progress=false"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert main(["train", "configs/fashion_mnist.yaml", *SMALL, "--out", str(out)]) == 0
    return out


def test_train_writes_outputs_and_evaluate_agrees(trained, capsys):
    assert {p.name for p in trained.iterdir()} >= {"config.yaml", "metrics.jsonl", "checkpoint.h5"}
    last = json.loads((trained / "metrics.jsonl").read_text().splitlines()[-1])
    capsys.readouterr()
    assert main(["evaluate", str(trained / "checkpoint.h5")]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["test_accuracy"] == pytest.approx(last["test_accuracy"])
    assert result["test_loss"] == pytest.approx(last["test_loss"], rel=1e-5)


def test_info_reports_layers(trained, capsys):
    capsys.readouterr()
    assert main(["info", str(trained / "checkpoint.h5"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["epoch"] == 2 and info["neurons"] == [20, 24, 16, 2] and len(info["nnz"]) == 3
    assert main(["info", str(trained / "checkpoint.h5")]) == 0
    text = capsys.readouterr().out
    assert "20-24-16-2" in text and "epoch       2" in text


@pytest.mark.parametrize("override,expected", [
    ("train.epoch=3", "unknown config key 'train.epoch'; valid keys in 'train': batch_size, early_stopping_min_delta, "
                      "early_stopping_patience, epochs"),
    ("evolution.zeta=1.3", "'evolution.zeta' must be in [0, 1), got 1.3"),
    ("train.epochs=-2", "'train.epochs' must be"),
    ("model.hidden=[]", "'model.hidden' must be a non-empty list of positive integers below 2**31, got []"),
    ("model.activation=tanh", "must be one of relu, leaky_relu, all_relu, got 'tanh'"),
])
def test_bad_config_values(capsys, tmp_path, override, expected):
    err = error_of(capsys, ["train", "configs/fashion_mnist.yaml", "--set", override, "--out", str(tmp_path)])
    assert expected in err


def test_missing_dataset_says_where_it_looked(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSENET_NO_DOWNLOAD", "1")
    monkeypatch.setenv("SPARSENET_DATA", str(tmp_path / "cache"))
    err = error_of(capsys, ["train", "configs/fashion_mnist.yaml", "--set", "data.name=mnist",
                            "--set", f"data.path={tmp_path / 'nowhere'}", "--out", str(tmp_path / "out")])
    assert "mnist" in err and str(tmp_path / "nowhere") in err and str(tmp_path / "cache") in err
    assert "download disabled" in err


def test_malformed_and_mismatched_data_files(capsys, tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"this is not a zip archive")
    err = error_of(capsys, ["train", "configs/fashion_mnist.yaml", "--set", "data.name=npz",
                            "--set", f"data.path={bad}", "--out", str(tmp_path / "o1")])
    assert str(bad) in err
    mismatch = tmp_path / "mismatch.npz"
    np.savez(mismatch, x=np.zeros((10, 3), np.float32), y=np.zeros(9, np.int64))
    err = error_of(capsys, ["train", "configs/fashion_mnist.yaml", "--set", "data.name=npz",
                            "--set", f"data.path={mismatch}", "--out", str(tmp_path / "o2")])
    assert "label count mismatch" in err and "10" in err and "9" in err


def test_truncated_checkpoint(trained, capsys, tmp_path):
    data = (trained / "checkpoint.h5").read_bytes()
    cut = tmp_path / "cut.h5"
    cut.write_bytes(data[: len(data) // 2])
    err = error_of(capsys, ["evaluate", str(cut)])
    assert "cut.h5" in err and "truncated" in err


def edited_copy(trained, path, edit):
    """A copy of the trained checkpoint at `path`, changed in place by edit(h5py.File)."""
    shutil.copy(trained / "checkpoint.h5", path)
    with h5py.File(path, "a") as f:
        edit(f)
    return path


def test_checkpoint_of_other_format_version(trained, capsys, tmp_path):
    other = edited_copy(trained, tmp_path / "v99.h5", lambda f: f.attrs.__setitem__("format_version", 99))
    err = error_of(capsys, ["info", str(other)])
    assert "format version 99" in err and "versions 1 to 3" in err


def test_checkpoint_with_indices_outside_layer(trained, capsys, tmp_path):
    def index_outside(f):
        rows = f["layers/1/rows"][()]
        rows[-1] = 10_000
        f["layers/1/rows"][...] = rows

    bad = edited_copy(trained, tmp_path / "bad_index.h5", index_outside)
    err = error_of(capsys, ["evaluate", str(bad)])
    assert "layer 1" in err and "outside" in err


def test_real_process_exit_code_and_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "sparsenet", "train", "configs/fashion_mnist.yaml",
                           "--set", "evolution.zeta=1.3", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "sparsenet: error: config key 'evolution.zeta' must be in [0, 1), got 1.3"]


def test_plot_writes_png(trained, capsys, tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "curve.png"
    assert main(["plot", str(trained / "metrics.jsonl"), "--out", str(out), "--label", "small"]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    err = error_of(capsys, ["plot", str(tmp_path / "missing.jsonl"), "--out", str(out)])
    assert "missing.jsonl" in err


@pytest.mark.parametrize("attr,value,expected", [
    ("output", "tanh", "output 'tanh' is not one of softmax, sigmoid"),
    ("dropout", 1.5, "dropout 1.5 is outside [0, 1)"),
    ("rng_state", '{"bit_generator": "nope"}', "random generator state is unusable"),
    ("epoch", 7, "metrics history has 2 epochs, expected 7"),
    ("partial_epoch", '{"step": 40, "n_steps": 10}', "position of its stopped epoch (partial_epoch) is malformed"),
])
def test_checkpoint_with_bad_run_state(trained, capsys, tmp_path, attr, value, expected):
    bad = edited_copy(trained, tmp_path / f"bad_{attr}.h5", lambda f: f.attrs.__setitem__(attr, value))
    err = error_of(capsys, ["evaluate", str(bad)])
    assert expected in err


def test_sigterm_stops_at_an_epoch_boundary_and_resume_continues(tmp_path):
    import signal

    from tests.processes import run_during, signal_when

    args = [sys.executable, "-m", "sparsenet", "train", "configs/fashion_mnist.yaml", *SMALL,
            "--set", "train.epochs=100000", "--set", "checkpoint.every=100000", "--out", str(tmp_path)]
    metrics = tmp_path / "metrics.jsonl"  # SIGTERM once at least one epoch is done
    proc = run_during(args, 60, during=signal_when(lambda: metrics.exists() and metrics.stat().st_size > 0,
                                                   sig=signal.SIGTERM))
    out, err = proc.stdout, proc.stderr
    assert proc.returncode == 75, err
    assert "SIGTERM received" in out
    stopped_at = json.loads(out.strip().splitlines()[-1])["epoch"]
    from sparsenet.checkpoint import load_checkpoint

    assert load_checkpoint(tmp_path / "checkpoint.h5").epoch == stopped_at >= 1
    assert main(["train", "configs/fashion_mnist.yaml", *SMALL, "--set", f"train.epochs={stopped_at + 1}",
                 "--out", str(tmp_path), "--resume"]) == 0
    assert load_checkpoint(tmp_path / "checkpoint.h5").epoch == stopped_at + 1


def test_divergence_stops_with_a_clear_error_and_keeps_the_checkpoint(capsys, tmp_path):
    assert main(["train", "configs/fashion_mnist.yaml", *SMALL, "--set", "train.epochs=1",
                 "--out", str(tmp_path)]) == 0
    from sparsenet.checkpoint import load_checkpoint

    good = load_checkpoint(tmp_path / "checkpoint.h5").layers[0].values.copy()
    err = error_of(capsys, ["train", "configs/fashion_mnist.yaml", *SMALL, "--set", "train.epochs=3",
                            "--set", "train.lr=1e6", "--out", str(tmp_path), "--resume"])
    assert "training diverged at epoch 2" in err and "lower train.lr" in err
    np.testing.assert_array_equal(load_checkpoint(tmp_path / "checkpoint.h5").layers[0].values, good)


def test_a_stop_inside_a_diverged_epoch_exits_2_and_keeps_both_checkpoints(capsys, tmp_path, monkeypatch):
    """lr 1e6 from epoch 2 on and SIGUSR1 after its 5th batch, before the epoch's end checks its loss: the
    stop's checkpoint would hold NaN weights. Before, it replaced checkpoint.h5 (exit 75, resumable into NaN)."""
    import os
    import signal

    import sparsenet.train as train

    assert main(["train", "configs/fashion_mnist.yaml", *SMALL, "--set", "train.epochs=1",
                 "--out", str(tmp_path)]) == 0
    names = ("checkpoint.h5", "checkpoint_best.h5")
    good = {name: (tmp_path / name).read_bytes() for name in names}
    calls, real_step = [], train.train_step

    def step_then_signal(*args):
        result = real_step(*args)
        calls.append(1)
        if len(calls) == 5:
            os.kill(os.getpid(), signal.SIGUSR1)
        return result

    monkeypatch.setattr(train, "train_step", step_then_signal)
    err = error_of(capsys, ["train", "configs/fashion_mnist.yaml", *SMALL, "--set", "train.epochs=3",
                            "--set", "train.lr=1e6", "--out", str(tmp_path), "--resume"])
    assert len(calls) == 5
    assert re.search(r"training diverged in epoch 2: layer \d's (weights|biases) hold NaN or infinity; lower "
                     r"train\.lr .* --resume from the last checkpoint", err), err
    assert {name: (tmp_path / name).read_bytes() for name in names} == good
    assert main(["evaluate", str(tmp_path / "checkpoint.h5")]) == 0  # still the finite epoch 1
    assert json.loads(capsys.readouterr().out)["test_loss"] < 2.0


def test_prune_then_evaluate_and_info_round_trip(trained, capsys, tmp_path):
    from sparsenet.checkpoint import load_checkpoint
    from sparsenet.config import config_from_yaml
    from sparsenet.data import load_dataset
    from sparsenet.pruning import neuron_importance
    from sparsenet.train import model_from_checkpoint

    source = trained / "checkpoint.h5"
    original = model_from_checkpoint(load_checkpoint(source))
    capsys.readouterr()
    assert main(["prune", str(source), "--percentile", "25", "--out", str(tmp_path / "pruned.h5")]) == 0
    report = json.loads(capsys.readouterr().out)
    expected = [int((neuron_importance(original.layers[h - 1]) < np.percentile(neuron_importance(original.layers[h - 1]), 25)).sum())
                for h in (1, 2)]
    assert report["removed"] == expected and min(expected) > 0
    assert report["neurons"] == [20, 24 - expected[0], 16 - expected[1], 2]
    assert report["weights"] < report["weights_before"] and report["parameters"] < report["parameters_before"]
    assert main(["info", str(tmp_path / "pruned.h5"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["neurons"] == report["neurons"] and sum(info["nnz"]) == report["weights"]
    assert main(["evaluate", str(tmp_path / "pruned.h5")]) == 0
    result = json.loads(capsys.readouterr().out)
    pruned = load_checkpoint(tmp_path / "pruned.h5")
    cfg = config_from_yaml(pruned.config_yaml)
    data = load_dataset(cfg.data, cfg.seed)
    loss, accuracy = model_from_checkpoint(pruned).evaluate(data.x_test, data.y_test, 64)
    assert result["test_accuracy"] == accuracy and result["test_loss"] == pytest.approx(loss, rel=1e-6)
    assert [la.state["velocity"].shape[0] for la in pruned.layers] == info["nnz"]
    assert main(["prune", str(source), "--fraction", "0.25", "--out", str(tmp_path / "npset.h5")]) == 0
    assert json.loads(capsys.readouterr().out)["removed"] == [6, 4]


def test_prune_refuses_bad_arguments(trained, capsys, tmp_path):
    source = str(trained / "checkpoint.h5")
    err = error_of(capsys, ["prune", source, "--percentile", "5", "--out", source])
    assert "would overwrite the checkpoint being pruned" in err
    with pytest.raises(SystemExit):
        main(["prune", source, "--percentile", "140", "--out", str(tmp_path / "x.h5")])
    assert "percentile must be in (0, 100), got 140" in capsys.readouterr().err


def test_features_ranks_inputs_by_strength(trained, capsys, tmp_path):
    from sparsenet.checkpoint import load_checkpoint
    from sparsenet.train import model_from_checkpoint
    from tests import naive

    strength = np.abs(naive.dense_weights(model_from_checkpoint(load_checkpoint(trained / "checkpoint.h5")).layers[0])).sum(axis=1)
    capsys.readouterr()
    assert main(["features", str(trained / "checkpoint.h5"), "--top", "5", "--json",
                 "--out", str(tmp_path / "f.csv"), "--image", "4x5", "--image-out", str(tmp_path / "f.png")]) == 0
    top = json.loads(capsys.readouterr().out)["top"]
    assert [t["feature"] for t in top] == list(np.argsort(-strength, kind="stable")[:5])
    np.testing.assert_allclose([t["strength"] for t in top], np.sort(strength)[::-1][:5], rtol=1e-6)
    rows = (tmp_path / "f.csv").read_text().splitlines()
    assert rows[0] == "rank,feature,strength,connections" and len(rows) == 21
    assert (tmp_path / "f.png").stat().st_size > 1000
    err = error_of(capsys, ["features", str(trained / "checkpoint.h5"), "--image", "28x28"])
    assert "--image 28x28 holds 784 pixels but the model has 20 input features" in err


def test_evaluate_of_a_model_saved_from_python_says_how_to_score_it(capsys, tmp_path):
    """sparsenet.train / clf.model_.save write the default config (data.name fashion_mnist, which they ignore):
    `sparsenet evaluate model.h5` said only 'the model needs 784 inputs', naming neither the data it had read
    nor how to give other data."""
    import scipy.sparse as sp

    import sparsenet

    w = [sp.random(4, 3, density=1.0, random_state=0), sp.random(2, 4, density=1.0, random_state=1)]
    sparsenet.Model.from_sparse(w, classes=["no", "yes"]).save(tmp_path / "model.h5")
    path = str(tmp_path / "model.h5")
    err = error_of(capsys, ["evaluate", path, "--set", "data.name=synthetic", "--set", "data.features=20"])
    assert f"the model in {path} has 3 inputs and 2 outputs, but the data 'synthetic' has 20 features" in err
    assert "--set data.name=... --set data.path=FILE" in err and f"sparsenet predict {path} --data FILE" in err
