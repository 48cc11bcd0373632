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
FORMAT_VERSION = 2  # 2: optimizer state as named arrays per layer (1: velocity and bias_velocity, still read)
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
            _write_preprocessing(f, data)
            f.flush()


def _file_size_bound(data: CheckpointData) -> int:
    """More bytes than the HDF5 file of `data` takes: its arrays and texts plus metadata per object."""
    arrays = [a for model in [data.layers, *data.replicas] for layer in model
              for a in (layer.rows, layer.cols, layer.values, layer.bias, *layer.state.values())]
    texts = len(data.config_yaml) + len(json.dumps(data.history)) + len(json.dumps(data.rng_state)) \
        + len(json.dumps(data.replica_rng_states)) + len(json.dumps([data.optimizer_scalars, *data.replica_optimizer_scalars]))
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


def load_checkpoint(path: str | os.PathLike) -> CheckpointData:
    """Read and fully validate a checkpoint; any defect raises CheckpointError naming it."""
    import h5py

    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a directory; give the checkpoint file, e.g. {path / 'checkpoint.h5'}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise CheckpointError(f"checkpoint {path} is not a readable HDF5 file (truncated or corrupt?): {exc}") from None
    try:
        with f:
            return _read(f, path)
    except CheckpointError:
        raise
    except (OSError, KeyError, ValueError, TypeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"checkpoint {path} is damaged or incomplete: {type(exc).__name__}: {exc}") from None


def _attr(f, name: str, path: Path):
    if name not in f.attrs:
        raise CheckpointError(f"checkpoint {path} lacks the attribute {name!r}; is it a sparsenet checkpoint?")
    value = f.attrs[name]
    return value.decode() if isinstance(value, bytes) else value


def _read(f, path: Path) -> CheckpointData:
    if f.attrs.get("format") not in (FORMAT_NAME, FORMAT_NAME.encode()):
        raise CheckpointError(f"{path} is not a sparsenet checkpoint (format attribute {f.attrs.get('format')!r})")
    version = int(_attr(f, "format_version", path))
    if version not in (1, FORMAT_VERSION):
        raise CheckpointError(f"checkpoint {path} has format version {version}; this sparsenet reads versions 1 and {FORMAT_VERSION}")
    n_layers = int(_attr(f, "n_layers", path))
    slopes = [float(s) for s in np.atleast_1d(_attr(f, "slopes", path))]
    if n_layers < 1 or len(slopes) != n_layers - 1:
        raise CheckpointError(f"checkpoint {path} has {n_layers} layers but {len(slopes)} hidden slopes")
    layers = _read_model(f, "layers", n_layers, path, version)
    n_replicas = int(f.attrs.get("n_replicas", 0))
    replicas = [_read_model(f, f"replicas/{k}/layers", n_layers, path, version) for k in range(n_replicas)]
    history = _json_dataset(f, "history")
    replica_rng_states = _json_dataset(f, "replica_rng_states") if "replica_rng_states" in f else []
    replica_scalars = _json_dataset(f, "replica_optimizer_scalars") if version > 1 else [{} for _ in replicas]
    data = CheckpointData(
        layers=layers, slopes=slopes, dropout=float(_attr(f, "dropout", path)), output=str(_attr(f, "output", path)),
        epoch=int(_attr(f, "epoch", path)), rng_state=json.loads(_attr(f, "rng_state", path)),
        history=history, config_yaml=str(_attr(f, "config", path)),
        phase=int(f.attrs.get("phase", 1)), version=int(f.attrs.get("version", 0)), replicas=replicas,
        replica_rng_states=replica_rng_states, replica_optimizer_scalars=replica_scalars,
        optimizer=str(_attr(f, "optimizer", path)) if version > 1 else "momentum",
        optimizer_scalars=json.loads(_attr(f, "optimizer_scalars", path)) if version > 1 else {},
        partial_epoch=json.loads(_attr(f, "partial_epoch", path)) if "partial_epoch" in f.attrs else None)
    _check_run_state(data, path)
    if "preprocessing" in f:
        _read_preprocessing(f["preprocessing"], data, path)
    return data


