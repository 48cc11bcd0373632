"""The MPI protocol between the parameter server and its workers: message tags, the arrays a model
travels as, and the server's end (MPIWorkers, a seam.Workers); worker.py is the other end.

With same-node workers, phase 1's gradients and weights go through channels (channel.py) in one
MPI shared window that every rank of the server's node allocates at start-up, sized for the model
the server starts from; a topology bundle tells a worker where its channel lies, and it uses the
channel for as long as the model fits it.
"""

from __future__ import annotations

import os
import signal

import numpy as np

from ..checkpoint import LayerArrays
from ..config import Config
from ..model import SparseMLP
from . import channel as ch
from .seam import Gradient, Replica, Workers, split_pairs

TAG_GRADIENT = 1  # worker -> server: a gradient, tagged with the topology version it was computed on
TAG_MODEL = 2  # server -> worker: weights (same topology) or topology + weights (after a change)
TAG_PHASE2 = 3  # server -> worker: start local training of this replica (topology, weights, state)
TAG_REPLICA = 4  # worker -> server: the replica after a phase-2 epoch
TAG_STOP = 5  # server -> worker: the run is over (worker 1 -> server: please stop, debug.stop_at_batch)
TAG_CONTINUE = 6  # server -> worker: phase 2 goes on, train the next epoch
TAG_MEMORY_PLAN = 7  # server -> worker, before anything else: go / stop after the memory plan
TAG_POSITION = 9  # worker -> server, after a STOP inside an epoch: where its data stream stands


def values_arrays(model: SparseMLP) -> list[np.ndarray]:
    """Weights then biases of every layer: what a worker needs while the topology is unchanged."""
    return [layer.values for layer in model.layers] + [layer.bias for layer in model.layers]


def model_layers(model: SparseMLP) -> list[LayerArrays]:
    """`model`'s layers as the checkpoint holds them, without optimizer state: a topology to send."""
    return [LayerArrays(la.n_in, la.n_out, la.rows, la.cols, la.values, la.bias, {}) for la in model.layers]


def layer_arrays(layers: list[LayerArrays]) -> list[np.ndarray]:
    """Per layer rows, cols, values, bias, then its optimizer state arrays in sorted name order."""
    names = sorted(layers[0].state)
    return [a for la in layers for a in (la.rows, la.cols, la.values, la.bias, *(la.state[n] for n in names))]


def layers_meta(layers: list[LayerArrays]) -> dict:
    """What the receiver of layer_arrays(layers) needs: layer widths and state names."""
    return {"sizes": [layers[0].n_in] + [la.n_out for la in layers], "state": sorted(layers[0].state)}


def received_layers(arrays: list[np.ndarray], meta: dict) -> list[LayerArrays]:
    """The layers that layer_arrays sent, with the widths and state names of layers_meta."""
    sizes, names = meta["sizes"], meta["state"]
    per, n_layers = 4 + len(names), len(sizes) - 1
    if len(arrays) != per * n_layers:
        raise ValueError(f"expected {per * n_layers} arrays of {n_layers} layers, got {len(arrays)}")
    return [LayerArrays(sizes[l], sizes[l + 1], *arrays[per * l:per * l + 4],
                        dict(zip(names, arrays[per * l + 4:per * (l + 1)]))) for l in range(n_layers)]


def adopt_values(model: SparseMLP, arrays: list[np.ndarray]) -> None:
    """Make received float32 weights then biases the model's own, without copying (same topology):
    views of a message or a channel buffer, released when the next reply replaces them."""
    for layer, v, b in zip(model.layers, *split_pairs(arrays, len(model.layers))):
        if v.shape != layer.values.shape or b.shape != layer.bias.shape:
            raise ValueError(f"values of shape {v.shape} / {b.shape} do not fit a layer of {layer.nnz} connections")
        if v.dtype != np.float32 or b.dtype != np.float32 or not (v.flags.c_contiguous and b.flags.c_contiguous):
            raise ValueError(f"weights must be contiguous float32, got {v.dtype} / {b.dtype}")
        layer.values, layer.bias = v, b


