"""Optimizers own their state: Adam's update rule, its moments across SET and pruning, checkpoints of any optimizer."""

import h5py
import numpy as np
import pytest

from sparsenet.checkpoint import load_checkpoint
from sparsenet.config import load_config
from sparsenet.errors import ConfigError
from sparsenet.evolution import prune_and_regrow
from sparsenet.model import SparseMLP
from sparsenet.optim import Adam, MomentumSGD, make_optimizer
from sparsenet.pruning import select_by_importance
from sparsenet.train import TrainingState, apply_neuron_removal, run
from tests.unit.test_train import assert_same_checkpoint, small_config


def _model(sizes=(9, 7, 4), seed=1):
    return SparseMLP.initialize(list(sizes), epsilon=2, init="he_uniform", activation="relu", alpha=0,
                                dropout=0, output="softmax", rng=np.random.default_rng(seed))


def _adam_reference(w, grads, lr, b1, b2, eps, wd, decoupled):
    """Adam in float64 as Kingma & Ba write it (weight decay coupled into g, or subtracted after the step)."""
    m, v = np.zeros_like(w), np.zeros_like(w)
    for t, g in enumerate(grads, start=1):
        g = g if decoupled else g + wd * w
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        step = lr * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps)
        w = w - step - (wd * w if decoupled else 0)
    return w, m, v


@pytest.mark.parametrize("mode", ["coupled", "decoupled"])
@pytest.mark.parametrize("partial", [False, True])
def test_adam_matches_the_reference_update(mode, partial):
    rng = np.random.default_rng(4)
    model = _model()
    opt = Adam(model, lr=0.01, momentum=0.8, weight_decay=0.05, weight_decay_mode=mode)
    start = [(la.values.astype(np.float64), la.bias.astype(np.float64)) for la in model.layers]
    grads = [[rng.standard_normal(la.nnz).astype(np.float32) for la in model.layers] for _ in range(4)]
    bias_grads = [[rng.standard_normal(la.n_out).astype(np.float32) for la in model.layers] for _ in range(4)]
    n = len(model.layers)
    for g, bg in zip(grads, bias_grads):
        if partial:
            opt.step_partial(model, g, bg, [None] * n, [None] * n)
        else:
            opt.step(model, g, bg)
    assert opt.scalars() == {"step": 4}
    for l, layer in enumerate(model.layers):
        for values, moments, initial, gs in ((layer.values, "", start[l][0], [g[l] for g in grads]),
                                             (layer.bias, "bias_", start[l][1], [g[l] for g in bias_grads])):
            w, m, v = _adam_reference(initial, [x.astype(np.float64) for x in gs], 0.01, 0.8, 0.999, 1e-8, 0.05,
                                      mode == "decoupled")
            np.testing.assert_allclose(values, w, rtol=2e-5, atol=1e-6)
            np.testing.assert_allclose(opt.state[moments + "m"][l], m, rtol=2e-5, atol=1e-6)
            np.testing.assert_allclose(opt.state[moments + "v"][l], v, rtol=2e-5, atol=1e-7)
    assert not np.allclose(model.layers[0].values, start[0][0], atol=1e-3)  # it did move


def test_new_connections_and_neurons_get_zero_moments_and_survivors_keep_theirs():
    rng = np.random.default_rng(6)
    model = _model((20, 16, 12, 4), seed=2)
    opt = Adam(model, lr=0.01, momentum=0.9, weight_decay=0.0)
    for _ in range(2):
        opt.step(model, [rng.standard_normal(la.nnz).astype(np.float32) + 1 for la in model.layers],
                 [rng.standard_normal(la.n_out).astype(np.float32) + 1 for la in model.layers])
    before = {name: [a.copy() for a in arrays] for name, arrays in opt.state.items()}
    assert all((a != 0).all() for arrays in before.values() for a in arrays)
    new, source = prune_and_regrow(model.layers[0], 0.3, "he_uniform", rng)
    model.layers[0] = new
    opt.follow_topology(0, source)
    for name in ("m", "v"):
        assert opt.state[name][0].shape == (new.nnz,)
        np.testing.assert_array_equal(opt.state[name][0][source == -1], 0.0)
        np.testing.assert_array_equal(opt.state[name][0][source >= 0], before[name][0][source[source >= 0]])
    assert (source == -1).any()
    model.topology_changed()
    state = TrainingState(model, opt, rng, 0, [])
    keep = select_by_importance(model, 30)
    removal = apply_neuron_removal(state, keep)
    for name in ("bias_m", "bias_v"):
        np.testing.assert_array_equal(opt.state[name][0], before[name][0][keep[0]])
        assert opt.state[name][1].shape == (model.layers[1].n_out,)
    for l, layer in enumerate(model.layers):
        assert opt.state["m"][l].shape == opt.state["v"][l].shape == (layer.nnz,)
    assert sum(removal.removed) > 0