def _read_preprocessing(g, data: CheckpointData, path: Path) -> None:
    """mean/std: float32 [n_in of layer 0], finite, std > 0; classes: distinct ints or strings, one per output."""
    n_in, n_out = data.layers[0].n_in, data.layers[-1].n_out
    if ("mean" in g) != ("std" in g):
        raise CheckpointError(f"checkpoint {path}: preprocessing holds only one of mean and std")
    if "mean" in g:
        for key in ("mean", "std"):
            arr = g[key][()]
            if arr.dtype != np.float32 or arr.shape != (n_in,) or not np.all(np.isfinite(arr)):
                raise CheckpointError(f"checkpoint {path}: preprocessing/{key} is {arr.dtype} {arr.shape}, "
                                      f"expected {n_in} finite float32 values (one per input)")
            setattr(data, key, arr)
        if not np.all(data.std > 0):
            raise CheckpointError(f"checkpoint {path}: preprocessing/std holds a value <= 0")
    if "classes" in g.attrs:
        raw = g.attrs["classes"]
        classes = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
        kinds = {type(c) for c in classes} if isinstance(classes, list) else {None}
        if (not classes or len(kinds) != 1 or kinds - {int, str} or len(classes) != n_out
                or len(set(classes)) != n_out or (kinds == {int} and not all(-2**63 <= c < 2**63 for c in classes))):
            raise CheckpointError(f"checkpoint {path}: preprocessing classes must be {n_out} distinct integers "
                                  f"or strings (one per output)")
        data.classes = np.array(classes, dtype=np.int64 if kinds == {int} else str)


def _json_dataset(f, name: str):
    raw = f[name][()]
    return json.loads(raw.decode() if isinstance(raw, bytes) else raw)


def _check_run_state(data: CheckpointData, path: Path) -> None:
    """Everything besides the layers that a resumed run or an evaluation would trust."""
    if data.output not in OUTPUTS:
        raise CheckpointError(f"checkpoint {path}: output {data.output!r} is not one of {', '.join(OUTPUTS)}")
    if not 0.0 <= data.dropout < 1.0:
        raise CheckpointError(f"checkpoint {path}: dropout {data.dropout} is outside [0, 1)")
    if data.epoch < 0 or data.phase not in (1, 2) or data.version < 0:
        raise CheckpointError(f"checkpoint {path}: epoch {data.epoch}, phase {data.phase}, version {data.version} "
                              f"are not a valid run position")
    if not isinstance(data.history, list) or len(data.history) != data.epoch:
        raise CheckpointError(f"checkpoint {path}: metrics history has {len(data.history)} epochs, expected {data.epoch}")
    _check_partial_epoch(data.partial_epoch, path)
    for state in [data.rng_state, *data.replica_rng_states]:
        try:
            np.random.default_rng().bit_generator.state = state
        except (TypeError, ValueError, KeyError) as exc:
            raise CheckpointError(f"checkpoint {path}: random generator state is unusable ({exc})") from None
    scalars = [data.optimizer_scalars, *data.replica_optimizer_scalars]
    if not all(isinstance(s, dict) for s in scalars) or len(scalars) != len(data.replicas) + 1:
        raise CheckpointError(f"checkpoint {path}: optimizer scalars must be one dict for the model and one per "
                              f"replica ({len(data.replicas)}), got {scalars!r:.200}")
    names = sorted(data.layers[0].state)
    for k, model in enumerate([data.layers, *data.replicas]):
        for l, layer in enumerate(model):
            if sorted(layer.state) != names:
                where = "model" if k == 0 else f"replica {k - 1}"
                raise CheckpointError(f"checkpoint {path}: {where} layer {l} has optimizer state {sorted(layer.state)}, "
                                      f"layer 0 has {names}")
    if len(data.replica_rng_states) != len(data.replicas):
        raise CheckpointError(f"checkpoint {path}: {len(data.replicas)} replicas but "
                              f"{len(data.replica_rng_states)} replica generator states")
    shapes = [(la.n_in, la.n_out) for la in data.layers]
    for k, replica in enumerate(data.replicas):
        if [(la.n_in, la.n_out) for la in replica] != shapes:
            raise CheckpointError(f"checkpoint {path}: replica {k} has other layer shapes than the model")