class MPIWorkers(Workers):
    """Ranks 1..size-1 of `transport` (transport.Transport)."""

    run_counters = ("bytes_sent", "bytes_received", "channel_gradients", "channel_replies")

    def __init__(self, cfg: Config, transport, model: SparseMLP | None):
        """model: what phase 1 starts from, which sizes the channels (None: no phase 1, no channels)."""
        self.transport = transport
        self.ids = list(range(1, transport.size))
        self.stop_at_batch = cfg.debug.stop_at_batch  # a worker may ask for a stop (tests)
        self.replies: dict[int, object] = {}  # worker -> its model reply still in flight
        self.channels: dict[int, ch.Channel] = {}  # worker -> its channel, named in its topology bundles
        self.places: dict[int, dict] = {}  # worker -> where its channel lies in the window
        if cfg.parallel.shared_memory:
            self._open_channels(model)
        self._last_channel = 0  # the worker whose channel was taken from last: the next scan starts after it
        self._taken = 0  # gradients taken: every other one, a waiting bundle goes before the channels
        self.channel_bytes = [0, 0]  # bytes sent / received through channels
        self._waited = (0.0, 0.0)  # transport wait wall / CPU seconds at the last epoch_stats

    # ------------------------------------------------------------------ phase 1

    def channel_peers(self) -> list[int]:
        """The workers that get a channel: those on the server's node."""
        return [k for k in self.ids if k in self.transport.node_ranks]

    def _open_channels(self, model: SparseMLP | None) -> None:
        """A channel to every same-node worker, sized for `model`, in one shared window allocated with
        every other rank of this node (empty without a model or for one over transport.SHARED_MAX_BYTES)."""
        geometry = ch.shape([a.size for a in values_arrays(model)]) if model is not None else None
        fits = geometry is not None and geometry["capacity"] <= self.transport.shared_max_bytes
        peers = self.channel_peers() if fits else []
        memory = self.transport.shared_window(len(peers) * geometry["nbytes"] if peers else 0)
        for i, k in enumerate(peers):
            self.places[k] = {**geometry, "offset": i * geometry["nbytes"]}
            self.channels[k] = ch.in_window(memory, self.places[k], self.transport.sync)
            self.channels[k].clear()

    def send_weights(self, worker: int, model: SparseMLP, version: int, epoch: int) -> None:
        self._finish_reply(worker)
        channel, sizes = self.channels.get(worker), [a.size for a in values_arrays(model)]
        if channel is not None and channel.fits(sizes):  # the worker reads the weights where they are written
            for out, values in zip(channel.replies.arrays(sizes), values_arrays(model)):
                np.copyto(out, values)
            channel.replies.post((version, epoch), sizes)
            self.channel_bytes[0] += 4 * sum(sizes)
            return
        self._send_model(worker, "values", values_arrays(model), model, version, epoch)

    def send_topology(self, worker: int, model: SparseMLP, version: int, epoch: int, position: dict | None = None
                      ) -> None:
        self._finish_reply(worker)
        self._send_model(worker, "topology", layer_arrays(model_layers(model)), model, version, epoch, position)

    def _send_model(self, worker: int, kind: str, arrays: list[np.ndarray], model: SparseMLP, version: int,
                    epoch: int, position: dict | None = None) -> None:
        meta = {"kind": kind, "version": version, "epoch": epoch, "sizes": model.sizes, "state": []}
        if position is not None:
            meta["position"] = position
        if kind == "topology" and worker in self.places:
            meta["channel"] = self.places[worker]
        # non-blocking: a pipelining worker takes this reply only after computing its next gradient
        self.replies[worker] = self.transport.isend_bundle(worker, TAG_MODEL, meta, arrays)

    def _finish_reply(self, worker: int) -> None:
        """Complete the model reply still in flight to `worker`, if any."""
        pending = self.replies.pop(worker, None)
        if pending is not None:
            pending.wait()

    def take_gradient(self, source: int | None = None) -> Gradient:
        """Channels are scanned from the one after the channel taken from last, and when some workers
        have no channel (other nodes) a waiting bundle goes first every other time, so a busy
        server starves nobody."""
        self._taken += 1
        if source is not None:
            order = [source] if source in self.channels else []
        else:
            order = sorted(self.channels, key=lambda k: (k <= self._last_channel, k))
            if len(order) < len(self.ids) and self._taken % 2 == 0 and self.transport.poll(tag=TAG_GRADIENT):
                order = []
        found = [None]  # the first channel in `order` with a gradient posted

        def ready() -> bool:
            found[0] = next((k for k in order if self.channels[k].gradients.ready()), None)
            return found[0] is not None

        msg = self.transport.recv_bundle(source=source, tag=TAG_GRADIENT, ready=ready if order else None)
        if msg is not None:
            m = msg.meta
            return Gradient(msg.source, int(m["version"]), int(m["samples"]), float(m["loss"]), int(m["correct"]),
                            msg.arrays)
        k = self._last_channel = found[0]
        (version, samples, loss, correct, *_), arrays = self.channels[k].gradients.take()
        self.channel_bytes[1] += sum(a.nbytes for a in arrays)
        return Gradient(k, int(version), int(samples), loss, int(correct), arrays)

    # ------------------------------------------------------------------ phase 2

    def start_replicas(self, replicas: list[Replica], start_epoch: int, masks: list[np.ndarray],
                       stopped: list[dict] | None = None) -> None:
        for i, (k, replica) in enumerate(zip(self.ids, replicas)):
            meta = {"start_epoch": start_epoch, "rng_state": replica.rng_state, "prune": len(masks),
                    "optimizer_scalars": replica.scalars, "stopped": stopped[i] if stopped else None,
                    **layers_meta(replica.layers)}
            self._finish_reply(k)
            self.transport.send_bundle(k, TAG_PHASE2, meta, layer_arrays(replica.layers) + list(masks))

    def gather_replicas(self, patience: float = 0.0, stop=None) -> tuple[list[Replica], str | None]:
        stopped_by = None

        def asked() -> bool:  # polled while a worker trains: a stop request turns the wait into a stop
            nonlocal stopped_by
            if self.stop_at_batch and self.transport.poll(tag=TAG_STOP) is not None:  # debug.stop_at_batch
                self.transport.recv_bundle(tag=TAG_STOP)
                os.kill(os.getpid(), signal.SIGUSR1)
            stopped_by = stop()
            return stopped_by is not None

        msgs = []
        with self.transport.patience(patience):
            for k in self.ids:
                msg = None
                while msg is None:
                    if stop is None or stopped_by is not None:
                        msg = self.transport.recv_bundle(k, TAG_REPLICA)
                    elif (msg := self.transport.recv_bundle(k, TAG_REPLICA, ready=asked)) is None:
                        self._send_stop(stopped_by, where=True)  # each stops after its batch, hands in its replica
                msgs.append(msg)
        return [Replica(received_layers(m.arrays, m.meta), m.meta["rng_state"], m.meta["optimizer_scalars"],
                        m.meta["report"], m.meta.get("position")) for m in msgs], stopped_by

    def continue_replicas(self, masks: list[np.ndarray]) -> None:
        for k in self.ids:
            self.transport.send_bundle(k, TAG_CONTINUE, {"prune": len(masks)}, masks)

    def stop(self, stopped_by: str | None = None, in_epoch: bool = False) -> list[dict | None]:
        self._send_stop(stopped_by, where=in_epoch)
        if not in_epoch:
            return []
        return [self.transport.recv_bundle(source=k, tag=TAG_POSITION).meta["position"] for k in self.ids]

    def _send_stop(self, stopped_by: str | None, where: bool = False) -> None:
        """STOP to every worker (stopped_by: they exit with the server's code, 75 after a stop request);
        `where`: part-way through an epoch, each hands in where it stands (phase 1) or its replica (phase 2)."""
        for k in self.ids:
            self._finish_reply(k)
            self.transport.send_bundle(k, TAG_STOP, {"stopped_by": stopped_by, **({"where": True} if where else {})})

    def epoch_stats(self) -> dict:
        t = self.transport
        wait, wait_cpu = t.wait_seconds - self._waited[0], t.wait_cpu_seconds - self._waited[1]
        self._waited = (t.wait_seconds, t.wait_cpu_seconds)
        # byte and channel counts are cumulative over the run
        return {"bytes_sent": t.bytes_sent + self.channel_bytes[0], "bytes_received": t.bytes_received + self.channel_bytes[1],
                "server_wait_seconds": wait,
                "channel_gradients": sum(c.gradients.taken for c in self.channels.values()),
                "channel_replies": sum(c.replies.posted for c in self.channels.values()),
                "server_wait_cpu_share": wait_cpu / wait if wait > 0 else 0.0}


