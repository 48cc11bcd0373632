"""`sparsenet data synth`: the Madelon-generator HDF5 file, its loader and its errors."""

import json
import os

import h5py
import numpy as np
import pytest

pytest.importorskip("sklearn")

from sparsenet.cli import main
from sparsenet.config import load_config
from sparsenet.data import load_dataset
from sparsenet.data.synthfile import default_path, synth_filename, write_synthetic
from sparsenet.errors import ConfigError, DataError

SMALL = ["data.name=synthetic_hdf5", "data.samples=400", "data.features=300", "data.informative=5",
         "data.redundant=15", "data.test_fraction=0.25", "data.standardize=false"]


def small_data(tmp_path, *extra):
    return load_config(None, [*SMALL, f"data.path={tmp_path / 'synth.h5'}", *extra]).data


def test_file_shapes_dtypes_and_parameters(tmp_path):
    data = small_data(tmp_path)
    info = write_synthetic(data, seed=3)
    assert info.path == tmp_path / "synth.h5" and (info.n_train, info.n_test) == (300, 100)
    with h5py.File(info.path, "r") as fh:
        assert fh["x_train"].shape == (300, 300) and fh["x_test"].shape == (100, 300)
        assert fh["x_train"].dtype == np.float32 and fh["x_test"].dtype == np.float32
        assert fh["y_train"].dtype == np.int64 and fh["y_test"].shape == (100,)
        assert fh["x_train"].chunks[1] == 300  # chunked by whole rows
        assert fh.attrs["features"] == 300 and fh.attrs["seed"] == 3 and fh.attrs["informative"] == 5
        columns = fh["useful_columns"][()]
        assert len(set(columns.tolist())) == 20 and columns.min() >= 0 and columns.max() < 300
        assert set(np.unique(fh["y_train"][()])) == {0, 1}
    assert not list(tmp_path.glob(".*tmp-*"))  # no temporary left behind
    umask = os.umask(0)
    os.umask(umask)
    assert info.path.stat().st_mode & 0o777 == 0o644 & ~umask  # fileio.FILE_MODE


def test_same_seed_same_file_whatever_the_chunking(tmp_path):
    data = small_data(tmp_path)
    a = write_synthetic(data, 7, tmp_path / "a.h5", chunk_rows=1000)
    b = write_synthetic(data, 7, tmp_path / "b.h5", chunk_rows=7)
    c = write_synthetic(data, 8, tmp_path / "c.h5")
    with h5py.File(a.path) as fa, h5py.File(b.path) as fb, h5py.File(c.path) as fc:
        for key in ("x_train", "y_train", "x_test", "y_test", "useful_columns"):
            np.testing.assert_array_equal(fa[key][()], fb[key][()])
        assert not np.array_equal(fa["x_train"][()], fc["x_train"][()])


def test_informative_columns_predict_the_label_and_noise_does_not(tmp_path):
    data = small_data(tmp_path)
    info = write_synthetic(data, 0)
    with h5py.File(info.path) as fh:
        x, y = fh["x_train"][()], fh["y_train"][()]
        useful = fh["useful_columns"][()]
    noise = np.setdiff1d(np.arange(x.shape[1]), useful)
    # Nearest class mean on the useful columns classifies far better than on as many noise columns.
    def accuracy(cols):
        means = np.stack([x[y == c][:, cols].mean(axis=0) for c in (0, 1)])
        dist = ((x[:, cols][:, None, :] - means[None]) ** 2).sum(axis=2)
        return (dist.argmin(axis=1) == y).mean()
    assert accuracy(useful) > 0.7
    assert accuracy(noise[:20]) < 0.65
    assert abs(x[:, noise].mean()) < 0.05 and abs(x[:, noise].std() - 1) < 0.05  # N(0, 1) noise


