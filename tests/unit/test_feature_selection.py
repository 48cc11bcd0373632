"""Implicit feature selection (issue 13): a sparse MLP trained with the scale recipe ranks the useful
columns of a Madelon-generator file first (`sparsenet features`)."""

import json

import h5py
import pytest

from sparsenet.cli import main
from sparsenet.config import load_config
from sparsenet.data.synthfile import write_synthetic
from sparsenet.train import run

RECIPE = ["model.init=he_uniform_sparse", "model.input_init=zero", "evolution.regrow=zero"]


def _top10_useful(tmp_path, capsys, extra):
    cfg = load_config(None, ["data.name=synthetic_hdf5", "data.samples=2000", "data.features=2000",
                             "data.informative=5", "data.redundant=5", f"data.path={tmp_path / 'synth.h5'}",
                             "model.hidden=[500,500]", "model.epsilon=10", "model.alpha=0.5", "model.dropout=0.4",
                             "train.epochs=10", "train.progress=false", "threads=1", "seed=0", *extra])
    write_synthetic(cfg.data, 0)
    state = run(cfg, tmp_path / "run")
    capsys.readouterr()
    assert main(["features", str(tmp_path / "run" / "checkpoint.h5"), "--top", "10", "--json"]) == 0
    top = [f["feature"] for f in json.loads(capsys.readouterr().out)["top"]]
    with h5py.File(tmp_path / "synth.h5") as fh:
        useful = set(fh["useful_columns"][:].tolist())
    assert len(useful) == 10 and len(top) == 10
    return sum(i in useful for i in top), state.history[-1]["test_accuracy"]


def test_top10_of_2000_features_recover_the_useful_columns(tmp_path, capsys):
    found, accuracy = _top10_useful(tmp_path, capsys, RECIPE)
    assert found >= 8
    assert accuracy > 0.7


@pytest.mark.parametrize("without", ["model.input_init=init", "evolution.regrow=init"])
def test_without_zero_input_init_or_zero_regrowth_the_ranking_is_noise(tmp_path, capsys, without):
    """Random first-layer values (from the init or from regrowth) swamp what training adds to them."""
    found, _ = _top10_useful(tmp_path, capsys, [r for r in RECIPE if r.split("=")[0] != without.split("=")[0]]
                             + [without])
    assert found <= 3
