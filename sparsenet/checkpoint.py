"""HDF5 checkpoints: the only h5py import. Atomic writes; every array validated on load."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .activations import OUTPUTS
from .errors import CheckpointError

FORMAT_NAME = "sparsenet-checkpoint"
FORMAT_VERSION = 3  # 3: mean/std turn raw samples (image sets: pixels 0..255) into the model input; 2: optimizer
# state as named arrays per layer (image sets: mean/std of pixels/255); 1: velocity and bias_velocity. All read.
RAW_STATISTICS_SINCE = 3
# Layer datasets: name -> (dtype, length: "nnz" or "n_out"); optimizer state arrays are float32, "bias_*" of n_out.
LAYER_ARRAYS = {"rows": (np.int32, "nnz"), "cols": (np.int32, "nnz"), "values": (np.float32, "nnz"),
                "bias": (np.float32, "n_out")}
V1_STATE = ("velocity", "bias_velocity")  # version 1 stored momentum SGD's state beside the layer arrays


@dataclass
class LayerArrays:
    """One layer as stored: output-major rows/cols/values, bias and the optimizer's named state arrays
    (a name starting with "bias_" holds one value per output neuron, any other one per connection)."""

    n_in: int
    n_out: int
    rows: np.ndarray
    cols: np.ndarray
    values: np.ndarray
    bias: np.ndarray
    state: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class CheckpointData:
    """Everything needed to evaluate a model or resume its training."""

    layers: list[LayerArrays]
    slopes: list[float]
    dropout: float
    output: str
    epoch: int
    rng_state: dict
    history: list[dict]
    config_yaml: str
    phase: int = 1  # parallel runs: 1 = parameter server, 2 = local training of replicas
    version: int = 0  # parallel runs: topology version of the server's model
    replicas: list[list[LayerArrays]] = field(default_factory=list)  # phase 2: each worker's model
    replica_rng_states: list[dict] = field(default_factory=list)
    replica_optimizer_scalars: list[dict] = field(default_factory=list)
    optimizer: str = "momentum"  # optim.OPTIMIZERS key of the state in the layers
    optimizer_scalars: dict = field(default_factory=dict)  # its JSON state besides arrays (Adam's step)
    # preprocessing/ group: float32 (n_features,) standardisation applied to raw samples, and the label
    # of each output (int64 or str array); None when the run did not standardise / used labels 0..n-1
    mean: np.ndarray | None = None
    std: np.ndarray | None = None
    classes: np.ndarray | None = None
    # Sequential runs stopped part-way through epoch `epoch + 1`: batches done ("step" of "n_steps"),
    # the generator state its sample order was drawn from, loss/correct sums and seconds so far.
    partial_epoch: dict | None = None
    # Parallel runs stopped part-way through epoch `epoch + 1` (server.ParameterServer): in phase 1 the
    # epoch's sums so far and each worker's data-stream position, in phase 2 each worker's training position
    # (or, if its epoch was done, its report); the run-long counters (docs/checkpoint-format.md).
    parallel_partial_epoch: dict | None = None
    format_version: int = FORMAT_VERSION  # as read (a written checkpoint is always FORMAT_VERSION)


def save_checkpoint(path: str | os.PathLike, data: CheckpointData) -> None:
    """Write `data` to a private temporary beside `path`, fsync it, then rename it over `path`
    (fileio.replacing: a full disk or a kill leaves the previous checkpoint as it was)."""
    import h5py

    from .fileio import replacing

    with replacing(path, "checkpoint", reserve=_file_size_bound(data)) as (tmp, _):
        with h5py.File(tmp, "w") as f:
            f.attrs["format"] = FORMAT_NAME
            f.attrs["format_version"] = FORMAT_VERSION
            f.attrs["epoch"] = int(data.epoch)
            f.attrs["n_layers"] = len(data.layers)
            f.attrs["slopes"] = np.asarray(data.slopes, dtype=np.float64)
            f.attrs["dropout"] = float(data.dropout)
            f.attrs["output"] = data.output
            f.attrs["rng_state"] = json.dumps(data.rng_state)
            f.attrs["config"] = data.config_yaml
            f.attrs["phase"] = int(data.phase)
            f.attrs["version"] = int(data.version)
            f.attrs["optimizer"] = data.optimizer
            f.attrs["optimizer_scalars"] = json.dumps(data.optimizer_scalars)
            f.create_dataset("replica_rng_states", data=json.dumps(data.replica_rng_states))
            f.create_dataset("replica_optimizer_scalars", data=json.dumps(data.replica_optimizer_scalars))
            f.create_dataset("history", data=json.dumps(data.history))
            _write_layers(f, "layers", data.layers)
            for k, replica in enumerate(data.replicas):
                _write_layers(f, f"replicas/{k}/layers", replica)
            f.attrs["n_replicas"] = len(data.replicas)
            if data.partial_epoch is not None:
                f.attrs["partial_epoch"] = json.dumps(data.partial_epoch)
            if data.parallel_partial_epoch is not None:
                f.create_dataset("parallel_partial_epoch", data=json.dumps(data.parallel_partial_epoch))
            _write_preprocessing(f, data)
            f.flush()


def _file_size_bound(data: CheckpointData) -> int:
    """More bytes than the HDF5 file of `data` takes: its arrays and texts plus metadata per object."""
    arrays = [a for model in [data.layers, *data.replicas] for layer in model
              for a in (layer.rows, layer.cols, layer.values, layer.bias, *layer.state.values())]
    texts = len(data.config_yaml) + len(json.dumps(data.history)) + len(json.dumps(data.rng_state)) \
        + len(json.dumps(data.replica_rng_states)) + len(json.dumps([data.optimizer_scalars, *data.replica_optimizer_scalars])) \
        + len(json.dumps(data.parallel_partial_epoch))
    arrays += [a for a in (data.mean, data.std) if a is not None]
    if data.classes is not None:
        texts += len(json.dumps(np.asarray(data.classes).tolist()))
    return sum(a.nbytes for a in arrays) + 4 * texts + 8192 * (len(arrays) + 8) + (1 << 20)


def _write_layers(f, prefix: str, layers: list[LayerArrays]) -> None:
    for l, layer in enumerate(layers):
        g = f.create_group(f"{prefix}/{l}")
        g.attrs["n_in"] = int(layer.n_in)
        g.attrs["n_out"] = int(layer.n_out)
        for name in LAYER_ARRAYS:
            g.create_dataset(name, data=getattr(layer, name))
        for name, array in layer.state.items():
            g.create_dataset(f"optimizer/{name}", data=array)


def _write_preprocessing(f, data: CheckpointData) -> None:
    if data.mean is None and data.classes is None:
        return
    g = f.create_group("preprocessing")
    if data.mean is not None:
        g.create_dataset("mean", data=np.asarray(data.mean, dtype=np.float32))
        g.create_dataset("std", data=np.asarray(data.std, dtype=np.float32))
    if data.classes is not None:
        g.attrs["classes"] = json.dumps(np.asarray(data.classes).tolist())


MAX_NEURONS = 2**31 - 1  # SparseLayer indices are int32
# Metrics every history row carries (train.run_epoch, parallel server, the Python API); summaries and plots
# read them. The optional ones are null or absent where a run has no test set (the API's fit) or no accuracy.
HISTORY_NUMBERS = ("train_loss", "train_seconds", "evolution_seconds")
HISTORY_OPTIONAL_NUMBERS = ("test_loss", "train_accuracy", "test_accuracy", "eval_seconds")
HISTORY_INT_LISTS = ("nnz", "neurons")


def load_checkpoint(path: str | os.PathLike, memory_limit_gb: float | None = None,
                    extra_bytes=None) -> CheckpointData:
    """Read and fully validate a checkpoint; any defect raises CheckpointError naming it.

    Only what the file itself stores is read (see h5safe). Every layer's declared sizes are checked
    against the file's real storage, and what loading and building the model allocates (plus
    extra_bytes(sizes, nnz) the caller will need beside it) against the memory available
    (memory_limit_gb if given), before any array is read.
    """
    from . import h5safe

    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a directory; give the checkpoint file, e.g. {path / 'checkpoint.h5'}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    f = h5safe.open_file(path, CheckpointError, f"checkpoint {path} is not a readable HDF5 file (truncated or corrupt?)")
    try:
        with f:
            return _Reader(f, path, h5safe.file_size(path)).read(memory_limit_gb, extra_bytes)
    except CheckpointError:
        raise
    except RecursionError:
        raise CheckpointError(f"checkpoint {path} is damaged: its JSON or links nest too deeply") from None
    except MemoryError:
        raise CheckpointError(f"checkpoint {path}: not enough memory to load it") from None
    except (OSError, RuntimeError, KeyError, ValueError, TypeError, OverflowError, AttributeError) as exc:
        message = " ".join(f"{type(exc).__name__}: {exc}".split())
        raise CheckpointError(f"checkpoint {path} is damaged or incomplete: {message[:300]}") from None


class _Reader:
    """One open checkpoint: metadata surveyed and checked first, arrays read after."""

    def __init__(self, f, path: Path, size: int):
        self.f, self.path, self.size = f, path, size

    def fail(self, message: str):
        raise CheckpointError(f"checkpoint {self.path}: {message}")

    def attr(self, name: str, obj=None):
        from . import h5safe

        obj = self.f if obj is None else obj
        try:
            return h5safe.read_attribute(obj, name, f"checkpoint {self.path}", CheckpointError)
        except KeyError:
            where = "" if obj is self.f else f" on {obj.name}"
            raise CheckpointError(f"checkpoint {self.path} lacks the attribute {name!r}{where}; "
                                  f"is it a sparsenet checkpoint?") from None

    def integer(self, name: str, obj=None, default=None) -> int:
        obj = self.f if obj is None else obj
        if default is not None and name not in obj.attrs:
            return default
        value = self.attr(name, obj)
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
            self.fail(f"attribute {name!r} is {_short(value)}, expected a whole number")
        return int(value)

    def read(self, memory_limit_gb: float | None, extra_bytes: int) -> CheckpointData:
        from . import h5safe

        f, path = self.f, self.path
        if f.attrs.get("format") not in (FORMAT_NAME, FORMAT_NAME.encode()):
            raise CheckpointError(f"{path} is not a sparsenet checkpoint (format attribute {_short(f.attrs.get('format'))})")
        version = self.integer("format_version")
        if version not in range(1, FORMAT_VERSION + 1):
            self.fail(f"has format version {version}; this sparsenet reads versions 1 to {FORMAT_VERSION}")
        optimizer = str(self.attr("optimizer")) if version > 1 else "momentum"
        state = _state_datasets(optimizer, version, self.path)
        n_layers = self.integer("n_layers")
        slopes_raw = np.atleast_1d(self.attr("slopes"))
        if slopes_raw.ndim != 1 or slopes_raw.dtype.kind not in "fiu":
            self.fail(f"slopes are {_short(slopes_raw.dtype)} of shape {slopes_raw.shape}, expected numbers")
        slopes = [float(s) for s in slopes_raw] if n_layers > 1 else []
        if n_layers < 1 or len(slopes) != n_layers - 1:
            self.fail(f"has {n_layers} layers but {len(slopes)} hidden slopes")
        if not all(np.isfinite(slopes)):
            self.fail(f"hidden slopes {slopes} are not all finite numbers")
        n_replicas = self.integer("n_replicas", default=0)
        if n_replicas < 0:
            self.fail(f"n_replicas is {n_replicas}")
        # Survey: every group, attribute and dataset shape, checked before any array is read.
        model = self.survey("layers", n_layers, state)
        replicas = [self.survey(f"replicas/{k}/layers", n_layers, state) for k in range(n_replicas)]
        shapes = [(la["n_in"], la["n_out"]) for la in model]
        for k, replica in enumerate(replicas):
            if [(la["n_in"], la["n_out"]) for la in replica] != shapes:
                self.fail(f"replica {k} has other layer shapes than the model")
        self.check_memory(model, replicas, memory_limit_gb, extra_bytes)
        layers = [self.read_layer(la) for la in model]
        replica_layers = [[self.read_layer(la) for la in replica] for replica in replicas]
        where = f"checkpoint {path}"
        history = json.loads(h5safe.read_string(f, "history", where, CheckpointError, self.size))
        replica_rng_states = (json.loads(h5safe.read_string(f, "replica_rng_states", where, CheckpointError, self.size))
                              if "replica_rng_states" in f else [])
        replica_scalars = (json.loads(h5safe.read_string(f, "replica_optimizer_scalars", where, CheckpointError,
                                                         self.size)) if version > 1 else [{} for _ in replicas])
        data = CheckpointData(
            layers=layers, slopes=slopes, dropout=float(self.attr("dropout")), output=str(self.attr("output")),
            epoch=self.integer("epoch"), rng_state=json.loads(self.attr("rng_state")),
            history=history, config_yaml=str(self.attr("config")),
            phase=self.integer("phase", default=1), version=self.integer("version", default=0),
            replicas=replica_layers, replica_rng_states=replica_rng_states, replica_optimizer_scalars=replica_scalars,
            optimizer=optimizer, optimizer_scalars=json.loads(self.attr("optimizer_scalars")) if version > 1 else {},
            partial_epoch=json.loads(self.attr("partial_epoch")) if "partial_epoch" in f.attrs else None,
            parallel_partial_epoch=(json.loads(h5safe.read_string(f, "parallel_partial_epoch", where, CheckpointError,
                                                                  self.size))
                                    if "parallel_partial_epoch" in f else None), format_version=version)
        _check_run_state(data, path)
        if "preprocessing" in f:
            self.read_preprocessing(data)
        return data

    def read_preprocessing(self, data: CheckpointData) -> None:
        """mean/std: float32 [n_in of layer 0], finite, std > 0; classes: distinct ints or strings, one per output."""
        from . import h5safe
        import h5py

        where = f"checkpoint {self.path}"
        g = h5safe.hard_object(self.f, "preprocessing", where, CheckpointError)
        if not isinstance(g, h5py.Group):
            self.fail("'preprocessing' is not a group")
        n_in, n_out = data.layers[0].n_in, data.layers[-1].n_out
        found = {key: h5safe.dataset(g, key, where, CheckpointError, self.size) for key in ("mean", "std")}
        if (found["mean"] is None) != (found["std"] is None):
            self.fail("preprocessing holds only one of mean and std")
        if found["mean"] is not None:
            for key, ds in found.items():
                if ds.dtype != np.float32 or ds.shape != (n_in,):
                    self.fail(f"preprocessing/{key} is {ds.dtype} {ds.shape}, expected {n_in} float32 values (one per input)")
                arr = h5safe.read_array(ds, where, CheckpointError)
                if not np.all(np.isfinite(arr)):
                    self.fail(f"preprocessing/{key} contains NaN or infinity")
                setattr(data, key, arr)
            if not np.all(data.std > 0):
                self.fail("preprocessing/std holds a value <= 0")
        if "classes" in g.attrs:
            classes = json.loads(h5safe.read_attribute(g, "classes", where, CheckpointError))
            kinds = {type(c) for c in classes} if isinstance(classes, list) else {None}
            if (not classes or len(kinds) != 1 or kinds - {int, str} or len(classes) != n_out
                    or len(set(classes)) != n_out or (kinds == {int} and not all(-2**63 <= c < 2**63 for c in classes))):
                self.fail(f"preprocessing classes must be {n_out} distinct integers or strings (one per output)")
            data.classes = np.array(classes, dtype=np.int64 if kinds == {int} else str)

    def survey(self, prefix: str, n_layers: int, state: dict[str, str]) -> list[dict]:
        """Per layer: n_in, n_out, nnz and its checked datasets (nothing read yet); `state`: the optimizer's
        state name -> dataset path in the layer group (see _state_datasets)."""
        from . import h5safe
        import h5py

        where = f"checkpoint {self.path}"
        layers = []
        for l in range(n_layers):
            name = f"{prefix}/{l}"
            g = h5safe.hard_object(self.f, name, where, CheckpointError)
            if g is None:
                raise CheckpointError(f"checkpoint {self.path} lacks group {name!r}")
            if not isinstance(g, h5py.Group):
                self.fail(f"{name!r} is a dataset, expected a group")
            n_in, n_out = self.integer("n_in", g), self.integer("n_out", g)
            if not (1 <= n_in <= MAX_NEURONS and 1 <= n_out <= MAX_NEURONS):
                self.fail(f"layer {l} has shape {n_in} x {n_out}; each side must be 1..{MAX_NEURONS}")
            if l and n_in != layers[-1]["n_out"]:
                self.fail(f"layer {l} has {n_in} inputs but layer {l - 1} has {layers[-1]['n_out']} outputs")
            if any(link.startswith("optimizer/") for link in state.values()):
                found = h5safe.hard_object(g, "optimizer", where, CheckpointError)
                names = sorted(found) if isinstance(found, h5py.Group) else []
                if names != sorted(state):
                    self.fail(f"layer {l} holds optimizer state {_short(names, 100)}; its optimizer keeps {sorted(state)}")
            datasets, nnz = {}, None
            for key, (dtype, length) in _layer_table(state).items():
                ds = h5safe.dataset(g, key, where, CheckpointError, self.size)
                if ds is None:
                    self.fail(f"layer {l} lacks {key!r}")
                if ds.ndim != 1 or ds.dtype != dtype:
                    self.fail(f"layer {l} {key} is {ds.dtype} {ds.shape}, expected 1-D {np.dtype(dtype)}")
                n = int(ds.shape[0])
                if length == "nnz":
                    if nnz is None:
                        nnz = n
                    elif n != nnz:
                        self.fail(f"layer {l} has {nnz} values but {n} {key}")
                elif n != n_out:
                    self.fail(f"layer {l} has {n_out} outputs but {n} {key}")
                datasets[key] = ds
            if nnz > n_in * n_out:
                self.fail(f"layer {l} has {nnz} connections, more than its {n_in} x {n_out} positions")
            layers.append({"l": l, "n_in": n_in, "n_out": n_out, "nnz": nnz, "datasets": datasets, "state": state})
        return layers

    def check_memory(self, model: list[dict], replicas: list[list[dict]], limit_gb: float | None,
                     extra_bytes) -> None:
        """Arrays read + the model built from them (indices, pointers, gradients) must fit."""
        from . import h5safe
        from .memory import available_memory, model_bytes
        from .model import gradient_bytes

        sizes = [model[0]["n_in"]] + [la["n_out"] for la in model]
        nnz = [la["nnz"] for la in model]
        arrays = sum(h5safe.declared_bytes(ds) for layers in [model, *replicas]
                     for la in layers for ds in la["datasets"].values())
        need = arrays + model_bytes(sizes, nnz) + gradient_bytes(sizes, nnz)
        need += int(extra_bytes(sizes, nnz)) if extra_bytes else 0
        available, source = available_memory(limit_gb)
        if need > available:
            self.fail(f"a {'-'.join(map(str, sizes))} model with {sum(nnz):,} connections needs about "
                      f"{need / 2**30:.2f} GiB to load, but only {available / 2**30:.2f} GiB is available ({source})")

    def read_layer(self, survey: dict) -> LayerArrays:
        from . import h5safe

        l, n_in, n_out, nnz = survey["l"], survey["n_in"], survey["n_out"], survey["nnz"]
        arrays = {key: h5safe.read_array(ds, f"checkpoint {self.path}", CheckpointError)
                  for key, ds in survey["datasets"].items()}
        rows, cols = arrays["rows"], arrays["cols"]
        if nnz and (rows.min() < 0 or rows.max() >= n_in or cols.min() < 0 or cols.max() >= n_out):
            self.fail(f"layer {l} holds indices outside its {n_in} x {n_out} shape")
        keys = cols.astype(np.int64) * n_in + rows
        if nnz > 1 and not np.all(keys[1:] > keys[:-1]):
            self.fail(f"layer {l} connections are duplicated or not in output-major order")
        for key, array in arrays.items():
            if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
                self.fail(f"layer {l} {key} contains NaN or infinity")
        state = {name: arrays.pop(link) for name, link in survey["state"].items()}
        return LayerArrays(n_in, n_out, **arrays, state=state)


def _state_datasets(optimizer: str, version: int, path: Path) -> dict[str, str]:
    """The optimizer's state name -> dataset path in a layer group (version 1: momentum beside the arrays)."""
    from .optim import OPTIMIZERS

    if optimizer not in OPTIMIZERS:
        raise CheckpointError(f"checkpoint {path}: optimizer {_short(optimizer)} is not one of {', '.join(OPTIMIZERS)}")
    if version == 1:
        return {name: name for name in V1_STATE}
    return {name: f"optimizer/{name}" for name in OPTIMIZERS[optimizer].state_names()}


