"""What a run carries from epoch to epoch, fresh or from a checkpoint, and back into one."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import checkpoint as ckpt
from .activations import hidden_slopes
from .config import Config, _show, config_from_yaml, config_to_dict, config_to_yaml
from .cpus import ThreadGovernor
from .errors import CheckpointError, ConfigError, DataError
from .model import SparseMLP
from .optim import Optimizer, make_optimizer
from .sparse.layer import SparseLayer

# The outputs each model.task can train and score with (config.py's rule for model.output).
TASK_OUTPUTS = {"classifier": ("softmax", "sigmoid"), "autoencoder": ("linear", "sigmoid")}

# Sections that define the model and its data: a resumed run must not change them.
FROZEN_ON_RESUME = ("seed", "data", "model")


@dataclass
class TrainingState:
    """What a run carries from epoch to epoch; `epoch` counts completed epochs."""

    model: SparseMLP
    optimizer: Optimizer
    rng: np.random.Generator
    epoch: int
    history: list[dict]
    stopped_by: str | None = None  # name of the signal that ended the run early, if one did
    early_stopped: bool = False  # train.early_stopping_patience ended the run (not resumable work left)
    governor: ThreadGovernor | None = None  # adapt_threads: kernel threads follow the CPUs left free
    partial: dict | None = None  # an epoch stopped after some batches (train.train_epoch); None between epochs
    # anything with mean, std and classes (a Dataset, CheckpointData): saved in the checkpoint for inference
    preprocessing: object | None = None
    lazy_updates: bool = True  # CSR epochs update the first layer lazily (train.lazy_session); False: every connection each step


def n_outputs(cfg: Config, n_features: int, n_classes: int) -> int:
    """Output neurons: one per class, or one per input feature for model.task autoencoder."""
    return n_features if cfg.model.task == "autoencoder" else n_classes


def set_task(model: SparseMLP, cfg: Config) -> SparseMLP:
    """The model trains and scores as cfg.model.task says (autoencoder: reconstruction of noisy inputs)."""
    allowed = TASK_OUTPUTS[cfg.model.task]
    if model.output not in allowed:  # a checkpoint whose output attribute disagrees with its config
        raise ConfigError(f"the model's output is {model.output}, which model.task {cfg.model.task} cannot use "
                          f"(it needs {' or '.join(allowed)})")
    model.task, model.input_noise = cfg.model.task, cfg.model.input_noise
    return model


def new_state(cfg: Config, n_features: int, n_classes: int) -> TrainingState:
    """A freshly initialised model and optimizer; every random draw comes from one seeded generator."""
    rng = np.random.default_rng(cfg.seed)
    m = cfg.model
    model = SparseMLP.initialize([n_features, *m.hidden, n_outputs(cfg, n_features, n_classes)], epsilon=m.epsilon,
                                 init=m.init, activation=m.activation, alpha=m.alpha, dropout=m.dropout,
                                 output=m.output, rng=rng, input_init=m.input_init)
    return TrainingState(set_task(model, cfg), make_optimizer(cfg, model), rng, 0, [])


def state_to_checkpoint(state: TrainingState, cfg: Config) -> ckpt.CheckpointData:
    model, opt, pre = state.model, state.optimizer, state.preprocessing
    # an autoencoder's outputs are its inputs, not the data's classes (a labelled file has them): none are stored
    classes = getattr(pre, "classes", None) if cfg.model.task == "classifier" else None
    return ckpt.CheckpointData(layers_to_checkpoint(model, opt), model.slopes, model.dropout, model.output, state.epoch,
                               state.rng.bit_generator.state, state.history, config_to_yaml(cfg),
                               optimizer=opt.name, optimizer_scalars=opt.scalars(),
                               mean=getattr(pre, "mean", None), std=getattr(pre, "std", None),
                               classes=classes, partial_epoch=state.partial)


def layers_to_checkpoint(model: SparseMLP, opt: Optimizer) -> list[ckpt.LayerArrays]:
    """Every layer's arrays with the optimizer's named state, as the checkpoint stores them."""
    return [ckpt.LayerArrays(layer.n_in, layer.n_out, layer.rows, layer.cols, layer.values, layer.bias,
                             opt.layer_state(l)) for l, layer in enumerate(model.layers)]


def model_from_checkpoint(data: ckpt.CheckpointData) -> SparseMLP:
    layers = [SparseLayer(a.n_in, a.n_out, a.rows, a.cols, a.values, a.bias) for a in data.layers]
    return SparseMLP(layers, data.slopes, data.dropout, data.output)


def optimizer_from_checkpoint(cfg: Config, model: SparseMLP, layers: list[ckpt.LayerArrays], name: str,
                              scalars: dict) -> Optimizer:
    """cfg's optimizer for `model`, holding the state stored with `layers` (which must be of the same optimizer)."""
    optimizer = make_optimizer(cfg, model)
    if name != optimizer.name:
        raise ConfigError(f"cannot resume: the checkpoint holds {name} optimizer state but train.optimizer is "
                          f"{optimizer.name}; resume with --set train.optimizer={name}")
    try:
        optimizer.load_state([a.state for a in layers], scalars)
    except ValueError as exc:
        raise CheckpointError(f"cannot resume: the checkpoint's optimizer state does not fit: {exc}") from None
    return optimizer


