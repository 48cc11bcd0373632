"""Issue 15 (reading side): checkpoints and data files from others read only what they store, sizes are
checked before allocation, the model is checked against the data; every refusal is one line, exit 2."""

import gzip
import json
import shutil
import struct
import tracemalloc

import h5py
import numpy as np
import pytest

from tests.unit.cli_errors import error_of
from sparsenet import checkpoint as ckpt
from sparsenet.activations import output_loss
from sparsenet.cli import main
from sparsenet.config import load_config
from sparsenet.data import idx
from sparsenet.data.prepare import finish
from sparsenet.errors import CheckpointError, DataError
from sparsenet.train import new_state, state_to_checkpoint

SMALL = ["data.name=synthetic", "data.samples=200", "data.features=12", "data.informative=3", "data.redundant=2", "data.classes=3", "model.hidden=[10]",
         "model.epsilon=3", "train.epochs=1", "train.batch_size=32", "train.progress=false"]


def _row(epoch: int) -> dict:
    return {"epoch": epoch, "train_loss": 1.0, "test_loss": 1.0, "train_accuracy": 0.5, "test_accuracy": 0.5,
            "train_seconds": 0.1, "evolution_seconds": 0.0, "eval_seconds": 0.0, "nnz": [30, 20],
            "neurons": [12, 10, 3], "parameters": 63}


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """A valid checkpoint of a 12-10-3 model after 'one epoch' (no training needed to read it)."""
    cfg = load_config(None, SMALL)
    state = new_state(cfg, 12, 3)
    state.epoch, state.history = 1, [_row(1)]
    path = tmp_path_factory.mktemp("ckpt") / "good.h5"
    ckpt.save_checkpoint(path, state_to_checkpoint(state, cfg))
    return path


def edited(good, path, edit):
    shutil.copy(good, path)
    with h5py.File(path, "a") as f:
        edit(f)
    return path


def test_the_good_checkpoint_loads(good, capsys):
    assert main(["info", "--json", str(good)]) == 0
    assert json.loads(capsys.readouterr().out)["neurons"] == [12, 10, 3]


def _replace(f, name, **kwargs):
    del f[name]
    return f.create_dataset(name, **kwargs)


def test_external_raw_storage_is_refused(good, capsys, tmp_path):
    """Weights 'stored' in another file (the issue: /etc/passwd) were read and printed back."""
    secret = tmp_path / "secret.bin"
    n = ckpt.load_checkpoint(good).layers[0].values.shape[0]
    secret.write_bytes(np.full(n, 7.0, dtype=np.float32).tobytes())
    bad = edited(good, tmp_path / "ext.h5", lambda f: _replace(f, "layers/0/values", shape=(n,), dtype=np.float32,
                                                                 external=[(str(secret), 0, 4 * n)]))
    err, out = error_of(capsys, ["features", "--json", str(bad)], with_stdout=True)
    assert "external files" in err and "layers/0/values" in err and out == ""


def _other_file(tmp_path, name, data):
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f[name] = data
    return other


def test_external_link_is_refused(good, capsys, tmp_path):
    values = ckpt.load_checkpoint(good).layers[0].values
    other = _other_file(tmp_path, "v", values * 0 + 3)

    def link(f):
        del f["layers/0/values"]
        f["layers/0/values"] = h5py.ExternalLink(str(other), "/v")

    err = error_of(capsys, ["info", str(edited(good, tmp_path / "elink.h5", link))])
    assert "'/layers/0/values' is an external link" in err


def test_soft_link_is_refused(good, capsys, tmp_path):
    def link(f):
        del f["layers/0/bias"]
        f["layers/0/bias"] = h5py.SoftLink("/layers/0/bias_velocity")

    err = error_of(capsys, ["info", str(edited(good, tmp_path / "soft.h5", link))])
    assert "'/layers/0/bias' is a soft link" in err


def test_virtual_dataset_is_refused(good, capsys, tmp_path):
    values = ckpt.load_checkpoint(good).layers[0].values
    other = _other_file(tmp_path, "v", values)

    def virtual(f):
        del f["layers/0/values"]
        layout = h5py.VirtualLayout(shape=values.shape, dtype=np.float32)
        layout[:] = h5py.VirtualSource(str(other), "v", shape=values.shape)
        f.create_virtual_dataset("layers/0/values", layout)

    err = error_of(capsys, ["info", str(edited(good, tmp_path / "vds.h5", virtual))])
    assert "virtual dataset" in err


