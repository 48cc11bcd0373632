"""The epoch loop every trainer shares: start or resume a run, one metrics row per epoch, checkpoint
cadence, stop signals and the divergence stop.

The sequential trainer (train.run) and the parameter server (parallel/server.py) supply only what
one epoch is: a function of the epoch number that trains it and returns the training part of its
metrics row. A stop signal ends the run at the next epoch boundary; `stop_requested()` is where a
check inside an epoch would ask.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from . import checkpoint as ckpt
from .config import Config, dump_config
from .errors import DivergedError, OutputError
from .fileio import check_unused, clean_stale_temporaries, hold_lock, make_folder
from .metrics import append_metrics, log, peak_rss_mb, write_metrics
from .model import training_workspace_bytes
from .selection import Selection
from .signals import StopRequest
from .state import TrainingState, check_saved_run, new_state, state_from_checkpoint

CHECKPOINT = "checkpoint.h5"
BEST = "checkpoint_best.h5"  # the epoch best on validation accuracy (training loss without a validation set)
METRICS = "metrics.jsonl"
# The training part of a row, in this order; the loop adds the evaluation and the model's size.
TRAINED = ("train_loss", "train_accuracy")
SECONDS = ("train_seconds", "evolution_seconds")


def start_run(cfg: Config, out: Path, n_features: int, n_classes: int, resume: bool, rank: int | None = None,
              check: Callable[[ckpt.CheckpointData, TrainingState], None] | None = None, classes=None
              ) -> tuple[TrainingState, ckpt.CheckpointData | None]:
    """The state to train from (out/checkpoint.h5 if resuming and present, else a new one) and the
    checkpoint it came from; `check(saved, state)` may refuse a checkpoint before anything is written;
    classes: the data's labels (Dataset.classes), which a resumed checkpoint's must equal.
    Writes out/config.yaml and rewrites out/metrics.jsonl from the state's history (out: a folder
    prepare_run_folder made)."""
    path = out / CHECKPOINT
    saved = None
    if resume and path.exists():
        saved = ckpt.load_checkpoint(path, cfg.memory_limit_gb)
        check_saved_run(saved, cfg, n_features, n_classes, path, classes)
        state = state_from_checkpoint(saved, cfg)
        if check is not None:
            check(saved, state)
        log(f"resuming from {path} after epoch {state.epoch}" + (" (phase 2)" if saved.phase == 2 else ""), rank)
    else:
        if resume:
            log(f"no checkpoint at {path}; starting a new run", rank)
        t0 = time.perf_counter()
        state = new_state(cfg, n_features, n_classes)
        log(f"model {'-'.join(map(str, state.model.sizes))}, nnz per layer {state.model.nnz}, "
            f"{state.model.n_parameters} parameters, init {time.perf_counter() - t0:.2f}s", rank)
    dump_config(cfg, out / "config.yaml")
    write_metrics(out / METRICS, state.history)
    return state, saved


RUN_FILES = (CHECKPOINT, BEST, METRICS, "config.yaml")  # what --overwrite removes


@contextmanager
def run_folder(out_dir: str | Path, rank: int | None = None, overwrite: bool = False, fresh: bool = False
               ) -> Iterator[Path]:
    """prepare_run_folder's folder, held by this run alone while the block lasts (fileio.hold_lock);
    overwrite: the previous run's files are removed first (a stale checkpoint must not be resumed later);
    fresh: the folder must be empty (check_unused) once held: a run that ended meanwhile is not replaced."""
    out = make_folder(out_dir)
    with hold_lock(out):
        if fresh:
            check_unused(out)
        for name in RUN_FILES if overwrite else ():
            try:
                (out / name).unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise OutputError(f"--overwrite cannot remove '{out / name}': {exc.strerror or exc}") from None
        yield prepare_run_folder(out, rank)


def prepare_run_folder(out_dir: str | Path, rank: int | None = None) -> Path:
    """The run's output folder, created if missing and checked safe (fileio); stale temporaries removed."""
    out = make_folder(out_dir)
    removed = clean_stale_temporaries(out)
    if removed:
        log(f"removed {len(removed)} temporaries of interrupted writes from {out}: {', '.join(removed)}", rank)
    return out