def state_from_checkpoint(data: ckpt.CheckpointData, cfg: Config) -> TrainingState:
    model = set_task(model_from_checkpoint(data), cfg)
    optimizer = optimizer_from_checkpoint(cfg, model, data.layers, data.optimizer, data.optimizer_scalars)
    rng = np.random.default_rng()
    rng.bit_generator.state = data.rng_state
    return TrainingState(model, optimizer, rng, data.epoch, list(data.history), preprocessing=data,
                         partial=data.partial_epoch)


def check_model_fits_data(sizes: list[int], n_features: int, n_classes: int, what: str,
                          exact: bool = True, data: str = "the data", hint: str = "") -> None:
    """A model meets data: its inputs must be the data's features and its outputs cover every class.

    Training (exact) needs one output per class; evaluation needs at least as many outputs as classes,
    so that no label indexes past the logits. hint: appended to the error (what to do instead).
    """
    outputs_ok = sizes[-1] == n_classes if exact else sizes[-1] >= n_classes
    if sizes[0] != n_features or not outputs_ok:
        need = "" if exact else "at least "
        raise DataError(f"{what} has {sizes[0]} inputs and {sizes[-1]} outputs, but {data} has {n_features} "
                        f"features and {n_classes} classes (the model needs {n_features} inputs and "
                        f"{need}{n_classes} outputs){hint}")


def check_saved_run(saved: ckpt.CheckpointData, cfg: Config, n_features: int, n_classes: int, path,
                    classes=None) -> None:
    """Before resuming: the run's config may continue the saved one, the saved model fits the data (and its
    outputs name the data's classes, when both are known), and its activations and dropout are the ones the
    (frozen) model section gives."""
    check_resume_compatible(config_from_yaml(saved.config_yaml, f"the config stored in {path}"), cfg)
    check_model_fits_data([saved.layers[0].n_in] + [a.n_out for a in saved.layers], n_features,
                          n_outputs(cfg, n_features, n_classes), f"the model in {path}")
    if saved.classes is not None and classes is not None and not np.array_equal(saved.classes, classes):
        shown = [str(c) for c in saved.classes[:10]], [str(c) for c in classes[:10]]
        raise DataError(f"cannot resume: the outputs of the model in {path} stand for the classes {shown[0]}, but "
                        f"the data's are {shown[1]} (the data file changed since the run started)")
    m = cfg.model
    slopes = hidden_slopes(m.activation, m.alpha, len(saved.layers) - 1)
    if saved.slopes != slopes or saved.dropout != m.dropout or saved.output != m.output:
        raise CheckpointError(f"checkpoint {path}: hidden slopes {saved.slopes}, dropout {saved.dropout}, output "
                              f"{saved.output} are not what its config gives ({m.activation} alpha {m.alpha}: "
                              f"{slopes}, dropout {m.dropout}, output {m.output})")


def check_resume_compatible(saved: Config, cfg: Config) -> None:
    old, new = config_to_dict(saved), config_to_dict(cfg)
    changed = [key for key in FROZEN_ON_RESUME if old[key] != new[key]]
    if changed:
        keys = [(f"{k}.{leaf}", old[k][leaf], new[k][leaf]) if isinstance(old[k], dict) else (k, old[k], new[k])
                for k in changed for leaf in (old[k] if isinstance(old[k], dict) else [None])]
        shown = "; ".join(f"{key} {_show(a)} in the checkpoint, {_show(b)} now" for key, a, b in keys if a != b)
        raise ConfigError(f"cannot resume: the checkpoint was trained with different {', '.join(changed)} ({shown}); "
                          f"only {', '.join(k for k in new if k not in FROZEN_ON_RESUME)} may change on resume")