def test_loader_round_trip_float32_without_copies(tmp_path):
    data = small_data(tmp_path)
    info = write_synthetic(data, 0)
    cfg = load_config(None, [*SMALL, f"data.path={info.path}"])
    ds = load_dataset(cfg.data, cfg.seed)
    with h5py.File(info.path) as fh:
        np.testing.assert_array_equal(ds.x_train, fh["x_train"][()])
        np.testing.assert_array_equal(ds.y_test, fh["y_test"][()])
    assert ds.x_train.dtype == np.float32 and ds.x_train.flags.c_contiguous and ds.x_train.base is None
    assert ds.n_classes == 2 and ds.n_features == 300
    # max_train reads only the first rows; standardize works in place on the float32 arrays
    cfg = load_config(None, [*SMALL, f"data.path={info.path}", "data.max_train=50", "data.standardize=true"])
    ds = load_dataset(cfg.data, cfg.seed)
    assert ds.x_train.shape == (50, 300) and ds.x_train.dtype == np.float32 and ds.x_train.base is None
    np.testing.assert_allclose(ds.x_train.mean(axis=0), 0, atol=1e-5)


def test_default_path_encodes_the_parameters(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSENET_DATA", str(tmp_path))
    cfg = load_config(None, ["data.name=synthetic_hdf5", "data.samples=10000", "data.features=65536"])
    assert synth_filename(cfg.data, 0) == "madelon_65536x10000_c2_i5_r15_t0.3_s0.h5"
    assert default_path(cfg.data, 0) == tmp_path / "synthetic" / "madelon_65536x10000_c2_i5_r15_t0.3_s0.h5"
    cfg = load_config(None, ["data.name=synthetic_hdf5", "data.seed=4", "seed=9"])
    assert synth_filename(cfg.data, cfg.seed).endswith("_s4.h5")  # data.seed wins over the run's seed


def test_missing_file_names_the_command_that_writes_it(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSENET_DATA", str(tmp_path))
    cfg = load_config(None, ["data.name=synthetic_hdf5", "data.samples=500", "data.features=64"])
    with pytest.raises(DataError) as e:
        load_dataset(cfg.data, cfg.seed)
    message = str(e.value)
    assert "not found" in message and "madelon_64x500_c2_i5_r15_t0.3_s0.h5" in message
    command = message.split("write it first with: ")[1]
    assert command == ("sparsenet data synth --samples 500 --features 64 --informative 5 --redundant 15 "
                       "--classes 2 --test-fraction 0.3 --seed 0")
    # and that command, run, makes the config loadable
    assert main(command.split()[1:]) == 0
    assert load_dataset(cfg.data, cfg.seed).x_train.shape == (350, 64)


def test_cli_writes_the_file_and_reports(tmp_path, capsys):
    out = tmp_path / "d.h5"
    assert main(["data", "synth", "--samples", "100", "--features", "50", "--out", str(out)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["path"] == str(out) and report["x_train"] == [70, 50] and report["x_test"] == [30, 50]


@pytest.mark.parametrize("args, expected", [
    (["--samples", "5"], "--samples must be >= 10, got 5"),
    (["--features", "10", "--informative", "5", "--redundant", "15"], "--redundant must be <= --features - --informative (5), got 15"),
    (["--test-fraction", "1.5"], "--test-fraction must be in (0, 1), got 1.5"),
    (["--classes", "3", "--informative", "1", "--redundant", "0"], "--informative must be >= 3 for --classes 3"),
    (["--seed", "-1"], "--seed must be >= 0, got -1"),
])
def test_cli_bad_arguments(tmp_path, capsys, args, expected):
    assert main(["data", "synth", "--out", str(tmp_path / "x.h5"), *args]) == 2
    err = capsys.readouterr().err
    assert expected in err
    assert not (tmp_path / "x.h5").exists()


def test_config_rejects_impossible_generator_settings():
    with pytest.raises(ConfigError, match="data.informative' must be >= 2 for data.classes 2"):
        load_config(None, ["data.name=synthetic_hdf5", "data.informative=1", "data.redundant=0"])


def test_file_without_the_split_arrays_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.h5"
    with h5py.File(bad, "w") as fh:
        fh["x"] = np.zeros((3, 3), np.float32)
    cfg = load_config(None, ["data.name=synthetic_hdf5", f"data.path={bad}"])
    with pytest.raises(DataError, match="lacks the arrays x_train, y_train, x_test, y_test"):
        load_dataset(cfg.data, cfg.seed)