def test_huge_declared_width_is_refused_before_allocation(good, capsys, tmp_path):
    """n_in of 10**12 asked for 7.28 TiB of pointers (a traceback); now a one-line error."""
    bad = edited(good, tmp_path / "wide.h5", lambda f: f["layers/0"].attrs.__setitem__("n_in", 10**12))
    err = error_of(capsys, ["info", str(bad)])
    assert "layer 0 has shape 1000000000000 x 10" in err and "1..2147483647" in err


def test_width_beyond_the_memory_plan_is_refused(good, tmp_path):
    """A width int32 can hold but whose pointers (8 B per neuron) do not fit the memory limit."""
    bad = edited(good, tmp_path / "wide2.h5", lambda f: f["layers/0"].attrs.__setitem__("n_in", 2**31 - 1))
    with pytest.raises(CheckpointError, match=r"needs about 16\.\d\d GiB to load, but only 1\.00 GiB"):
        ckpt.load_checkpoint(bad, memory_limit_gb=1)


def test_dataset_declared_huge_but_never_written_is_refused(good, capsys, tmp_path):
    def inflate(f):
        for name in ("rows", "cols"):
            _replace(f, f"layers/0/{name}", shape=(10**9,), dtype=np.int32)
        for name in ("values", "optimizer/velocity"):
            _replace(f, f"layers/0/{name}", shape=(10**9,), dtype=np.float32)

    bad = edited(good, tmp_path / "huge.h5", inflate)
    assert bad.stat().st_size < 100_000
    err = error_of(capsys, ["info", str(bad)])
    assert "'/layers/0/rows' declares shape (1000000000,) (4000000000 bytes) but the file stores 0 bytes" in err


def test_chunked_dataset_with_missing_chunks_is_refused(good, capsys, tmp_path):
    def partial(f):
        n = f["layers/0/bias"].shape[0]
        ds = _replace(f, "layers/0/bias", shape=(n,), dtype=np.float32, chunks=(2,))
        ds[:2] = 1.0

    err = error_of(capsys, ["info", str(edited(good, tmp_path / "chunks.h5", partial))])
    assert "stores 1 of its 5 chunks" in err


def _set_history(f, history_text: str, epoch: int = 1):
    del f["history"]
    f.create_dataset("history", data=history_text)
    f.attrs["epoch"] = epoch


@pytest.mark.parametrize("history,expected", [
    ("[1]", "metrics history row 1 is a int, expected an object"),
    ('[{"epoch": 1}]', "metrics history row 1: train_loss is None, expected a number"),
    ("[" * 100_000 + "]" * 100_000, "nest too deeply"),
    (json.dumps([{**_row(1), "extra": [[1]]}]), "extra holds nested values"),
])
def test_history_that_is_not_rows_of_metrics_is_refused(good, capsys, tmp_path, history, expected):
    """Rows that are not objects used to pass and crash the summary after a successful run."""
    bad = edited(good, tmp_path / "hist.h5", lambda f: _set_history(f, history))
    err = error_of(capsys, ["info", str(bad)])
    assert expected in err


@pytest.mark.parametrize("slopes", [[float("nan")], [float("inf")]])
def test_non_finite_slopes_are_refused(good, capsys, tmp_path, slopes):
    bad = edited(good, tmp_path / "slope.h5", lambda f: f.attrs.__setitem__("slopes", np.array(slopes)))
    err = error_of(capsys, ["info", str(bad)])
    assert "hidden slopes" in err and "finite" in err


def test_a_directory_is_not_a_checkpoint(capsys, tmp_path):
    err = error_of(capsys, ["info", str(tmp_path)])
    assert "is a directory" in err


# ---------------------------------------------------------------- the model meets the data

