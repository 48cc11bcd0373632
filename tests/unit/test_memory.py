"""The memory planner: byte counts against a real model, refusal, available memory, `sparsenet plan`."""

import json
from pathlib import Path

import numpy as np
import pytest

from sparsenet.cli import main
from sparsenet.config import load_config
from sparsenet.data import load_dataset
from sparsenet.errors import SparsenetError
from sparsenet.memory import (
    BYTES_PER_CONNECTION, check_memory, GIB, DataShape, InsufficientMemoryError, available_memory, cgroup_headroom,
    data_shape, expected_nnz, meminfo_available, model_bytes, plan_memory, eval_bytes, refusal,
)
from sparsenet.memory import workspace_bytes
from sparsenet.model import gradient_bytes
from sparsenet.sparse.layer import SparseLayer
from sparsenet.sparse.init import erdos_renyi_layer
from sparsenet.train import new_state, train_epoch

pytest.importorskip("sklearn")

DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")

SMALL = ["data.name=synthetic", "data.samples=250", "data.features=40", "data.test_fraction=0.3",
         "model.hidden=[60,50]", "model.epsilon=5", "train.batch_size=16", "train.eval_batch_size=32",
         "train.progress=false", "memory_limit_gb=64"]


def _arrays(obj):
    return [v for v in vars(obj).values() if isinstance(v, np.ndarray)]


def test_a_layer_says_what_it_allocates():
    layer = erdos_renyi_layer(300, 200, 3.0, "normal", np.random.default_rng(0))
    assert sum(a.nbytes for a in _arrays(layer)) == SparseLayer.planned_bytes(300, 200, layer.nnz)
    # 20 B of layer arrays, 4 of momentum velocity, 4 of gradient; in_perm is int64 from 2**31 connections
    assert BYTES_PER_CONNECTION == 28
    big = 2**31
    empty = SparseLayer.planned_bytes(1, 1, 0)
    assert SparseLayer.planned_bytes(1, 1, big - 1) - empty == 20 * (big - 1)
    assert SparseLayer.planned_bytes(1, 1, big) - empty == 24 * big


def test_a_dataset_without_a_known_size_or_data_file_is_not_planned(monkeypatch):
    from sparsenet.data.registry import DATASETS, DatasetKind

    monkeypatch.setitem(DATASETS, "new_set", DatasetKind("sparsenet.data.idx:load_mnist_like"))
    cfg = load_config(None, ["data.name=new_set"])
    with pytest.raises(SparsenetError, match="dataset 'new_set' has no fixed size and no data file"):
        data_shape(cfg)
    said = []
    assert check_memory(cfg, 1, say=said.append) is None and "memory plan skipped" in said[0]