class EpochLoop:
    """Runs epochs of `state` and ends each one: evaluation on (x_test, y_test) and the validation set,
    the metrics row, the divergence stop, a checkpoint (`save()`) every cfg.checkpoint.every epochs, at
    the end and on a stop, `save(out / BEST)` on a new best epoch (selection.py), early stopping."""

    def __init__(self, cfg: Config, out: Path, state: TrainingState, x_test, y_test,
                 save: Callable[..., None], rank: int | None = None, trains: bool = True, validation=None):
        """save(path=None): write the state's checkpoint to path (default out/CHECKPOINT). trains: this
        process trains the model (evaluation reuses its training workspace); False on the parameter
        server, whose evaluation buffers stay within what a training batch needs. validation: (x, y)
        held out of the training samples, or None (selection then uses the training loss)."""
        self.cfg, self.out, self.state, self.x_test, self.y_test = cfg, out, state, x_test, y_test
        self.save, self.rank, self.trains, self.validation = save, rank, trains, validation
        t = cfg.train
        self.selection = Selection.for_run(validation is not None, t.early_stopping_patience,
                                           t.early_stopping_min_delta, state.history,
                                           accuracy=cfg.model.task != "autoencoder")
        self.stop = StopRequest()
        self.stopped_in_epoch = False
        self.start_epoch = state.epoch  # a stop before any epoch of this process saves nothing new
        self.saved_epoch = state.epoch

    def __enter__(self) -> "EpochLoop":
        self.stop.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.__exit__(*exc)

    def stop_requested(self) -> bool:
        """True once a stop signal has arrived."""
        return bool(self.stop)

    def run(self, epoch: Callable[[int], dict | None], until: int) -> None:
        """Train epochs state.epoch + 1 .. `until` with `epoch(e)`, which returns the training part of
        epoch e's row (TRAINED and SECONDS keys, optionally "phase", "neurons_removed" and more keys);
        returns early after the epoch in which a stop was requested. An epoch function that checks
        stop_requested() itself may return None instead: it stopped part-way and kept its position in
        the state, which is saved at once."""
        while self.state.epoch < until and not self.stop and not self.early_stopped:
            trained = epoch(self.state.epoch + 1)
            if trained is None:
                check_weights(self.state, self.state.epoch + 1)  # a stop in a diverged epoch keeps the last checkpoint
                self.save()
                self.stopped_in_epoch = True
                return
            self.end_epoch(self.state.epoch + 1, trained)
        if self.stop and self.state.epoch > max(self.saved_epoch, self.start_epoch):
            self.save()  # the stop came after end_epoch decided not to save
            self.saved_epoch = self.state.epoch

    @property
    def early_stopped(self) -> bool:
        """Early stopping (train.early_stopping_patience) ended the run."""
        return self.selection.should_stop

    def end_epoch(self, epoch: int, trained: dict) -> dict:
        """Evaluate, record epoch `epoch` as completed and write its row; raises DivergedError on a NaN loss."""
        state, cfg = self.state, self.cfg
        trained = dict(trained)
        t0 = time.perf_counter()
        bound = None if self.trains else training_workspace_bytes(state.model.sizes, cfg.train.batch_size)
        test_loss, test_acc = state.model.evaluate(self.x_test, self.y_test, cfg.train.eval_batch_size, max_bytes=bound)
        held = {}
        if self.validation is not None:
            held["validation_loss"], held["validation_accuracy"] = state.model.evaluate(
                *self.validation, cfg.train.eval_batch_size, max_bytes=bound)
        row = {"epoch": epoch, **({"phase": trained.pop("phase")} if "phase" in trained else {}),
               **{k: trained.pop(k) for k in TRAINED}, **held, "test_loss": test_loss, "test_accuracy": test_acc,
               **{k: trained.pop(k) for k in SECONDS}, "eval_seconds": time.perf_counter() - t0,
               "nnz": state.model.nnz, "neurons": state.model.sizes, "parameters": state.model.n_parameters,
               "neurons_removed": trained.pop("neurons_removed", None) or [0] * (len(state.model.sizes) - 2),
               "peak_rss_mb": round(peak_rss_mb(), 1), **trained}
        if cfg.model.task == "autoencoder":  # the losses are the reconstruction's; there is no accuracy
            for key in ("train_accuracy", "validation_accuracy", "test_accuracy"):
                row.pop(key, None)
        state.epoch = epoch
        check_finite(row)
        check_weights(state, epoch)
        improved = self.selection.update(row[self.selection.metric], epoch)
        row.update(self.selection.row())
        state.history.append(row)
        append_metrics(self.out / METRICS, row)
        log(epoch_line(row, cfg.train.epochs), self.rank)
        if improved and cfg.checkpoint.best:
            self.save(self.out / BEST)
        if epoch % cfg.checkpoint.every == 0 or epoch == cfg.train.epochs or self.stop or self.early_stopped:
            self.save()
            self.saved_epoch = epoch
        return row

    def finish(self) -> TrainingState:
        """Say why the run ended early, if it did, and summarize it."""
        state = self.state
        if self.stop and state.epoch < self.cfg.train.epochs:
            state.stopped_by = self.stop.signal_name
            if self.stopped_in_epoch or state.epoch > self.start_epoch:
                where = f"in epoch {state.epoch + 1}" if self.stopped_in_epoch else f"after epoch {state.epoch}"
                log(f"{self.stop.signal_name} received: stopped {where} with a checkpoint; continue with --resume",
                    self.rank)
            else:
                saved = f"the checkpoint of epoch {state.epoch} is current" if state.epoch else "nothing to save yet"
                log(f"{self.stop.signal_name} received during start-up: stopped before epoch {state.epoch + 1} "
                    f"({saved}); continue with --resume", self.rank)
        if self.early_stopped:
            state.early_stopped = True
            sel = self.selection
            log(f"early stopping after epoch {state.epoch}: {sel.metric} did not improve by more than "
                f"{sel.min_delta:g} in {sel.patience} epochs; best epoch {sel.best_epoch} is in {BEST}", self.rank)
        if state.history:
            log(summarize(state.history), self.rank)
        return state


