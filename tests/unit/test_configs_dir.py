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


def _flat(d, prefix=""):
    out = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


# What each overlay changes on top of fashion_mnist.yaml: the keys the full files held before they
# became overlays (every other key resolves to the base's value).
OVERLAYS = {
    "fashion_mnist_wasap": {"parallel.algorithm": "wasap", "parallel.phase1_fraction": 0.9,
                            "parallel.chunk_bytes": 1073741824},
    "fashion_mnist_wassp": {"parallel.algorithm": "wassp", "parallel.phase1_fraction": 0.9,
                            "parallel.chunk_bytes": 1073741824, "parallel.lr_scaling": True,
                            "parallel.warmup_epochs": 5},
    "fashion_mnist_pruning": {"pruning.method": "importance", "pruning.start_epoch": 200, "pruning.every": 25,
                              "pruning.percentile": 10.0},
}


@pytest.mark.parametrize("name", sorted(OVERLAYS))
def test_overlay_resolves_to_the_full_config_it_replaced(name):
    from sparsenet.config import config_to_dict

    base = _flat(config_to_dict(load_config("configs/fashion_mnist.yaml")))
    merged = _flat(config_to_dict(load_config(["configs/fashion_mnist.yaml", f"configs/{name}.yaml"])))
    alone = _flat(config_to_dict(load_config(f"configs/{name}.yaml")))
    expected = {**base, **OVERLAYS[name]}
    assert merged.keys() == expected.keys()
    for key in expected:
        assert merged[key] == expected[key], key
    # the paper's values: lr 0.01, 500 epochs, 1000-1000-1000 from the base
    assert (merged["train.lr"], merged["train.epochs"], merged["model.hidden"]) == (0.01, 500, [1000, 1000, 1000])
    # fashion_mnist.yaml holds the defaults, so the overlay alone resolves the same (old command lines keep working)
    assert alone == merged


def test_overlay_only_holds_what_it_changes():
    import yaml

    for name, changes in OVERLAYS.items():
        raw = yaml.safe_load(Path(f"configs/{name}.yaml").read_text())
        assert set(_flat(raw)) == set(changes), name
