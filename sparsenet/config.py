"""Run configuration: YAML -> frozen dataclasses, one validation pass, `--set a.b=value` overrides.

Every field carries its validation rule in its metadata; a section is a frozen dataclass
listed in `Config` with `field(default_factory=...)`. Adding a field is one line, adding a
section is a dataclass plus one line in `Config` (plus, optionally, an entry in `_CROSS_CHECKS`).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
import re
import reprlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Callable

import yaml

from sparsenet.data.registry import DATASETS
from sparsenet.errors import ConfigError

__all__ = [
    "Config", "ParallelConfig", "DebugConfig", "DataConfig", "ModelConfig", "TrainConfig", "EvolutionConfig", "PruningConfig", "CheckpointConfig",
    "load_config", "override_config", "describe", "config_from_yaml", "config_from_dict", "config_to_dict", "config_to_yaml", "dump_config",
]


# ---------------------------------------------------------------- validation rules

SHOWN_CHARS = 80  # an error message shows at most this much of a value
MAX_CONFIG_BYTES = 1 << 20  # a config (file, override or the text in a checkpoint) is far smaller

_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = _REPR.maxlong = SHOWN_CHARS
_REPR.maxlevel, _REPR.maxdict, _REPR.maxlist, _REPR.maxtuple = 3, 8, 12, 12


def _show(value: Any) -> str:
    """repr(value) cut to SHOWN_CHARS characters (+ '...'), never built whole for huge values."""
    try:
        text = _REPR.repr(value)
    except ValueError:  # an integer too long to print
        text = f"<an integer of {value.bit_length()} bits>"
    return text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS] + "..."


def _got(value: Any) -> str:
    return f"{_show(value)} ({type(value).__name__})"


def _num(x: float) -> str:
    return f"{x:g}"


class _Int:
    """An integer (bool rejected, 10.0 rejected) within optional bounds; optionally null."""

    def __init__(self, lo: int | None = None, hi: int | None = None, null: bool = False):
        self.lo, self.hi, self.null = lo, hi, null

    def __call__(self, key: str, value: Any) -> int | None:
        if value is None and self.null:
            return None
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            kind = "an integer or null" if self.null else "an integer"
            raise ConfigError(f"config key '{key}' must be {kind}, got {_got(value)}")
        value = int(value)
        _check_range(key, value, self.lo, self.hi, False, False)
        return value


class _Float:
    """A finite real number (ints accepted, bool rejected) within optional open/closed bounds."""

    def __init__(self, lo: float | None = None, hi: float | None = None,
                 lo_open: bool = False, hi_open: bool = False, null: bool = False):
        self.lo, self.hi, self.lo_open, self.hi_open, self.null = lo, hi, lo_open, hi_open, null

    def __call__(self, key: str, value: Any) -> float | None:
        if value is None and self.null:
            return None
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            kind = "a number or null" if self.null else "a number"
            raise ConfigError(f"config key '{key}' must be {kind}, got {_got(value)}")
        number = float(value)
        if not math.isfinite(number):
            raise ConfigError(f"config key '{key}' must be a finite number, got {value}")
        _check_range(key, number, self.lo, self.hi, self.lo_open, self.hi_open, shown=value)
        return number


def _check_range(key: str, value: float, lo, hi, lo_open: bool, hi_open: bool,
                 shown: Any = None) -> None:
    too_low = lo is not None and (value <= lo if lo_open else value < lo)
    too_high = hi is not None and (value >= hi if hi_open else value > hi)
    if not (too_low or too_high):
        return
    if lo is not None and hi is not None:
        allowed = f"in {'(' if lo_open else '['}{_num(lo)}, {_num(hi)}{')' if hi_open else ']'}"
    elif lo is not None:
        allowed = f"{'>' if lo_open else '>='} {_num(lo)}"
    else:
        allowed = f"{'<' if hi_open else '<='} {_num(hi)}"
    shown = value if shown is None else shown
    raise ConfigError(f"config key '{key}' must be {allowed}, got {_show(shown)}")


class _Bool:
    def __call__(self, key: str, value: Any) -> bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key '{key}' must be true or false, got {_got(value)}")
        return value


class _Choice:
    def __init__(self, *options: str):
        # one mapping: its keys, read at each check (a registry that may grow)
        self.options = options[0] if len(options) == 1 and isinstance(options[0], Mapping) else options

    def __call__(self, key: str, value: Any) -> str:
        if not isinstance(value, str) or value not in self.options:
            raise ConfigError(
                f"config key '{key}' must be one of {', '.join(self.options)}, got {_show(value)}")
        return value


class _Str:
    """A non-empty string (os.PathLike accepted and converted); optionally null."""

    def __init__(self, null: bool = False):
        self.null = null

    def __call__(self, key: str, value: Any) -> str | None:
        if value is None and self.null:
            return None
        if isinstance(value, os.PathLike):
            value = os.fspath(value)
        if not isinstance(value, str) or not value:
            kind = "a non-empty string or null" if self.null else "a non-empty string"
            raise ConfigError(f"config key '{key}' must be {kind}, got {_got(value)}")
        return value


class _PositiveInts:
    """A non-empty list of positive integers, stored as a tuple."""

    def __call__(self, key: str, value: Any) -> tuple[int, ...]:
        ok = (isinstance(value, (list, tuple)) and len(value) > 0 and all(
            isinstance(v, numbers.Integral) and not isinstance(v, bool) and 1 <= v < 2**31 for v in value))
        if not ok:
            shown = list(value) if isinstance(value, tuple) else value
            raise ConfigError(
                f"config key '{key}' must be a non-empty list of positive integers below 2**31, "
                f"got {_show(shown)}")
        return tuple(int(v) for v in value)


def _field(default: Any, rule: Callable[[str, Any], Any], meaning: str = "") -> Any:
    """A config key: its default, its validation rule and what it means (`sparsenet config show`)."""
    return field(default=default, metadata={"rule": rule, "meaning": meaning})


# ---------------------------------------------------------------- sections

# The make_classification (Madelon generator) keys of data.name 'synthetic' and their defaults, which
# are scikit-learn's: a synthetic_hdf5 file is written with these and cannot take others.
GENERATOR_DEFAULTS = {"clusters_per_class": 2, "flip_y": 0.01, "class_sep": 1.0, "hypercube": True}


@dataclass(frozen=True)
class DataConfig:
    """Where the samples come from and how they are preprocessed."""

    name: str = _field("fashion_mnist", _Choice(DATASETS),
                       "a built-in dataset, the generator (synthetic, synthetic_hdf5) or a file format (npz, csv, hdf5); docs/data.md")
    path: str | None = _field(None, _Str(null=True),
                              "folder (IDX/CIFAR) or file (npz/csv/hdf5); synthetic_hdf5: the generated file (null: the cache)")
    test_fraction: float = _field(0.3, _Float(0, 1, lo_open=True, hi_open=True),
                                  "share of the samples held out for testing when the data has no test split")
    validation_fraction: float = _field(0.0, _Float(0, 1, hi_open=True),
                                        "share of each training class held out for validation (best checkpoint, early stopping); 0: none")
    standardize: bool = _field(True, _Bool(),
                               "scale every feature to mean 0, std 1 with the training part's statistics")
    label_column: int = _field(-1, _Int(),
                               "csv only: the column holding the label (-1: the last)")
    samples: int = _field(2600, _Int(lo=10),
                          "synthetic, synthetic_hdf5 (scikit-learn's make_classification): samples in all")
    features: int = _field(500, _Int(lo=2),
                           "synthetic, synthetic_hdf5: features per sample")
    informative: int = _field(5, _Int(lo=1),
                              "synthetic, synthetic_hdf5: features that carry the class signal")
    redundant: int = _field(15, _Int(lo=0),
                            "synthetic, synthetic_hdf5: random linear combinations of the informative features")
    classes: int = _field(2, _Int(lo=2),
                          "synthetic, synthetic_hdf5: number of classes")
    clusters_per_class: int = _field(2, _Int(lo=1),
                                     "synthetic: Gaussian clusters per class; synthetic_hdf5: the default only")
    hypercube: bool = _field(True, _Bool(),
                             "synthetic: clusters on the vertices of an informative-dimensional hypercube; "
                             "synthetic_hdf5: the default only")
    class_sep: float = _field(1.0, _Float(lo=0, lo_open=True),
                              "synthetic: half the hypercube's side (larger: easier); synthetic_hdf5: the default only")
    flip_y: float = _field(0.01, _Float(0, 1, hi_open=True),
                           "synthetic: share of labels assigned at random; synthetic_hdf5: the default only")
    seed: int | None = _field(None, _Int(lo=0, null=True),
                              "synthetic*: generation seed (null: seed; set it to keep one dataset for every run seed)")
    max_train: int | None = _field(None, _Int(lo=1, null=True),
                                   "keep only the first N training samples (quick runs; null: all)")
    max_test: int | None = _field(None, _Int(lo=1, null=True),
                                  "keep only the first N test samples (null: all)")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of the sparse MLP (hidden widths, sparsity level, activations)."""

    hidden: tuple[int, ...] = _field((1000, 1000, 1000), _PositiveInts(),
                                     "neurons of each hidden layer")
    epsilon: float = _field(20.0, _Float(lo=0, lo_open=True),
                            "Erdős–Rényi sparsity: density epsilon*(n_in+n_out)/(n_in*n_out), capped at 1")
    activation: str = _field("all_relu", _Choice("relu", "leaky_relu", "all_relu"),
                             "hidden activation: relu, leaky_relu or all_relu (alternating slopes)")
    alpha: float = _field(0.6, _Float(lo=0),
                          "negative-side slope of leaky_relu / all_relu")
    # he_uniform / xavier: limits from the dense layer's fan-in (SET); he_uniform_sparse: from each
    # neuron's actual number of connections (Evci et al. 2022), so activations keep their variance
    init: str = _field("he_uniform", _Choice("normal", "xavier", "he_uniform", "he_uniform_sparse"),
                       "normal (N(0,1)/10), xavier, he_uniform (dense fan-in, as in SET), he_uniform_sparse (each neuron's actual fan-in)")
    dropout: float = _field(0.3, _Float(0, 1, hi_open=True),
                            "inverted dropout on hidden layers")
    output: str = _field("softmax", _Choice("softmax", "sigmoid", "linear"),
                         "output layer: softmax + cross-entropy, or sigmoid + MSE; linear + MSE (autoencoder only)")
    # zero: the first layer starts at 0 and grows from its gradients (implicit feature selection)
    input_init: str = _field("init", _Choice("init", "zero"),
                             "zero: the first layer starts at 0 and grows from its gradients (feature selection)")
    task: str = _field("classifier", _Choice("classifier", "autoencoder"),
                       "autoencoder: n_features outputs reconstruct the clean input from a noisy one, labels unused "
                       "(QuickSelection; rank the inputs with sparsenet features)")
    input_noise: float = _field(0.0, _Float(lo=0),
                                "autoencoder: std of the Gaussian noise added to each standardised input while training")