def _shrink_outputs(f, keep: int):
    """Cut the output layer of a checkpoint down to its first `keep` outputs."""
    g = f["layers/1"]
    cols = g["cols"][()]
    mask = cols < keep
    arrays = {k: g[k][()] for k in ("rows", "cols", "values", "optimizer/velocity")}
    biases = {k: g[k][()][:keep] for k in ("bias", "optimizer/bias_velocity")}
    for k, v in arrays.items():
        _replace(f, f"layers/1/{k}", data=v[mask])
    for k, v in biases.items():
        _replace(f, f"layers/1/{k}", data=v)
    g.attrs["n_out"] = keep
    for row in (h := json.loads(f["history"][()])):
        row["neurons"][-1] = keep
    _set_history(f, json.dumps(h), len(h))


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert main(["train", "configs/fashion_mnist.yaml", *[a for s in SMALL for a in ("--set", s)], "--out", str(out)]) == 0
    return out


def _resume(trained_run, tmp_path, edit):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    with h5py.File(run / "checkpoint.h5", "a") as f:
        edit(f)
    sets = [a for s in SMALL for a in ("--set", s)]
    return ["train", "configs/fashion_mnist.yaml", *sets, "--set", "train.epochs=2", "--out", str(run), "--resume"], run


def test_resume_refuses_a_model_with_fewer_outputs_than_classes(trained_run, capsys, tmp_path):
    """5 outputs for 10 classes made the loss kernel read out of bounds (test loss -1.89)."""
    argv, run = _resume(trained_run, tmp_path, lambda f: _shrink_outputs(f, 2))
    err = error_of(capsys, argv)
    assert "has 12 inputs and 2 outputs, but the data has 12 features and 3 classes" in err
    err = error_of(capsys, ["evaluate", str(run / "checkpoint.h5")])
    assert "2 outputs" in err and "at least 3 outputs" in err


def test_resume_refuses_slopes_its_config_does_not_give(trained_run, capsys, tmp_path):
    argv, _ = _resume(trained_run, tmp_path, lambda f: f.attrs.__setitem__("slopes", np.array([0.9])))
    err = error_of(capsys, argv)
    assert "hidden slopes [0.9]" in err and "are not what its config gives (all_relu alpha 0.6: [-0.6]" in err


def test_resume_of_an_intact_checkpoint_continues(trained_run, capsys, tmp_path):
    argv, run = _resume(trained_run, tmp_path, lambda f: None)
    assert main(argv) == 0
    assert ckpt.load_checkpoint(run / "checkpoint.h5").epoch == 2


def test_evaluate_plans_its_memory(good, capsys):
    err = error_of(capsys, ["evaluate", str(good), "--set", "memory_limit_gb=0.01"])
    assert err.startswith("sparsenet: error: not enough memory: evaluating 12-10-3")


def test_loss_kernel_refuses_labels_outside_the_outputs():
    z = np.zeros((3, 2), dtype=np.float32)
    with pytest.raises(DataError, match="label 3 is outside the model's 3 outputs"):
        output_loss("softmax", z, np.array([0, 3]), np.empty_like(z))
    with pytest.raises(DataError, match="label -1 is outside"):
        output_loss("sigmoid", z, np.array([-1, 0]), np.empty_like(z))


def test_labels_are_checked_at_the_data_boundary():
    cfg = load_config(None, SMALL).data
    x = np.zeros((4, 2), dtype=np.float32)
    with pytest.raises(DataError, match="y_test holds label 3; labels must be in 0..2"):
        finish(cfg, "t", x, np.array([0, 1, 2, 0]), x, np.array([0, 1, 3, 0]), 3)


# ---------------------------------------------------------------- HDF5 data files

def _data_file(tmp_path, edit):
    path = tmp_path / "d.h5"
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        f["y"] = rng.integers(0, 2, 50)
        edit(f, rng)
    return path


def _train_on(tmp_path, path):
    return ["train", "configs/fashion_mnist.yaml", "--set", "data.name=hdf5", "--set", f"data.path={path}",
            "--set", "model.hidden=[8]", "--set", "train.epochs=1", "--out", str(tmp_path / "run")]


