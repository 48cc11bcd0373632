"""The seam between the parameter server's algorithm and the wire: all the server asks of its workers.

ParameterServer (server.py) talks to workers only through a `Workers`: MPIWorkers (mpi_workers.py)
implements it over MPI and same-node shared memory, tests/unit/fake_workers.py in one process.
The server decides what each worker must get (weights or a new topology, by its own record of the
topology version each worker holds); a Workers decides how it travels.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..checkpoint import LayerArrays
from ..model import SparseMLP


def split_pairs(arrays: list[np.ndarray], n_layers: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """A [per-layer weights..., per-layer biases...] list split into its two halves, checked."""
    if len(arrays) != 2 * n_layers:
        raise ValueError(f"expected {2 * n_layers} arrays (weights and biases of {n_layers} layers), got {len(arrays)}")
    return arrays[:n_layers], arrays[n_layers:]


@dataclass
class Gradient:
    """A worker's gradient: weight then bias arrays, computed on topology `version`, over `samples`
    samples whose summed loss and correct count the worker reports."""

    source: int
    version: int
    samples: int
    loss: float
    correct: int
    arrays: list[np.ndarray]


@dataclass
class Replica:
    """A worker's phase-2 model with its optimizer state, as the checkpoint stores it.

    rng_state None: the worker seeds its own generator. report: after a phase-2 epoch, the worker's
    train_loss, train_accuracy (means over its `samples`), train_seconds and evolution_seconds.
    position: a stop ended its epoch part-way: train.train_epoch's position plus the seconds so far.
    """

    layers: list[LayerArrays]
    rng_state: dict | None
    scalars: dict
    report: dict = field(default_factory=dict)
    position: dict | None = None


class Workers(ABC):
    """Workers `ids` of a parameter server. Phase 1: gradients in, weights or topologies out.
    Phase 2: replicas out, trained replicas back after every epoch, then continue or stop."""

    ids: list[int]
    run_counters: tuple[str, ...] = ()  # epoch_stats keys counted over the whole run (continued on resume)

    @abstractmethod
    def take_gradient(self, source: int | None = None) -> Gradient:
        """The next gradient from `source` (None: whichever worker is first, fairly); blocks until one is there.
        Its arrays stay valid until the next reply to that worker."""

    @abstractmethod
    def send_weights(self, worker: int, model: SparseMLP, version: int, epoch: int) -> None:
        """Send `model`'s weights and biases to `worker`, which holds its topology `version`.
        Returns before the worker has them."""

    @abstractmethod
    def send_topology(self, worker: int, model: SparseMLP, version: int, epoch: int, position: dict | None = None
                      ) -> None:
        """Send `model` whole (layer widths, connections, weights, biases) as topology `version`;
        `position`: where the worker's data stream resumes (what stop(in_epoch=True) returned for it), or None."""

    @abstractmethod
    def start_replicas(self, replicas: list[Replica], start_epoch: int, masks: list[np.ndarray],
                       stopped: list[dict] | None = None) -> None:
        """Phase 2: worker ids[i] trains replicas[i] from epoch start_epoch + 1, after removing the
        hidden neurons outside the keep `masks` (one bool array per hidden layer; [] = none).
        stopped: resuming an epoch a stop ended part-way, each worker's {"position": ...} (it trains
        on from there) or {"report": ...} (its epoch was done: it hands the replica back at once)."""

    @abstractmethod
    def gather_replicas(self, patience: float = 0.0, stop: Callable[[], str | None] | None = None
                        ) -> tuple[list[Replica], str | None]:
        """Every worker's replica after its next phase-2 epoch, in ids order, and the stop signal that
        ended the run meanwhile (else None); `patience`: seconds a silent worker is given beyond
        parallel.timeout_s (it trains an epoch alone). Once `stop()` names a signal, every worker
        stops within a batch, hands in its replica (position set if its epoch was not done) and returns."""

    @abstractmethod
    def continue_replicas(self, masks: list[np.ndarray]) -> None:
        """Every worker trains one more phase-2 epoch, after applying the keep `masks` ([] = none)."""

    @abstractmethod
    def stop(self, stopped_by: str | None = None, in_epoch: bool = False) -> list[dict | None]:
        """The run is over: every worker returns (stopped_by: the stop signal that ended it early).
        in_epoch: part-way through a phase-1 epoch, every worker waiting for a model (no gradient in
        flight), each first reports its data stream's position (JSON-able, None if it has none yet):
        those positions in ids order, else []."""

    def epoch_stats(self) -> dict:
        """Metrics of the traffic since the last call, merged into the epoch's row."""
        return {}