def _layer_table(state: dict[str, str]) -> dict[str, tuple]:
    """Every dataset a layer group holds: path -> (dtype, length "nnz" or "n_out"). Anything else in these
    places, or these with another dtype, shape or length, is refused before it is read."""
    table = dict(LAYER_ARRAYS)
    table.update({link: (np.float32, "n_out" if name.startswith("bias_") else "nnz") for name, link in state.items()})
    return table


def _short(value, limit: int = 60) -> str:
    """repr of a value read from a file, on one line and at most `limit` characters."""
    text = " ".join(repr(value).split())
    return text if len(text) <= limit else text[:limit] + "..."


def _check_history(history, epoch: int, path: Path) -> None:
    """A list of one flat JSON object per completed epoch, with the metrics summaries read."""
    if not isinstance(history, list) or len(history) != epoch:
        size = len(history) if isinstance(history, list) else type(history).__name__
        raise CheckpointError(f"checkpoint {path}: metrics history has {size} epochs, expected {epoch}")
    for i, row in enumerate(history):
        what = f"checkpoint {path}: metrics history row {i + 1}"
        if not isinstance(row, dict):
            raise CheckpointError(f"{what} is a {type(row).__name__}, expected an object")
        if row.get("epoch") != i + 1 or isinstance(row.get("epoch"), bool):
            raise CheckpointError(f"{what} has epoch {str(row.get('epoch'))[:40]}, expected {i + 1}")
        for key in HISTORY_NUMBERS + HISTORY_OPTIONAL_NUMBERS:
            if not _is_number(row.get(key)) and (key in HISTORY_NUMBERS or row.get(key) is not None):
                raise CheckpointError(f"{what}: {key} is {str(row.get(key))[:40]}, expected a number")
        for key in HISTORY_INT_LISTS:
            value = row.get(key)
            if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
                raise CheckpointError(f"{what}: {key} is {str(value)[:40]}, expected a list of whole numbers")
        if not isinstance(row.get("parameters"), int):
            raise CheckpointError(f"{what}: parameters is {str(row.get('parameters'))[:40]}, expected a whole number")
        for key, value in row.items():
            flat = value if isinstance(value, list) else [value]
            if not all(v is None or isinstance(v, (int, float, str)) for v in flat):
                raise CheckpointError(f"{what}: {str(key)[:40]} holds nested values; rows are flat")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_run_state(data: CheckpointData, path: Path) -> None:
    """Everything besides the layers that a resumed run or an evaluation would trust."""
    if data.output not in OUTPUTS:
        raise CheckpointError(f"checkpoint {path}: output {data.output[:40]!r} is not one of {', '.join(OUTPUTS)}")
    if not 0.0 <= data.dropout < 1.0:
        raise CheckpointError(f"checkpoint {path}: dropout {data.dropout} is outside [0, 1)")
    if data.epoch < 0 or data.phase not in (1, 2) or data.version < 0:
        raise CheckpointError(f"checkpoint {path}: epoch {data.epoch}, phase {data.phase}, version {data.version} "
                              f"are not a valid run position")
    _check_history(data.history, data.epoch, path)
    _check_partial_epoch(data.partial_epoch, path)
    _check_parallel_partial_epoch(data, path)
    if not isinstance(data.replica_rng_states, list):
        raise CheckpointError(f"checkpoint {path}: replica generator states are not a list")
    for state in [data.rng_state, *data.replica_rng_states]:
        try:
            np.random.default_rng().bit_generator.state = state
        except (TypeError, ValueError, KeyError, AttributeError, OverflowError) as exc:
            raise CheckpointError(f"checkpoint {path}: random generator state is unusable "
                                  f"({' '.join(str(exc).split())[:200]})") from None
    scalars = [data.optimizer_scalars, *data.replica_optimizer_scalars]
    if not all(isinstance(s, dict) for s in scalars) or len(scalars) != len(data.replicas) + 1:
        raise CheckpointError(f"checkpoint {path}: optimizer scalars must be one dict for the model and one per "
                              f"replica ({len(data.replicas)}), got {_short(scalars, 200)}")
    if len(data.replica_rng_states) != len(data.replicas):
        raise CheckpointError(f"checkpoint {path}: {len(data.replicas)} replicas but "
                              f"{len(data.replica_rng_states)} replica generator states")