def _check_partial_epoch(partial, path: Path) -> None:
    """The position of an epoch stopped part-way, as train_epoch resumes it."""
    if partial is None:
        return
    ints = ("step", "n_steps", "correct")
    floats = ("loss", "train_seconds", "evolution_seconds")
    ok = (isinstance(partial, dict) and all(isinstance(partial.get(k), int) and not isinstance(partial.get(k), bool)
                                            for k in ints)
          and all(isinstance(partial.get(k), (int, float)) and math.isfinite(partial[k]) for k in floats)
          and 0 < partial["step"] < partial["n_steps"] and partial["correct"] >= 0
          and isinstance(partial.get("neurons_removed"), list)
          and all(isinstance(v, int) and v >= 0 for v in partial["neurons_removed"]))
    if not ok:
        raise CheckpointError(f"checkpoint {path}: the position of its stopped epoch (partial_epoch) is malformed")
    try:
        np.random.default_rng().bit_generator.state = partial.get("order_rng_state")
    except (TypeError, ValueError, KeyError) as exc:
        raise CheckpointError(f"checkpoint {path}: partial_epoch's random generator state is unusable ({exc})") from None


def _read_model(f, prefix: str, n_layers: int, path: Path, version: int = FORMAT_VERSION) -> list[LayerArrays]:
    layers = [_read_layer(f, f"{prefix}/{l}", l, path, version) for l in range(n_layers)]
    for l in range(1, n_layers):
        if layers[l].n_in != layers[l - 1].n_out:
            raise CheckpointError(f"checkpoint {path}: layer {l} has {layers[l].n_in} inputs but layer {l - 1} has {layers[l - 1].n_out} outputs")
    return layers


def _read_layer(f, name: str, l: int, path: Path, version: int = FORMAT_VERSION) -> LayerArrays:
    if name not in f:
        raise CheckpointError(f"checkpoint {path} lacks group {name!r}")
    g = f[name]
    n_in, n_out = int(g.attrs["n_in"]), int(g.attrs["n_out"])
    if n_in < 1 or n_out < 1:
        raise CheckpointError(f"checkpoint {path}: layer {l} has shape {n_in} x {n_out}")
    if version == 1:
        state_names = [(key, key) for key in V1_STATE]
    else:
        group = g["optimizer"] if "optimizer" in g else {}
        state_names = [(key, f"optimizer/{key}") for key in group]
    expected = dict(LAYER_ARRAYS)
    expected.update({dataset: (np.float32, "n_out" if key.startswith("bias_") else "nnz") for key, dataset in state_names})
    arrays = {}
    for key, (dtype, _) in expected.items():
        if key not in g:
            raise CheckpointError(f"checkpoint {path}: layer {l} lacks {key!r}")
        arr = g[key][()]
        if arr.ndim != 1 or arr.dtype != dtype:
            raise CheckpointError(f"checkpoint {path}: layer {l} {key} is {arr.dtype} {arr.shape}, expected 1-D {np.dtype(dtype)}")
        arrays[key] = arr
    lengths = {"nnz": arrays["values"].shape[0], "n_out": n_out}
    for key, (dtype, length) in expected.items():
        if arrays[key].shape[0] != lengths[length]:
            raise CheckpointError(f"checkpoint {path}: layer {l} has {lengths[length]} {'values' if length == 'nnz' else 'outputs'} "
                                  f"but {arrays[key].shape[0]} {key}")
        if dtype == np.float32 and not np.all(np.isfinite(arrays[key])):
            raise CheckpointError(f"checkpoint {path}: layer {l} {key} contains NaN or infinity")
    rows, cols = arrays["rows"], arrays["cols"]
    nnz = lengths["nnz"]
    if nnz and (rows.min() < 0 or rows.max() >= n_in or cols.min() < 0 or cols.max() >= n_out):
        raise CheckpointError(f"checkpoint {path}: layer {l} holds indices outside its {n_in} x {n_out} shape")
    keys = cols.astype(np.int64) * n_in + rows
    if nnz > 1 and not np.all(keys[1:] > keys[:-1]):
        raise CheckpointError(f"checkpoint {path}: layer {l} connections are duplicated or not in output-major order")
    state = {key: arrays.pop(dataset) for key, dataset in state_names}
    return LayerArrays(n_in, n_out, **arrays, state=state)
