"""model.task autoencoder (QuickSelection, issue 13 item 4): config rules, the reconstruction loss's
gradients, denoising, training/resume/evaluate, and `sparsenet features` ranking the structured columns."""

import json

import h5py
import numpy as np
import pytest

from sparsenet.activations import output_loss
from sparsenet.checkpoint import load_checkpoint
from sparsenet.cli import main
from sparsenet.config import load_config
from sparsenet.data.synthfile import write_synthetic
from sparsenet.errors import ConfigError
from sparsenet.memory import DataShape, plan_memory
from sparsenet.model import SparseMLP
from sparsenet.train import compute_gradients, run
from tests.unit.test_train import assert_same_checkpoint, strip_timings

AE = ["model.task=autoencoder", "model.output=linear"]


@pytest.mark.parametrize("overrides, message", [
    (["model.task=autoencoder"], "'model.output' must be linear or sigmoid for model.task 'autoencoder'"),
    (["model.output=linear"], "'model.output' must be softmax or sigmoid for model.task 'classifier'"),
    (["model.input_noise=0.2"], "'model.input_noise' must be 0 for model.task 'classifier'"),
    ([*AE, "model.input_noise=-0.1"], "'model.input_noise' must be >= 0, got -0.1"),
    ([*AE, "model.input_noise=true"], "'model.input_noise' must be a number"),
    (["model.task=decoder"], "'model.task' must be one of classifier, autoencoder, got 'decoder'"),
    (["model.task=autoencoder", "model.output=sigmoid"], "sigmoid reconstructs inputs in \\[0, 1\\], but "
                                                         "data.standardize is true"),
    # measured: a FashionMNIST autoencoder with ReLU and input_init zero stayed at test loss 398 for 10 epochs
    (["model.input_init=zero", "model.activation=relu"], "'model.input_init' zero needs model.activation "
                                                         "leaky_relu or all_relu, got relu"),
])
def test_config_refuses_what_the_autoencoder_cannot_do(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_config_defaults_and_accepted_autoencoders():
    assert (load_config(None).model.task, load_config(None).model.input_noise) == ("classifier", 0.0)
    assert load_config(None, [*AE, "model.input_noise=0.2"]).model.input_noise == 0.2
    cfg = load_config(None, ["model.task=autoencoder", "model.output=sigmoid", "data.standardize=false"])
    assert cfg.model.output == "sigmoid"
    cfg = load_config("configs/quickselection_fashion_mnist.yaml")
    assert (cfg.model.task, cfg.model.hidden, cfg.model.epsilon, cfg.model.input_noise) == ("autoencoder", (1000,), 13, 0.2)


def tiny_autoencoder(output="linear", seed=0):
    rng = np.random.default_rng(seed)
    model = SparseMLP.initialize([8, 6, 5, 8], epsilon=2.0, init="he_uniform", activation="all_relu", alpha=0.6,
                                 dropout=0.0, output=output, rng=rng)
    model.task = "autoencoder"
    for layer in model.layers:
        layer.bias[:] = rng.standard_normal(layer.n_out).astype(np.float32) * 0.1
    return model


def reconstruction_loss(model, x_in, target):
    """Batch-mean loss of the outputs on input x_in (batch, n) against target (batch, n)."""
    np.copyto(model.input_buffer(x_in.shape[0]), x_in.T)
    z = model.logits(x_in.shape[0])
    return output_loss(model.output, z, target, np.empty_like(z))[0] / x_in.shape[0]


@pytest.mark.parametrize("output", ["linear", "sigmoid"])
def test_reconstruction_gradients_match_finite_differences(output):
    model = tiny_autoencoder(output, seed=3)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((6, 8)).astype(np.float32)
    target = rng.random((6, 8)).astype(np.float32) if output == "sigmoid" else x
    np.copyto(model.input_buffer(6), x.T)
    loss, correct = model.gradients(6, target, np.zeros(3, dtype=np.int64))
    assert correct == 0
    assert loss / 6 == pytest.approx(reconstruction_loss(model, x, target), rel=1e-6)
    grads, bias_grads = [g.copy() for g in model.grads], [g.copy() for g in model.bias_grads]
    h, checked = 1e-3, 0  # small enough to cross no All-ReLU kink (1e-2 crosses one here)
    for l, layer in enumerate(model.layers):
        for values, grad in ((layer.values, grads[l]), (layer.bias, bias_grads[l])):
            for k in range(0, values.shape[0], max(values.shape[0] // 5, 1)):
                old = values[k]
                values[k] = old + h
                up = reconstruction_loss(model, x, target)
                values[k] = old - h
                down = reconstruction_loss(model, x, target)
                values[k] = old
                assert grad[k] == pytest.approx((up - down) / (2 * h), rel=2e-2, abs=2e-4), (l, values is layer.bias, k)
                checked += 1
    assert checked >= 20


def test_linear_loss_is_half_the_squared_error_and_refuses_labels():
    z = np.array([[1.0, -2.0], [0.5, 3.0]], dtype=np.float32)  # (n_out, batch)
    targets = np.array([[0.0, 1.0], [-1.0, 2.0]], dtype=np.float32)  # (batch, n_out)
    delta = np.empty_like(z)
    loss, correct = output_loss("linear", z, targets, delta)
    assert loss == pytest.approx(0.5 * (1 + 1 + 0.25 + 1)) and correct == 0  # z - targets.T = [[1, -1], [-0.5, 1]]
    np.testing.assert_allclose(delta, (z - targets.T) / 2)
    with pytest.raises(ValueError, match="linear output reconstructs float targets"):
        output_loss("linear", z, np.array([0, 1]), delta)


@pytest.mark.parametrize("noise", [0.0, 0.5])
def test_the_input_gets_noise_and_the_target_stays_clean(noise):
    """compute_gradients: forward on x + noise * N(0, 1) (drawn after the dropout keys), loss against x."""
    model = tiny_autoencoder(seed=5)
    model.input_noise = noise
    x = np.random.default_rng(6).standard_normal((10, 8)).astype(np.float32)
    index = np.array([7, 2, 5, 0])
    loss, _ = compute_gradients(model, np.random.default_rng(9), x, None, index)
    replay = np.random.default_rng(9)
    replay.integers(0, 2**63, size=3, dtype=np.int64)
    noisy = x[index] + (np.float32(noise) * replay.standard_normal((8, 4), dtype=np.float32)).T if noise else x[index]
    assert loss / 4 == pytest.approx(reconstruction_loss(model, noisy, x[index]), rel=1e-5)
    if noise:
        assert loss / 4 != pytest.approx(reconstruction_loss(model, x[index], x[index]), rel=1e-3)


SMALL_AE = ["data.name=synthetic", "data.samples=600", "data.features=30", "data.informative=4", "data.redundant=6",
            "model.hidden=[24]", "model.epsilon=4", "train.batch_size=16", "train.lr=0.01", "model.dropout=0.1",
            "model.input_noise=0.3", "evolution.evolve_output=true", "train.progress=false", "checkpoint.every=1",
            "seed=3", *AE]


def test_training_reconstructs_resumes_bit_identically_and_reports_no_accuracy(tmp_path, capsys):
    cfg = load_config(None, [*SMALL_AE, "train.epochs=4"])
    state = run(cfg, tmp_path / "full")
    assert state.model.sizes == [30, 24, 30]
    rows = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    assert "test_accuracy" not in rows[0] and "train_accuracy" not in rows[0]
    assert rows[0]["test_loss"] < 0.5 * 30  # predicting the mean (0) of standardised columns scores 15
    assert rows[-1]["test_loss"] < rows[0]["test_loss"]
    run(load_config(None, [*SMALL_AE, "train.epochs=2"]), tmp_path / "resumed")
    run(cfg, tmp_path / "resumed", resume=True)
    assert_same_checkpoint(tmp_path / "full" / "checkpoint.h5", tmp_path / "resumed" / "checkpoint.h5")
    resumed = [json.loads(x) for x in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert strip_timings(resumed) == strip_timings(rows)

    checkpoint = str(tmp_path / "full" / "checkpoint.h5")
    capsys.readouterr()
    assert main(["evaluate", checkpoint]) == 0
    scored = json.loads(capsys.readouterr().out)
    assert "test_accuracy" not in scored and scored["test_loss"] == pytest.approx(rows[-1]["test_loss"], rel=1e-6)
    assert main(["predict", checkpoint, "--data", str(tmp_path / "none.npz")]) == 2
    assert "holds an autoencoder" in capsys.readouterr().err
    pytest.importorskip("matplotlib")
    assert main(["plot", str(tmp_path / "full" / "metrics.jsonl"), "--out", str(tmp_path / "curve.png")]) == 0
    assert (tmp_path / "curve.png").stat().st_size > 1000


def test_train_summary_of_an_autoencoder_reports_its_reconstruction_loss(tmp_path, capsys):
    (tmp_path / "ae.yaml").write_text("seed: 3\n")
    sets = [a for k in [*SMALL_AE, "train.epochs=2"] for a in ("--set", k)]
    assert main(["train", str(tmp_path / "ae.yaml"), "--out", str(tmp_path / "run"), *sets]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert "test_accuracy" not in summary and "accuracy" not in " ".join(summary)
    assert summary["test_loss"] == rows[-1]["test_loss"] and 0 < summary["test_loss"] < 0.5 * 30
    assert summary["selection_metric"] == "train_loss" and summary["epoch"] == 2


def test_the_python_api_refuses_an_autoencoder():
    import sparsenet

    with pytest.raises(ConfigError, match="sparsenet.train trains classifiers; train model.task 'autoencoder'"):
        sparsenet.train({"model": {"task": "autoencoder", "output": "linear"}}, np.zeros((4, 3)), [0, 1, 0, 1])


def test_resume_refuses_to_turn_an_autoencoder_into_a_classifier(tmp_path):
    run(load_config(None, [*SMALL_AE, "train.epochs=1"]), tmp_path)
    classifier = [o for o in SMALL_AE if o not in AE and not o.startswith("model.input_noise")]
    with pytest.raises(ConfigError, match="cannot resume: the checkpoint was trained with different model"):
        run(load_config(None, [*classifier, "train.epochs=2"]), tmp_path, resume=True)


def test_features_ranks_inputs_by_first_layer_strength_and_finds_the_structured_columns(tmp_path, capsys):
    """QuickSelection: strength of input i = sum of |W1[i, :]| (the output layer's weights do not count).
    200 columns, 20 of them (5 informative + 15 linear combinations of those) correlated, 180 independent
    noise: the denoising autoencoder's top 20 holds >= 6 of the 20 (9 measured; chance: 2)."""
    path = tmp_path / "synth.h5"
    cfg = load_config(None, ["data.name=synthetic_hdf5", "data.samples=2000", "data.features=200",
                             "data.informative=5", "data.redundant=15", f"data.path={path}", *AE,
                             "model.input_noise=1.0", "model.hidden=[200]", "model.epsilon=13", "model.dropout=0",
                             "model.init=he_uniform_sparse", "model.input_init=zero", "evolution.regrow=zero",
                             "evolution.zeta=0.2", "evolution.evolve_output=true", "train.lr=0.01",
                             "train.batch_size=100", "train.weight_decay=0.00001", "train.epochs=20",
                             "train.progress=false", "threads=1", "seed=0"])
    write_synthetic(cfg.data, 0)
    run(cfg, tmp_path / "run")
    checkpoint = tmp_path / "run" / "checkpoint.h5"
    capsys.readouterr()
    assert main(["features", str(checkpoint), "--top", "0", "--json"]) == 0
    ranked = json.loads(capsys.readouterr().out)["top"]
    first = load_checkpoint(checkpoint).layers[0]
    strength = np.bincount(first.rows, weights=np.abs(first.values), minlength=200)
    assert len(ranked) == 200
    np.testing.assert_allclose([f["strength"] for f in ranked], strength[[f["feature"] for f in ranked]])
    assert [f["feature"] for f in ranked] == np.lexsort((np.arange(200), -strength)).tolist()
    with h5py.File(path) as fh:
        useful = set(fh["useful_columns"][:].tolist())
    found = sum(f["feature"] in useful for f in ranked[:20])
    assert len(useful) == 20 and found >= 6


def test_memory_plan_counts_n_features_outputs():
    shape = DataShape(1000, 100, 5000, 2, "test", 0)
    ae = plan_memory(load_config(None, [*AE, "model.hidden=[100]"]), data=shape, available=1 << 40)
    classifier = plan_memory(load_config(None, ["model.hidden=[100]"]), data=shape, available=1 << 40)
    assert ae.sizes == [5000, 100, 5000] and classifier.sizes == [5000, 100, 2]


def test_a_validation_split_selects_the_autoencoder_on_validation_loss(tmp_path):
    run(load_config(None, [*SMALL_AE, "train.epochs=3", "data.validation_fraction=0.2"]), tmp_path)
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all("validation_accuracy" not in r and "test_accuracy" not in r for r in rows)
    assert [r["selection_metric"] for r in rows] == ["validation_loss"] * 3
    losses = [r["validation_loss"] for r in rows]
    assert rows[-1]["best_epoch"] == 1 + losses.index(min(losses))
    assert load_checkpoint(tmp_path / "checkpoint_best.h5").epoch == rows[-1]["best_epoch"]
