"""Rank 0: the parameter server of WASAP-SGD / WASSP-SGD (Algorithm 1 of the paper).

Phase 1: workers send gradients tagged with their topology version; the server keeps the only
optimizer state, carries stale gradients onto the current topology (retain-valid-updates),
applies momentum SGD and, between epochs, runs the SET step and bumps the version.
Phase 2: every worker trains its own replica; after each epoch the server averages the K
replicas on the union of their connections and prunes each layer back to its target nnz.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import checkpoint as ckpt
from ..config import Config
from ..data import Dataset
from ..metrics import ProgressBar, append_metrics, log, peak_rss_mb
from ..model import training_workspace_bytes
from ..optim import make_optimizer
from ..sparse.layer import SparseLayer
from ..signals import StopRequest
from ..train import (TrainingState, between_epochs, check_finite, layers_to_checkpoint, prune_neurons,
                     state_to_checkpoint, stop_message, summarize)
from . import bundles
from .averaging import average_replicas
from .protocol import TAG_CONTINUE, TAG_GRADIENT, TAG_MODEL, TAG_PHASE2, TAG_REPLICA, TAG_STOP
from .updates import compose, retain_valid, topology_lineage
from .worker import new_model


_RUN_COUNTERS = ("bytes_sent", "bytes_received", "channel_gradients", "channel_replies")  # per run, not per epoch


def phase1_epochs(cfg: Config) -> int:
    p = cfg.parallel
    n = p.phase1_epochs if p.phase1_epochs is not None else round(p.phase1_fraction * cfg.train.epochs)
    return min(max(n, 0), cfg.train.epochs)


class ParameterServer:
    """Holds the global model; talks to workers 1..K through `transport`."""

    def __init__(self, cfg: Config, data: Dataset, transport, state: TrainingState, out_dir: Path,
                 version: int = 0, replicas: list[_Replica] | None = None):
        self.cfg, self.data, self.transport, self.state = cfg, data, transport, state
        self.out = Path(out_dir)
        self.workers = list(range(1, transport.size))
        self.version = version
        self.worker_version = {k: -1 for k in self.workers}  # -1: has no model yet
        # version v -> per-layer (connection maps, bias maps) to v + 1; None where a layer did not change
        self.lineages: dict[int, tuple[list[np.ndarray | None], list[np.ndarray | None]]] = {}
        self.saved_replicas = replicas or []
        self.phase = 2 if self.saved_replicas else 1
        self.counters = dict(updates=0, stale=0, samples=0, loss=0.0, correct=0)
        self.stop = StopRequest()
        self._waited = (0.0, 0.0)  # transport wait wall / CPU seconds at the last epoch end
        self.replies: dict[int, object] = {}  # worker -> its model reply still in flight
        self.channels: dict[int, object] = {}  # worker -> channel.Channel it was told of (same node, phase 1)
        self._unnamed: dict[int, object] | None = None  # channels opened, not yet named in a topology reply
        self._last_channel = 0  # the worker whose channel was taken from last: the next scan starts after it
        self.channel_bytes = [0, 0]  # bytes sent / received through channels
        # Run-long counters continue where the checkpoint's last epoch left them (a resumed run).
        last = state.history[-1] if state.history else {}
        self.carried = {key: last.get(key, 0) for key in _RUN_COUNTERS}
        self.start_epoch = state.epoch  # where this process started: a stop before any epoch saves nothing new
        self._sizes = (None, [])  # (version, sizes of the weights then biases of the model at that version)
        self.removed = [0] * (len(state.model.sizes) - 2)  # hidden neurons pruned before the current epoch

    # ------------------------------------------------------------------ phase 1

    def learning_rate(self, epoch: int, samples: int) -> float:
        """Per-update learning rate: WASAP's async boost or WASSP's warm-up to linear scaling."""
        p, lr = self.cfg.parallel, self.cfg.train.lr
        if p.algorithm == "wasap":
            return lr * p.async_lr_factor if epoch <= p.async_lr_epochs else lr
        if not p.lr_scaling:
            return lr
        target = lr * len(self.workers)
        if p.warmup_epochs == 0:
            return target
        progress = (epoch - 1 + samples / self.data.x_train.shape[0]) / p.warmup_epochs
        return lr + (target - lr) * min(progress, 1.0)

    def value_sizes(self) -> list[int]:
        """Sizes of the current model's weights then biases (a reply's arrays)."""
        if self._sizes[0] != self.version:
            layers = self.state.model.layers
            self._sizes = (self.version, [la.nnz for la in layers] + [la.n_out for la in layers])
        return self._sizes[1]

    def open_channels(self) -> None:
        """Once per run: a shared-memory channel to every same-node worker; the next topology reply
        to a worker names its channel, and only from then on does the server use it."""
        if self._unnamed is not None:
            return
        self._unnamed = {}
        if not self.cfg.parallel.shared_memory:
            return
        for k in self.workers:
            channel = self.transport.open_channel(k, self.value_sizes())
            if channel is not None:
                self._unnamed[k] = channel

    def reply_buffer(self, worker: int) -> list[np.ndarray] | None:
        """Where an update may write `worker`'s reply: its channel's next weight and bias arrays, if
        it shares our node and has the current topology; else None."""
        channel = self.channels.get(worker)
        if channel is None or self.worker_version[worker] != self.version or not channel.fits(self.value_sizes()):
            return None
        return channel.reply_arrays(self.value_sizes())

    def send_model(self, worker: int, filled=None) -> None:
        """Values only while the worker's topology is current; topology and values after a change.

        filled: what reply_buffer(worker) returned, already holding the new values.
        """
        same = self.worker_version[worker] == self.version
        if filled is not None and not same:
            raise RuntimeError(f"a reply buffer was filled for worker {worker}, whose topology is not current")
        self.finish_reply(worker)
        target = filled if filled is not None else self.reply_buffer(worker)
        if target is not None:  # same node and topology: the worker reads the weights where they are written
            if filled is None:
                for out, values in zip(target, bundles.values_arrays(self.state.model)):
                    np.copyto(out, values)
            self.channels[worker].post_reply(self.version, self.state.epoch)
            self.transport.ring(worker)
            self.channel_bytes[0] += 4 * sum(self.value_sizes())
            return
        arrays = bundles.values_arrays(self.state.model) if same else bundles.topology_arrays(self.state.model)
        meta = {"kind": "values" if same else "topology", "version": self.version, "epoch": self.state.epoch,
                "sizes": self.state.model.sizes}
        if self._unnamed and worker in self._unnamed:
            self.channels[worker] = self._unnamed.pop(worker)
            meta["channel"] = self.channels[worker].path
        # non-blocking: a pipelining worker takes this reply only after computing its next gradient
        self.replies[worker] = self.transport.isend_bundle(worker, TAG_MODEL, meta, arrays)
        self.worker_version[worker] = self.version

    def finish_reply(self, worker: int) -> None:
        """Complete the model reply still in flight to `worker`, if any."""
        pending = self.replies.pop(worker, None)
        if pending is not None:
            pending.wait()

    def _carry_over(self, from_version: int) -> tuple[list[np.ndarray | None], list[np.ndarray | None]]:
        """Per layer, the old-to-current connection and bias maps from `from_version` (None: unchanged)."""
        connections, biases = self.lineages[from_version]
        for v in range(from_version + 1, self.version):
            later_connections, later_biases = self.lineages[v]
            connections = [_then(m, n) for m, n in zip(connections, later_connections)]
            biases = [_then(m, n) for m, n in zip(biases, later_biases)]
        return connections, biases

    def apply(self, gradients: list[np.ndarray], version: int, lr: float, out: list[np.ndarray] | None = None) -> None:
        """One optimizer update from weight and bias gradients computed on topology `version`.

        out: arrays [weights..., biases...] that also receive the new values (a reply's channel buffer).
        """
        model, opt = self.state.model, self.state.optimizer
        grads, bias_grads = bundles.split_pairs(gradients, len(model.layers))
        if version == self.version:
            opt.step(model, grads, bias_grads, lr, out=out)
            return
        self.counters["stale"] += 1
        connections, biases = self._carry_over(version)
        where, bias_where = [None] * len(grads), [None] * len(grads)
        for l, (carry, bias_carry) in enumerate(zip(connections, biases)):
            if carry is not None:
                where[l], grads[l] = retain_valid(carry, grads[l])
            if bias_carry is not None:
                bias_where[l], bias_grads[l] = retain_valid(bias_carry, bias_grads[l])
        opt.step_partial(model, grads, bias_grads, where, bias_where, lr)
        for target, values in zip(out or [], bundles.values_arrays(model)):
            np.copyto(target, values)

    def receive_gradient(self, source: int | None = None) -> _Incoming:
        """The next gradient from `source` (None: any worker), through its channel or the transport.

        Channels are scanned from the one after the channel taken from last, and when some workers
        have no channel (other nodes) a waiting bundle goes first every other time, so a busy
        server starves nobody."""
        if source is not None:
            channels = [(source, self.channels[source])] if source in self.channels else []
        else:
            channels = sorted(self.channels.items(), key=lambda kc: (kc[0] <= self._last_channel, kc[0]))
            if len(channels) < len(self.workers) and self.counters["updates"] % 2:
                if self.transport.poll(tag=TAG_GRADIENT) is not None:
                    channels = []
        if not channels:
            return _Incoming.of_bundle(self.transport.recv_bundle(source=source, tag=TAG_GRADIENT))
        found = []

        def ready() -> bool:
            for k, channel in channels:
                if channel.gradient_ready():
                    found.append(k)
                    return True
            return False

        msg = self.transport.recv_unless(ready, source=source, tag=TAG_GRADIENT)
        if msg is not None:
            return _Incoming.of_bundle(msg)
        k = self._last_channel = found[-1]
        version, samples, loss, correct, arrays = self.channels[k].take_gradient()
        self.channel_bytes[1] += sum(a.nbytes for a in arrays)
        return _Incoming(k, version, samples, loss, correct, arrays)

    def _account(self, g: _Incoming) -> None:
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
        self.lineages[self.version] = topology_lineage(nnz_before, removal, changes)
        self.version += 1
        oldest = min(self.worker_version.values())
        for v in [v for v in self.lineages if v < oldest]:
            del self.lineages[v]

    def phase1(self, end_epoch: int) -> list[int]:
        """Run phase 1 up to `end_epoch`; returns the workers waiting for a reply at the end."""
        n_train = self.data.x_train.shape[0]
        waiting = list(self.workers)  # every worker needs a first model
        wassp = self.cfg.parallel.algorithm == "wassp"
        while self.state.epoch < end_epoch:
            if self.stop:  # a stop that came during start-up: the checkpoint on disk (if any) is current
                break
            epoch = self.state.epoch + 1
            t0 = time.perf_counter()
            if epoch > 1:
                self._evolve()
            t1 = time.perf_counter()
            self.open_channels()
            for k in waiting:
                self.send_model(k)
            waiting = []
            self.counters.update(samples=0, loss=0.0, correct=0, updates=0, stale=0)
            bar = ProgressBar(n_train, f"epoch {epoch}/{self.cfg.train.epochs}", enabled=self.cfg.train.progress)
            while self.counters["samples"] < n_train:
                lr = self.learning_rate(epoch, self.counters["samples"])
                if wassp:
                    self._synchronous_round(lr)
                    done = self.counters["samples"] >= n_train
                    waiting = list(self.workers) if done else []
                    if not done:
                        for k in self.workers:
                            self.send_model(k)
                else:
                    left = self._asynchronous_update(lr, n_train)
                    waiting = [left] if left is not None else waiting
                bar.update(min(self.counters["samples"], n_train))
            bar.close()
            self.end_epoch(epoch, train_seconds=time.perf_counter() - t1, evolution_seconds=t1 - t0, phase=1)
            if self.stop:
                break
        return waiting

    def _asynchronous_update(self, lr: float, n_train: int) -> int | None:
        """WASAP: apply the next gradient from any worker and, while the epoch lasts, reply with the new
        weights, written by the update straight into the worker's channel. Returns the worker left
        waiting at the end of the epoch, else None."""
        g = self.receive_gradient()
        source = g.source
        self._account(g)
        more = self.counters["samples"] < n_train
        target = self.reply_buffer(source) if more else None
        self.apply(g.arrays, g.version, lr, out=target)
        if not more:
            return source
        self.send_model(source, filled=target)
        return None

    def _synchronous_round(self, lr: float) -> None:
        """WASSP: one gradient from every worker (in rank order), averaged by samples, one update."""
        msgs = [self.receive_gradient(k) for k in self.workers]
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

    def phase2(self, waiting: list[int]) -> None:
        """Hand each worker its replica, then average the replicas after every epoch."""
        cfg, model = self.cfg, self.state.model
        self.phase = 2
        for k in self.workers:
            if k not in waiting:  # its last phase-1 gradient is still in flight: drain it
                self.receive_gradient(k)
        start = self.state.epoch
        # Neurons pruned at this boundary: the server's model now; the replicas of a resumed run by the workers.
        keep = self._prune_phase2()
        opt = self.state.optimizer
        for i, k in enumerate(self.workers):
            # resumed in phase 2: every worker gets its own replica back; else the server's model
            replica = self.saved_replicas[i] if self.saved_replicas else _Replica(layers_to_checkpoint(model, opt), None,
                                                                                   opt.scalars())
            layers = replica.layers
            masks = keep if self.saved_replicas else []
            meta = {"start_epoch": start, "rng_state": replica.rng_state, "prune": len(masks),
                    "sizes": [layers[0].n_in] + [la.n_out for la in layers], "state": bundles.state_names(layers),
                    "optimizer_scalars": replica.scalars}
            arrays = bundles.replica_arrays(layers) + list(masks)
            self.finish_reply(k)
            self.transport.send_bundle(k, TAG_PHASE2, meta, arrays)
        while self.state.epoch < cfg.train.epochs:
            epoch = self.state.epoch + 1
            last = self.state.history[-1] if self.state.history else {}
            with self.transport.patience(2 * last.get("train_seconds", 0.0)):  # workers train an epoch alone
                msgs = [self.transport.recv_bundle(source=k, tag=TAG_REPLICA) for k in self.workers]
            targets = model.nnz  # the last average (pruned to the targets, then of any pruned neurons)
            self.saved_replicas = [_replica_checkpoint(m, model.sizes) for m in msgs]
            self.state.model.layers = average_replicas(
                [[SparseLayer(a.n_in, a.n_out, a.rows, a.cols, a.values, a.bias) for a in r.layers]
                 for r in self.saved_replicas], targets)
            self.state.model.topology_changed()
            self.state.optimizer = make_optimizer(cfg, self.state.model)
            self.version += 1
            self.counters.update(samples=self.data.x_train.shape[0], stale=0, updates=0,
                                 loss=sum(m.meta["train_loss"] * _shard_size(self, m.source) for m in msgs),
                                 correct=round(sum(m.meta["train_accuracy"] * _shard_size(self, m.source) for m in msgs)))
            self.end_epoch(epoch, train_seconds=max(m.meta["train_seconds"] for m in msgs),
                           evolution_seconds=max(m.meta["evolution_seconds"] for m in msgs), phase=2)
            if self.stop or self.state.epoch >= cfg.train.epochs:
                return  # run() tells every worker to stop
            keep = self._prune_phase2()
            for k in self.workers:
                self.transport.send_bundle(k, TAG_CONTINUE, {"prune": len(keep)}, keep)

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

    def end_epoch(self, epoch: int, train_seconds: float, evolution_seconds: float, phase: int) -> None:
        state, c = self.state, self.counters
        t0 = time.perf_counter()
        test_loss, test_acc = state.model.evaluate(
            self.data.x_test, self.data.y_test, self.cfg.train.eval_batch_size,
            max_bytes=training_workspace_bytes(state.model.sizes, self.cfg.train.batch_size))
        eval_seconds = time.perf_counter() - t0
        state.epoch = epoch
        n = max(c["samples"], 1)
        wait = self.transport.wait_seconds - self._waited[0]
        wait_cpu = self.transport.wait_cpu_seconds - self._waited[1]
        self._waited = (self.transport.wait_seconds, self.transport.wait_cpu_seconds)
        row = {"epoch": epoch, "phase": phase, "train_loss": c["loss"] / n, "train_accuracy": c["correct"] / n,
               "test_loss": test_loss, "test_accuracy": test_acc, "train_seconds": train_seconds,
               "evolution_seconds": evolution_seconds, "eval_seconds": eval_seconds,
               "nnz": state.model.nnz, "neurons": state.model.sizes, "parameters": state.model.n_parameters,
               "neurons_removed": self.removed, "peak_rss_mb": round(peak_rss_mb(), 1), "algorithm": self.cfg.parallel.algorithm,
               "workers": len(self.workers), "updates": c["updates"], "stale_updates": c["stale"],
               "version": self.version, "server_wait_seconds": wait,
               "server_wait_cpu_share": wait_cpu / wait if wait > 0 else 0.0}
        # cumulative over the run, resumes included
        counts = {"bytes_sent": self.transport.bytes_sent + self.channel_bytes[0],
                  "bytes_received": self.transport.bytes_received + self.channel_bytes[1],
                  "channel_gradients": sum(c.gradients_taken for c in self.channels.values()),
                  "channel_replies": sum(c.replies_posted for c in self.channels.values())}
        row.update({key: self.carried[key] + counts[key] for key in _RUN_COUNTERS})
        self.removed = [0] * len(self.removed)
        check_finite(row)
        state.history.append(row)
        append_metrics(self.out / "metrics.jsonl", row)
        log(f"epoch {epoch}/{self.cfg.train.epochs} phase {phase} train_loss {row['train_loss']:.4f} "
            f"test_loss {test_loss:.4f} test_accuracy {100 * test_acc:.2f}% | train {train_seconds:.2f}s "
            f"evolution {evolution_seconds:.2f}s eval {eval_seconds:.2f}s | updates {c['updates']} "
            f"stale {c['stale']} | nnz {sum(state.model.nnz)}", rank=0)
        if epoch % self.cfg.checkpoint.every == 0 or epoch == self.cfg.train.epochs or self.stop:
            self.save()

    def save(self) -> None:
        data = state_to_checkpoint(self.state, self.cfg)
        data.phase, data.version = self.phase, self.version
        if self.phase == 2 and self.saved_replicas:
            data.replicas = [r.layers for r in self.saved_replicas]
            data.replica_rng_states = [r.rng_state for r in self.saved_replicas]
            data.replica_optimizer_scalars = [r.scalars for r in self.saved_replicas]
        ckpt.save_checkpoint(self.out / "checkpoint.h5", data)

    def run(self) -> TrainingState:
        """Phase 1, then phase 2 if epochs remain; a stop signal ends either at an epoch boundary."""
        end1 = phase1_epochs(self.cfg)
        waiting = list(self.workers)
        with self.stop:
            if self.state.epoch < end1:
                waiting = self.phase1(end1)
            if self.state.epoch < self.cfg.train.epochs and not self.stop:
                self.phase2(waiting)
            elif self.phase == 1:
                for k in self.workers:
                    if k not in waiting:  # drain the last phase-1 gradient in flight
                        self.receive_gradient(k)
            if self.stop and self.state.epoch < self.cfg.train.epochs:
                self.state.stopped_by = self.stop.signal_name
            for k in self.workers:  # stopped_by: the workers exit with the server's code (75 after a stop request)
                self.finish_reply(k)
                self.transport.send_bundle(k, TAG_STOP, {"stopped_by": self.state.stopped_by})
        if self.state.stopped_by:
            log(stop_message(self.stop.signal_name, self.state.epoch, self.start_epoch), rank=0)
        if self.state.history:
            log(summarize(self.state.history), rank=0)
        return self.state


def _then(first: np.ndarray | None, second: np.ndarray | None) -> np.ndarray | None:
    """Compose two index maps where None means "unchanged"."""
    if second is None:
        return first
    return second if first is None else compose(first, second)


def _shard_size(server: ParameterServer, rank: int) -> int:
    n, k = server.data.x_train.shape[0], len(server.workers)
    return len(range(rank - 1, n, k))


@dataclass
class _Incoming:
    """A worker's gradient: weight then bias arrays (views of a channel or message) and what the worker said."""

    source: int
    version: int
    samples: int
    loss: float
    correct: int
    arrays: list[np.ndarray]

    @classmethod
    def of_bundle(cls, msg) -> "_Incoming":
        m = msg.meta
        return cls(msg.source, int(m["version"]), int(m["samples"]), float(m["loss"]), int(m["correct"]), msg.arrays)


@dataclass
class _Replica:
    """A worker's phase-2 model as the checkpoint stores it (rng_state None: the worker seeds its own)."""

    layers: list[ckpt.LayerArrays]
    rng_state: dict | None
    scalars: dict


def _replica_checkpoint(msg, sizes: list[int]) -> _Replica:
    m = msg.meta
    return _Replica(bundles.replica_layers(msg.arrays, sizes, m["state"]), m["rng_state"], m["optimizer_scalars"])
