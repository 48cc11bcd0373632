"""Sequential SET training: the per-batch step (reused by MPI workers), SET and pruning between epochs, run()."""

from __future__ import annotations

import ctypes
import logging
import time
from pathlib import Path

import numba
import numpy as np

from . import checkpoint as ckpt
from .config import Config
from . import cpus
from .cpus import ThreadGovernor, usable_cpus
from .data import Dataset, load_dataset
from .data.csr import CSRRows
from .errors import ConfigError, InputError
from .inputs import Preprocessing
from .evolution import prune_and_regrow
from .loop import (  # noqa: F401 - check_finite, prepare_run_folder, summarize: re-exported
    CHECKPOINT, EpochLoop, check_finite, prepare_run_folder, run_folder, start_run, summarize)
from .metrics import ProgressBar, log
from .model import SparseMLP
from .jitcache import compile_notice
from .pruning import NeuronRemoval, pruning_due, remove_neurons, select_by_importance, select_npset
from .selection import hold_out_validation
from .sparse import kernels
from .state import (  # noqa: F401 - re-exported: the names callers know train by
    TrainingState, check_resume_compatible, layers_to_checkpoint, model_from_checkpoint, new_state,
    optimizer_from_checkpoint, state_from_checkpoint, state_to_checkpoint)


def set_threads(threads: int) -> int:
    """Use `threads` kernel threads (0 = the CPUs this process may use: affinity, cgroup quota, Slurm);
    returns the count in use."""
    wanted = usable_cpus()[0] if threads == 0 else threads
    count = max(1, min(wanted, numba.config.NUMBA_NUM_THREADS))
    numba.set_num_threads(count)
    return count


def thread_governor(cfg: Config, threads: int) -> ThreadGovernor | None:
    """With adapt_threads and threads 0, a governor that moves the `threads` kernel threads in use to the CPUs
    left free (a CPU hog beside fixed threads made epochs 13.6x slower: docs/benchmarks.md); else None."""
    if cfg.adapt_threads and cfg.threads == 0 and threads > 1:
        return cpus.ThreadGovernor(threads, numba.set_num_threads)
    return None


def train_step(state: TrainingState, x: np.ndarray, y: np.ndarray, index: np.ndarray,
               lazy=None) -> tuple[float, int]:
    """Gradients on samples x[index] and one optimizer update; returns summed loss and correct count.
    lazy: the first layer's sparse.lazy.LazyFirstLayer (CSR x), which updates layer 0's weights itself."""
    loss, correct = compute_gradients(state.model, state.rng, x, y, index, lazy)
    state.optimizer.step(state.model, state.model.grads, state.model.bias_grads, skip_first=lazy is not None)
    if state.governor is not None:
        state.governor.tick()
    return loss, correct


def compute_gradients(model: SparseMLP, rng: np.random.Generator, x: np.ndarray, y: np.ndarray,
                      index: np.ndarray, lazy=None) -> tuple[float, int]:
    """Fill model.grads / model.bias_grads from samples x[index] (dropout keys drawn from rng); x is
    a float32 array or CSR samples (data.csr.CSRRows), whose rows the first layer reads as they are.

    An autoencoder (model.task) is scored against the clean batch, y is not read; its input gets
    Gaussian noise of std model.input_noise (drawn from rng after the dropout keys)."""
    if isinstance(x, CSRRows):
        if model.task == "autoencoder":
            raise InputError("model.task autoencoder needs dense inputs: its targets are the samples themselves")
        drop_keys = rng.integers(0, 2**63, size=len(model.layers), dtype=np.int64)
        return model.gradients(index.shape[0], y[index], drop_keys, rows=(x, index), lazy=lazy)
    buffer = kernels.gather_batch(x, index, model.input_buffer(index.shape[0]))
    drop_keys = rng.integers(0, 2**63, size=len(model.layers), dtype=np.int64)
    if model.task != "autoencoder":
        return model.gradients(index.shape[0], y[index], drop_keys)
    clean = buffer.copy()  # (n_features, batch): the targets, read through a (batch, n_features) view
    if model.input_noise > 0:
        buffer += np.float32(model.input_noise) * rng.standard_normal(buffer.shape, dtype=np.float32)
    return model.gradients(index.shape[0], clean.T, drop_keys)


