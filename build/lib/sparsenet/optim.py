"""Momentum SGD with weight decay on the non-zeros only; its state follows topology changes."""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .model import SparseMLP


WEIGHT_DECAY_MODES = ("coupled", "decoupled")


@njit(parallel=True, fastmath=True, cache=True)
def _momentum_coupled_at(values, velocity, index, grad, lr, momentum, weight_decay):
    for n in prange(index.shape[0]):
        k = index[n]
        v = momentum * velocity[k] - lr * (grad[n] + weight_decay * values[k])
        velocity[k] = v
        values[k] += v


@njit(parallel=True, fastmath=True, cache=True)
def _momentum_decoupled_at(values, velocity, index, grad, lr, momentum, weight_decay):
    for n in prange(index.shape[0]):
        k = index[n]
        v = momentum * velocity[k] - lr * grad[n]
        velocity[k] = v
        values[k] += v - weight_decay * values[k]


@njit(parallel=True, fastmath=True, cache=True)
def _momentum_into(values, velocity, grad, out, lr, momentum, weight_decay, decoupled):
    for k in prange(values.shape[0]):
        if decoupled:
            v = momentum * velocity[k] - lr * grad[k]
            new = values[k] + v - weight_decay * values[k]
        else:
            v = momentum * velocity[k] - lr * (grad[k] + weight_decay * values[k])
            new = values[k] + v
        velocity[k] = v
        values[k] = new
        out[k] = new


@njit(cache=True)
def _momentum_all(values, velocity, grad, out, lr, momentum, weight_decay, decoupled):
    """Every array of the tuple `values` updated in one call from Python; the new values also go to `out`
    (which may be `values`). A prange directly in this loop over tuples updated nothing in numba 0.68.1: hence two levels."""
    for j in range(len(values)):
        _momentum_into(values[j], velocity[j], grad[j], out[j], lr, momentum, weight_decay, decoupled)


def _kernel_ready(a: np.ndarray) -> bool:
    """True if `a` is the one array type the fused kernel is compiled for (float32, C order, aligned, writable)."""
    return a.dtype == np.float32 and a.flags.c_contiguous and a.flags.aligned and a.flags.writeable


def _updatable(arrays, what: str) -> tuple[np.ndarray, ...]:
    """Arrays the kernel writes in place: they must already be kernel-ready (a copy would lose the update)."""
    for a in arrays:
        if not _kernel_ready(a):
            raise ValueError(f"{what} must be writable, aligned, C-contiguous float32 arrays, got {a.dtype} "
                             f"(writable {a.flags.writeable}, contiguous {a.flags.c_contiguous})")
    return tuple(arrays)