def test_byte_counts_match_what_a_trained_model_allocates():
    cfg = load_config(None, SMALL)
    data = load_dataset(cfg.data, cfg.seed)
    state = new_state(cfg, data.n_features, data.n_classes)
    train_epoch(state, data.x_train, data.y_train, cfg.train.batch_size)
    trained_flat = [a for group in state.model._flat for a in group]
    state.model.evaluate(data.x_test, data.y_test, cfg.train.eval_batch_size)
    model, opt = state.model, state.optimizer
    # evaluation ran through the training workspace: same allocation, nothing new
    now_flat = [a for group in model._flat for a in group]
    assert len(now_flat) == len(trained_flat) and all(a is b for a, b in zip(now_flat, trained_flat))
    sizes, nnz = model.sizes, model.nnz

    assert sum(a.nbytes for layer in model.layers for a in _arrays(layer)) == model_bytes(sizes, nnz)
    state_arrays = [a for arrays in opt.state.values() for a in arrays]
    assert sum(a.nbytes for a in state_arrays) == opt.bytes_per_parameter() * (sum(nnz) + sum(sizes[1:]))
    assert sum(a.nbytes for a in model.grads + model.bias_grads) == gradient_bytes(sizes, nnz)
    # 175 train samples in batches of 16 and a last one of 15, 75 test samples in chunks of 16 and
    # a last one of 11: views into one allocation for 16
    assert sorted(model._workspaces) == [11, 15, 16]
    real_ws = sum(a.nbytes for group in model._flat for a in group)
    assert real_ws == workspace_bytes(sizes, 16)
    last, full = model._workspaces[15], model._workspaces[16]
    assert all(np.shares_memory(a, b) for a, b in zip(last.acts + last.deltas, full.acts + full.deltas))

    plan = plan_memory(cfg)
    items = {i.name: i.bytes for i in plan.ranks[0].items}
    assert plan.sizes == sizes
    assert items["activations"] == real_ws
    # without a workspace (the server): two ping-pong buffers and the output delta, as many samples
    # as fit in a training batch's workspace (here 75 test samples < that)
    assert eval_bytes(sizes, 32, 75, 16) == 32 * 4 * (max(sizes[0::2]) + max(sizes[1::2]) + sizes[-1])
    wide = [784, 50_000, 50_000, 10]
    assert eval_bytes(wide, 2048, 10_000, 128) <= workspace_bytes(wide, 128) + 4 * 10 * 2048
    for planned, real in zip(plan.nnz, nnz):  # expected Erdős–Rényi nnz vs one draw
        assert abs(planned - real) <= 4 * np.sqrt(planned) + 1
    real_total = (sum(a.nbytes for layer in model.layers for a in _arrays(layer))
                  + sum(a.nbytes for a in state_arrays + model.grads + model.bias_grads))
    planned_total = items["model weights + indices"] + items["optimizer state"] + items["gradients"]
    assert abs(planned_total - real_total) <= 0.05 * real_total
    assert items["data"] == data.x_train.nbytes + data.x_test.nbytes + data.y_train.nbytes + data.y_test.nbytes


def test_expected_nnz_is_the_erdos_renyi_mean_capped_at_dense():
    assert expected_nnz(65536, 500000, 10) == round(10 * (65536 + 500000))
    assert expected_nnz(500000, 2, 10) == 1000000  # density capped at 1
    assert expected_nnz(10, 10, 0.001) == 1


BIG = DataShape(7000, 3000, 65536, 2, "test")


def test_oversized_config_is_refused_with_what_would_fit():
    cfg = load_config(None, ["model.hidden=[5000000,5000000]", "model.epsilon=5", "train.batch_size=64",
                             "train.eval_batch_size=64", "memory_limit_gb=12"])
    plan = plan_memory(cfg, data=BIG)
    assert not plan.fits and plan.available == 12 * GIB
    with pytest.raises(InsufficientMemoryError) as e:
        _check(cfg)
    message = str(e.value)
    assert message.startswith("not enough memory: training 65536-5000000-5000000-2 needs about ")
    assert "only 12.00 GiB is available (memory_limit_gb = 12)" in message
    assert "largest item: activations" in message
    assert "would fit: train.batch_size=32 train.eval_batch_size=32" in message
    assert "--set memory_limit_gb=N" in message


def _check(cfg):  # check_memory with the data shape given (no file needed)
    plan = plan_memory(cfg, data=BIG)
    if not plan.fits:
        raise InsufficientMemoryError(refusal(plan))


def test_mpi_plan_counts_every_rank_on_the_node():
    cfg = load_config(None, ["model.hidden=[1000,1000]", "train.batch_size=100", "train.eval_batch_size=100",
                             "memory_limit_gb=64"])
    one = plan_memory(cfg, 1, data=BIG)
    three = plan_memory(cfg, 3, data=BIG)
    assert [(r.role, r.count) for r in three.ranks] == [("server", 1), ("worker", 2)]
    assert three.total == three.ranks[0].peak + 2 * three.ranks[1].peak
    assert three.total > 2.5 * one.total  # three copies of the data, three models
    worker = {i.name: i.bytes for i in three.ranks[1].items}
    assert worker["data shard copy"] == 3500 * 65536 * 4


