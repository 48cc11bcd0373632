"""sparsenet info / evaluate say when a checkpoint's weights are from part-way through an epoch (a stop)."""

import json
import os
import signal

import numpy as np

import sparsenet.train as train
from sparsenet.cli import main


def test_info_and_evaluate_name_the_epoch_a_stop_cut_short(tmp_path, monkeypatch, capsys):
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 300)
    np.savez(tmp_path / "data.npz", x_train=rng.normal(size=(200, 5)) + y[:200, None], y_train=y[:200],
             x_test=rng.normal(size=(100, 5)) + y[200:, None], y_test=y[200:])
    (tmp_path / "cfg.yaml").write_text(f"data: {{name: npz, path: {tmp_path / 'data.npz'}}}\nmodel: {{hidden: [8]}}\n"
                                       "train: {epochs: 2, batch_size: 16, progress: false}\n")
    calls, real_step = [], train.train_step

    def step_then_signal(state, x, y, index, lazy=None):
        result = real_step(state, x, y, index, lazy)
        calls.append(1)
        if len(calls) == 13 + 5:  # batch 5 of epoch 2 (200 samples: 13 batches)
            os.kill(os.getpid(), signal.SIGUSR1)
        return result

    monkeypatch.setattr(train, "train_step", step_then_signal)
    assert main(["train", str(tmp_path / "cfg.yaml"), "--out", str(tmp_path / "run"), "-q"]) == 75
    ckpt = str(tmp_path / "run" / "checkpoint.h5")
    capsys.readouterr()
    assert main(["info", ckpt]) == 0
    assert ("epoch       1, then stopped in epoch 2 after batch 5 of 13 (these weights; --resume finishes the epoch)"
            in capsys.readouterr().out.splitlines())
    assert main(["info", ckpt, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["stopped_in_epoch"] == 2
    assert main(["evaluate", ckpt]) == 0
    scored = json.loads(capsys.readouterr().out)
    assert scored["epoch"] == 1 and scored["stopped_in_epoch"] == 2
    monkeypatch.setattr(train, "train_step", real_step)
    assert main(["train", str(tmp_path / "cfg.yaml"), "--out", str(tmp_path / "run"), "--resume", "-q"]) == 0
    capsys.readouterr()
    assert main(["info", ckpt]) == 0
    assert "epoch       2" in capsys.readouterr().out.splitlines()
    assert main(["info", ckpt, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["stopped_in_epoch"] is None
    assert main(["evaluate", ckpt]) == 0
    assert "stopped_in_epoch" not in json.loads(capsys.readouterr().out)