class MomentumSGD:
    """coupled: v <- momentum * v - lr * (g + weight_decay * w);  w <- w + v  (the usual L2 form).

    decoupled: v <- momentum * v - lr * g;  w <- w + v - weight_decay * w, the papers' code, whose
    decay is 1/lr times stronger. Biases are updated the same way as weights.
    """

    def __init__(self, model: SparseMLP, lr: float, momentum: float, weight_decay: float,
                 weight_decay_mode: str = "coupled"):
        if weight_decay_mode not in WEIGHT_DECAY_MODES:
            raise ValueError(f"weight_decay_mode must be one of {', '.join(WEIGHT_DECAY_MODES)}, got {weight_decay_mode!r}")
        self.lr = float(lr)
        self.momentum = float(momentum)
        self.weight_decay = float(weight_decay)
        self.weight_decay_mode = weight_decay_mode
        self.velocities = [np.zeros(layer.nnz, dtype=np.float32) for layer in model.layers]
        self.bias_velocities = [np.zeros(layer.n_out, dtype=np.float32) for layer in model.layers]

    def step(self, model: SparseMLP, grads: list[np.ndarray], bias_grads: list[np.ndarray],
             lr: float | None = None, out: list[np.ndarray] | None = None) -> None:
        """Apply one update of every layer from its weight and bias gradients, in one kernel call.

        out: optional arrays [weights of every layer..., biases of every layer...] that also receive
        the new values (the parameter server writes its reply into a worker's channel this way).
        """
        lr = np.float32(self.lr if lr is None else lr)
        for l, layer in enumerate(model.layers):
            _check_gradient(grads[l], layer.nnz, f"layer {l} weight")
            _check_gradient(bias_grads[l], layer.n_out, f"layer {l} bias")
        values = _updatable([layer.values for layer in model.layers] + [layer.bias for layer in model.layers],
                            "weights and biases")
        if out is None:
            out = values
        elif len(out) != len(values) or any(o.shape != v.shape for o, v in zip(out, values)):
            raise ValueError(f"out must hold {len(values)} arrays shaped like the weights then the biases")
        gradients = tuple(g if _kernel_ready(g) else np.array(g, dtype=np.float32) for g in [*grads, *bias_grads])
        velocities = _updatable(self.velocities + self.bias_velocities, "optimizer velocities")
        _momentum_all(values, velocities, gradients,
                      _updatable(out, "out"), lr, np.float32(self.momentum), np.float32(self.weight_decay),
                      self.weight_decay_mode == "decoupled")

    def step_at(self, model: SparseMLP, layer_index: int, index: np.ndarray, grad: np.ndarray,
                lr: float | None = None) -> None:
        """Update only the connections `index` (int64) of one layer with gradients `grad` (same length)."""
        if index.shape != grad.shape:
            raise ValueError(f"{index.shape[0]} indices for {grad.shape[0]} gradient values")
        nnz = model.layers[layer_index].nnz
        if index.shape[0] and (index.min() < 0 or index.max() >= nnz):
            raise ValueError(f"connection indices outside layer {layer_index} of {nnz} connections")
        lr = np.float32(self.lr if lr is None else lr)
        kernel = _momentum_coupled_at if self.weight_decay_mode == "coupled" else _momentum_decoupled_at
        kernel(model.layers[layer_index].values, self.velocities[layer_index], index,
               np.ascontiguousarray(grad, dtype=np.float32), lr, np.float32(self.momentum), np.float32(self.weight_decay))

    def step_bias(self, model: SparseMLP, layer_index: int, bias_grad: np.ndarray, lr: float | None = None) -> None:
        """Update one layer's biases."""
        _check_gradient(bias_grad, model.layers[layer_index].n_out, f"layer {layer_index} bias")
        lr = np.float32(self.lr if lr is None else lr)
        bias = model.layers[layer_index].bias
        _momentum_into(bias, self.bias_velocities[layer_index], bias_grad, bias, lr, np.float32(self.momentum),
                       np.float32(self.weight_decay), self.weight_decay_mode == "decoupled")

    def step_bias_at(self, model: SparseMLP, layer_index: int, index: np.ndarray, bias_grad: np.ndarray,
                     lr: float | None = None) -> None:
        """Update only the biases `index` (int64) of one layer with gradients `bias_grad` (same length)."""
        layer = model.layers[layer_index]
        if index.shape != bias_grad.shape:
            raise ValueError(f"{index.shape[0]} indices for {bias_grad.shape[0]} bias gradient values")
        if index.shape[0] and (index.min() < 0 or index.max() >= layer.n_out):
            raise ValueError(f"neuron indices outside layer {layer_index} of {layer.n_out} outputs")
        lr = np.float32(self.lr if lr is None else lr)
        kernel = _momentum_coupled_at if self.weight_decay_mode == "coupled" else _momentum_decoupled_at
        kernel(layer.bias, self.bias_velocities[layer_index], index, np.ascontiguousarray(bias_grad, dtype=np.float32),
               lr, np.float32(self.momentum), np.float32(self.weight_decay))

    def follow_topology(self, layer_index: int, source: np.ndarray) -> None:
        """Realign a layer's state: new connection k takes old state[source[k]], or 0 where source is -1."""
        self.velocities[layer_index] = realign(self.velocities[layer_index], source)

    def follow_neurons(self, layer_index: int, keep: np.ndarray) -> None:
        """Drop the bias state of the output neurons of a layer that `keep` (bool, old n_out) removes."""
        self.bias_velocities[layer_index] = np.ascontiguousarray(self.bias_velocities[layer_index][keep])


def realign(state: np.ndarray, source: np.ndarray) -> np.ndarray:
    """state gathered at `source` (int64, -1 = new connection, state 0)."""
    out = np.zeros(source.shape[0], dtype=state.dtype)
    have = source >= 0
    out[have] = state[source[have]]
    return out


def _check_gradient(grad: np.ndarray, n: int, what: str) -> None:
    """The kernels index without bounds checks: a gradient must be float32 of its layer's length."""
    if grad.dtype != np.float32 or grad.shape != (n,):
        raise ValueError(f"{what} gradient must be float32 of shape ({n},), got {grad.dtype} {grad.shape}")
