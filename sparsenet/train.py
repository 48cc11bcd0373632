"""Sequential SET training: state, the per-batch step (reused by MPI workers), the epoch loop, resume."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numba
import numpy as np

from . import checkpoint as ckpt
from .config import Config, config_from_yaml, config_to_dict, config_to_yaml, dump_config
from .cpus import usable_cpus
from .data import Dataset, load_dataset
from .errors import CheckpointError, ConfigError, DivergedError
from .evolution import prune_and_regrow
from .fileio import clean_stale_temporaries, make_folder
from .metrics import ProgressBar, append_metrics, log, peak_rss_mb, write_metrics
from .model import SparseMLP
from .optim import Optimizer, make_optimizer
from .pruning import NeuronRemoval, pruning_due, remove_neurons, select_by_importance, select_npset
from .signals import StopRequest
from .sparse import kernels
from .sparse.layer import SparseLayer

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
    # An epoch stopped after some batches (see train_epoch); None between epochs.
    partial: dict | None = None


def set_threads(threads: int) -> int:
    """Use `threads` kernel threads (0 = the CPUs this process may use: affinity, cgroup quota, Slurm);
    returns the count in use."""
    wanted = usable_cpus()[0] if threads == 0 else threads
    count = max(1, min(wanted, numba.config.NUMBA_NUM_THREADS))
    numba.set_num_threads(count)
    return count


def new_state(cfg: Config, n_features: int, n_classes: int) -> TrainingState:
    """A freshly initialised model and optimizer; every random draw comes from one seeded generator."""
    rng = np.random.default_rng(cfg.seed)
    m = cfg.model
    model = SparseMLP.initialize([n_features, *m.hidden, n_classes], epsilon=m.epsilon, init=m.init,
                                 activation=m.activation, alpha=m.alpha, dropout=m.dropout, output=m.output, rng=rng)
    return TrainingState(model, make_optimizer(cfg, model), rng, 0, [])


def state_to_checkpoint(state: TrainingState, cfg: Config) -> ckpt.CheckpointData:
    model, opt = state.model, state.optimizer
    return ckpt.CheckpointData(layers_to_checkpoint(model, opt), model.slopes, model.dropout, model.output, state.epoch,
                               state.rng.bit_generator.state, state.history, config_to_yaml(cfg),
                               optimizer=opt.name, optimizer_scalars=opt.scalars(), partial_epoch=state.partial)


def layers_to_checkpoint(model: SparseMLP, opt: Optimizer) -> list[ckpt.LayerArrays]:
    """Every layer's arrays with the optimizer's named state, as the checkpoint stores them."""
    return [ckpt.LayerArrays(layer.n_in, layer.n_out, layer.rows, layer.cols, layer.values, layer.bias,
                             opt.layer_state(l)) for l, layer in enumerate(model.layers)]


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


def model_from_checkpoint(data: ckpt.CheckpointData) -> SparseMLP:
    layers = [SparseLayer(a.n_in, a.n_out, a.rows, a.cols, a.values, a.bias) for a in data.layers]
    return SparseMLP(layers, data.slopes, data.dropout, data.output)


def state_from_checkpoint(data: ckpt.CheckpointData, cfg: Config) -> TrainingState:
    model = model_from_checkpoint(data)
    optimizer = optimizer_from_checkpoint(cfg, model, data.layers, data.optimizer, data.optimizer_scalars)
    rng = np.random.default_rng()
    rng.bit_generator.state = data.rng_state
    return TrainingState(model, optimizer, rng, data.epoch, list(data.history), partial=data.partial_epoch)


def train_step(state: TrainingState, x: np.ndarray, y: np.ndarray, index: np.ndarray) -> tuple[float, int]:
    """Gradients on samples x[index] and one optimizer update; returns summed loss and correct count."""
    loss, correct = compute_gradients(state.model, state.rng, x, y, index)
    state.optimizer.step(state.model, state.model.grads, state.model.bias_grads)
    return loss, correct


def compute_gradients(model: SparseMLP, rng: np.random.Generator, x: np.ndarray, y: np.ndarray,
                      index: np.ndarray) -> tuple[float, int]:
    """Fill model.grads / model.bias_grads from samples x[index] (dropout keys drawn from rng)."""
    kernels.gather_batch(x, index, model.input_buffer(index.shape[0]))
    drop_keys = rng.integers(0, 2**63, size=len(model.layers), dtype=np.int64)
    return model.gradients(index.shape[0], y[index], drop_keys)


def train_epoch(state: TrainingState, x: np.ndarray, y: np.ndarray, batch_size: int,
                progress: ProgressBar | None = None, stop=None) -> tuple[float, float] | None:
    """One pass over shuffled samples (the last batch may be smaller); mean loss and accuracy.

    If `stop` turns true before the last batch, the epoch's position goes into state.partial
    (batches done, the generator state its sample order was drawn from, sums so far) and None is
    returned; called again with state.partial set, it continues from there exactly.
    """
    n = x.shape[0]
    part = state.partial or {"step": 0, "loss": 0.0, "correct": 0, "order_rng_state": state.rng.bit_generator.state}
    if state.partial:
        order_rng = np.random.Generator(type(state.rng.bit_generator)())
        order_rng.bit_generator.state = part["order_rng_state"]
        order = order_rng.permutation(n)
    else:
        order = state.rng.permutation(n)
    total_loss, total_correct = float(part["loss"]), int(part["correct"])
    n_batches = -(-n // batch_size)
    for step in range(int(part["step"]), n_batches):
        index = order[step * batch_size:(step + 1) * batch_size]
        loss, correct = train_step(state, x, y, index)
        total_loss += loss
        total_correct += correct
        if progress is not None:
            progress.update(step + 1, f"loss {total_loss / min((step + 1) * batch_size, n):.4f}")
        if stop and step + 1 < n_batches:
            state.partial = {**part, "step": step + 1, "n_steps": n_batches, "loss": total_loss,
                             "correct": total_correct}
            return None
    state.partial = None
    return total_loss / n, total_correct / n


def evolve(state: TrainingState, cfg: Config) -> dict[int, np.ndarray]:
    """The SET step on every evolving layer (not the output unless asked; never a full layer).

    Returns {layer index: source} for the layers that changed (see evolution.prune_and_regrow).
    """
    if cfg.evolution.zeta <= 0:
        return {}
    model = state.model
    last = len(model.layers) - 1
    changes = {}
    for l, layer in enumerate(model.layers):
        if (l == last and not cfg.evolution.evolve_output) or layer.nnz >= layer.n_positions:
            continue
        model.layers[l], changes[l] = prune_and_regrow(layer, cfg.evolution.zeta, cfg.model.init, state.rng)
        state.optimizer.follow_topology(l, changes[l])
    model.topology_changed()
    return changes


def prune_neurons(state: TrainingState, cfg: Config) -> NeuronRemoval | None:
    """Importance Pruning or NPSET after completed epoch `state.epoch` if the schedule says so.

    Returns what was removed (None if nothing was); optimizer state follows the smaller layers.
    """
    p = cfg.pruning
    if not pruning_due(p.method, p.start_epoch, p.every, p.duration, state.epoch):
        return None
    model = state.model
    keep = select_by_importance(model, p.percentile) if p.method == "importance" else select_npset(model, p.fraction)
    if all(k.all() for k in keep):
        return None
    return apply_neuron_removal(state, keep)


def apply_neuron_removal(state: TrainingState, keep: list[np.ndarray]) -> NeuronRemoval:
    """Remove the hidden neurons outside `keep` from the model and the optimizer state."""
    removal = remove_neurons(state.model, keep)
    for l, source in enumerate(removal.sources):
        state.optimizer.follow_topology(l, source)
    for h, mask in enumerate(keep, start=1):
        state.optimizer.follow_neurons(h - 1, mask)
    return removal


def between_epochs(state: TrainingState, cfg: Config) -> tuple[NeuronRemoval | None, dict[int, np.ndarray]]:
    """Neuron pruning (if scheduled), then the SET step: what runs between two epochs."""
    removal = prune_neurons(state, cfg)
    return removal, evolve(state, cfg)


def check_resume_compatible(saved: Config, cfg: Config) -> None:
    old, new = config_to_dict(saved), config_to_dict(cfg)
    changed = [key for key in FROZEN_ON_RESUME if old[key] != new[key]]
    if changed:
        raise ConfigError(f"cannot resume: the checkpoint was trained with different {', '.join(changed)}; "
                          f"only {', '.join(k for k in new if k not in FROZEN_ON_RESUME)} may change on resume")


def check_finite(row: dict) -> None:
    """Stop a run whose loss went NaN or infinite, before its checkpoint is overwritten."""
    if not (math.isfinite(row["train_loss"]) and math.isfinite(row["test_loss"])):
        raise DivergedError(f"training diverged at epoch {row['epoch']}: train loss {row['train_loss']}, "
                            f"test loss {row['test_loss']}; lower train.lr (or, for wasap, parallel.async_lr_factor "
                            f"or set parallel.pipeline=false) and --resume from the last checkpoint")


def run_epoch(state: TrainingState, cfg: Config, data: Dataset, stop=None) -> dict | None:
    """Evolve (between epochs), train one epoch, evaluate; returns the epoch's metrics row, or None
    if `stop` ended the epoch early (state.partial says where; calling again continues it)."""
    epoch = state.epoch + 1
    t0 = time.perf_counter()
    removal = None
    resumed = state.partial  # an epoch stopped part-way: its evolution already ran
    if epoch > 1 and not resumed:  # pruning and evolution run between epochs, so a resumed run matches an uninterrupted one
        removal, _ = between_epochs(state, cfg)
    t1 = time.perf_counter()
    bar = ProgressBar(-(-data.x_train.shape[0] // cfg.train.batch_size), f"epoch {epoch}/{cfg.train.epochs}",
                      enabled=cfg.train.progress)
    done = train_epoch(state, data.x_train, data.y_train, cfg.train.batch_size, bar, stop)
    bar.close()
    t2 = time.perf_counter()
    before = resumed or {}
    removed = removal.removed if removal else [0] * (len(state.model.sizes) - 2)
    if done is None:
        state.partial.update(train_seconds=before.get("train_seconds", 0.0) + t2 - t1,
                             evolution_seconds=before.get("evolution_seconds", t1 - t0),
                             neurons_removed=before.get("neurons_removed", removed))
        return None
    train_loss, train_acc = done
    if resumed:  # the row covers the whole epoch, both processes' parts
        t1 -= resumed["train_seconds"]
        t0 = t1 - resumed["evolution_seconds"]
        removed = resumed["neurons_removed"]
    test_loss, test_acc = state.model.evaluate(data.x_test, data.y_test, cfg.train.eval_batch_size)
    t3 = time.perf_counter()
    state.epoch = epoch
    return {"epoch": epoch, "train_loss": train_loss, "train_accuracy": train_acc,
            "test_loss": test_loss, "test_accuracy": test_acc,
            "train_seconds": t2 - t1, "evolution_seconds": t1 - t0, "eval_seconds": t3 - t2,
            "nnz": state.model.nnz, "neurons": state.model.sizes, "parameters": state.model.n_parameters,
            "neurons_removed": removed,
            "peak_rss_mb": round(peak_rss_mb(), 1), "lr": state.optimizer.lr}


def run(cfg: Config, out_dir: str | Path, resume: bool = False, dataset: Dataset | None = None) -> TrainingState:
    """Train per `cfg`, writing config.yaml, metrics.jsonl and checkpoint.h5 into out_dir."""
    out = prepare_run_folder(out_dir)
    threads = set_threads(cfg.threads)
    checkpoint_path = out / "checkpoint.h5"
    metrics_path = out / "metrics.jsonl"
    data = dataset if dataset is not None else load_dataset(cfg.data, cfg.seed)
    log(f"data {data.name}: {data.x_train.shape[0]} train / {data.x_test.shape[0]} test samples, "
        f"{data.n_features} features, {data.n_classes} classes; {threads} kernel threads")

    if resume and checkpoint_path.exists():
        saved = ckpt.load_checkpoint(checkpoint_path)
        check_resume_compatible(config_from_yaml(saved.config_yaml, f"the config stored in {checkpoint_path}"), cfg)
        state = state_from_checkpoint(saved, cfg)
        n_steps = -(-data.x_train.shape[0] // cfg.train.batch_size)
        if state.partial and state.partial["n_steps"] != n_steps:
            raise ConfigError(f"cannot resume: {checkpoint_path} stopped part-way through epoch {state.epoch + 1} "
                              f"at {state.partial['n_steps']} batches per epoch; train.batch_size "
                              f"{cfg.train.batch_size} gives {n_steps} (keep the batch size of the stopped run)")
        where = f" and {state.partial['step']} batches of epoch {state.epoch + 1}" if state.partial else ""
        log(f"resuming from {checkpoint_path} after epoch {state.epoch}{where}")
    else:
        if resume:
            log(f"no checkpoint at {checkpoint_path}; starting a new run")
        t0 = time.perf_counter()
        state = new_state(cfg, data.n_features, data.n_classes)
        log(f"model {'-'.join(map(str, state.model.sizes))}, nnz per layer {state.model.nnz}, "
            f"{state.model.n_parameters} parameters, init {time.perf_counter() - t0:.2f}s")
    dump_config(cfg, out / "config.yaml")
    write_metrics(metrics_path, state.history)

    start_epoch = state.epoch
    with StopRequest() as stop:
        while state.epoch < cfg.train.epochs:
            if stop:  # a stop that came during start-up: the checkpoint on disk (if any) is current
                state.stopped_by = stop.signal_name
                log(stop_message(stop.signal_name, state.epoch, start_epoch))
                break
            row = run_epoch(state, cfg, data, stop)
            if row is None:  # stopped part-way through an epoch: save where it is
                ckpt.save_checkpoint(checkpoint_path, state_to_checkpoint(state, cfg))
                state.stopped_by = stop.signal_name
                log(f"{stop.signal_name} received: stopped in epoch {state.epoch + 1} after batch "
                    f"{state.partial['step']} of {state.partial['n_steps']} with a checkpoint; continue with --resume")
                break
            check_finite(row)
            state.history.append(row)
            append_metrics(metrics_path, row)
            log(f"epoch {row['epoch']}/{cfg.train.epochs} train_loss {row['train_loss']:.4f} "
                f"test_loss {row['test_loss']:.4f} test_accuracy {100 * row['test_accuracy']:.2f}% | "
                f"train {row['train_seconds']:.2f}s evolution {row['evolution_seconds']:.2f}s "
                f"eval {row['eval_seconds']:.2f}s | nnz {sum(row['nnz'])}{_pruned_note(row)}")
            if state.epoch % cfg.checkpoint.every == 0 or state.epoch == cfg.train.epochs or stop:
                ckpt.save_checkpoint(checkpoint_path, state_to_checkpoint(state, cfg))
            if stop and state.epoch < cfg.train.epochs:
                state.stopped_by = stop.signal_name
                log(stop_message(stop.signal_name, state.epoch, start_epoch))
                break
    if state.history:
        log(summarize(state.history))
    return state


def stop_message(signal_name: str, epoch: int, start_epoch: int) -> str:
    """What a run stopped by `signal_name` after `epoch` (having started at `start_epoch`) saved."""
    if epoch > start_epoch:
        return f"{signal_name} received: stopped after epoch {epoch} with a checkpoint; continue with --resume"
    saved = f"the checkpoint of epoch {epoch} is current" if epoch else "nothing to save yet"
    return f"{signal_name} received during start-up: stopped before epoch {epoch + 1} ({saved}); continue with --resume"


def prepare_run_folder(out_dir: str | Path) -> Path:
    """The run's output folder, created if missing and checked safe (fileio); stale temporaries removed."""
    out = make_folder(out_dir)
    removed = clean_stale_temporaries(out)
    if removed:
        log(f"removed {len(removed)} temporaries of interrupted writes from {out}: {', '.join(removed)}")
    return out


def _pruned_note(row: dict) -> str:
    removed = row.get("neurons_removed") or []
    if not any(removed):
        return ""
    return f" | pruned {sum(removed)} neurons, now {'-'.join(map(str, row['neurons']))}"


def summarize(history: list[dict]) -> str:
    """One line on a run: best and last test accuracy, parameters and time spent per phase."""
    best = max(history, key=lambda r: r["test_accuracy"])
    last = history[-1]
    seconds = {k: sum(r[f"{k}_seconds"] for r in history) for k in ("train", "evolution", "eval")}
    return (f"done: {last['epoch']} epochs; test accuracy last {100 * last['test_accuracy']:.2f}%, "
            f"best {100 * best['test_accuracy']:.2f}% (epoch {best['epoch']}); "
            f"weights start {sum(history[0]['nnz'])} end {sum(last['nnz'])}, "
            f"parameters start {history[0]['parameters']} end {last['parameters']}; "
            f"seconds train {seconds['train']:.1f} evolution {seconds['evolution']:.1f} eval {seconds['eval']:.1f}")