@dataclass(frozen=True)
class TrainConfig:
    """The optimizer (momentum SGD or Adam, whose beta1 is `momentum`) and weight decay."""

    epochs: int = _field(500, _Int(lo=1),
                         "epochs to train")
    batch_size: int = _field(128, _Int(lo=1),
                             "samples per gradient step")
    lr: float = _field(0.01, _Float(lo=0, lo_open=True),
                       "learning rate")
    momentum: float = _field(0.9, _Float(0, 1, hi_open=True),
                             "momentum of SGD (Adam: beta1; beta2 is 0.999)")
    weight_decay: float = _field(0.0002, _Float(lo=0),
                                 "L2 weight decay")
    weight_decay_mode: str = _field("coupled", _Choice("coupled", "decoupled"),
                                    "coupled: added to the gradient; decoupled: applied to the weights (AdamW)")
    optimizer: str = _field("momentum", _Choice("momentum", "adam"),
                            "momentum (SGD) or adam")
    eval_batch_size: int = _field(2048, _Int(lo=1),
                                  "samples per evaluation chunk")
    progress: bool = _field(True, _Bool(),
                            "draw a progress bar during epochs (only ever on a terminal)")
    early_stopping_patience: int | None = _field(None, _Int(lo=1, null=True),
                                                 "stop after this many epochs without improvement of the selection metric (null: never)")
    early_stopping_min_delta: float = _field(0.0, _Float(lo=0),
                                             "smallest change of the selection metric that counts as an improvement")