def message_bytes(sizes: list[int], nnz: list[int], state_per_parameter: int = 0) -> int:
    """Array bytes of a model as _send_model sends a topology (rows, cols, values, bias of every layer)
    or, with the optimizer's state bytes per parameter, of a phase-2 replica (layer_arrays)."""
    connections, biases = sum(nnz), sum(sizes[1:])
    return 12 * connections + 4 * biases + state_per_parameter * (connections + biases)


def planned_bytes(cfg: Config, sizes: list[int], nnz: list[int], state_per_parameter: int, workers: int
                  ) -> dict[str, list[tuple[str, int, str]]]:
    """(item, bytes, note) the messaging holds at its peak, per role ("server", "worker"): the server
    receives every replica before averaging; with parallel.shared_memory it holds the shared window
    of the workers' channels (channel.BUFFERS float32 buffers of every weight and bias per worker,
    mapped by workers too), counted once, at the server."""
    from .transport import SHARED_MAX_BYTES

    replica = message_bytes(sizes, nnz, state_per_parameter)
    server = [("phase-2 replicas received", workers * replica, f"{workers} x {replica:,} B")]
    worker = [("messages", message_bytes(sizes, nnz), "topology bundle")]
    geometry = ch.shape(list(nnz) + list(sizes[1:]))
    if cfg.parallel.shared_memory and geometry["capacity"] <= SHARED_MAX_BYTES:  # larger models get no channels
        server.append(("shared window (channels)", workers * geometry["nbytes"],
                       f"{ch.BUFFERS} x {workers} x the weights, mapped by workers too"))
    return {"server": server, "worker": worker}
