"""Every shipped config validates; the FashionMNIST one is the paper's setting."""

from pathlib import Path

import pytest

from sparsenet.config import load_config

CONFIGS = sorted(Path("configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_validates(path):
    cfg = load_config(path)
    assert cfg.train.epochs >= 1


def test_fashion_mnist_is_the_papers_setting():
    cfg = load_config("configs/fashion_mnist.yaml")
    assert cfg.model.hidden == (1000, 1000, 1000) and cfg.model.epsilon == 20
    assert (cfg.model.activation, cfg.model.alpha, cfg.model.init) == ("all_relu", 0.6, "he_uniform")
    assert (cfg.train.lr, cfg.train.momentum, cfg.train.batch_size, cfg.train.epochs) == (0.01, 0.9, 128, 500)
    assert (cfg.model.dropout, cfg.evolution.zeta) == (0.3, 0.3)


def test_madelon_config_trains_offline(tmp_path):
    from sparsenet.train import run

    cfg = load_config("configs/madelon.yaml", ["train.epochs=2", "train.progress=false"])
    state = run(cfg, tmp_path)
    assert state.model.sizes == [500, 400, 100, 400, 2]
    assert len(state.history) == 2