def _check_partial_epoch(partial, path: Path) -> None:
    """The position of an epoch stopped part-way, as train_epoch resumes it."""
    if partial is None:
        return
    ok = (_train_position_ok(partial) and isinstance(partial.get("neurons_removed"), list)
          and all(isinstance(v, int) and v >= 0 for v in partial["neurons_removed"]))
    if not ok:
        raise CheckpointError(f"checkpoint {path}: the position of its stopped epoch (partial_epoch) is malformed")
    if not _usable_rng_state(partial["order_rng_state"]):
        raise CheckpointError(f"checkpoint {path}: partial_epoch's random generator state is unusable")


def _train_position_ok(p) -> bool:
    """train_epoch's position in a stopped epoch, with its seconds so far: 0 < step < n_steps batches done,
    finite sums, a usable generator state for the pass's order."""
    return (isinstance(p, dict) and all(_is_count(p.get(k)) for k in ("step", "n_steps", "correct"))
            and all(_is_number(p.get(k)) and math.isfinite(p[k]) for k in ("loss", "train_seconds", "evolution_seconds"))
            and 0 < p["step"] < p["n_steps"] and "order_rng_state" in p)


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _usable_rng_state(state) -> bool:
    try:
        np.random.default_rng().bit_generator.state = state
    except (TypeError, ValueError, KeyError, AttributeError, OverflowError):
        return False
    return True