def test_meminfo_and_cgroup_parsing(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24000000 kB\nMemFree:  1000 kB\nMemAvailable:   20000000 kB\n")
    assert meminfo_available(meminfo) == (20000000 * 1024, 24000000 * 1024)
    # cgroup v2: a 8 GiB limit with 1 GiB used leaves 7 GiB
    v2 = tmp_path / "v2"
    (v2 / "job").mkdir(parents=True)
    (v2 / "job" / "memory.max").write_text(f"{8 * GIB}\n")
    (v2 / "job" / "memory.current").write_text(f"{GIB}\n")
    self_v2 = tmp_path / "self_v2"
    self_v2.write_text("0::/job\n")
    headroom, note = cgroup_headroom(v2, self_v2)
    assert headroom == 7 * GIB and "cgroup v2" in note
    assert available_memory(None, meminfo, v2, self_v2)[0] == 7 * GIB  # the smaller of the two
    (v2 / "job" / "memory.max").write_text("max\n")
    assert cgroup_headroom(v2, self_v2)[0] is None
    assert available_memory(None, meminfo, v2, self_v2) == (20000000 * 1024, "MemAvailable of 22.89 GiB total")
    # cgroup v1: the memory controller's own hierarchy; "unlimited" is a huge number
    v1 = tmp_path / "v1"
    (v1 / "memory" / "slurm").mkdir(parents=True)
    (v1 / "memory" / "slurm" / "memory.limit_in_bytes").write_text(f"{4 * GIB}\n")
    (v1 / "memory" / "slurm" / "memory.usage_in_bytes").write_text(f"{GIB // 2}\n")
    self_v1 = tmp_path / "self_v1"
    self_v1.write_text("5:cpu,cpuacct:/\n4:memory:/slurm\n0::/\n")
    assert cgroup_headroom(v1, self_v1)[0] == 4 * GIB - GIB // 2
    (v1 / "memory" / "slurm" / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    assert cgroup_headroom(v1, self_v1)[0] is None
    # the config key wins over everything
    assert available_memory(2.5, meminfo, v1, self_v1) == (int(2.5 * GIB), "memory_limit_gb = 2.5")


def test_cli_plan_table_json_and_exit_code(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SPARSENET_DATA", str(tmp_path))
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data: {name: synthetic_hdf5, samples: 10000, features: 65536}\n"
                   "model: {hidden: [500000, 500000], epsilon: 10}\n"
                   "train: {batch_size: 128, eval_batch_size: 128}\n")
    assert main(["plan", str(cfg), "--set", "memory_limit_gb=20"]) == 0
    out = capsys.readouterr().out
    assert "memory plan: 65536-500000-500000-2 (1,065,538 neurons" in out
    assert "not written yet" in out and "activations" in out and "fits" in out
    assert main(["plan", str(cfg), "--set", "memory_limit_gb=30", "--ranks", "3", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [r["role"] for r in report["ranks"]] == ["server", "worker"] and report["fits"]
    assert report["available_bytes"] == 30 * GIB
    assert main(["plan", str(cfg), "--set", "memory_limit_gb=2"]) == 1
    out = capsys.readouterr().out
    assert "DOES NOT FIT" in out and "not enough memory" in out


def test_cli_plan_bad_ranks(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["plan", "configs/madelon.yaml", "--ranks", "0"])
    assert e.value.code == 2
    assert "expected a whole number >= 1, got 0" in capsys.readouterr().err


def test_train_refuses_before_writing_anything(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "configs/madelon.yaml", "--out", str(out), "--set", "memory_limit_gb=0.01"])
    assert code == 2
    captured = capsys.readouterr()
    assert "DOES NOT FIT" in captured.out
    assert "sparsenet: error: not enough memory" in captured.err and "memory_limit_gb" in captured.err
    assert not out.exists()


_LOAD_PEAK = """
import sys
from sparsenet.config import load_config
from sparsenet.data import load_dataset
from sparsenet.memory import plan_memory
cfg = load_config(None, ["data.name=hdf5", "data.path=" + sys.argv[1], "data.test_fraction=0.3", "model.hidden=[10]",
                         "memory_limit_gb=64", *sys.argv[2:]])
items = {i.name: i.bytes for i in plan_memory(cfg).ranks[0].items}
with open("/proc/self/statm") as f:
    base = int(f.read().split()[1]) * 4096
load_dataset(cfg.data, cfg.seed)
with open("/proc/self/status") as f:  # VmHWM: this process's peak (ru_maxrss would include the parent's at fork)
    peak = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
print(peak - base, items["data"], items["transient peak"])
"""


@pytest.mark.parametrize("dtype,extra", [("float32", []), ("float64", []), ("float64", ["data.max_train=20000"])])
def test_plan_covers_the_peak_of_loading_and_splitting_a_data_file(tmp_path, dtype, extra):
    """Issue 15.6: x split by test_fraction peaks at x + both parts (+ float32 copies); the plan counted x once."""
    import subprocess
    import sys

    import h5py

    path = tmp_path / "x.h5"
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:  # written here: the measuring process's high-water mark starts clean
        f["x"] = rng.standard_normal((60000, 500)).astype(dtype)
        f["y"] = rng.integers(0, 3, 60000)
    out = subprocess.run([sys.executable, "-c", _LOAD_PEAK, str(path), *extra], capture_output=True, text=True,
                         timeout=300, check=True).stdout.split()
    growth, data_item, transient = map(int, out)
    raw = 60000 * 500 * np.dtype(dtype).itemsize
    assert growth > raw + data_item * 0.9  # the split really copies (more than x once)
    assert growth <= data_item + transient  # what the plan holds for it, beside the model
    assert data_item + transient <= 1.3 * growth


def test_pixels_are_planned_at_one_byte_per_feature_and_the_set_step_within_the_released_workspace():
    cfg = load_config(None, ["data.name=fashion_mnist", "model.hidden=[50000,50000]", "model.epsilon=20",
                             "train.batch_size=128", "train.epochs=2", "memory_limit_gb=64"])
    plan = plan_memory(cfg)
    items = {i.name: i for i in plan.ranks[0].items}
    # 70k samples x 784 bytes, their int64 labels and one lookup table of 256 float32 per feature
    assert items["data"].bytes == 70_000 * (784 + 8) + 784 * 256 * 4
    assert "x 1 B" in items["data"].note
    # the SET step of the 50000 x 50000 layer (~2M connections, ~62 MB) fits in the 155 MB workspace that
    # between_epochs frees before it
    assert items["activations"].bytes == 4 * 128 * (3 * (784 + 100_000 + 10) - 10)
    assert items["transient peak"].bytes == 0 and "released training workspace" in items["transient peak"].note
    unstandardised = plan_memory(load_config(None, ["data.name=fashion_mnist", "data.standardize=false",
                                                    "memory_limit_gb=64"]))
    assert {i.name: i.bytes for i in unstandardised.ranks[0].items}["data"] == 70_000 * (784 + 8) + 256 * 4
    # an MPI worker's shard copy is bytes too
    worker = {i.name: i.bytes for i in plan_memory(cfg, 3).ranks[1].items}
    assert worker["data shard copy"] == 30_000 * 784


@pytest.mark.skipif(not DEBIAN_FASHION.is_dir(), reason="dataset-fashion-mnist not installed")
def test_the_planned_data_bytes_are_what_fashion_mnist_holds():
    cfg = load_config(None, ["data.name=fashion_mnist", f"data.path={DEBIAN_FASHION}", "memory_limit_gb=64"])
    data = load_dataset(cfg.data, cfg.seed)
    held = (data.x_train.raw.nbytes + data.x_test.raw.nbytes + data.x_train.table.nbytes
            + data.y_train.nbytes + data.y_test.nbytes)
    assert data.x_test.table is data.x_train.table
    assert {i.name: i.bytes for i in plan_memory(cfg).ranks[0].items}["data"] == held


@pytest.mark.slow
@pytest.mark.skipif(not DEBIAN_FASHION.is_dir(), reason="dataset-fashion-mnist not installed")
def test_the_plan_of_the_wide_config_is_within_15_percent_of_its_peak_rss(tmp_path):
    """784-50000-50000-10 (eps 20, batch 128) on all 70k FashionMNIST samples, two epochs of 10 batches (the
    rest of the training set stays loaded): the process's peak RSS (with the SET step, evaluation on all
    10k test samples, checkpoints: VmHWM, not ru_maxrss, which after fork + exec keeps the forking pytest
    process's size) against memory.plan_memory's estimate. A first run on a tiny model loads
    (or compiles) the kernels, as the planner assumes: a process that compiles them peaks ~300 MB higher."""
    import subprocess
    import sys

    script = (
        "import dataclasses, json, sys\n"
        "from sparsenet import cli\n"
        "from sparsenet.config import load_config\n"
        "from sparsenet.data import load_dataset\n"
        "from sparsenet.memory import plan_memory\n"
        "from sparsenet.train import run\n"
        f"cfg = load_config(None, ['data.name=fashion_mnist', 'data.path={DEBIAN_FASHION}', 'model.hidden=[50000,50000]',"
        " 'model.epsilon=20', 'train.batch_size=128', 'train.epochs=2', 'train.progress=false', 'memory_limit_gb=64'])\n"
        "full = load_dataset(cfg.data, cfg.seed)\n"
        "if sys.argv[2] == 'warm':\n"
        "    cfg = load_config(None, ['data.name=fashion_mnist', 'model.hidden=[20,20]', 'train.batch_size=128',"
        " 'train.epochs=2', 'train.progress=false', 'memory_limit_gb=64'])\n"
        "run(cfg, sys.argv[1], dataset=dataclasses.replace(full, x_train=full.x_train[:1280], y_train=full.y_train[:1280]))\n"
        "hwm = next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM'))\n"
        "print(json.dumps([hwm * 1024, plan_memory(cfg).total, full.x_train.shape[0]]))\n")
    for what in ("warm", "measure"):
        proc = subprocess.run([sys.executable, "-c", script, str(tmp_path / what), what], capture_output=True,
                              text=True, timeout=1800)
        assert proc.returncode == 0, proc.stderr[-2000:]
    peak, planned, held = json.loads(proc.stdout.strip().splitlines()[-1])
    assert held == 60_000
    assert abs(planned - peak) <= 0.15 * peak, f"planned {planned / 2**20:.0f} MiB, peak {peak / 2**20:.0f} MiB"


@pytest.mark.parametrize("kind", ["npz", "hdf5"])
@pytest.mark.parametrize("layout", ["split", "whole"])
@pytest.mark.parametrize("standardize", [True, False])
def test_the_planned_data_bytes_are_what_a_uint8_data_file_holds(tmp_path, kind, layout, standardize):
    """A file storing x as uint8 is held at 1 byte per feature (data/rows.py), and planned so."""
    from tests.unit.data_files import write_arrays

    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (300, 50), dtype=np.uint8)
    y = rng.integers(0, 3, 300)
    arrays = ({"x_train": x[:200], "y_train": y[:200], "x_test": x[200:], "y_test": y[200:]} if layout == "split"
              else {"x": x, "y": y})
    path = tmp_path / f"d.{'npz' if kind == 'npz' else 'h5'}"
    write_arrays(path, arrays)
    cfg = load_config(None, [f"data.name={kind}", f"data.path={path}", f"data.standardize={standardize}",
                             "model.hidden=[10]", "memory_limit_gb=64"])
    data = load_dataset(cfg.data, cfg.seed)
    held = (data.x_train.raw.nbytes + data.x_test.raw.nbytes + data.x_train.table.nbytes
            + data.y_train.nbytes + data.y_test.nbytes)
    items = {i.name: i for i in plan_memory(cfg).ranks[0].items}
    assert items["data"].bytes == held == 300 * (50 + 8) + 256 * 4 * (50 if standardize else 1)
    assert "x 1 B" in items["data"].note
    # loading: the file's bytes, the split's uint8 copies of them (whole x only), never float32 copies
    peak = data_shape(cfg).load_peak
    assert peak == (300 * 50 + 8 * 300 if layout == "split" else 2 * 300 * 50 + 16 * 300)
