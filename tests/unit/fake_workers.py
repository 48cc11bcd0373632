"""seam.Workers in one process, for the parameter server's unit tests.

Each fake worker does what worker.py does without pipelining: as soon as a model reaches it, it draws
its next mini-batch and computes a real gradient on that model, which waits "on its way" until the
server takes it; so a worker that the server has not answered since a topology change hands in a
stale gradient, as over MPI. Its batch stream is seeded per epoch as worker.py seeds it. A stop that
finds a gradient still on its way is recorded in `lost` (over MPI that gradient would be dropped
while the worker's position counts its batch). Phase 2 replicas are "trained" by a known change:
worker k scales every weight by 1 + k / 10.
"""

from __future__ import annotations

import numpy as np

from sparsenet.checkpoint import LayerArrays
from sparsenet.parallel.seam import Gradient, Replica, Workers
from sparsenet.parallel.worker import BatchStream, new_model, shard
from sparsenet.train import compute_gradients


class FakeWorkers(Workers):
    def __init__(self, cfg, data, k: int, on_take=None):
        self.cfg, self.ids = cfg, list(range(1, k + 1))
        mine = {w: shard(data.x_train.shape[0], w, k, cfg.seed) for w in self.ids}
        self.data = {w: (data.x_train[m], data.y_train[m]) for w, m in mine.items()}
        self.models, self.versions, self.streams = {}, {}, {}
        self.seeded = {}  # worker -> the epoch its stream was seeded for
        self.on_way: dict[int, Gradient] = {}  # worker -> its gradient the server has not taken yet
        self.lost: list[int] = []  # workers stopped with a gradient still on its way
        self.sent: list[tuple[str, int, int]] = []  # (kind, worker, version) of every model sent
        self.taken: list[Gradient] = []
        self.replicas: list[list[Replica]] = []  # what gather_replicas returned, per phase-2 epoch
        self.masks: list[list[np.ndarray]] = []  # what start_replicas / continue_replicas carried
        self.stopped = False
        self.positions_sent = {}  # worker -> the position a topology carried
        self.on_take = on_take  # called with the number of gradients taken so far
        self._next = 0

    def take_gradient(self, source=None) -> Gradient:
        if source is None:  # round robin over the workers with a gradient on its way, as a fair transport
            ready = [w for w in self.ids if w in self.on_way]
            source = min(ready, key=lambda w: (w - 1 - self._next) % len(self.ids))
            self._next = source
        assert source in self.on_way, f"the server waits for a gradient worker {source} never computes"
        g = self.on_way.pop(source)
        self.taken.append(g)
        if self.on_take is not None:
            self.on_take(len(self.taken))
        return g

    def _compute(self, worker: int, epoch: int, position: dict | None = None) -> None:
        """worker.py on receiving a model: a stream per epoch (restored to `position`), then a gradient."""
        assert worker not in self.on_way, f"worker {worker} got a model while its gradient was on its way"
        x, y = self.data[worker]
        if self.seeded.get(worker) != epoch:
            self.seeded[worker] = epoch
            rng = np.random.default_rng([self.cfg.seed, worker, int(epoch)])
            self.streams[worker] = (rng, BatchStream(x.shape[0], self.cfg.train.batch_size, rng))
            if position:
                self.streams[worker][1].restore(position)
        rng, stream = self.streams[worker]
        model = self.models[worker]
        index = next(stream)
        loss, correct = compute_gradients(model, rng, x, y, index)
        arrays = [g.copy() for g in list(model.grads) + list(model.bias_grads)]
        self.on_way[worker] = Gradient(worker, self.versions[worker], int(index.shape[0]), loss, correct, arrays)

    def send_weights(self, worker, model, version, epoch) -> None:
        assert self.versions[worker] == version
        for mine, theirs in zip(self.models[worker].layers, model.layers):
            mine.values[:], mine.bias[:] = theirs.values, theirs.bias
        self.sent.append(("values", worker, version))
        self._compute(worker, epoch)

    def send_topology(self, worker, model, version, epoch, position=None) -> None:
        copied = [LayerArrays(la.n_in, la.n_out, la.rows.copy(), la.cols.copy(), la.values.copy(), la.bias.copy(), {})
                  for la in model.layers]
        self.models[worker] = new_model(self.cfg, copied)
        self.versions[worker] = version
        if position is not None:
            self.positions_sent[worker] = position
        self.sent.append(("topology", worker, version))
        self._compute(worker, epoch, position)

    def start_replicas(self, replicas, start_epoch, masks, stopped=None) -> None:
        self.held = [r.layers for r in replicas]
        self.masks.append(list(masks))

    def gather_replicas(self, patience: float = 0.0, stop=None) -> tuple[list[Replica], str | None]:
        """A stop request seen here finds every fake worker's epoch done: they all return."""
        out = []
        for w, layers in zip(self.ids, self.held):
            scaled = [LayerArrays(a.n_in, a.n_out, a.rows, a.cols, a.values * np.float32(1 + w / 10), a.bias,
                                  dict(a.state)) for a in layers]
            report = {"samples": self.data[w][0].shape[0], "train_loss": 0.5 * w, "train_accuracy": 0.25 * w,
                      "train_seconds": 1.0 * w, "evolution_seconds": 0.1}
            out.append(Replica(scaled, np.random.default_rng(w).bit_generator.state, {"step": w}, report))
        self.held = [r.layers for r in out]
        self.replicas.append(out)
        stopped_by = stop() if stop is not None else None
        self.stopped = self.stopped or stopped_by is not None
        return out, stopped_by

    def continue_replicas(self, masks) -> None:
        self.masks.append(list(masks))

    def stop(self, stopped_by=None, in_epoch=False):
        self.stopped = True
        if not in_epoch:
            return []
        self.lost += sorted(self.on_way)
        return [self.streams[w][1].position() if w in self.streams else None for w in self.ids]
