"""SparseMLP: a stack of SparseLayers with per-layer hidden slopes, dropout and an output loss."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .activations import hidden_slopes, output_loss
from .sparse import kernels
from .sparse.init import erdos_renyi_layer
from .sparse.layer import SparseLayer


@dataclass
class _Workspace:
    """Feature-major buffers for one batch size: activations, f'(z) * dropout scale, deltas."""

    acts: list[np.ndarray]
    factors: list[np.ndarray]
    deltas: list[np.ndarray]


class SparseMLP:
    """Truly sparse MLP: layers[l] maps neuron layer l to l + 1; hidden layers use slopes[l]."""

    def __init__(self, layers: list[SparseLayer], slopes: list[float], dropout: float, output: str):
        if len(slopes) != len(layers) - 1:
            raise ValueError(f"need one slope per hidden layer ({len(layers) - 1}), got {len(slopes)}")
        for lower, upper in zip(layers[:-1], layers[1:]):
            if lower.n_out != upper.n_in:
                raise ValueError(f"layer widths disagree: {lower.n_out} outputs feed {upper.n_in} inputs")
        self.layers = layers
        self.slopes = [float(s) for s in slopes]
        self.dropout = float(dropout)
        self.output = output
        self._workspaces: dict[int, _Workspace] = {}
        self.grads: list[np.ndarray] = []
        self.bias_grads: list[np.ndarray] = []
        self.topology_changed()

    @classmethod
    def initialize(cls, sizes: list[int], *, epsilon: float, init: str, activation: str, alpha: float,
                   dropout: float, output: str, rng: np.random.Generator) -> "SparseMLP":
        """Erdős–Rényi layers for neuron counts `sizes` (input first, output last)."""
        layers = [erdos_renyi_layer(n_in, n_out, epsilon, init, rng) for n_in, n_out in zip(sizes[:-1], sizes[1:])]
        return cls(layers, hidden_slopes(activation, alpha, len(sizes) - 2), dropout, output)

    @property
    def sizes(self) -> list[int]:
        return [self.layers[0].n_in] + [layer.n_out for layer in self.layers]

    @property
    def nnz(self) -> list[int]:
        return [layer.nnz for layer in self.layers]

    @property
    def n_parameters(self) -> int:
        """Weights plus biases."""
        return sum(layer.nnz + layer.n_out for layer in self.layers)

    def topology_changed(self) -> None:
        """Reallocate what depends on the connections or the widths (call after SET or pruning)."""
        self.grads = [np.zeros(layer.nnz, dtype=np.float32) for layer in self.layers]
        self.bias_grads = [np.zeros(layer.n_out, dtype=np.float32) for layer in self.layers]
        if getattr(self, "_workspace_sizes", None) != self.sizes:
            self._workspaces.clear()
            self._workspace_sizes = self.sizes

    def input_buffer(self, batch: int) -> np.ndarray:
        """The (n_features, batch) float32 buffer that `gradients` and `logits` read their input from."""
        return self._workspace(batch).acts[0]

    def _workspace(self, batch: int) -> _Workspace:
        ws = self._workspaces.get(batch)
        if ws is None:
            acts = [np.zeros((n, batch), dtype=np.float32) for n in self.sizes]
            factors = [np.ones((n, batch), dtype=np.float32) for n in self.sizes[:-1]]
            deltas = [np.zeros((n, batch), dtype=np.float32) for n in self.sizes]
            ws = self._workspaces[batch] = _Workspace(acts, factors, deltas)
        return ws

    def _forward(self, ws: _Workspace, drop_keys: np.ndarray | None) -> np.ndarray:
        last = len(self.layers) - 1
        for l, layer in enumerate(self.layers):
            if l == last:
                kernels.forward(layer, ws.acts[l], ws.acts[l + 1])
            elif drop_keys is None:
                kernels.forward(layer, ws.acts[l], ws.acts[l + 1], slope=self.slopes[l])
            else:
                kernels.forward(layer, ws.acts[l], ws.acts[l + 1], slope=self.slopes[l],
                                dropout=self.dropout, drop_key=int(drop_keys[l]), grad_factor=ws.factors[l + 1])
        return ws.acts[-1]

    def gradients(self, batch: int, labels: np.ndarray, drop_keys: np.ndarray) -> tuple[float, int]:
        """Forward with dropout and backward on the input already in `input_buffer(batch)`.

        Fills self.grads / self.bias_grads with gradients of the batch-mean loss; returns the
        summed loss and the number of correct predictions.
        """
        ws = self._workspace(batch)
        logits = self._forward(ws, drop_keys)
        delta = ws.deltas[-1]
        loss, correct = output_loss(self.output, logits, labels, delta)
        kernels.row_sums(delta, self.bias_grads[-1])
        for l in range(len(self.layers) - 1, -1, -1):
            layer = self.layers[l]
            if l == 0:
                kernels.backward(layer, ws.acts[0], delta, self.grads[0])
            else:
                kernels.backward(layer, ws.acts[l], delta, self.grads[l], ws.deltas[l], ws.factors[l],
                                 self.bias_grads[l - 1])
                delta = ws.deltas[l]
        return loss, correct

    def logits(self, batch: int) -> np.ndarray:
        """Output pre-activations (n_classes, batch) for the input in `input_buffer(batch)`, no dropout."""
        return self._forward(self._workspace(batch), None)

    def evaluate(self, x: np.ndarray, y: np.ndarray, batch_size: int) -> tuple[float, float]:
        """Mean loss and accuracy over samples x (n, n_features) with labels y (n,)."""
        total_loss, total_correct = 0.0, 0
        for start in range(0, x.shape[0], batch_size):
            xb = x[start:start + batch_size]
            buf = self.input_buffer(xb.shape[0])
            np.copyto(buf, xb.T)
            logits = self.logits(xb.shape[0])
            loss, correct = output_loss(self.output, logits, y[start:start + batch_size],
                                        self._workspace(xb.shape[0]).deltas[-1])
            total_loss += loss
            total_correct += correct
        n = max(x.shape[0], 1)
        return total_loss / n, total_correct / n