@dataclass(frozen=True)
class EvolutionConfig:
    """Sparse Evolutionary Training: fraction zeta of weights removed and regrown each epoch."""

    zeta: float = _field(0.3, _Float(0, 1, hi_open=True),
                         "fraction of positive and of negative weights nearest zero replaced after each epoch (SET; 0: off)")
    evolve_output: bool = _field(False, _Bool(),
                                 "also evolve the output layer (a layer at density 1 never evolves)")
    regrow: str = _field("init", _Choice("init", "zero"),
                         "new connections' weights: from model.init, or 0 (RigL)")


@dataclass(frozen=True)
class PruningConfig:
    """Neuron pruning between epochs. importance: from start_epoch, every `every` epochs, remove the
    hidden neurons below the `percentile`-th importance percentile of their layer. npset: after each of
    `duration` epochs from start_epoch, remove the `fraction` of hidden neurons with fewest connections."""

    method: str = _field("none", _Choice("none", "importance", "npset"),
                         "neuron pruning between epochs: none, importance or npset")
    start_epoch: int = _field(10, _Int(lo=1),
                              "first epoch after which neurons are pruned (importance: tau; npset: beta)")
    every: int = _field(5, _Int(lo=1),
                        "importance: prune every this many epochs (step p)")
    percentile: float = _field(10.0, _Float(0, 100, lo_open=True, hi_open=True),
                               "importance: remove neurons below this percentile of their layer's importance (t)")
    fraction: float = _field(0.04, _Float(0, 1, lo_open=True, hi_open=True),
                             "npset: share of hidden neurons with fewest connections removed per step (alpha)")
    duration: int = _field(40, _Int(lo=1),
                           "npset: epochs of pruning from start_epoch (gamma)")


