"""SparseMLP: a stack of SparseLayers with per-layer hidden slopes, dropout and an output loss."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .activations import hidden_slopes, output_loss
from .data.csr import CSRRows
from .sparse import csr, kernels
from .sparse.init import erdos_renyi_layer
from .sparse.kernels import forward_options
from .sparse.layer import SparseLayer


EVAL_BUFFER_BYTES = 1 << 28  # default bound on evaluate()'s own activation buffers (no training workspace)


def training_workspace_bytes(sizes: list[int], batch: int, sparse_input: bool = False) -> int:
    """Bytes of the training workspace for `batch` samples: activations and deltas of every layer,
    f'(z) * dropout scale of every layer but the output (float32); none for the input layer when the
    input comes as CSR batches."""
    return 4 * batch * (3 * sum(sizes) - sizes[-1] - (3 * sizes[0] if sparse_input else 0))


def inference_bytes_per_sample(sizes: list[int]) -> int:
    """Bytes per sample of evaluate's two ping-pong buffers: the widest even and odd neuron layers."""
    return 4 * (max(sizes[0::2]) + max(sizes[1::2]))


def eval_chunk(sizes: list[int], batch_size: int, max_bytes: int = EVAL_BUFFER_BYTES) -> int:
    """Samples per forward pass of evaluate: at most batch_size, activations within max_bytes."""
    return max(1, min(int(batch_size), int(max_bytes) // inference_bytes_per_sample(sizes)))


def gradient_bytes(sizes: list[int], nnz: list[int]) -> int:
    """Bytes of SparseMLP.grads and bias_grads: one float32 per connection and per bias."""
    return 4 * (sum(nnz) + sum(sizes[1:]))


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
        self.task = "classifier"  # "autoencoder": the targets are the (clean) inputs, labels are not used
        self.input_noise = 0.0  # autoencoder: std of the Gaussian noise added to training inputs
        self._workspaces: dict[int, _Workspace] = {}
        self._sparse_input = False  # workspaces without the input layer's rows (CSR batches)
        self.grads: list[np.ndarray] = []
        self.bias_grads: list[np.ndarray] = []
        self.topology_changed()

    @classmethod
    def initialize(cls, sizes: list[int], *, epsilon: float, init: str, activation: str, alpha: float,
                   dropout: float, output: str, rng: np.random.Generator, input_init: str = "init") -> "SparseMLP":
        """Erdős–Rényi layers for neuron counts `sizes` (input first, output last).

        input_init "zero": the first layer's weights start at 0 (drawn, then zeroed: the random stream
        is the same), so each input connection grows only from its own gradient x_i * delta_j and the
        ones from inputs that predict the label become the large ones, which SET then keeps.
        """
        layers = [erdos_renyi_layer(n_in, n_out, epsilon, init, rng) for n_in, n_out in zip(sizes[:-1], sizes[1:])]
        if input_init == "zero":
            layers[0].values[:] = 0.0
        elif input_init != "init":
            raise ValueError(f"unknown input_init {input_init!r}; allowed: init, zero")
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
        self.grads = self.bias_grads = []  # the old ones go before the new ones are allocated
        self.grads = [np.zeros(layer.nnz, dtype=np.float32) for layer in self.layers]
        self.bias_grads = [np.zeros(layer.n_out, dtype=np.float32) for layer in self.layers]
        if getattr(self, "_workspace_sizes", None) != self.sizes:
            self._workspaces.clear()
            self._flat, self._capacity = None, 0
            self._workspace_sizes = self.sizes

    def release_workspace(self) -> None:
        """Free the training workspace; the next batch allocates it again (zeroed: results do not depend on
        it). Between epochs its memory then serves the SET step and neuron pruning instead of adding to them."""
        self._workspaces.clear()
        self._flat, self._capacity = None, 0

    def input_buffer(self, batch: int) -> np.ndarray:
        """The (n_features, batch) float32 buffer that `gradients` and `logits` read their input from."""
        return self._workspace(batch).acts[0]

    def _workspace(self, batch: int, sparse_input: bool = False) -> _Workspace:
        """Buffers for `batch` samples: views into one allocation sized for the largest batch seen,
        so an epoch's smaller last batch costs no memory of its own. sparse_input: the input layer's
        buffers are empty (its activations come as CSR rows); switching drops the other kind."""
        if sparse_input != self._sparse_input:
            self._workspaces.clear()
            self._flat, self._capacity = None, 0
            self._sparse_input = sparse_input
        ws = self._workspaces.get(batch)
        if ws is None:
            widths = [0 if sparse_input else self.sizes[0], *self.sizes[1:]]
            if batch > getattr(self, "_capacity", 0):
                self._workspaces.clear()  # drop views of the smaller allocation before making a new one
                self._flat = ([kernels.aligned_floats(n * batch) for n in widths],
                              [kernels.aligned_floats(n * batch, 1.0) for n in widths[:-1]],
                              [kernels.aligned_floats(n * batch) for n in widths])
                self._capacity = batch
            acts, factors, deltas = ([flat[:n * batch].reshape(n, batch) for flat, n in zip(group, widths)]
                                     for group in self._flat)
            ws = self._workspaces[batch] = _Workspace(acts, factors, deltas)
        return ws

    def _forward(self, ws: _Workspace, drop_keys: np.ndarray | None, rows=None, lazy=None) -> np.ndarray:
        last = len(self.layers) - 1
        for l, layer in enumerate(self.layers):
            if l == last:
                kw = {}
            elif drop_keys is None:
                kw = {"slope": self.slopes[l]}
            else:
                kw = {"slope": self.slopes[l], "dropout": self.dropout, "drop_key": int(drop_keys[l]),
                      "grad_factor": ws.factors[l + 1]}
            if l == 0 and lazy is not None:
                x, index, order = rows
                lazy.catch_up(x, order)
                lazy.forward(x, order, ws.acts[1], forward_options(ws.acts[1], layer.n_out, index.shape[0], kw.get("slope"),
                                                              kw.get("dropout", 0.0), kw.get("drop_key", 0),
                                                              kw.get("grad_factor")),
                             layer.bias)
            elif l == 0 and rows is not None:
                x, index, order = rows
                csr.forward(layer, x.data, x.indices, x.indptr, x.shape, index, ws.acts[1], order=order, **kw)
            else:
                kernels.forward(layer, ws.acts[l], ws.acts[l + 1], **kw)
        return ws.acts[-1]

    def gradients(self, batch: int, labels: np.ndarray, drop_keys: np.ndarray, rows=None,
                  lazy=None) -> tuple[float, int]:
        """Forward with dropout and backward on the input already in `input_buffer(batch)`, or with
        rows = (x, index) on rows `index` of CSR samples x (data/indices/indptr/shape, data.csr.CSRRows).

        Fills self.grads / self.bias_grads with gradients of the batch-mean loss; returns the
        summed loss and the number of correct predictions. labels: see activations.output_loss
        (an autoencoder's are its clean inputs, (batch, n_features)). lazy: the first layer's
        sparse.lazy.LazyFirstLayer (CSR rows only): it reads and updates layer 0's weights itself
        (this step's update of them is done on return; self.grads[0] is not filled).
        """
        ws = self._workspace(batch, rows is not None)
        if rows is not None:
            x, index = rows
            rows = (x, index, csr.BatchOrder(x.indices, x.indptr, index, x.shape[1]))
        elif lazy is not None:
            raise ValueError("lazy first-layer updates need CSR rows")
        logits = self._forward(ws, drop_keys, rows, lazy)
        delta = ws.deltas[-1]
        loss, correct = output_loss(self.output, logits, labels, delta)
        kernels.row_sums(delta, self.bias_grads[-1])
        for l in range(len(self.layers) - 1, -1, -1):
            layer = self.layers[l]
            if l == 0 and lazy is not None:
                lazy.step(rows[0], rows[2], delta)
            elif l == 0 and rows is not None:
                x, index, order = rows
                csr.weight_grad(layer, x.data, x.indices, x.indptr, x.shape, index, delta, self.grads[0], order)
            elif l == 0:
                kernels.backward(layer, ws.acts[0], delta, self.grads[0])
            else:
                kernels.backward(layer, ws.acts[l], delta, self.grads[l], ws.deltas[l], ws.factors[l],
                                 self.bias_grads[l - 1])
                delta = ws.deltas[l]
        return loss, correct

    def logits(self, batch: int) -> np.ndarray:
        """Output pre-activations (n_classes, batch) for the input in `input_buffer(batch)`, no dropout."""
        return self._forward(self._workspace(batch), None)

    def eval_chunk(self, batch_size: int, max_bytes: int = EVAL_BUFFER_BYTES) -> int:
        """Samples per forward pass of evaluate's own buffers: at most batch_size, activations within max_bytes."""
        return eval_chunk(self.sizes, batch_size, max_bytes)

    def evaluate(self, x: np.ndarray, y: np.ndarray, batch_size: int,
                 max_bytes: int | None = None) -> tuple[float, float]:
        """Mean loss and accuracy over samples x (n, n_features; float32, a row source (see
        kernels.gather_batch) or CSR rows) with labels y (n,); an autoencoder scores its reconstruction
        of x (y is not read; accuracy 0).

        Forward only, without dropout, in chunks of at most batch_size samples. After training the
        model holds a workspace for its training batch: evaluation runs through it and allocates
        nothing (chunks of min(batch_size, training batch)). Otherwise it uses two ping-pong
        activation buffers (no f'(z) or delta storage) within max_bytes (default EVAL_BUFFER_BYTES;
        trainers pass what a training batch needs). Every sample's logits are computed independently
        and the loss is one running sum over the samples in order, so the result does not depend on
        the chunking.
        """
        if isinstance(x, CSRRows):
            return self._evaluate_rows(x, y, batch_size, max_bytes)
        if self._capacity and max_bytes is None:
            return self._evaluate_in_workspace(x, y, min(int(batch_size), self._capacity))
        bound = EVAL_BUFFER_BYTES if max_bytes is None else max_bytes
        chunk = min(self.eval_chunk(batch_size, bound), max(x.shape[0], 1))
        sizes = self.sizes
        bufs = (kernels.aligned_floats(max(sizes[0::2]) * chunk), kernels.aligned_floats(max(sizes[1::2]) * chunk))
        delta = np.empty(sizes[-1] * chunk, dtype=np.float32)
        last = len(self.layers) - 1
        total_loss, total_correct = 0.0, 0
        for start in range(0, x.shape[0], chunk):
            m = min(chunk, x.shape[0] - start)
            a = bufs[0][:sizes[0] * m].reshape(sizes[0], m)
            kernels.gather_batch(x, np.arange(start, start + m), a)
            targets = self._targets(x, y, start, m)  # before the buffers ping-pong over the input
            for l, layer in enumerate(self.layers):
                out = bufs[(l + 1) % 2][:layer.n_out * m].reshape(layer.n_out, m)
                kernels.forward(layer, a, out, slope=None if l == last else self.slopes[l])
                a = out
            total_loss, correct = output_loss(self.output, a, targets,
                                              delta[:sizes[-1] * m].reshape(sizes[-1], m), start=total_loss)
            total_correct += correct
        n = max(x.shape[0], 1)
        return total_loss / n, total_correct / n

    def _evaluate_rows(self, x, y: np.ndarray, batch_size: int, max_bytes: int | None) -> tuple[float, float]:
        """evaluate() on CSR samples x (data.csr.CSRRows) through a workspace without input rows: the
        training one if it is for CSR input, else one of chunks within max_bytes."""
        if x.center is not None:
            raise ValueError("evaluate takes CSR samples without centring (fold it into the bias: api.forward_logits)")
        if self._sparse_input and self._capacity and max_bytes is None:
            chunk = min(int(batch_size), self._capacity)
        else:
            bound = EVAL_BUFFER_BYTES if max_bytes is None else max_bytes
            chunk = max(1, min(int(batch_size), bound // max(1, training_workspace_bytes(self.sizes, 1, True))))
        total_loss, total_correct = 0.0, 0
        for start in range(0, x.shape[0], chunk):
            index = np.arange(start, min(start + chunk, x.shape[0]), dtype=np.int64)
            ws = self._workspace(index.shape[0], True)
            logits = self._forward(ws, None, (x, index, None))
            total_loss, correct = output_loss(self.output, logits, y[index], ws.deltas[-1], start=total_loss)
            total_correct += correct
        n = max(x.shape[0], 1)
        return total_loss / n, total_correct / n

    def _targets(self, x, y: np.ndarray, start: int, m: int, gathered: np.ndarray | None = None) -> np.ndarray:
        """What the outputs of samples start..start+m are scored against: labels, or (autoencoder) the
        samples themselves, (m, n_features): `gathered` (n_features, m) if they are there, else gathered anew."""
        if self.task != "autoencoder":
            return y[start:start + m]
        if gathered is None:
            gathered = kernels.gather_batch(x, np.arange(start, start + m), np.empty((x.shape[1], m), np.float32))
        return gathered.T

    def _evaluate_in_workspace(self, x: np.ndarray, y: np.ndarray, chunk: int) -> tuple[float, float]:
        """evaluate() through the training workspace's activation and delta buffers."""
        total_loss, total_correct = 0.0, 0
        for start in range(0, x.shape[0], chunk):
            m = min(chunk, x.shape[0] - start)
            ws = self._workspace(m)
            kernels.gather_batch(x, np.arange(start, start + m), ws.acts[0])
            logits = self._forward(ws, None)
            total_loss, correct = output_loss(self.output, logits, self._targets(x, y, start, m, ws.acts[0]), ws.deltas[-1],
                                              start=total_loss)
            total_correct += correct
        n = max(x.shape[0], 1)
        return total_loss / n, total_correct / n
