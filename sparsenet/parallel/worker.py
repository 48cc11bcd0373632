"""Ranks >= 1: gradients on the local data shard in phase 1, local SET training of a replica in phase 2."""

from __future__ import annotations

from functools import partial

import numpy as np

from ..activations import hidden_slopes
from ..checkpoint import LayerArrays
from ..config import Config
from ..data import Dataset
from ..model import SparseMLP
from ..state import TrainingState, check_model_fits_data, layers_to_checkpoint, optimizer_from_checkpoint
from ..train import apply_neuron_removal, compute_gradients, run_epoch
from ..sparse.layer import SparseLayer
from .channel import in_window
from .mpi_workers import (TAG_CONTINUE, TAG_GRADIENT, TAG_MODEL, TAG_PHASE2, TAG_POSITION, TAG_REPLICA, TAG_STOP,
                          adopt_values, layer_arrays, layers_meta, received_layers)
from .seam import split_pairs
from .wire import Bundle


REPLY_SPIN = 1e-3  # a worker expects the server's reply within about a millisecond: yield, don't sleep


class InjectedFault(RuntimeError):
    """Raised on purpose by `debug.fail_rank` / `debug.fail_at_step` (fault-injection tests)."""


def shard(n_samples: int, rank: int, workers: int, seed: int) -> np.ndarray:
    """Sample indices of worker `rank` (1..workers): every workers-th of a seeded permutation."""
    order = np.random.default_rng([seed, 0x5A4D]).permutation(n_samples)
    return np.sort(order[rank - 1::workers])


class BatchStream:
    """Endless mini-batches of range(n) (int64 index arrays) drawn from `rng`, reshuffled every pass (the
    last batch of a pass may be smaller). position() is where it stands, restore() returns there exactly."""

    def __init__(self, n: int, batch_size: int, rng: np.random.Generator):
        if n < 1:
            raise ValueError("a worker needs at least one training sample")
        self.n, self.batch_size, self.rng = n, batch_size, rng
        self.order, self.start, self.order_state = None, n, None  # start == n: the next batch begins a pass

    def __iter__(self) -> "BatchStream":
        return self

    def __next__(self) -> np.ndarray:
        if self.start >= self.n:
            self.order_state = self.rng.bit_generator.state
            self.order, self.start = self.rng.permutation(self.n), 0
        index = self.order[self.start:self.start + self.batch_size]
        self.start += self.batch_size
        return index

    def position(self) -> dict:
        """JSON-able: the generator's state, the state this pass's order was drawn from, samples of it done."""
        return {"rng_state": self.rng.bit_generator.state, "order_rng_state": self.order_state,
                "start": min(self.start, self.n)}

    def restore(self, position: dict) -> None:
        """Continue exactly where position() was taken (from a stream of the same n)."""
        if position["order_rng_state"] is not None:
            self.rng.bit_generator.state = position["order_rng_state"]
            self.order = self.rng.permutation(self.n)
        self.order_state, self.start = position["order_rng_state"], int(position["start"])
        self.rng.bit_generator.state = position["rng_state"]


def new_model(cfg: Config, layers: list[LayerArrays]) -> SparseMLP:
    """A model of `layers` (checkpoint form) with cfg's activations, dropout and output."""
    m = cfg.model
    return SparseMLP([SparseLayer(a.n_in, a.n_out, a.rows, a.cols, a.values, a.bias) for a in layers],
                     hidden_slopes(m.activation, m.alpha, len(layers) - 1), m.dropout, m.output)


def load_kernels(cfg: Config, data: Dataset) -> None:
    """Load (or compile) the gradient kernels on a tiny model of the same layer count and
    types, so that no worker is still loading them while the others run the first epochs."""
    sizes = [data.n_features, *[2] * len(cfg.model.hidden), data.n_classes]
    layers = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):  # one connection into every neuron
        cols = np.arange(n_out, dtype=np.int32)
        values, bias = np.full(n_out, 0.1, dtype=np.float32), np.zeros(n_out, dtype=np.float32)
        layers.append(LayerArrays(n_in, n_out, cols % n_in, cols, values, bias, {}))
    model = new_model(cfg, layers)
    n = min(cfg.train.batch_size, data.x_train.shape[0])
    compute_gradients(model, np.random.default_rng(0), data.x_train, data.y_train, np.arange(n))


