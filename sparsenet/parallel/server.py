"""Rank 0: the parameter server of WASAP-SGD / WASSP-SGD (Algorithm 1 of the paper).

Phase 1: workers send gradients tagged with their topology version; the server keeps the only
optimizer state, carries stale gradients onto the current topology (retain-valid-updates),
applies the optimizer and, between epochs, runs the SET step and bumps the version.
Phase 2: every worker trains its own replica; after each epoch the server averages the K
replicas on the union of their connections and prunes each layer back to its target nnz.
The server reaches its workers only through a seam.Workers; epochs end in loop.EpochLoop.
"""

from __future__ import annotations

import math
import os
import signal
import time
from pathlib import Path

import numpy as np

from .. import checkpoint as ckpt
from ..config import Config
from ..data import Dataset
from ..errors import DivergedError
from ..loop import EpochLoop
from ..metrics import ProgressBar, log
from ..optim import make_optimizer
from ..sparse.layer import SparseLayer
from ..state import TrainingState, layers_to_checkpoint, state_to_checkpoint
from ..train import between_epochs, prune_neurons
from .averaging import average_replicas
from .seam import Gradient, Replica, Workers, split_pairs
from .updates import retain_valid, then, topology_lineage


class ParameterServer:
    """Holds the global model and the only phase-1 optimizer state; drives `workers`."""

    def __init__(self, cfg: Config, data: Dataset, workers: Workers, state: TrainingState, out_dir: Path,
                 version: int = 0, replicas: list[Replica] | None = None, partial: dict | None = None,
                 validation=None):
        """partial: the checkpoint's parallel_partial_epoch, if the run stopped part-way through an epoch."""
        self.cfg, self.data, self.workers, self.state = cfg, data, workers, state
        self.out = Path(out_dir)
        self.version = version
        self.worker_version = {k: -1 for k in workers.ids}  # the topology each worker holds; -1: none yet
        # version v -> per-layer (connection maps, bias maps) to the current version; None: unchanged
        self.lineages: dict[int, tuple[list[np.ndarray | None], list[np.ndarray | None]]] = {}
        self.saved_replicas = replicas or []
        self.phase = 2 if self.saved_replicas else 1
        self.counters = dict(updates=0, stale=0, samples=0, loss=0.0, correct=0)
        self.removed = [0] * (len(state.model.sizes) - 2)  # hidden neurons pruned before the current epoch
        # Run-long counters continue where the checkpoint's last epoch left them (a resumed run).
        last = state.history[-1] if state.history else {}
        self.carried = {key: last.get(key, 0) for key in workers.run_counters}
        self.resumed = partial  # consumed by the epoch it stopped in
        if partial is not None:
            self.carried.update(partial["run_totals"])
        self.partial = None  # where this process stopped inside an epoch, for the checkpoint
        self.taken = 0  # gradients taken since this process started (debug.stop_at_update)
        self.workers_stopped = False
        self.waiting = list(workers.ids)  # workers waiting for a model (every one at the start)
        self.replicas_out = False  # phase 2: this process has handed the replicas out
        # the server computes no gradients: its evaluation stays within a training batch's workspace
        self.loop = EpochLoop(cfg, self.out, state, data.x_test, data.y_test, self.save, rank=0, trains=False,
                              validation=validation)

    # ------------------------------------------------------------------ phase 1

    def learning_rate(self, epoch: int, samples: int) -> float:
        """Per-update learning rate: WASAP's async boost or WASSP's warm-up to linear scaling."""
        p, lr = self.cfg.parallel, self.cfg.train.lr
        if p.algorithm == "wasap":
            return lr * p.async_lr_factor if epoch <= p.async_lr_epochs else lr
        if not p.lr_scaling:
            return lr
        target = lr * len(self.workers.ids)
        if p.warmup_epochs == 0:
            return target
        progress = (epoch - 1 + samples / self.data.x_train.shape[0]) / p.warmup_epochs
        return lr + (target - lr) * min(progress, 1.0)

    def send_model(self, worker: int, position: dict | None = None) -> None:
        """Weights while the worker's topology is current, else the whole model (with the worker's
        data `position` when a stopped epoch resumes)."""
        model, epoch = self.state.model, self.state.epoch
        if self.worker_version[worker] == self.version:
            self.workers.send_weights(worker, model, self.version, epoch)
        else:
            self.workers.send_topology(worker, model, self.version, epoch, position)
            self.worker_version[worker] = self.version

    def apply(self, gradients: list[np.ndarray], version: int, lr: float) -> None:
        """One optimizer update from weight and bias gradients computed on topology `version`."""
        model, opt = self.state.model, self.state.optimizer
        grads, bias_grads = split_pairs(gradients, len(model.layers))
        if version == self.version:
            opt.step(model, grads, bias_grads, lr)
            return
        self.counters["stale"] += 1
        connections, biases = self.lineages[version]
        where, bias_where = [None] * len(grads), [None] * len(grads)
        for l, (carry, bias_carry) in enumerate(zip(connections, biases)):
            if carry is not None:
                where[l], grads[l] = retain_valid(carry, grads[l])
            if bias_carry is not None:
                bias_where[l], bias_grads[l] = retain_valid(bias_carry, bias_grads[l])
        opt.step_partial(model, grads, bias_grads, where, bias_where, lr)

    def _account(self, g: Gradient) -> None:
        self.taken += 1
        if self.taken == self.cfg.debug.stop_at_update:
            os.kill(os.getpid(), signal.SIGUSR1)
        c = self.counters
        c["updates"] += 1
        c["samples"] += g.samples
        c["loss"] += g.loss
        c["correct"] += g.correct

    def _evolve(self) -> None:
        """Neuron pruning (if scheduled) and SET between epochs; a change bumps the topology version."""
        nnz_before = self.state.model.nnz
        removal, changes = between_epochs(self.state, self.cfg)
        if removal is None and not changes:  # nothing changed (zeta 0): the workers' topology stays current
            return
        if removal is not None:
            self._note_removal(removal)
        step = topology_lineage(nnz_before, removal, changes)
        oldest = min(self.worker_version.values())  # no worker holds an older version: its maps go
        self.lineages = {v: (then(connections, step[0]), then(biases, step[1]))
                         for v, (connections, biases) in self.lineages.items() if v >= oldest}
        self.lineages[self.version] = step
        self.version += 1

    def phase1_epoch(self, epoch: int) -> dict | None:
        """Epoch `epoch` of phase 1: the training part of its metrics row (loop.EpochLoop.run), or None
        when a stop request ended it part-way (self.partial says where; a resumed server continues it)."""
        n_train = self.data.x_train.shape[0]
        wassp = self.cfg.parallel.algorithm == "wassp"
        resumed, self.resumed = self.resumed or {}, None
        t0 = time.perf_counter()
        if epoch > 1 and not resumed:  # a resumed epoch was evolved before it stopped
            self._evolve()
        t1 = time.perf_counter()
        positions = dict(zip(self.workers.ids, resumed.get("workers", [])))
        for k in self.waiting:
            self.send_model(k, position=positions.get(k))
        self.waiting = []
        self.counters.update(samples=0, loss=0.0, correct=0, updates=0, stale=0)
        self.counters.update({k: resumed[k] for k in self.counters if k in resumed})
        if resumed:
            self.removed = resumed["neurons_removed"]
            t1 -= resumed["train_seconds"]  # the row counts the seconds before the stop too
            t0 = t1 - resumed["evolution_seconds"]
            log(f"continuing epoch {epoch} after {self.counters['samples']} of {n_train} samples "
                f"({self.counters['updates']} gradients)", rank=0)
        bar = ProgressBar(n_train, f"epoch {epoch}/{self.cfg.train.epochs}", enabled=self.cfg.train.progress)
        while self.counters["samples"] < n_train:
            lr = self.learning_rate(epoch, self.counters["samples"])
            if wassp:
                self._synchronous_round(lr)
            else:
                left = self._asynchronous_update(lr, n_train)
                self.waiting = [left] if left is not None else self.waiting
            # Read once: a signal landing after this read waits for the next update. Read twice, a signal
            # between the reads stopped workers that had been answered, losing the gradients on their way.
            stopping = self.counters["samples"] < n_train and self.loop.stop_requested()
            if wassp:
                done = self.counters["samples"] >= n_train
                self.waiting = list(self.workers.ids) if done or stopping else []
                if not self.waiting:
                    for k in self.workers.ids:
                        self.send_model(k)
            elif stopping:
                self._take_in_flight(self.learning_rate(epoch, self.counters["samples"]))
            bar.update(min(self.counters["samples"], n_train))
            if stopping and self.counters["samples"] < n_train:
                bar.close()
                self._stop_in_epoch(train_seconds=time.perf_counter() - t1, evolution_seconds=t1 - t0)
                return None
        bar.close()
        return self._trained(phase=1, train_seconds=time.perf_counter() - t1, evolution_seconds=t1 - t0)

    def _take_in_flight(self, lr: float | None = None) -> None:
        """Take the gradient every worker still has on its way, so that all wait for a model (or for word):
        applied with `lr` (WASAP stopping), dropped without (phase 1 is over)."""
        for k in self.workers.ids:
            if k not in self.waiting:
                g = self.workers.take_gradient(k)
                if lr is not None:
                    self._account(g)
                    self.apply(g.arrays, g.version, lr)
        self.waiting = list(self.workers.ids)

    def _stop_in_epoch(self, train_seconds: float, evolution_seconds: float) -> None:
        """Every worker waits for a model: stop them and keep where the epoch stands in self.partial."""
        positions = self.workers.stop(self.loop.stop.signal_name, in_epoch=True)
        self.workers_stopped = True
        c = self.counters
        self.partial = {"samples": c["samples"], "loss": c["loss"], "correct": c["correct"], "updates": c["updates"],
                        "stale": c["stale"], "train_seconds": train_seconds, "evolution_seconds": evolution_seconds,
                        "neurons_removed": list(self.removed), "workers": positions, "run_totals": self._run_counters()}

    def _asynchronous_update(self, lr: float, n_train: int) -> int | None:
        """WASAP: apply the next gradient from any worker and, while the epoch lasts, reply with the new
        weights. Returns the worker left waiting at the end of the epoch, else None."""
        g = self.workers.take_gradient()
        self._account(g)
        self.apply(g.arrays, g.version, lr)
        if self.counters["samples"] >= n_train:
            return g.source
        self.send_model(g.source)
        return None

    def _synchronous_round(self, lr: float) -> None:
        """WASSP: one gradient from every worker (in rank order), averaged by samples, one update."""
        msgs = [self.workers.take_gradient(k) for k in self.workers.ids]
        versions = {m.version for m in msgs}
        if versions != {self.version}:
            raise RuntimeError(f"synchronous round mixes topology versions {sorted(versions)} (server at {self.version})")
        total = sum(m.samples for m in msgs)
        averaged = [np.zeros_like(a) for a in msgs[0].arrays]
        for m in msgs:
            weight = np.float32(m.samples / total)
            for acc, g in zip(averaged, m.arrays):
                acc += weight * g
        self.apply(averaged, self.version, lr)
        for m in msgs:
            self._account(m)

    # ------------------------------------------------------------------ phase 2

    def start_phase2(self, resumed: dict) -> None:
        """Hand each worker its replica: its own back when resumed in phase 2 (with its part of the epoch
        a stop ended part-way, `resumed`: that parallel_partial_epoch), else the server's model."""
        self.phase, self.replicas_out = 2, True
        self._take_in_flight()
        # Neurons pruned at this boundary: the server's model now; the replicas of a resumed run by the workers.
        if resumed:  # pruned before the epoch stopped
            keep, self.removed = [], resumed["neurons_removed"]
        else:
            keep = self._prune_phase2()
        if self.saved_replicas:
            self.workers.start_replicas(self.saved_replicas, self.state.epoch, keep, resumed.get("workers"))
        else:
            opt = self.state.optimizer
            replica = Replica(layers_to_checkpoint(self.state.model, opt), None, opt.scalars())
            self.workers.start_replicas([replica] * len(self.workers.ids), self.state.epoch, [])

    def phase2_epoch(self, epoch: int) -> dict | None:
        """Epoch `epoch` of phase 2: the workers train, the server averages. None when a stop request
        ended it part-way (self.partial says where each worker stood; a resumed server finishes it)."""
        cfg, model = self.cfg, self.state.model
        resumed, self.resumed = self.resumed or {}, None
        if not self.replicas_out:
            self.start_phase2(resumed)
        else:  # the workers wait for word after their last epoch
            self.workers.continue_replicas(self._prune_phase2())
        targets = model.nnz  # the last average (pruned to the targets, then of any pruned neurons)
        last = self.state.history[-1] if self.state.history else {}
        self.saved_replicas, stopped_by = self.workers.gather_replicas(2 * last.get("train_seconds", 0.0),
                                                                       stop=lambda: self.loop.stop.signal_name)
        self.workers_stopped = stopped_by is not None
        if any(r.position is not None for r in self.saved_replicas):
            losses = [r.report["train_loss"] if r.position is None else r.position["loss"] for r in self.saved_replicas]
            if not all(map(math.isfinite, losses)):  # the last checkpoint stays as it was
                raise DivergedError(f"training diverged in epoch {epoch}: the workers' train losses are {losses}; "
                                    "lower train.lr and --resume from the last checkpoint")
            self.partial = {"neurons_removed": list(self.removed), "run_totals": self._run_counters(),
                            "workers": [{"position": r.position} if r.position is not None else {"report": r.report}
                                        for r in self.saved_replicas]}
            return None
        model.layers = average_replicas([[SparseLayer(a.n_in, a.n_out, a.rows, a.cols, a.values, a.bias)
                                          for a in r.layers] for r in self.saved_replicas], targets)
        model.topology_changed()
        self.state.optimizer = make_optimizer(cfg, model)
        self.version += 1
        reports = [r.report for r in self.saved_replicas]
        self.counters.update(samples=sum(r["samples"] for r in reports), stale=0, updates=0,
                             loss=sum(r["train_loss"] * r["samples"] for r in reports),
                             correct=round(sum(r["train_accuracy"] * r["samples"] for r in reports)))
        return self._trained(phase=2, train_seconds=max(r["train_seconds"] for r in reports),
                             evolution_seconds=max(r["evolution_seconds"] for r in reports))

    def _prune_phase2(self) -> list[np.ndarray]:
        """Prune the averaged model's neurons if scheduled; the keep masks the workers apply to their replicas."""
        removal = prune_neurons(self.state, self.cfg)
        if removal is None:
            return []
        self._note_removal(removal)
        return removal.keep

    def _note_removal(self, removal) -> None:
        self.removed = removal.removed
        log(f"pruned {removal.removed} hidden neurons: now {'-'.join(map(str, self.state.model.sizes))}", rank=0)

    # ------------------------------------------------------------------ epochs

    def _trained(self, phase: int, train_seconds: float, evolution_seconds: float) -> dict:
        """The training part of an epoch's metrics row (loop.EpochLoop adds the evaluation)."""
        c = self.counters
        n = max(c["samples"], 1)
        removed, self.removed = self.removed, [0] * len(self.removed)
        return {"phase": phase, "train_loss": c["loss"] / n, "train_accuracy": c["correct"] / n,
                "train_seconds": train_seconds, "evolution_seconds": evolution_seconds, "neurons_removed": removed,
                "algorithm": self.cfg.parallel.algorithm, "workers": len(self.workers.ids), "updates": c["updates"],
                "stale_updates": c["stale"], "version": self.version, **self._run_totals(self.workers.epoch_stats())}

    def _run_totals(self, stats: dict) -> dict:
        """The workers' epoch stats with the run-long counters continued across resumes."""
        return {k: v + self.carried[k] if k in self.carried else v for k, v in stats.items()}

    def _run_counters(self) -> dict:
        """The run-long counters so far, for a checkpoint stopped part-way through an epoch."""
        return {k: v for k, v in self._run_totals(self.workers.epoch_stats()).items() if k in self.workers.run_counters}

    def save(self, path: Path | None = None) -> None:
        data = state_to_checkpoint(self.state, self.cfg)
        data.phase, data.version = self.phase, self.version
        if self.phase == 2 and self.saved_replicas:
            data.replicas = [r.layers for r in self.saved_replicas]
            data.replica_rng_states = [r.rng_state for r in self.saved_replicas]
            data.replica_optimizer_scalars = [r.scalars for r in self.saved_replicas]
        data.parallel_partial_epoch = self.partial
        ckpt.save_checkpoint(path or self.out / "checkpoint.h5", data)

    def run(self) -> TrainingState:
        """Phase 1, then phase 2 if epochs remain. A stop signal ends phase 1 at the next update, phase 2
        after the batch each worker is training (both part-way through the epoch)."""
        loop, epochs = self.loop, self.cfg.train.epochs
        with loop:
            loop.run(self.phase1_epoch, self.cfg.phase1_epochs)
            loop.run(self.phase2_epoch, epochs)  # its first epoch hands the replicas out
            if not self.replicas_out:
                self._take_in_flight()
            early = loop.stop_requested() and self.state.epoch < epochs
            if not self.workers_stopped:
                self.workers.stop(loop.stop.signal_name if early else None)
        return loop.finish()

