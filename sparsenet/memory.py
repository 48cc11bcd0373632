"""Memory planner: how much a config needs at its peak, per rank, against what this machine has.

Everything is derived from a validated Config and the data's shape; no model is built. The
byte counts follow what the code allocates (see the constants below, one place to update when a
layout changes; tests/unit/test_memory.py checks them against a real model's arrays).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .config import Config, override_config
from .data.registry import DATASETS
from .cgroups import own_cgroup_paths
from .errors import SparsenetError
from .model import eval_chunk, gradient_bytes, inference_bytes_per_sample, training_workspace_bytes
from .optim import OPTIMIZERS, MomentumSGD
from .parallel import mpi_workers
from .sparse.init import erdos_renyi_density
from .sparse.layer import SparseLayer
from .sparse.lazy import planned_bytes as lazy_bytes

GIB = 1 << 30

# ---------------------------------------------------------------- what the code allocates

# Each component says what it allocates: SparseLayer.planned_bytes (connections, biases, run
# pointers), model.training_workspace_bytes / gradient_bytes / eval_chunk, the optimizer's
# bytes_per_parameter, mpi_workers.planned_bytes (messages and the shared window of channels) and
# data.registry (the data's size). What is left here are measured transient peaks.
BYTES_PER_CONNECTION = (SparseLayer.planned_bytes(1, 1, 1) - SparseLayer.planned_bytes(1, 1, 0)
                        + MomentumSGD.bytes_per_parameter() + gradient_bytes([1, 1], [1]) - gradient_bytes([1, 1], [0]))
# Evaluation (model.evaluate): forward only, through the training workspace where there is one; on
# the server (no workspace) two ping-pong buffers (widest even / odd layer) per sample of a chunk,
# within the bytes of a training batch's workspace; allocated per call.

# Transient peaks, measured with scripts/bench_memory.py (tracemalloc and RSS) on a 2M x 2M eps-10
# layer (40M connections) and a 5M x 5M eps-1 layer (10M connections): the SET step
# (evolution.prune_and_regrow + optim.realign) allocates ~29 B per connection of the layer it
# evolves plus ~16 B per neuron of it; Erdős–Rényi init ~22 B per connection plus the per-thread
# counts of the counting sort. Neuron pruning rebuilds a layer with plain numpy (not yet lean).
SET_PEAK_BYTES_PER_CONNECTION = 30
SET_PEAK_BYTES_PER_NEURON = 16
INIT_PEAK_BYTES_PER_CONNECTION = 22
PRUNE_PEAK_BYTES_PER_CONNECTION = 104
# Loading a data file (data/files.py): the file's x arrays as stored, then (test_fraction) the two
# parts of x copied out of it, then float32 copies of what is kept; standardize scans in float64
# blocks of prepare._BLOCK_ELEMENTS (a few of them at once).
LOAD_SCRATCH_BYTES = 4 * 8 * (1 << 20)
# data.name synthetic, per value (sample x feature): scikit-learn's make_classification builds x in float64 and
# copies it whole twice (rows shuffled, columns permuted); the split copies it again and finish() keeps float32.
# Measured (VmHWM growth of load_dataset after scikit-learn's import, which INTERPRETER_BYTES counts): 24.2 B per
# value at 20000 x 500 and 40000 x 500 (tests/unit/test_odd_inputs.py); with the import, 26.7 at 20000 x 2000.
SYNTHETIC_BYTES_PER_VALUE = 28
# Python, numpy, scipy, numba and the kernels it loads (~60 MB), h5py: `sparsenet train` of FashionMNIST
# 784-10-10 on 1000 samples peaks at 190 MB RSS (measured on the 2-core Xeon, numba 0.68, glibc).
INTERPRETER_BYTES = 200 * (1 << 20)


# ---------------------------------------------------------------- data shape

@dataclass(frozen=True)
class DataShape:
    n_train: int
    n_test: int
    n_features: int
    n_classes: int
    source: str            # where the numbers come from
    file_bytes: int = 0    # data files: bytes of the x arrays as the file stores them (read whole)
    file_rows: int = 0     # data files: samples in the file (before max_train / max_test)
    split: bool = False    # data files: one x that test_fraction splits into two copies
    nnz: int = 0           # CSR data: stored non-zeros of train + test (0: dense, samples x features)
    feature_bytes: int = 4  # dense features in memory: 4 (float32) or 1 (whole numbers 0..255 kept as uint8)
    standardize: bool = True  # uint8 features: a lookup table of 256 float32 per feature (data/rows.py)
    generation_bytes: int = 0  # data.name synthetic: what generating it in memory peaks at (SYNTHETIC_BYTES_PER_VALUE)

    @property
    def x_bytes(self) -> int:
        """Bytes of x_train + x_test (+ labels) as training holds them: CSR (float32 value + int32 column
        per non-zero, int64 row pointers): O(nnz); dense float32, or uint8 with its lookup table."""
        rows = self.n_train + self.n_test
        if self.nnz:
            return self.nnz * 8 + (rows + 2) * 8 + rows * 8
        table = 0 if self.feature_bytes == 4 else 1024 * (self.n_features if self.standardize else 1)
        return rows * (self.n_features * self.feature_bytes + 8) + table

    @property
    def load_peak(self) -> int:
        """Bytes the loader holds at its peak (0: no more than the data it returns).

        data/files.py reads the file's arrays whole; a split copies both parts out of x and then
        drops x; what is kept is converted to float32 (a copy unless it is float32 already and whole).
        """
        if self.generation_bytes:
            return self.generation_bytes
        if not self.file_bytes:
            return 0
        if self.nnz:  # the parts as stored, the split's copies, the float32/int32 conversion and the scaled values
            return 2 * self.file_bytes + (self.file_bytes if self.split else 0) + 4 * self.nnz + 8 * self.file_rows
        raw, kept = self.file_bytes, self.n_train + self.n_test
        converted = self.feature_bytes * kept * self.n_features  # float32 copies, or uint8 ones (data/rows.py)
        if raw == converted and kept == self.file_rows:
            converted = 0
        labels = 8 * self.file_rows * (2 if self.split else 1)
        return raw + max(raw if self.split else 0, converted) + labels


def data_shape(cfg: Config) -> DataShape:
    """Samples and features the config's data will have, without loading it (data.registry says how)."""
    d = cfg.data
    kind = DATASETS.get(d.name)
    if kind is None:
        raise SparsenetError(f"cannot plan memory: unknown dataset '{d.name}'")
    if kind.sizes is not None:
        n_train, n_test, f, c = kind.sizes
        shape = DataShape(n_train, n_test, f, c, f"{d.name} (fixed size)", feature_bytes=kind.feature_bytes)
    elif kind.synthetic:
        from .data.synthfile import file_shapes, split_sizes, synth_path

        path = synth_path(d, cfg.seed) if d.name == "synthetic_hdf5" else None
        if path is not None and path.is_file():
            s = file_shapes(path)
            shape = DataShape(s["x_train"][0], s["x_test"][0], s["x_train"][1], d.classes, f"file {path}")
        else:
            n_train, n_test = split_sizes(d.samples, d.test_fraction)
            what = f"config (file {path} not written yet)" if path is not None else "config"
            generation = SYNTHETIC_BYTES_PER_VALUE * d.samples * d.features if d.name == "synthetic" else 0
            shape = DataShape(n_train, n_test, d.features, d.classes, what, generation_bytes=generation)
    elif d.name not in _FILE_SHAPES or not d.path:
        raise SparsenetError(f"cannot plan memory: dataset '{d.name}' has no fixed size and no data file to read it from")
    elif not Path(d.path).expanduser().is_file():
        raise SparsenetError(f"cannot plan memory: data file '{d.path}' not found")
    else:
        shape = _FILE_SHAPES[d.name](Path(d.path).expanduser(), d.test_fraction)
    n_train = min(shape.n_train, d.max_train) if d.max_train else shape.n_train
    n_test = min(shape.n_test, d.max_test) if d.max_test else shape.n_test
    nnz = shape.nnz
    if nnz and (n_train, n_test) != (shape.n_train, shape.n_test):  # max_train/max_test: scale by the rows kept
        nnz = -(-nnz * (n_train + n_test) // max(1, shape.n_train + shape.n_test))
    return DataShape(n_train, n_test, shape.n_features, shape.n_classes, shape.source, shape.file_bytes,
                     shape.file_rows, shape.split, nnz, shape.feature_bytes, d.standardize, shape.generation_bytes)


def _split(n: int, test_fraction: float) -> tuple[int, int]:
    n_test = int(round(n * test_fraction))
    return n - n_test, n_test


def _csr_shapes(shapes: dict, itemsizes: dict, read_shape, where: str) -> int:
    """In place: each x stored as CSR parts (data/csr.py layout) gets shapes[x] = its declared
    (samples, features) from read_shape(name) and itemsizes[x] = 0; returns the stored bytes of the
    parts (0 if no x is CSR). nnz per x goes into shapes[x + "_nnz"]."""
    from .data.files import csr_names

    stored = 0
    for x in ("x_train", "x_test", "x"):
        names = csr_names(x)
        if x in shapes or not all(n in shapes for n in names):
            continue
        if shapes[names[3]] != (2,):
            raise SparsenetError(f"{where}: {names[3]} has shape {shapes[names[3]]}, expected (2,) (samples, features)")
        declared = read_shape(names[3])
        if len(declared) != 2 or min(declared) < 1:
            raise SparsenetError(f"{where}: {names[3]} must be two positive integers, got {list(declared)}")
        shapes[x], itemsizes[x] = tuple(int(n) for n in declared), 0
        shapes[x + "_nnz"] = int(shapes[names[0]][0]) if len(shapes[names[0]]) == 1 else 0
        stored += sum(int(np.prod(shapes[n])) * itemsizes[n] for n in names[:3])
    return stored


def _file_shape(shapes: dict, itemsizes: dict, test_fraction: float, note: str, where: str,
                csr_bytes: int = 0, dtypes: dict | None = None) -> DataShape:
    """DataShape of a file's x_train/x_test or x arrays (shapes, element sizes and dtypes as stored; CSR x
    after _csr_shapes, with csr_bytes the bytes of their parts)."""
    from .data.rows import feature_bytes

    dtypes = dtypes or {}
    if csr_bytes:
        for key in ("x_train", "x_test", "x"):
            if key in shapes and len(shapes[key]) != 2:
                raise SparsenetError(f"{where}: {key} has shape {shapes[key]}, expected (samples, features)")
        nnz = sum(shapes.get(k + "_nnz", 0) for k in ("x_train", "x_test", "x"))
        if "x_train" in shapes and "x_test" in shapes:
            (n_train, f), (n_test, _) = shapes["x_train"], shapes["x_test"]
            return DataShape(n_train, n_test, f, 2, note, csr_bytes, n_train + n_test, False, nnz)
        if "x" in shapes:
            n, f = shapes["x"]
            n_train, n_test = _split(n, test_fraction)
            return DataShape(n_train, n_test, f, 2, note, csr_bytes, n, True, nnz)
    for key in ("x_train", "x_test", "x"):
        if key in shapes and (len(shapes[key]) != 2 or min(shapes[key]) < 1):
            raise SparsenetError(f"{where}: {key} has shape {shapes[key]}, expected (samples, features), "
                                 f"both at least 1")
    if "x_train" in shapes and "x_test" in shapes:
        (n_train, f), (n_test, _) = shapes["x_train"], shapes["x_test"]
        raw = (n_train + n_test) * f * max(itemsizes["x_train"], itemsizes["x_test"])
        held = max(feature_bytes(dtypes.get(k, np.float32)) for k in ("x_train", "x_test"))
        return DataShape(n_train, n_test, f, 2, note, raw, n_train + n_test, False, feature_bytes=held)
    if "x" not in shapes:
        raise SparsenetError(f"{where} has no x_train/x_test or x array")
    (n, f) = shapes["x"]
    n_train, n_test = _split(n, test_fraction)
    return DataShape(n_train, n_test, f, 2, note, n * f * itemsizes["x"], n, True,
                     feature_bytes=feature_bytes(dtypes.get("x", np.float32)))


def _hdf5_shape(path: Path, test_fraction: float) -> DataShape:
    from . import h5safe

    where = f"cannot plan memory: '{path}'"
    fh = h5safe.open_file(path, SparsenetError, f"cannot plan memory: cannot read the shapes in '{path}'")
    found = {}
    try:
        with fh:
            from .data.files import csr_names

            for key in ("x_train", "x_test", "x", *(n for x in ("x_train", "x_test", "x") for n in csr_names(x))):
                ds = h5safe.dataset(fh, key, where, SparsenetError, h5safe.file_size(path))
                if ds is not None:
                    if ds.ndim != 2 and key in ("x_train", "x_test", "x"):
                        raise SparsenetError(f"{where}: {key} has shape {ds.shape}, expected (samples, features)")
                    found[key] = (tuple(int(n) for n in ds.shape), int(ds.dtype.itemsize), ds.dtype)
            shapes, itemsizes = {k: v[0] for k, v in found.items()}, {k: v[1] for k, v in found.items()}
            dtypes = {k: v[2] for k, v in found.items()}
            csr_bytes = _csr_shapes(shapes, itemsizes, lambda name: h5safe.read_array(fh[name], where, SparsenetError)
                                    .tolist(), where)
    except (OSError, RuntimeError, KeyError, ValueError, TypeError) as e:  # h5py on a damaged file
        raise SparsenetError(f"{where}: {' '.join(str(e).split())}") from None
    return _file_shape(shapes, itemsizes, test_fraction, f"file {path} (classes not counted: 2 assumed)", where,
                       csr_bytes, dtypes)


def _npz_shape(path: Path, test_fraction: float) -> DataShape:
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            shapes, itemsizes, dtypes = {}, {}, {}
            for name in z.namelist():
                with z.open(name) as fh:
                    major, _ = np.lib.format.read_magic(fh)
                    read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
                    shape, _, dtype = read(fh)
                    key = name.removesuffix(".npy")
                    shapes[key], itemsizes[key], dtypes[key] = shape, dtype.itemsize, dtype

            def read_shape(key: str) -> list:
                with z.open(f"{key}.npy" if f"{key}.npy" in z.namelist() else key) as fh:
                    values = np.lib.format.read_array(fh, allow_pickle=False)
                if values.dtype.kind not in "iu":
                    raise SparsenetError(f"cannot plan memory: '{path}': {key} must hold integers, got {values.dtype}")
                return values.tolist()

            csr_bytes = _csr_shapes(shapes, itemsizes, read_shape, f"cannot plan memory: '{path}'")
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise SparsenetError(f"cannot plan memory: cannot read the shapes in '{path}': {e}") from e
    return _file_shape(shapes, itemsizes, test_fraction, f"file {path} (classes not counted: 2 assumed)",
                       f"cannot plan memory: '{path}'", csr_bytes, dtypes)


def _csv_shape(path: Path, test_fraction: float) -> DataShape:
    try:
        with open(path, "rb") as fh:
            first = fh.readline()
            rows = 1 + sum(chunk.count(b"\n") for chunk in iter(lambda: fh.read(1 << 24), b""))
    except OSError as e:
        raise SparsenetError(f"cannot plan memory: cannot read '{path}': {e.strerror or e}") from e
    text = first.decode("utf-8", "replace")
    delimiter = max(",;\t", key=text.count)
    n_train, n_test = _split(rows, test_fraction)
    return DataShape(n_train, n_test, max(1, text.count(delimiter)), 2, f"file {path} (rows counted, 2 classes assumed)")


# ---------------------------------------------------------------- the plan

@dataclass(frozen=True)
class Item:
    name: str
    bytes: int
    note: str = ""


@dataclass
class RankPlan:
    role: str              # sequential, server or worker
    count: int             # how many ranks of this kind
    items: list[Item]

    @property
    def peak(self) -> int:
        return sum(i.bytes for i in self.items)


@dataclass
class Plan:
    sizes: list[int]
    nnz: list[int]
    data: DataShape
    ranks: list[RankPlan]
    available: int
    available_source: str
    suggestions: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(r.peak * r.count for r in self.ranks)

    @property
    def fits(self) -> bool:
        return self.total <= self.available

    def to_dict(self) -> dict:
        return {"neurons": self.sizes, "nnz": self.nnz, "data": vars(self.data),
                "ranks": [{"role": r.role, "count": r.count, "peak_bytes": r.peak,
                           "items": [vars(i) for i in r.items]} for r in self.ranks],
                "total_bytes": self.total, "available_bytes": self.available,
                "available_source": self.available_source, "fits": self.fits, "suggestions": self.suggestions}


def expected_nnz(n_in: int, n_out: int, epsilon: float) -> int:
    """Expected connections of an Erdős–Rényi layer (at least 1)."""
    return max(1, int(round(erdos_renyi_density(n_in, n_out, epsilon) * n_in * n_out)))


def model_bytes(sizes: list[int], nnz: list[int]) -> int:
    """Layer arrays of a SparseMLP: connections, biases and run pointers."""
    return sum(SparseLayer.planned_bytes(n_in, n_out, k) for n_in, n_out, k in zip(sizes[:-1], sizes[1:], nnz))


def workspace_bytes(sizes: list[int], batch: int) -> int:
    """One SparseMLP training workspace (the model says how large)."""
    return training_workspace_bytes(sizes, batch)


def eval_bytes(sizes: list[int], eval_batch: int, n_test: int, train_batch: int) -> int:
    """model.evaluate's own buffers on a rank without a training workspace (the server, `evaluate`):
    two ping-pong buffers (widest even / odd layer) and the output delta, within what a training batch needs."""
    chunk = min(eval_chunk(sizes, eval_batch, training_workspace_bytes(sizes, train_batch)), max(n_test, 1))
    return chunk * (inference_bytes_per_sample(sizes) + 4 * sizes[-1])


def _activations(sizes: list[int], train_batch: int, eval_batch: int | None, n_test: int,
                 name: str = "activations", sparse_input: bool = False) -> Item:
    """The training workspace (evaluation runs through it), or, with eval_batch, evaluation's own buffers.
    sparse_input: CSR data, no buffers for the input layer."""
    if eval_batch is None:
        neurons = sum(sizes) - (sizes[0] if sparse_input else 0)
        return Item(name, training_workspace_bytes(sizes, train_batch, sparse_input),
                    f"train: 3 buffers of {neurons:,} neurons x batch {train_batch}, reused by eval")
    return Item(name, eval_bytes(sizes, eval_batch, n_test, train_batch),
                "eval: 2 buffers of the widest layers, within a training batch's bytes")


def _transient(cfg: Config, sizes: list[int], nnz: list[int], data: DataShape, data_bytes: int,
               workspace: int = 0) -> Item:
    """The largest short-lived allocation on top of what stays; `workspace`: bytes of a training workspace
    that is free at the time (init runs before the first batch; between epochs train.between_epochs
    releases it before pruning and the SET step), so a transient counts only beyond it."""
    last = len(nnz) - 1
    evolving = [k for l, k in enumerate(nnz) if (l < last or cfg.evolution.evolve_output)
                and k < sizes[l] * sizes[l + 1]]
    candidates = [(max(nnz) * INIT_PEAK_BYTES_PER_CONNECTION + max(sizes) * 4 * (os.cpu_count() or 1) - workspace,
                   "init of the largest layer")]
    if cfg.evolution.zeta > 0 and evolving and cfg.train.epochs > 1:
        neurons = max(sizes[l] + sizes[l + 1] for l, k in enumerate(nnz) if k == max(evolving))
        candidates.append((max(evolving) * SET_PEAK_BYTES_PER_CONNECTION + neurons * SET_PEAK_BYTES_PER_NEURON
                           - workspace, "SET step of the largest layer"))
        candidates.append((gradient_bytes(sizes, nnz) - workspace, "gradients reallocated after SET"))
    if cfg.pruning.method != "none":
        candidates.append((max(nnz) * PRUNE_PEAK_BYTES_PER_CONNECTION - workspace, "neuron pruning of the largest layer"))
    if data.load_peak > data_bytes:  # before the model exists, but counted on top of it: an upper bound
        candidates.append((data.load_peak - data_bytes + LOAD_SCRATCH_BYTES,
                           "loading the data: the file's arrays and their test_fraction split"))
    size, why = max(candidates)
    if size <= 0:
        return Item("transient peak", 0, f"{why}: within the released training workspace")
    return Item("transient peak", size, why + (" beyond the released training workspace" if workspace else ""))


# data.name -> the shape of its file (data.path), read without loading it; csv: columns of the first line, rows counted
_FILE_SHAPES = {"hdf5": _hdf5_shape, "npz": _npz_shape, "csv": _csv_shape}


def plan_memory(cfg: Config, ranks: int = 1, data: DataShape | None = None, available: int | None = None,
                available_source: str | None = None, suggest: bool = True) -> Plan:
    """Peak memory of training `cfg` on `ranks` processes on this node (1 = sequential)."""
    if ranks < 1:
        raise SparsenetError(f"ranks must be >= 1, got {ranks}")
    data = data or data_shape(cfg)
    n_out = data.n_features if cfg.model.task == "autoencoder" else data.n_classes
    sizes = [data.n_features, *cfg.model.hidden, n_out]
    nnz = [expected_nnz(a, b, cfg.model.epsilon) for a, b in zip(sizes[:-1], sizes[1:])]
    x_bytes = data.x_bytes
    data_item = Item("data", x_bytes, f"{data.n_train:,}+{data.n_test:,} samples, CSR: {data.nnz:,} non-zeros x 8 B"
                     if data.nnz else f"{data.n_train:,}+{data.n_test:,} samples x {data.n_features:,} features "
                     f"x {data.feature_bytes} B")
    model = Item("model weights + indices", model_bytes(sizes, nnz), f"{sum(nnz):,} connections, {sum(sizes):,} neurons")
    per_parameter = OPTIMIZERS[cfg.train.optimizer].bytes_per_parameter()
    opt_state = Item("optimizer state", (sum(nnz) + sum(sizes[1:])) * per_parameter,
                    f"{cfg.train.optimizer}: x {per_parameter} B")
    grads = Item("gradients", gradient_bytes(sizes, nnz), "one float32 per parameter")
    transient = _transient(cfg, sizes, nnz, data, x_bytes)
    overhead = Item("interpreter + numba", INTERPRETER_BYTES)
    t = cfg.train
    train_batch = min(t.batch_size, data.n_train)
    if ranks == 1:
        acts = _activations(sizes, train_batch, None, data.n_test, sparse_input=data.nnz > 0)
        transient = _transient(cfg, sizes, nnz, data, x_bytes, acts.bytes)
        items = [data_item, model, opt_state, grads, acts, transient, overhead]
        if data.nnz and cfg.train.optimizer == "momentum" and cfg.model.task != "autoencoder":
            items.insert(5, Item("lazy first layer", lazy_bytes(sizes[0], nnz[0]),
                                 "CSR epochs: input-major weights + velocities of layer 0, a step count per input"))
        plans = [RankPlan("sequential", 1, items)]
    else:
        workers = ranks - 1
        shard = -(-data.n_train // workers)
        acts_s = _activations(sizes, train_batch, t.eval_batch_size, data.n_test, "activations (eval)")
        transport = mpi_workers.planned_bytes(cfg, sizes, nnz, per_parameter, workers)
        server_items = [data_item, model, opt_state, grads, acts_s, *[Item(*i) for i in transport["server"]],
                        transient, overhead]
        server = RankPlan("server", 1, server_items)
        acts_w = _activations(sizes, min(t.batch_size, shard), None, 0)
        shard_item = Item("data shard copy", shard * data.n_features * data.feature_bytes, f"{shard:,} samples")
        worker = RankPlan("worker", workers, [data_item, shard_item, model, opt_state, grads, acts_w,
                                              *[Item(*i) for i in transport["worker"]], transient, overhead])
        plans = [server, worker]
    if available is None:
        available, available_source = available_memory(cfg.memory_limit_gb)
    result = Plan(sizes, nnz, data, plans, available, available_source or "given")
    if suggest and not result.fits:
        result.suggestions = _suggestions(cfg, ranks, data, available, available_source)
    return result


def _suggestions(cfg: Config, ranks: int, data: DataShape, available: int, source: str | None) -> list[str]:
    def fits(c: Config, r: int) -> Plan | None:
        p = plan_memory(c, r, data, available, source, suggest=False)
        return p if p.fits else None

    out = []
    t = cfg.train
    for b in (t.batch_size // 2 ** k for k in range(1, 12)):
        if b < 1:
            break
        eb = min(t.eval_batch_size, b)
        p = fits(override_config(cfg, [f"train.batch_size={b}", f"train.eval_batch_size={eb}"]), ranks)
        if p is not None:
            out.append(f"train.batch_size={b} train.eval_batch_size={eb} ({_gib(p.total)})")
            break
    for r in range(ranks - 1, 1, -1):
        p = fits(cfg, r)
        if p is not None:
            out.append(f"{r} ranks ({_gib(p.total)})")
            break
    if ranks > 1 and fits(cfg, 1) is not None:
        out.append(f"sequential training ({_gib(fits(cfg, 1).total)})")
    eps = cfg.model.epsilon
    for k in range(1, 12):
        e = float(f"{eps * 0.7 ** k:.3g}")
        p = fits(override_config(cfg, [f"model.epsilon={e}"]), ranks)
        if p is not None:
            out.append(f"model.epsilon={e:g} ({_gib(p.total)})")
            break
    return out


# ---------------------------------------------------------------- what is available

def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if text == "max":
        return None
    try:
        value = int(text)
    except ValueError:
        return None
    return value if 0 < value < (1 << 60) else None  # v1 "unlimited" is about 2**63


def meminfo_available(path: str | os.PathLike = "/proc/meminfo") -> tuple[int | None, int | None]:
    """(MemAvailable, MemTotal) in bytes from a meminfo file; None where missing."""
    found: dict[str, int] = {}
    try:
        with open(path) as fh:
            for line in fh:
                key, _, rest = line.partition(":")
                parts = rest.split()
                if key in ("MemAvailable", "MemTotal") and parts:
                    found[key] = int(parts[0]) * (1024 if parts[1:] == ["kB"] else 1)
    except (OSError, ValueError):
        pass
    return found.get("MemAvailable"), found.get("MemTotal")


def cgroup_headroom(root: str | os.PathLike = "/sys/fs/cgroup",
                    self_cgroup: str | os.PathLike = "/proc/self/cgroup") -> tuple[int | None, str]:
    """Bytes this process's cgroup may still allocate (limit - usage), v2 or v1; None if unlimited."""
    root = Path(root)
    v2_path, v1_path = own_cgroup_paths("memory", self_cgroup)
    candidates = []  # the process's own cgroup first, then the root; the first one with a limit counts
    if v1_path is not None:
        for base in (root / "memory" / v1_path.lstrip("/"), root / "memory"):
            candidates.append((base / "memory.limit_in_bytes", base / "memory.usage_in_bytes", "cgroup v1"))
    if v2_path is not None:
        for base in (root / v2_path.lstrip("/"), root):
            candidates.append((base / "memory.max", base / "memory.current", "cgroup v2"))
    for limit_file, usage_file, kind in candidates:
        limit = _read_int(limit_file)
        if limit is None:
            continue
        usage = _read_int(usage_file) or 0
        return max(0, limit - usage), f"{kind} limit {_gib(limit)} - usage {_gib(usage)} ({limit_file.parent})"
    return None, ""


def available_memory(limit_gb: float | None = None, meminfo: str | os.PathLike = "/proc/meminfo",
                     cgroup_root: str | os.PathLike = "/sys/fs/cgroup",
                     self_cgroup: str | os.PathLike = "/proc/self/cgroup") -> tuple[int, str]:
    """(bytes, where from): memory_limit_gb if set, else min(MemAvailable, cgroup limit - usage)."""
    if limit_gb is not None:
        return int(limit_gb * GIB), f"memory_limit_gb = {limit_gb:g}"
    avail, total = meminfo_available(meminfo)
    options = []
    if avail is not None:
        options.append((avail, f"MemAvailable of {_gib(total) if total else '?'} total"))
    cg, note = cgroup_headroom(cgroup_root, self_cgroup)
    if cg is not None:
        options.append((cg, note))
    if not options:
        raise SparsenetError("cannot tell how much memory is available (no /proc/meminfo, no cgroup limit); "
                             "set memory_limit_gb in the config or with --set memory_limit_gb=N")
    return min(options)


def check_available(nbytes: int, before: str, after: str = "") -> None:
    """DataError "{before} N GiB{after}, more than the M GiB available (where from)" if reading or building
    `nbytes` would not fit: a file's declared sizes are checked before anything is allocated for them."""
    from .errors import DataError

    available, source = available_memory()
    if nbytes > available:
        raise DataError(f"{before} {_gib(nbytes)}{after}, more than the {_gib(available)} available ({source})")


# ---------------------------------------------------------------- output and the gate

def _gib(n: int) -> str:
    return f"{n / GIB:.2f} GiB"


def format_plan(p: Plan) -> str:
    lines = [f"memory plan: {'-'.join(map(str, p.sizes))} ({sum(p.sizes):,} neurons, {sum(p.nnz):,} connections); "
             f"data from {p.data.source}"]
    for r in p.ranks:
        label = r.role if r.count == 1 else f"{r.role} (x{r.count})"
        lines.append(f"  {label}")
        for i in r.items:
            lines.append(f"    {i.name:<28}{i.bytes / GIB:>9.2f} GiB  {i.note}")
        lines.append(f"    {'peak per rank':<28}{r.peak / GIB:>9.2f} GiB")
    lines.append(f"  total {_gib(p.total)}, available {_gib(p.available)} ({p.available_source}): "
                 f"{'fits' if p.fits else 'DOES NOT FIT'}")
    return "\n".join(lines)


class InsufficientMemoryError(SparsenetError):
    """The planned peak memory exceeds what is available."""


def refusal(p: Plan) -> str:
    biggest = max(((i, r) for r in p.ranks for i in r.items), key=lambda ir: ir[0].bytes * ir[1].count)
    what = ", ".join(f"{r.count} {r.role}{'s' if r.count > 1 else ''} x {_gib(r.peak)}" for r in p.ranks)
    hint = ("; would fit: " + "; or ".join(p.suggestions)) if p.suggestions else "; nothing smaller found that fits"
    return (f"not enough memory: training {'-'.join(map(str, p.sizes))} needs about {_gib(p.total)} ({what}; "
            f"largest item: {biggest[0].name} {_gib(biggest[0].bytes)}), but only {_gib(p.available)} is available "
            f"({p.available_source}){hint}; to override set memory_limit_gb (e.g. --set memory_limit_gb=N)")


def check_memory(cfg: Config, ranks: int = 1, say=print) -> Plan | None:
    """Plan, print the table with `say`, and raise InsufficientMemoryError if it will not fit.

    If the data file cannot be sized (missing, malformed) there is no plan: the loader reports why.
    """
    try:
        shape = data_shape(cfg)
    except SparsenetError as e:
        say(f"memory plan skipped: {e}")
        return None
    p = plan_memory(cfg, ranks, data=shape)
    say(format_plan(p))
    if not p.fits:
        raise InsufficientMemoryError(refusal(p))
    return p


def check_evaluation_memory(cfg: Config, sizes: list[int], nnz: list[int], say=print) -> Plan | None:
    """`evaluate`: the data (at its loading peak), the loaded model with its stored optimizer state and the
    evaluation buffers must fit; raises InsufficientMemoryError before the data is loaded if not."""
    try:
        data = data_shape(cfg)
    except SparsenetError as e:
        say(f"memory plan skipped: {e}")
        return None
    data_bytes = data.x_bytes
    items = [Item("data", max(data_bytes, data.load_peak), f"{data.n_train:,}+{data.n_test:,} samples x "
                  f"{data.n_features:,} features (at the loading peak)"),
             Item("model weights + indices", model_bytes(sizes, nnz)),
             Item("stored optimizer state",
                  (sum(nnz) + sum(sizes[1:])) * OPTIMIZERS[cfg.train.optimizer].bytes_per_parameter()),
             _activations(sizes, cfg.train.batch_size, cfg.train.eval_batch_size, data.n_test),
             Item("interpreter + numba", INTERPRETER_BYTES)]
    available, source = available_memory(cfg.memory_limit_gb)
    p = Plan(list(sizes), list(nnz), data, [RankPlan("evaluate", 1, items)], available, source)
    if not p.fits:
        raise InsufficientMemoryError(refusal(p).replace("training", "evaluating", 1))
    return p


def plan_json(p: Plan) -> str:
    return json.dumps(p.to_dict())


__all__ = ["plan_memory", "check_memory", "format_plan", "available_memory", "data_shape", "Plan",
           "InsufficientMemoryError", "BYTES_PER_CONNECTION"]