@dataclass(frozen=True)
class CheckpointConfig:
    every: int = _field(10, _Int(lo=1),
                        "write checkpoint.h5 every this many epochs (and at the end and on a stop)")
    best: bool = _field(True, _Bool(),
                        "write checkpoint_best.h5 at each new best epoch (validation accuracy, else training loss)")


@dataclass(frozen=True)
class ParallelConfig:
    """MPI training (world size > 1): rank 0 is the parameter server, ranks 1..K the workers."""

    algorithm: str = _field("wasap", _Choice("wasap", "wassp"),
                            "MPI training: wasap (asynchronous) or wassp (synchronous)")
    phase1_epochs: int | None = _field(None, _Int(lo=0, null=True),
                                       "epochs of phase 1 (null: phase1_fraction of the epochs)")
    phase1_fraction: float = _field(0.9, _Float(0, 1),
                                    "share of the epochs in phase 1; then local training of the replicas and their average")
    chunk_bytes: int = _field(1 << 30, _Int(lo=1024, hi=2**31 - 1),
                              "largest single MPI message in bytes")
    lr_scaling: bool = _field(True, _Bool(),
                              "wassp: learning rate times the number of workers (Goyal et al.)")
    warmup_epochs: int = _field(5, _Int(lo=0),
                                "wassp: gradual warm-up from lr to lr * workers over this many epochs")
    async_lr_factor: float = _field(1.0, _Float(lo=0, lo_open=True),
                                    "wasap: learning rate times this factor for the first async_lr_epochs")
    async_lr_epochs: int = _field(0, _Int(lo=0),
                                  "wasap: epochs with the scaled learning rate")
    pipeline: bool = _field(True, _Bool(),
                            "wasap: compute the next gradient while one travels")
    shared_memory: bool = _field(True, _Bool(),
                                 "phase-1 gradients and weights between ranks of one node through an MPI shared window")
    # seconds a rank may wait hearing nothing from a peer before it names the peer and ends the job
    # once training runs (workers wait twice as long; phase 2 adds twice the last epoch's time); null: forever
    timeout_s: float | None = _field(600.0, _Float(lo=0, lo_open=True, null=True),
                                     "seconds a rank may hear nothing from a peer before it names it and ends the job (null: forever)")