def train_epoch(state: TrainingState, x: np.ndarray, y: np.ndarray, batch_size: int,
                progress: ProgressBar | None = None, stop=None) -> tuple[float, float] | None:
    """One pass over shuffled samples (the last batch may be smaller); mean loss and accuracy.

    If `stop()` turns true before the last batch, the epoch's position goes into state.partial
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
    lazy = lazy_session(state, x, n_batches - int(part["step"]))
    try:
        for step in range(int(part["step"]), n_batches):
            index = order[step * batch_size:(step + 1) * batch_size]
            loss, correct = train_step(state, x, y, index) if lazy is None else train_step(state, x, y, index, lazy)
            total_loss += loss
            total_correct += correct
            if progress is not None:
                progress.update(step + 1, f"loss {total_loss / min((step + 1) * batch_size, n):.4f}")
            if stop is not None and stop() and step + 1 < n_batches:
                state.partial = {**part, "step": step + 1, "n_steps": n_batches, "loss": total_loss,
                                 "correct": total_correct}
                return None
    finally:
        if lazy is not None:
            lazy.sync()  # every weight caught up before anything else reads the layer
    state.partial = None
    return total_loss / n, total_correct / n


def lazy_session(state: TrainingState, x, steps: int):
    """Lazy updates of the first layer for an epoch on CSR samples (sparse/lazy.py), or None (dense
    samples, an autoencoder, Adam, or state.lazy_updates off)."""
    if not isinstance(x, CSRRows) or state.model.task == "autoencoder" or not state.lazy_updates:
        return None
    return state.optimizer.lazy_first_layer(state.model, steps)


def evolve(state: TrainingState, cfg: Config) -> dict[int, np.ndarray]:
    """The SET step on every evolving layer (not the output unless asked; never a full layer).

    Returns {layer index: source} for the layers that changed (see evolution.prune_and_regrow).
    """
    if cfg.evolution.zeta <= 0:
        return {}
    model = state.model
    model.release_workspace()  # its memory serves the SET step (memory.py counts one or the other)
    last = len(model.layers) - 1
    changes = {}
    for l in range(len(model.layers)):  # by index: the old layer goes as soon as the new one replaces it
        layer = model.layers[l]
        if (l == last and not cfg.evolution.evolve_output) or layer.nnz >= layer.n_positions:
            continue
        model.layers[l], changes[l] = prune_and_regrow(layer, cfg.evolution.zeta, cfg.model.init, state.rng,
                                                       regrow=cfg.evolution.regrow)
        del layer
        state.optimizer.follow_topology(l, changes[l])
    model.topology_changed()
    return_freed_memory()
    return changes


def return_freed_memory() -> None:
    """Hand the heap pages that freed arrays left behind back to the OS (glibc's malloc_trim; elsewhere
    nothing): the SET step's temporaries would otherwise stay resident beside the reallocated workspace."""
    global _malloc_trim
    if _malloc_trim is None:
        try:
            _malloc_trim = ctypes.CDLL(None).malloc_trim
        except (AttributeError, OSError):
            _malloc_trim = False
    if _malloc_trim:
        _malloc_trim(0)


_malloc_trim = None  # libc's malloc_trim once looked up, False where there is none


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


def between_epochs(state: TrainingState, cfg: Config, prune: bool = True
                   ) -> tuple[NeuronRemoval | None, dict[int, np.ndarray]]:
    """Neuron pruning (if scheduled and `prune`), then the SET step: what runs between two epochs."""
    state.model.release_workspace()  # the next batch allocates it again: pruning and SET use its memory
    removal = prune_neurons(state, cfg) if prune else None
    return removal, evolve(state, cfg)