def _check_parallel_partial_epoch(data: CheckpointData, path: Path) -> None:
    """The position of a parallel run's epoch stopped part-way, as the server resumes it: phase 1's sums and
    data-stream positions, or phase 2's per-replica training position or report."""
    partial = data.parallel_partial_epoch
    if partial is None:
        return

    def counts(d, keys):
        return all(_is_count(d.get(k)) for k in keys)

    def finite(d, keys):
        return all(_is_number(d.get(k)) and math.isfinite(d[k]) for k in keys)

    def phase1_worker(w) -> bool:
        return w is None or (isinstance(w, dict) and counts(w, ("start",)) and _usable_rng_state(w.get("rng_state"))
                             and (w.get("order_rng_state") is None or _usable_rng_state(w["order_rng_state"])))

    def phase2_worker(w) -> bool:  # exactly one of: where its training stood, or its finished epoch's report
        if not isinstance(w, dict) or len(w) != 1:
            return False
        if "position" in w:
            return _train_position_ok(w["position"]) and _usable_rng_state(w["position"]["order_rng_state"])
        report = w.get("report")
        return (isinstance(report, dict) and counts(report, ("samples",)) and report["samples"] > 0
                and finite(report, ("train_loss", "train_accuracy", "train_seconds", "evolution_seconds")))

    workers = partial.get("workers") if isinstance(partial, dict) else None
    ok = (isinstance(partial, dict) and data.partial_epoch is None
          and isinstance(partial.get("neurons_removed"), list) and counts(dict(enumerate(partial["neurons_removed"])),
                                                                          range(len(partial["neurons_removed"])))
          and isinstance(partial.get("run_totals"), dict) and all(_is_number(v) for v in partial["run_totals"].values())
          and isinstance(workers, list) and len(workers) > 0)
    if ok and data.phase == 1:
        ok = (counts(partial, ("samples", "updates", "stale", "correct"))
              and finite(partial, ("loss", "train_seconds", "evolution_seconds")) and all(map(phase1_worker, workers)))
    elif ok:
        ok = len(workers) == len(data.replicas) and all(map(phase2_worker, workers))
    if not ok:
        raise CheckpointError(f"checkpoint {path}: the position of its stopped parallel epoch (parallel_partial_epoch) "
                              "is malformed")