def test_make_optimizer_follows_the_config_and_state_bytes():
    model = _model()
    adam = make_optimizer(load_config(None, ["train.optimizer=adam", "train.momentum=0.7"]), model)
    assert isinstance(adam, Adam) and adam.beta1 == 0.7 and adam.state_names() == ["m", "v", "bias_m", "bias_v"]
    momentum = make_optimizer(load_config(None, []), model)
    assert isinstance(momentum, MomentumSGD) and momentum.state_names() == ["velocity", "bias_velocity"]
    assert (Adam.bytes_per_parameter(), MomentumSGD.bytes_per_parameter()) == (8, 4)
    with pytest.raises(ConfigError, match="train.optimizer' must be one of momentum, adam"):
        load_config(None, ["train.optimizer=adagrad"])


def test_adam_run_resumes_exactly_and_its_checkpoint_names_its_state(tmp_path):
    adam = ["train.optimizer=adam", "train.lr=0.003", "train.epochs=3"]
    run(small_config(*adam), tmp_path / "full")
    run(small_config(*adam[:2], "train.epochs=2"), tmp_path / "part")
    run(small_config(*adam), tmp_path / "part", resume=True)
    assert_same_checkpoint(tmp_path / "full" / "checkpoint.h5", tmp_path / "part" / "checkpoint.h5")
    data = load_checkpoint(tmp_path / "full" / "checkpoint.h5")
    assert data.optimizer == "adam" and sorted(data.layers[0].state) == ["bias_m", "bias_v", "m", "v"]
    steps = 3 * -(-560 // 16)  # 800 samples, 30 % test: 560 train in batches of 16
    assert data.optimizer_scalars == {"step": steps}
    losses = [row["test_loss"] for row in data.history]
    assert losses[2] < losses[1] < losses[0]
    with pytest.raises(ConfigError, match="holds adam optimizer state but train.optimizer is momentum"):
        run(small_config("train.epochs=4"), tmp_path / "full", resume=True)


def test_version_1_checkpoint_is_read_and_resumes(tmp_path):
    """Version 1 stored momentum SGD's velocity and bias_velocity beside the layer arrays."""
    run(small_config("train.epochs=2"), tmp_path / "v2")
    run(small_config("train.epochs=1"), tmp_path / "v1")
    path = tmp_path / "v1" / "checkpoint.h5"
    with h5py.File(path, "r+") as f:
        f.attrs["format_version"] = 1
        for name in ("optimizer", "optimizer_scalars"):
            del f.attrs[name]
        del f["replica_optimizer_scalars"]
        for l in range(f.attrs["n_layers"]):
            g = f[f"layers/{l}"]
            for name in ("velocity", "bias_velocity"):
                g.move(f"optimizer/{name}", name)
            del g["optimizer"]
    old = load_checkpoint(path)
    assert old.optimizer == "momentum" and sorted(old.layers[0].state) == ["bias_velocity", "velocity"]
    run(small_config("train.epochs=2"), tmp_path / "v1", resume=True)
    assert_same_checkpoint(tmp_path / "v2" / "checkpoint.h5", path)


def test_realign_gathers_state_at_source_and_zeroes_new_connections():
    from sparsenet.optim import realign

    state = np.array([1.5, -2.0, 3.25, 4.0], dtype=np.float32)
    out = realign(state, np.array([2, -1, 0, 0, -1, 3], dtype=np.int64))
    assert out.dtype == np.float32 and out.tolist() == [3.25, 0.0, 1.5, 1.5, 0.0, 4.0]
    assert realign(state, np.empty(0, dtype=np.int64)).shape == (0,)
    for bad in ([4], [-2]):
        with pytest.raises(ValueError, match=r"source must hold -1 or indices in \[0, 4\)"):
            realign(state, np.array(bad, dtype=np.int64))
