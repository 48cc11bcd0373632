"""The epoch loop shared by the sequential trainer and the parameter server."""

import json
import os
import signal

import numpy as np
import pytest

from sparsenet.config import load_config
from sparsenet.errors import DivergedError
from sparsenet.loop import EpochLoop, check_weights
from sparsenet.state import new_state
from tests.unit.test_train import SMALL


def _loop(tmp_path, *extra):
    tmp_path.mkdir(exist_ok=True)
    cfg = load_config(None, SMALL + list(extra))
    state = new_state(cfg, 40, 3)
    saves, loop_best = [], []
    rng = np.random.default_rng(0)

    def save(path=None):  # checkpoint.h5 (path None) or checkpoint_best.h5
        (saves if path is None else loop_best).append(state.epoch)
        assert path is None or path == tmp_path / "checkpoint_best.h5"

    loop = EpochLoop(cfg, tmp_path, state, rng.standard_normal((20, 40)).astype(np.float32),
                     rng.integers(0, 3, 20), save)
    loop.best_saves = loop_best
    return loop, state, saves


def _trained(loss=1.0):
    return {"train_loss": loss, "train_accuracy": 0.5, "train_seconds": 0.1, "evolution_seconds": 0.0, "extra": 7}


def test_rows_checkpoint_cadence_and_extra_keys(tmp_path):
    loop, state, saves = _loop(tmp_path, "train.epochs=5", "checkpoint.every=2")
    with loop:
        loop.run(lambda epoch: _trained(1.0 / epoch), 5)
    assert loop.finish() is state and state.stopped_by is None
    assert saves == [2, 4, 5] and state.epoch == 5
    assert loop.best_saves == [1, 2, 3, 4, 5]   # the training loss (no validation set) fell every epoch
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4, 5] and rows == state.history
    assert rows[3]["train_loss"] == 0.25 and rows[0]["extra"] == 7 and rows[0]["neurons_removed"] == [0, 0]
    assert list(rows[0])[:4] == ["epoch", "train_loss", "train_accuracy", "test_loss"]


def test_a_nan_loss_stops_before_the_checkpoint(tmp_path):
    loop, state, saves = _loop(tmp_path, "train.epochs=3")
    with loop, pytest.raises(DivergedError, match="diverged at epoch 2"):
        loop.run(lambda epoch: _trained(float("nan") if epoch == 2 else 1.0), 3)
    assert saves == [1]


def test_a_stop_ends_the_run_after_the_epoch_or_inside_it(tmp_path):
    loop, state, saves = _loop(tmp_path / "after", "train.epochs=4", "checkpoint.every=10")

    def stopping(epoch):
        if epoch == 2:
            os.kill(os.getpid(), signal.SIGUSR1)
        return _trained()

    with loop:
        loop.run(stopping, 4)
    loop.finish()
    assert (state.epoch, state.stopped_by, saves) == (2, "SIGUSR1", [2])

    loop, state, saves = _loop(tmp_path / "inside", "train.epochs=4", "checkpoint.every=10")

    def inside(epoch):
        if epoch == 2:
            os.kill(os.getpid(), signal.SIGUSR1)
            assert loop.stop_requested()
            return None  # stopped part-way: the epoch function kept its position
        return _trained()

    with loop:
        loop.run(inside, 4)
    loop.finish()
    assert (state.epoch, state.stopped_by, saves, len(state.history)) == (1, "SIGUSR1", [1], 1)


@pytest.mark.parametrize("where,value", [("values", np.nan), ("bias", np.inf), ("partial", np.nan)])
def test_a_stop_inside_a_diverged_epoch_saves_nothing(tmp_path, where, value):
    """The epoch stops part-way (returns None) after its weights, biases or loss so far went non-finite:
    no checkpoint is written over epoch 1's; a finite epoch with weights near float32's limit is not refused."""
    loop, state, saves = _loop(tmp_path, "train.epochs=4", "checkpoint.every=1")

    layer = state.model.layers[0]
    kept, layer.values[:] = layer.values.copy(), 3e38  # finite: their float32 sum would overflow, the check's does not
    check_weights(state, 1)
    layer.values[:] = kept

    def diverging(epoch):
        if epoch == 1:
            return _trained()
        if where == "partial":
            state.partial = {"step": 3, "loss": value}
        else:
            getattr(state.model.layers[1], where)[2] = value
        return None

    name = {"values": "layer 2's weights hold NaN", "bias": "layer 2's biases hold NaN or infinity",
            "partial": "its train loss so far is nan"}[where]
    with loop, pytest.raises(DivergedError, match=f"training diverged in epoch 2: {name}"):
        loop.run(diverging, 4)
    assert saves == [1] and state.epoch == 1