def run_worker(cfg: Config, data: Dataset, transport) -> str | None:
    """Serve the parameter server until it says stop; returns the stop signal that ended the run
    early (the server's stopped_by), else None.

    WASAP workers pipeline: while their gradient travels and the server applies it, they compute
    the next one on the weights they have (one server update staler), so waiting hides behind
    work. WASSP workers wait for the averaged update, as synchronous SGD requires.
    """
    rank, workers = transport.rank, transport.size - 1
    transport.probe_spin = REPLY_SPIN
    mine = shard(data.x_train.shape[0], rank, workers, cfg.seed)
    x, y = data.x_train[mine], data.y_train[mine]  # a copy (fancy indexing), uint8 for ByteRows
    pipeline = cfg.parallel.algorithm == "wasap" and cfg.parallel.pipeline
    model, rng, stream, seeded_epoch, step = None, None, None, None, 0
    mark = None  # the stream's position before `ahead` was computed
    ahead = None  # the delivery of a gradient computed while the last one was in flight
    # the server's node maps one shared window (MPIWorkers._open_channels); a topology names our channel in it
    same_node = cfg.parallel.shared_memory and 0 in transport.node_ranks
    memory = transport.shared_window(0) if same_node else None
    channel = None  # same node: the server's replies and our gradients go through this channel.Channel
    sizes = None  # int64 sizes of the model's weights then biases (its gradient's arrays)
    via = None  # the channel while the model fits it, else None

    def gradient(version: int):
        """The next mini-batch's gradient, computed into `via` if set, else into the model's own arrays;
        returns what hands it to the server (a PendingSend or None). Fault injection happens here."""
        nonlocal step
        if cfg.debug.fail_rank == rank and step == cfg.debug.fail_at_step:
            raise InjectedFault(f"fault injected by debug.fail_rank={rank} at gradient step {step}")
        step += 1
        index = next(stream)
        if via is not None:
            model.grads, model.bias_grads = split_pairs(via.gradients.arrays(sizes), len(model.layers))
        loss, correct = compute_gradients(model, rng, x, y, index)
        if via is not None:
            return partial(via.gradients.post, (version, index.shape[0], loss, correct), sizes)  # as in a Gradient
        meta = {"version": version, "samples": int(index.shape[0]), "loss": loss, "correct": correct}
        return partial(transport.isend_bundle, 0, TAG_GRADIENT, meta, [*model.grads, *model.bias_grads])

    while True:
        msg = transport.recv_bundle(source=0, ready=None if via is None else via.replies.ready)
        if msg is None:  # the server's reply waits in our channel
            (version, epoch, *_), arrays = via.replies.take()
            msg = Bundle(0, TAG_MODEL, {"kind": "values", "version": int(version), "epoch": int(epoch)}, arrays)
        if msg.tag == TAG_STOP:
            if msg.meta.get("where"):  # stopped inside an epoch: the server saves where our data stream stands
                where = mark if ahead is not None else (stream.position() if stream is not None else None)
                transport.send_bundle(0, TAG_POSITION, {"position": where})
            return msg.meta.get("stopped_by")
        if msg.tag == TAG_PHASE2:
            return _phase2(cfg, transport, msg, x, y)
        if msg.tag != TAG_MODEL:
            raise RuntimeError(f"worker {rank} got unexpected message tag {msg.tag}")
        if msg.meta["kind"] == "topology":  # after SET or neuron pruning: the widths may have changed too
            check_model_fits_data(msg.meta["sizes"], data.n_features, data.n_classes, f"the model worker {rank} received")
            model = new_model(cfg, received_layers(msg.arrays, msg.meta))
            sizes = np.array(model.nnz + [layer.n_out for layer in model.layers], dtype=np.int64)
            if channel is None and msg.meta.get("channel"):
                channel = in_window(memory, msg.meta["channel"], transport.sync)
            via = channel if channel is not None and channel.fits(sizes) else None  # as the server decides
        else:
            adopt_values(model, msg.arrays)
        if msg.meta["epoch"] != seeded_epoch:  # a stream per epoch, so a resumed run draws the same batches
            seeded_epoch = msg.meta["epoch"]
            rng = np.random.default_rng([cfg.seed, rank, int(seeded_epoch)])
            stream = BatchStream(x.shape[0], cfg.train.batch_size, rng)
            if msg.meta.get("position"):  # a run resumed inside this epoch: continue where we stopped
                stream.restore(msg.meta["position"])
        in_flight = (ahead or gradient(msg.meta["version"]))()
        ahead = None
        if pipeline:  # the sent gradient is in its buffer or copied: the next one goes elsewhere
            mark = stream.position()  # a stop before `ahead` is delivered resumes with its batch
            ahead = gradient(msg.meta["version"])
        if in_flight is not None:
            in_flight.wait()