def run_epoch(state: TrainingState, cfg: Config, x, y: np.ndarray, epoch: int, stop=None, prune: bool = True,
              progress: bool = True) -> dict | None:
    """Prune (unless not `prune`) and evolve between epochs, then train epoch `epoch` on samples x, labels y:
    the training part of its metrics row, or None if `stop()` ended the epoch early (state.partial says
    where; calling again continues it). progress: a progress bar if cfg.train.progress."""
    t0 = time.perf_counter()
    removal = None
    resumed = state.partial  # an epoch stopped part-way: its pruning and evolution already ran
    if epoch > 1 and not resumed:  # pruning and evolution run between epochs, so a resumed run matches an uninterrupted one
        removal, _ = between_epochs(state, cfg, prune)
    t1 = time.perf_counter()
    bar = ProgressBar(-(-x.shape[0] // cfg.train.batch_size), f"epoch {epoch}/{cfg.train.epochs}",
                      enabled=cfg.train.progress and progress)
    done = train_epoch(state, x, y, cfg.train.batch_size, bar, stop)
    bar.close()
    before = resumed or {}
    removed = removal.removed if removal else None
    train_seconds = before.get("train_seconds", 0.0) + time.perf_counter() - t1
    evolution_seconds = before.get("evolution_seconds", t1 - t0)
    removed = before.get("neurons_removed", removed)
    if done is None:
        state.partial.update(train_seconds=train_seconds, evolution_seconds=evolution_seconds,
                             neurons_removed=removed or [0] * (len(state.model.sizes) - 2))
        return None
    train_loss, train_acc = done
    return {"train_loss": train_loss, "train_accuracy": train_acc, "train_seconds": train_seconds,
            "evolution_seconds": evolution_seconds, "neurons_removed": removed, "lr": state.optimizer.lr}


def _not_parallel_only(saved: ckpt.CheckpointData, state: TrainingState) -> None:
    """The sequential trainer continues neither a parallel epoch stopped part-way nor phase 2, whose replicas
    (each worker's model, optimizer state and generator) it would drop."""
    if saved.parallel_partial_epoch is not None:
        raise ConfigError(f"cannot resume: the checkpoint was stopped part-way through epoch {state.epoch + 1} by a "
                          f"parallel run with {len(saved.parallel_partial_epoch['workers'])} workers; resume it under "
                          f"MPI with {len(saved.parallel_partial_epoch['workers']) + 1} ranks")
    if saved.phase == 2 and saved.replicas:
        raise ConfigError(f"cannot resume: the checkpoint is in phase 2 of a parallel run after epoch {state.epoch}, "
                          f"holding the replicas of its {len(saved.replicas)} workers (models, optimizer state, "
                          f"generators); resume it under MPI with {len(saved.replicas) + 1} ranks")


def run(cfg: Config, out_dir: str | Path, resume: bool = False, dataset: Dataset | None = None,
        overwrite: bool = False, fresh: bool = False) -> TrainingState:
    """Train per `cfg`, writing config.yaml, metrics.jsonl and checkpoint.h5 into out_dir, which no other
    run may use meanwhile (loop.run_folder; overwrite: the previous run's files are removed first; fresh:
    out_dir must be empty once held)."""
    with run_folder(out_dir, overwrite=overwrite, fresh=fresh) as out:
        return _train_into(out, cfg, resume, dataset)


def _train_into(out: Path, cfg: Config, resume: bool, dataset: Dataset | None) -> TrainingState:
    threads = set_threads(cfg.threads)
    data = dataset if dataset is not None else load_dataset(cfg.data, cfg.seed)
    data, validation = hold_out_validation(data, cfg.data.validation_fraction, cfg.seed)
    held = f" + {validation[0].shape[0]} validation (stratified, seed {cfg.seed})" if validation else ""
    log(f"data {data.name}: {data.x_train.shape[0]} train{held} / {data.x_test.shape[0]} test samples, "
        f"{data.n_features} features, {data.n_classes} classes; {threads} kernel threads")
    log(f"kernel cache: {numba.config.CACHE_DIR or 'numba default'}", level=logging.DEBUG)
    notice = compile_notice()
    if notice:
        log(notice)
    state, _ = start_run(cfg, out, data.n_features, data.n_classes, resume, check=_not_parallel_only,
                         classes=data.classes)
    n_steps = -(-data.x_train.shape[0] // cfg.train.batch_size)
    if state.partial and state.partial["n_steps"] != n_steps:
        raise ConfigError(f"cannot resume: {out / CHECKPOINT} stopped part-way through epoch {state.epoch + 1} "
                          f"at {state.partial['n_steps']} batches per epoch; train.batch_size "
                          f"{cfg.train.batch_size} gives {n_steps} (keep the batch size of the stopped run)")
    if state.partial:
        log(f"continuing epoch {state.epoch + 1} after batch {state.partial['step']} of {n_steps}")
    state.preprocessing = Preprocessing(*data.raw_statistics(), data.classes)  # for raw samples, into the checkpoint
    state.governor = thread_governor(cfg, threads)

    def save(path: Path | None = None) -> None:
        ckpt.save_checkpoint(path or out / CHECKPOINT, state_to_checkpoint(state, cfg))

    with EpochLoop(cfg, out, state, data.x_test, data.y_test, save, validation=validation) as loop:
        loop.run(lambda epoch: run_epoch(state, cfg, data.x_train, data.y_train, epoch, loop.stop_requested),
                 cfg.train.epochs)
    return loop.finish()