DIVERGED_HINT = ("lower train.lr (or, for wasap, parallel.async_lr_factor or set parallel.pipeline=false) and "
                 "--resume from the last checkpoint")


def check_finite(row: dict) -> None:
    """Stop a run whose loss went NaN or infinite, before its checkpoint is overwritten."""
    if not all(math.isfinite(row[k]) for k in ("train_loss", "test_loss", "validation_loss") if k in row):
        raise DivergedError(f"training diverged at epoch {row['epoch']}: train loss {row['train_loss']}, "
                            f"test loss {row['test_loss']}; {DIVERGED_HINT}")


def check_weights(state: TrainingState, epoch: int) -> None:
    """Stop a run whose weights or biases went NaN or infinite in epoch `epoch` (or, stopped part-way, whose
    loss so far did), before a checkpoint holds them. O(nnz), no temporary arrays."""
    for l, layer in enumerate(state.model.layers, start=1):
        for name, a in (("weights", layer.values), ("biases", layer.bias)):
            if not math.isfinite(float(np.sum(a, dtype=np.float64))):  # a float64 sum of float32s cannot overflow
                raise DivergedError(f"training diverged in epoch {epoch}: layer {l}'s {name} hold NaN or infinity; "
                                    f"{DIVERGED_HINT}")
    loss = (state.partial or {}).get("loss")
    if loss is not None and not math.isfinite(loss):
        raise DivergedError(f"training diverged in epoch {epoch}: its train loss so far is {loss}; {DIVERGED_HINT}")


def epoch_line(row: dict, epochs: int) -> str:
    """The log line of one epoch's row."""
    phase = f" phase {row['phase']}" if "phase" in row else ""
    updates = f" | updates {row['updates']} stale {row['stale_updates']}" if "updates" in row else ""
    removed = row.get("neurons_removed") or []
    pruned = f" | pruned {sum(removed)} neurons, now {'-'.join(map(str, row['neurons']))}" if any(removed) else ""
    held = (f"validation_loss {row['validation_loss']:.4f} " if "validation_loss" in row else "") + (
        f"validation_accuracy {100 * row['validation_accuracy']:.2f}% " if "validation_accuracy" in row else "")
    accuracy = f" test_accuracy {100 * row['test_accuracy']:.2f}%" if "test_accuracy" in row else ""  # autoencoder: none
    return (f"epoch {row['epoch']}/{epochs}{phase} train_loss {row['train_loss']:.4f} {held}"
            f"test_loss {row['test_loss']:.4f}{accuracy} | "
            f"train {row['train_seconds']:.2f}s evolution {row['evolution_seconds']:.2f}s "
            f"eval {row['eval_seconds']:.2f}s{updates} | nnz {sum(row['nnz'])}{pruned}")


def summarize(history: list[dict]) -> str:
    """One line on a run: last and best test accuracy (an autoencoder's: test loss), the epoch selected
    without the test set (its checkpoint is checkpoint_best.h5), parameters and time spent per phase."""
    last = history[-1]
    chosen = next((r for r in history if r.get("epoch") == last.get("best_epoch")), None)
    if "test_accuracy" in last:
        best = max(history, key=lambda r: r["test_accuracy"])
        result = (f"test accuracy last {100 * last['test_accuracy']:.2f}%, "
                  f"best {100 * best['test_accuracy']:.2f}% (epoch {best['epoch']})")
        selected = (f"; selected epoch {chosen['epoch']} on {last['selection_metric']}: test accuracy "
                    f"{100 * chosen['test_accuracy']:.2f}%" if chosen is not None else "")
    else:
        best = min(history, key=lambda r: r["test_loss"])
        result = f"test loss last {last['test_loss']:.5g}, best {best['test_loss']:.5g} (epoch {best['epoch']})"
        selected = (f"; selected epoch {chosen['epoch']} on {last['selection_metric']}: test loss "
                    f"{chosen['test_loss']:.5g}" if chosen is not None else "")
    seconds = {k: sum(r[f"{k}_seconds"] for r in history) for k in ("train", "evolution", "eval")}
    return (f"done: {last['epoch']} epochs; {result}{selected}; "
            f"weights start {sum(history[0]['nnz'])} end {sum(last['nnz'])}, "
            f"parameters start {history[0]['parameters']} end {last['parameters']}; "
            f"seconds train {seconds['train']:.1f} evolution {seconds['evolution']:.1f} eval {seconds['eval']:.1f}")