@pytest.mark.parametrize("edit,expected", [
    (lambda f, rng: f.__setitem__("x", h5py.SoftLink("/nowhere")), "'/x' is a soft link"),
    (lambda f, rng: f.__setitem__("x", h5py.ExternalLink("elsewhere.h5", "/x")), "'/x' is an external link"),
    (lambda f, rng: f.create_group("x"), "'/x' is a group, expected a dataset"),
    (lambda f, rng: f.create_dataset("x", shape=(50, 10**7), dtype=np.float32), "never written"),
    (lambda f, rng: f.create_dataset("x", data=rng.random((50, 3)).astype("c8")), "expected numbers"),
])
def test_hdf5_data_links_groups_and_unwritten_arrays_are_refused(capsys, tmp_path, edit, expected):
    err = error_of(capsys, _train_on(tmp_path, _data_file(tmp_path, edit)))
    assert expected in err


def test_hdf5_data_file_stored_inside_trains(capsys, tmp_path):
    path = _data_file(tmp_path, lambda f, rng: f.create_dataset("x", data=rng.random((50, 4)), chunks=(10, 4),
                                                                  compression="gzip"))
    assert main(_train_on(tmp_path, path)) == 0


# ---------------------------------------------------------------- IDX

def _idx(dims, payload: bytes = b"", type_code=0x08) -> bytes:
    return struct.pack(">HBB", 0, type_code, len(dims)) + struct.pack(f">{len(dims)}I", *dims) + payload


def test_gzip_idx_stops_at_the_size_its_header_declares(tmp_path):
    """A small gzip that inflates far beyond its header's size: only the declared bytes (+1) are inflated."""
    path = tmp_path / "bomb-idx1-ubyte.gz"
    with gzip.open(path, "wb", compresslevel=1) as f:
        f.write(_idx((10,), bytes(10)))
        for _ in range(64):
            f.write(bytes(1 << 22))  # 256 MiB of zeros after the 10 declared bytes
    assert path.stat().st_size < 2 << 20
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match="has trailing bytes"):
            idx.read_idx(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20


@pytest.mark.parametrize("dims,expected", [
    ((0, 28, 28), "holds no data"),
    ((2**32 - 1,) * 4, "more elements than an array can hold"),
    ((2**32 - 1, 2**20), r"GiB of data\), more than the"),
])
def test_idx_headers_that_cannot_be_data(tmp_path, dims, expected):
    path = tmp_path / "bad-idx-ubyte"
    path.write_bytes(_idx(dims))
    with pytest.raises(DataError, match=expected):
        idx.read_idx(path)


def test_idx_round_trip_plain_and_gzip(tmp_path):
    data = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    plain, zipped = tmp_path / "a-idx3-ubyte", tmp_path / "a-idx3-ubyte.gz"
    plain.write_bytes(_idx(data.shape, data.tobytes()))
    zipped.write_bytes(gzip.compress(_idx(data.shape, data.tobytes())))
    assert np.array_equal(idx.read_idx(plain), data) and np.array_equal(idx.read_idx(zipped), data)
    zipped.write_bytes(gzip.compress(_idx(data.shape, data.tobytes()[:-1])))
    with pytest.raises(DataError, match="is truncated"):
        idx.read_idx(zipped)


def _synth_file(tmp_path, classes=2, link_x_train=False):
    path, rng = tmp_path / "synth.h5", np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        for part, n in (("train", 40), ("test", 20)):
            f[f"x_{part}"] = rng.standard_normal((n, 6)).astype(np.float32)
            f[f"y_{part}"] = rng.integers(0, 2, n)
        f.attrs["classes"] = classes
        if link_x_train:
            other = _other_file(tmp_path, "x", f["x_train"][()])
            del f["x_train"]
            f["x_train"] = h5py.ExternalLink(str(other), "/x")
    return ["train", "configs/fashion_mnist.yaml", "--set", "data.name=synthetic_hdf5", "--set", f"data.path={path}",
            "--set", "model.hidden=[8]", "--set", "train.epochs=1", "--out", str(tmp_path / "run")]


def test_synthetic_hdf5_files_are_read_as_untrusted_too(capsys, tmp_path):
    err = error_of(capsys, _synth_file(tmp_path, link_x_train=True))
    assert "'/x_train' is an external link" in err
    err = error_of(capsys, _synth_file(tmp_path, classes=10**12))
    assert "holds 1000000000000 classes" in err and "data.classes is 2" in err