@dataclass(frozen=True)
class DebugConfig:
    """Fault injection for tests: worker `fail_rank` raises at its `fail_at_step`-th gradient; the parameter
    server sends itself SIGUSR1 once it has taken `stop_at_update` gradients since it started, or once
    worker 1 asks it to after its `stop_at_batch`-th phase-2 batch (worker 1 then waits for the stop)."""

    fail_rank: int | None = _field(None, _Int(lo=1, null=True),
                                   "tests: the worker rank that raises (null: none)")
    fail_at_step: int = _field(0, _Int(lo=0),
                               "tests: at this gradient step")
    stop_at_update: int | None = _field(None, _Int(lo=1, null=True),
                                        "tests: the server sends itself SIGUSR1 after taking this many gradients (null: never)")
    stop_at_batch: int | None = _field(None, _Int(lo=1, null=True),
                                       "tests: the server sends itself SIGUSR1 when worker 1 has trained this many "
                                       "phase-2 batches (null: never)")


@dataclass(frozen=True)
class Config:
    """The whole run configuration; top-level scalars first, then one field per section."""

    seed: int = _field(0, _Int(lo=0),
                       "every random draw (initialisation, shuffling, dropout, SET, splits) comes from this seed")
    threads: int = _field(0, _Int(lo=0),
                          "kernel threads; 0: the CPUs this process may use (affinity mask, cgroup CPU quota, SLURM_CPUS_PER_TASK)")
    adapt_threads: bool = _field(True, _Bool(),
                                 "with threads 0: run fewer kernel threads while other processes take CPUs (docs/benchmarks.md)")
    memory_limit_gb: float | None = _field(None, _Float(lo=0, lo_open=True, null=True),
                                           "memory (GiB) the planner may use; null: MemAvailable / the cgroup's limit")
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evolution: EvolutionConfig = field(default_factory=EvolutionConfig)
    pruning: PruningConfig = field(default_factory=PruningConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    debug: DebugConfig = field(default_factory=DebugConfig)

    @property
    def phase1_epochs(self) -> int:
        """Epochs of phase 1 of a parallel run: parallel.phase1_epochs, else parallel.phase1_fraction of
        train.epochs; at most train.epochs."""
        p = self.parallel
        n = p.phase1_epochs if p.phase1_epochs is not None else round(p.phase1_fraction * self.train.epochs)
        return min(n, self.train.epochs)


def _check_data(c: DataConfig) -> None:
    if DATASETS[c.name].reads_file and c.path is None:
        raise ConfigError(f"config key 'data.path' is required when data.name is '{c.name}', "
                          f"got null; set it to the {c.name} file")
    if c.informative > c.features:
        raise ConfigError(f"config key 'data.informative' must be <= data.features "
                          f"({c.features}), got {c.informative}")
    if c.informative + c.redundant > c.features:
        raise ConfigError(f"config key 'data.redundant' must be <= data.features - "
                          f"data.informative ({c.features - c.informative}), got {c.redundant}")
    clusters = c.classes * c.clusters_per_class
    if DATASETS[c.name].synthetic and clusters > 2 ** min(c.informative, 62):
        need = max(1, math.ceil(math.log2(clusters)))
        raise ConfigError(f"config key 'data.informative' must be >= {need} for data.classes {c.classes} and "
                          f"data.clusters_per_class {c.clusters_per_class} (the generator places each cluster on "
                          f"its own vertex of an informative-dimensional hypercube: classes * clusters_per_class "
                          f"<= 2**informative), got {c.informative}")
    if c.name == "synthetic_hdf5":
        for key, default in GENERATOR_DEFAULTS.items():
            if getattr(c, key) != default:
                raise ConfigError(f"config key 'data.{key}' must be {default!r} (the generator's default) for "
                                  f"data.name 'synthetic_hdf5', whose files are written with it; other values "
                                  f"need data.name 'synthetic', got {getattr(c, key)!r}")


def _check_model(m: ModelConfig) -> None:
    if m.input_init == "zero" and m.activation == "relu":
        raise ConfigError("config key 'model.input_init' zero needs model.activation leaky_relu or all_relu, got relu: "
                          "with the first layer at 0 (and biases at 0) every first hidden neuron sits at the ReLU's "
                          "kink, where its slope is 0, so no gradient ever reaches the first layer")
    if m.task == "classifier" and m.output == "linear":
        raise ConfigError("config key 'model.output' must be softmax or sigmoid for model.task 'classifier', got "
                          "'linear' (a linear output reconstructs inputs: set model.task: autoencoder)")
    if m.task == "classifier" and m.input_noise != 0:
        raise ConfigError(f"config key 'model.input_noise' must be 0 for model.task 'classifier' (input noise is the "
                          f"denoising autoencoder's), got {_num(m.input_noise)}")
    if m.task == "autoencoder" and m.output == "softmax":
        raise ConfigError("config key 'model.output' must be linear or sigmoid for model.task 'autoencoder' (its "
                          "outputs reconstruct the inputs), got 'softmax'; use linear for standardised data")


def _check_config(c: Config) -> None:
    if c.model.task == "autoencoder" and c.model.output == "sigmoid" and c.data.standardize:
        raise ConfigError("config key 'model.output' sigmoid reconstructs inputs in [0, 1], but data.standardize is "
                          "true (inputs of mean 0, std 1); use model.output: linear, or data.standardize: false "
                          "with inputs in [0, 1]")


# Checks that involve several fields of one section (Config: across sections), run after the
# per-field rules.
_CROSS_CHECKS: dict[type, Callable[[Any], None]] = {DataConfig: _check_data, ModelConfig: _check_model,
                                                    Config: _check_config}


# ---------------------------------------------------------------- dict <-> Config

def _section_fields(cls: type) -> tuple[dict[str, dataclasses.Field], dict[str, type]]:
    """Split a dataclass's fields into scalar fields (with a rule) and sub-sections."""
    scalars, sections = {}, {}
    for f in dataclasses.fields(cls):
        factory = f.default_factory
        if factory is not dataclasses.MISSING and dataclasses.is_dataclass(factory):
            sections[f.name] = factory
        elif "rule" in f.metadata:
            scalars[f.name] = f
        else:
            raise TypeError(f"{cls.__name__}.{f.name} has no validation rule; "
                            f"declare it with _field(default, rule)")
    return scalars, sections


def _build(cls: type, raw: Any, prefix: str) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        where = f"config section '{prefix}'" if prefix else "the config"
        raise ConfigError(f"{where} must be a mapping of keys to values, got {_got(raw)}")
    scalars, sections = _section_fields(cls)
    for key in raw:
        if key not in scalars and key not in sections:
            valid = ", ".join(sorted([*scalars, *sections]))
            where = f"in '{prefix}'" if prefix else "at the top level"
            full = f"{prefix}.{key}" if prefix else str(key)
            raise ConfigError(f"unknown config key '{_cut(full)}'; valid keys {where}: {valid}")
    values = {}
    for name, f in scalars.items():
        if name in raw:
            values[name] = f.metadata["rule"](f"{prefix}.{name}" if prefix else name, raw[name])
    for name, sub in sections.items():
        values[name] = _build(sub, raw.get(name), f"{prefix}.{name}" if prefix else name)
    obj = cls(**values)
    check = _CROSS_CHECKS.get(cls)
    if check is not None:
        check(obj)
    return obj


def config_from_dict(d: Mapping) -> Config:
    """Validate a nested mapping (as read from YAML or a checkpoint) into a Config."""
    return _build(Config, d, "")


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


def describe(cfg: Config) -> list[tuple[str, Any, Any, str]]:
    """(dotted key, value in cfg, default, meaning) of every key, in declaration order."""
    rows = []

    def walk(obj: Any, cls: type, prefix: str) -> None:
        scalars, sections = _section_fields(cls)
        for name, f in scalars.items():
            rows.append((prefix + name, _plain(getattr(obj, name)), _plain(f.default), f.metadata.get("meaning", "")))
        for name, sub in sections.items():
            walk(getattr(obj, name), sub, f"{prefix}{name}.")

    walk(cfg, Config, "")
    return rows


def config_to_dict(cfg: Config) -> dict:
    """Nested dict of plain YAML types (tuples become lists); inverse of config_from_dict."""
    return _plain(cfg)


class _Dumper(yaml.SafeDumper):
    """Block-style sections, flow-style lists: `hidden: [1000, 1000]`; never an anchor (the loader refuses them)."""

    def ignore_aliases(self, data):
        return True


_Dumper.add_representer(
    list, lambda d, v: d.represent_sequence("tag:yaml.org,2002:seq", v, flow_style=True))


def config_to_yaml(cfg: Config) -> str:
    return yaml.dump(config_to_dict(cfg), Dumper=_Dumper, sort_keys=False)


def dump_config(cfg: Config, path: str | os.PathLike) -> None:
    """Write cfg as YAML to path (through a temporary and a rename, see fileio)."""
    from sparsenet.errors import OutputError
    from sparsenet.fileio import write_text

    try:
        write_text(path, config_to_yaml(cfg), "config file")
    except OutputError as e:
        raise ConfigError(str(e)) from None


# ---------------------------------------------------------------- YAML reading

class _Loader(yaml.SafeLoader):
    """SafeLoader that reads 1e-3 as a float (PyYAML wants 1.0e-3) and rejects duplicate keys and
    anchors/aliases (nested aliases expand exponentially: a 390-byte file can stand for gigabytes)."""

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise yaml.composer.ComposerError(
                None, None, "anchors and aliases (&name, *name) are not allowed in a sparsenet config; "
                "write each value out", event.start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, (str, int, float, bool)) or key is None:
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {_show(key)}", key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                    |[-+]?\.(?:inf|Inf|INF)
                    |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def _yaml_problem(e: yaml.YAMLError) -> str:
    mark = getattr(e, "problem_mark", None)
    problem = getattr(e, "problem", None) or str(e)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return _cut(" ".join(f"{where}{problem}".split()), 2 * SHOWN_CHARS)


def _cut(text: str, limit: int = SHOWN_CHARS) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _parse_yaml(text: str, source: str, fail: Callable[[str], str] | None = None) -> Any:
    """YAML text -> plain Python values; every failure is a one-line ConfigError, fail(problem) if given."""
    fail = fail or (lambda problem: f"cannot parse {source}: {problem}")
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError(fail(f"{len(text)} characters or more; a config is at most {MAX_CONFIG_BYTES}"))
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as e:
        raise ConfigError(fail(_yaml_problem(e))) from None
    except (ValueError, RecursionError) as e:  # an integer of > 4300 digits; nesting deeper than Python's stack
        raise ConfigError(fail(_cut(" ".join(str(e).split()) or type(e).__name__))) from None


def _parse_override(text: str) -> tuple[list[str], Any]:
    key, sep, value = text.partition("=")
    parts = key.strip().split(".")
    shown = repr(_cut(text))
    if not sep or not all(p.strip() for p in parts):
        raise ConfigError(f"invalid override {shown}: expected the form KEY=VALUE, "
                          f"e.g. train.lr=0.1 or model.hidden=[200,200]")
    if not value.strip():
        raise ConfigError(f"invalid override {shown}: no value after '='; write {_cut(key.strip())}=null "
                          f"to mean null")
    parsed = _parse_yaml(value, "", lambda problem: f"invalid override {shown}: value is not valid YAML ({problem})")
    return [p.strip() for p in parts], parsed


def _section_at(parts: list[str]) -> type | None:
    """The section dataclass that the key path `parts` names (e.g. ['train']), or None."""
    cls = Config
    for part in parts:
        sections = _section_fields(cls)[1]
        if part not in sections:
            return None
        cls = sections[part]
    return cls


def _apply_override(raw: dict, text: str) -> None:
    parts, value = _parse_override(text)
    section = _section_at(parts)
    if section is not None and not isinstance(value, dict):
        key = ".".join(parts)
        example = next(iter(_section_fields(section)[0]), "key")
        raise ConfigError(f"invalid override {repr(_cut(text))}: '{key}' is a config section, not a value; "
                          f"override its keys one by one, e.g. {key}.{example}=...")
    node = raw
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            where = ".".join(parts[: i + 1])
            raise ConfigError(f"invalid override {repr(_cut(text))}: '{where}' is a value, not a section")
        node = child
    if section is not None and isinstance(node.get(parts[-1]), dict):
        node[parts[-1]] = {**node[parts[-1]], **value}  # a mapping updates the section's keys it names
    else:
        node[parts[-1]] = value


def _read_config_file(path: str | os.PathLike) -> dict:
    """One YAML config file -> its nested mapping (not yet validated)."""
    name = os.fspath(path)
    try:
        with open(name, encoding="utf-8") as fh:
            text = fh.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError as e:
        raise ConfigError(f"config file '{name}' not found") from e
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise ConfigError(f"cannot read config file '{name}': {_cut(reason)}") from e
    raw = _parse_yaml(text, f"config file '{name}'")
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config file '{name}' must hold a mapping of sections at the "
                          f"top level, got {type(raw).__name__}")
    return raw


def _merge(base: dict, overlay: dict) -> dict:
    """overlay on top of base: a section (mapping) in both merges key by key, anything else replaces."""
    merged = dict(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_config(path: str | os.PathLike | Sequence[str | os.PathLike] | None,
                overrides: Sequence[str] = ()) -> Config:
    """Read YAML config file(s) (None = all defaults; several merge left to right, a later file's keys
    winning), apply `a.b=value` overrides, validate."""
    raw: Any = {}
    paths = [] if path is None else [path] if isinstance(path, (str, os.PathLike)) else list(path)
    for one in paths:
        raw = _merge(raw, _read_config_file(one))
    if isinstance(overrides, str):
        overrides = [overrides]
    for text in overrides:
        _apply_override(raw, text)
    return config_from_dict(raw)


def override_config(cfg: Config, overrides: Sequence[str]) -> Config:
    """cfg with `a.b=value` overrides applied, validated again."""
    raw = config_to_dict(cfg)
    for text in overrides:
        _apply_override(raw, text)
    return config_from_dict(raw)


def config_from_yaml(text: str, source: str = "config text") -> Config:
    """Validate a config held as YAML text (e.g. the one stored in a checkpoint)."""
    return config_from_dict(_parse_yaml(text, source) or {})