def _phase2(cfg: Config, transport, msg, x: np.ndarray, y: np.ndarray) -> str | None:
    """Train the replica the server sent on the local shard, sending it back after every epoch.

    After each epoch the server answers CONTINUE or STOP (at the end, or on a stop request); a
    CONTINUE may carry neuron keep masks, which the replica applies before its next epoch. A STOP
    that comes while an epoch trains ends it after the current batch: the replica goes back with its
    position (run_epoch's state.partial), and a resumed run sends it back with it to finish the epoch.
    """
    sizes = msg.meta["sizes"]
    n_masks = int(msg.meta["prune"])
    layers = received_layers(msg.arrays[:len(msg.arrays) - n_masks], msg.meta)
    check_model_fits_data(sizes, x.shape[1], int(y.max(initial=0)) + 1, f"the replica worker {transport.rank} received",
                          exact=False)
    model = new_model(cfg, layers)
    optimizer = optimizer_from_checkpoint(cfg, model, layers, cfg.train.optimizer, msg.meta["optimizer_scalars"])
    rng = np.random.default_rng([cfg.seed, transport.rank, 2, int(msg.meta["start_epoch"])])
    if msg.meta.get("rng_state"):
        rng.bit_generator.state = msg.meta["rng_state"]
    state = TrainingState(model, optimizer, rng, int(msg.meta["start_epoch"]), [])
    if n_masks:
        apply_neuron_removal(state, msg.arrays[len(msg.arrays) - n_masks:])
    resumed = msg.meta.get("stopped") or {}  # this worker's part of an epoch a stop ended part-way
    stop = _StopWatch(cfg, transport)
    while True:
        report = resumed.get("report")
        if report is None:  # the server prunes: the replica evolves and trains
            state.partial = resumed.get("position")
            report = run_epoch(state, cfg, x, y, state.epoch + 1, stop, prune=False, progress=False)
        resumed = {}
        if report is not None:
            report["samples"], state.epoch = x.shape[0], state.epoch + 1
        layers = layers_to_checkpoint(state.model, state.optimizer)
        meta = {"epoch": state.epoch, "report": report, "position": state.partial,
                "rng_state": state.rng.bit_generator.state, "optimizer_scalars": state.optimizer.scalars(),
                **layers_meta(layers)}
        transport.send_bundle(0, TAG_REPLICA, meta, layer_arrays(layers))
        reply = stop.message
        if reply is None:
            with transport.patience(2 * (report["train_seconds"] + report["evolution_seconds"])):
                reply = transport.recv_bundle(source=0)  # the slowest worker may still be training its epoch
        if reply.tag == TAG_STOP:
            return reply.meta.get("stopped_by")
        if reply.tag != TAG_CONTINUE:
            raise RuntimeError(f"worker {transport.rank} got unexpected message tag {reply.tag} in phase 2")
        if int(reply.meta["prune"]):
            apply_neuron_removal(state, reply.arrays)


class _StopWatch:
    """train_epoch's stop(): true once the server's STOP has come (one non-blocking probe per batch, no
    round trip); `message` is that STOP. debug.stop_at_batch: worker 1 asks the server for a stop after
    that many phase-2 batches and waits for it, so the stop lands exactly there."""

    def __init__(self, cfg: Config, transport):
        self.transport, self.message, self.batches = transport, None, 0
        self.ask_at = cfg.debug.stop_at_batch if transport.rank == 1 else None

    def __call__(self) -> bool:
        if self.message is None:
            self.batches += 1
            if self.batches == self.ask_at:
                self.transport.send_bundle(0, TAG_STOP, {})
            if self.batches == self.ask_at or self.transport.poll(source=0, tag=TAG_STOP) is not None:
                self.message = self.transport.recv_bundle(source=0, tag=TAG_STOP)
        return self.message is not None
