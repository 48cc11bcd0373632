"""Optimizers on the non-zeros only (momentum SGD, Adam); each owns its named state, which follows topology changes.

State: per layer, one float32 array per name in STATE with one value per connection, and one named
"bias_<name>" with one value per output neuron; plus JSON scalars (Adam's step count). Everything
else (checkpoints, the parallel trainer's bundles, the memory planner) asks for these by name:
`layer_state`, `load_state`, `scalars`, `bytes_per_parameter`. Adding an optimizer is a class here
and one entry in OPTIMIZERS (plus its name in config's train.optimizer choice).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from .model import SparseMLP
from .sparse.lazy import LazyFirstLayer


WEIGHT_DECAY_MODES = ("coupled", "decoupled")
STATE_DTYPE = np.float32


# ---------------------------------------------------------------- momentum kernels

@njit(parallel=True, fastmath=True, cache=True)
def _momentum_at(values, velocity, index, grad, lr, momentum, weight_decay, decoupled):
    for n in prange(index.shape[0]):
        k = index[n]
        if decoupled:
            v = momentum * velocity[k] - lr * grad[n]
            values[k] += v - weight_decay * values[k]
        else:
            v = momentum * velocity[k] - lr * (grad[n] + weight_decay * values[k])
            values[k] += v
        velocity[k] = v


@njit(parallel=True, fastmath=True, cache=True)
def _momentum_into(values, velocity, grad, lr, momentum, weight_decay, decoupled):
    for k in prange(values.shape[0]):
        if decoupled:
            v = momentum * velocity[k] - lr * grad[k]
            new = values[k] + v - weight_decay * values[k]
        else:
            v = momentum * velocity[k] - lr * (grad[k] + weight_decay * values[k])
            new = values[k] + v
        velocity[k] = v
        values[k] = new


@njit(cache=True)
def _momentum_all(values, velocity, grad, lr, momentum, weight_decay, decoupled):
    """Every array of the tuple `values` updated in one call from Python. A prange directly in this
    loop over tuples updated nothing in numba 0.68.1: hence two levels."""
    for j in range(len(values)):
        _momentum_into(values[j], velocity[j], grad[j], lr, momentum, weight_decay, decoupled)


# ---------------------------------------------------------------- Adam kernels

@njit(inline="always")
def _adam_one(w, g, m, v, lr, b1, b2, eps, c1, c2, weight_decay, decoupled):
    """(new w, new m, new v) of one parameter; c1, c2 = 1 - b1**t, 1 - b2**t."""
    if not decoupled:
        g = g + weight_decay * w
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    new = w - lr * (m / c1) / (math.sqrt(v / c2) + eps)
    if decoupled:
        new -= weight_decay * w
    return new, m, v


@njit(parallel=True, fastmath=True, cache=True)
def _adam_at(values, m, v, index, grad, lr, b1, b2, eps, c1, c2, weight_decay, decoupled):
    for n in prange(index.shape[0]):
        k = index[n]
        values[k], m[k], v[k] = _adam_one(values[k], grad[n], m[k], v[k], lr, b1, b2, eps, c1, c2,
                                          weight_decay, decoupled)


@njit(parallel=True, fastmath=True, cache=True)
def _adam_into(values, m, v, grad, lr, b1, b2, eps, c1, c2, weight_decay, decoupled):
    for k in prange(values.shape[0]):
        values[k], m[k], v[k] = _adam_one(values[k], grad[k], m[k], v[k], lr, b1, b2, eps, c1, c2,
                                          weight_decay, decoupled)


@njit(cache=True)
def _adam_all(values, m, v, grad, lr, b1, b2, eps, c1, c2, weight_decay, decoupled):
    for j in range(len(values)):
        _adam_into(values[j], m[j], v[j], grad[j], lr, b1, b2, eps, c1, c2, weight_decay, decoupled)


# ---------------------------------------------------------------- the optimizers

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


class Optimizer:
    """Base: named per-layer state arrays (see the module docstring) and the update entry points.

    Subclasses set `name`, STATE and implement _fused (every weight and bias array at once) and
    _indexed (the entries `index` of one array).
    """

    name = ""
    STATE: tuple[str, ...] = ()

    def __init__(self, model: SparseMLP, lr: float, weight_decay: float, weight_decay_mode: str = "coupled"):
        if weight_decay_mode not in WEIGHT_DECAY_MODES:
            raise ValueError(f"weight_decay_mode must be one of {', '.join(WEIGHT_DECAY_MODES)}, got {weight_decay_mode!r}")
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        self.weight_decay_mode = weight_decay_mode
        self.state: dict[str, list[np.ndarray]] = {}
        for name in self.STATE:
            self.state[name] = [np.zeros(layer.nnz, dtype=STATE_DTYPE) for layer in model.layers]
            self.state["bias_" + name] = [np.zeros(layer.n_out, dtype=STATE_DTYPE) for layer in model.layers]

    # -- what others ask for

    @classmethod
    def state_names(cls) -> list[str]:
        """Names of a layer's state arrays: per connection first, then the "bias_" ones (per output neuron)."""
        return [*cls.STATE, *("bias_" + n for n in cls.STATE)]

    @classmethod
    def bytes_per_parameter(cls) -> int:
        """State bytes per connection (and per bias)."""
        return len(cls.STATE) * np.dtype(STATE_DTYPE).itemsize

    def layer_state(self, l: int) -> dict[str, np.ndarray]:
        return {name: self.state[name][l] for name in self.state_names()}

    def scalars(self) -> dict:
        """JSON-able state beyond the arrays (e.g. a step count)."""
        return {}

    def load_state(self, layers: list[dict[str, np.ndarray]], scalars: dict | None = None) -> None:
        """Adopt per-layer named state arrays (as layer_state returns them) and scalars; checks names and lengths."""
        if len(layers) != len(self.state[self.STATE[0]]):
            raise ValueError(f"optimizer state for {len(layers)} layers, the model has {len(self.state[self.STATE[0]])}")
        for l, arrays in enumerate(layers):
            if sorted(arrays) != sorted(self.state_names()):
                raise ValueError(f"{self.name} state needs arrays {', '.join(self.state_names())}, got {', '.join(arrays)}")
            for name, a in arrays.items():
                like = self.state[name][l]
                if a.shape != like.shape:
                    raise ValueError(f"layer {l} {self.name} state {name} has shape {a.shape}, expected {like.shape}")
                self.state[name][l] = np.array(a, dtype=STATE_DTYPE, order="C")

    # -- topology changes

    def follow_topology(self, layer_index: int, source: np.ndarray) -> None:
        """Realign a layer's state: new connection k takes old state[source[k]], or 0 where source is -1."""
        for name in self.STATE:
            self.state[name][layer_index] = realign(self.state[name][layer_index], source)

    def follow_neurons(self, layer_index: int, keep: np.ndarray) -> None:
        """Drop the bias state of the output neurons of a layer that `keep` (bool, old n_out) removes."""
        for name in self.STATE:
            arrays = self.state["bias_" + name]
            arrays[layer_index] = np.ascontiguousarray(arrays[layer_index][keep])

    # -- updates

    def step(self, model: SparseMLP, grads: list[np.ndarray], bias_grads: list[np.ndarray],
             lr: float | None = None, skip_first: bool = False) -> None:
        """Apply one update of every layer from its weight and bias gradients, in one kernel call.
        skip_first: layer 0's weights are left alone (sparse.lazy updates them; grads[0] is not read),
        its bias is updated."""
        lr = np.float32(self.lr if lr is None else lr)
        first = 1 if skip_first else 0
        for l, layer in enumerate(model.layers):
            if l >= first:
                _check_gradient(grads[l], layer.nnz, f"layer {l} weight")
            _check_gradient(bias_grads[l], layer.n_out, f"layer {l} bias")
        values = _updatable([layer.values for layer in model.layers[first:]] + [layer.bias for layer in model.layers],
                            "weights and biases")
        gradients = tuple(g if _kernel_ready(g) else np.array(g, dtype=np.float32)
                          for g in [*grads[first:], *bias_grads])
        states = tuple(_updatable(self.state[n][first:] + self.state["bias_" + n], f"{self.name} state")
                       for n in self.STATE)
        self._begin_step()
        self._fused(values, states, gradients, lr)

    def step_partial(self, model: SparseMLP, grads: list[np.ndarray], bias_grads: list[np.ndarray],
                     where: list[np.ndarray | None], bias_where: list[np.ndarray | None], lr: float | None = None) -> None:
        """One update in which layer l's weight gradient grads[l] applies to its connections where[l]
        (int64, same length; None = all) and its bias gradient to the neurons bias_where[l]."""
        lr = np.float32(self.lr if lr is None else lr)
        targets = []
        for l, layer in enumerate(model.layers):
            for array, index, grad, n, what in ((layer.values, where[l], grads[l], layer.nnz, "connection"),
                                               (layer.bias, bias_where[l], bias_grads[l], layer.n_out, "neuron")):
                if index is None:
                    index = np.arange(n, dtype=np.int64)
                if index.shape != grad.shape:
                    raise ValueError(f"{index.shape[0]} {what} indices for {grad.shape[0]} gradient values")
                if index.shape[0] and (index.min() < 0 or index.max() >= n):
                    raise ValueError(f"{what} indices outside layer {l} of {n}")
                prefix = "" if what == "connection" else "bias_"
                states = tuple(self.state[prefix + name][l] for name in self.STATE)
                targets.append((array, states, index, np.ascontiguousarray(grad, dtype=np.float32)))
        self._begin_step()
        for array, states, index, grad in targets:
            self._indexed(array, states, index, grad, lr)

    def lazy_first_layer(self, model: SparseMLP, steps: int) -> LazyFirstLayer | None:
        """A session of lazy updates of layer 0 for `steps` CSR batches (sparse/lazy.py), or None where
        this optimizer has no exact closed form for zero-gradient steps (Adam)."""
        return None

    def _begin_step(self) -> None:
        pass

    def _fused(self, values, states, grads, lr) -> None:
        raise NotImplementedError

    def _indexed(self, values, states, index, grad, lr) -> None:
        raise NotImplementedError


class MomentumSGD(Optimizer):
    """coupled: v <- momentum * v - lr * (g + weight_decay * w);  w <- w + v  (the usual L2 form).

    decoupled: v <- momentum * v - lr * g;  w <- w + v - weight_decay * w, the papers' code, whose
    decay is 1/lr times stronger. Biases are updated the same way as weights.
    """

    name = "momentum"
    STATE = ("velocity",)

    def __init__(self, model: SparseMLP, lr: float, momentum: float, weight_decay: float,
                 weight_decay_mode: str = "coupled"):
        super().__init__(model, lr, weight_decay, weight_decay_mode)
        self.momentum = float(momentum)

    @property
    def velocities(self) -> list[np.ndarray]:
        return self.state["velocity"]

    @property
    def bias_velocities(self) -> list[np.ndarray]:
        return self.state["bias_velocity"]

    def _hyper(self):
        return np.float32(self.momentum), np.float32(self.weight_decay), self.weight_decay_mode == "decoupled"

    def lazy_first_layer(self, model: SparseMLP, steps: int) -> LazyFirstLayer:
        m, wd, decoupled = self._hyper()
        return LazyFirstLayer(model.layers[0], self.velocities[0], np.float32(self.lr), m, wd,
                              decoupled, steps)

    def _fused(self, values, states, grads, lr) -> None:
        _momentum_all(values, states[0], grads, lr, *self._hyper())

    def _indexed(self, values, states, index, grad, lr) -> None:
        _momentum_at(values, states[0], index, grad, lr, *self._hyper())


class Adam(Optimizer):
    """Adam (Kingma & Ba) on the non-zeros, with bias correction by the global step count t:

    g' = g + weight_decay * w (coupled) or g (decoupled); m <- b1 m + (1 - b1) g'; v <- b2 v + (1 - b2) g'^2;
    w <- w - lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps), then - weight_decay * w if decoupled.
    b1 is train.momentum; b2 = BETA2, eps = EPS. A connection that SET or pruning creates starts with
    m = v = 0, as if it had always had a zero gradient.
    """

    name = "adam"
    STATE = ("m", "v")
    BETA2 = 0.999
    EPS = 1e-8

    def __init__(self, model: SparseMLP, lr: float, momentum: float, weight_decay: float,
                 weight_decay_mode: str = "coupled"):
        super().__init__(model, lr, weight_decay, weight_decay_mode)
        self.beta1 = float(momentum)
        self.t = 0

    def scalars(self) -> dict:
        return {"step": self.t}

    def load_state(self, layers, scalars=None) -> None:
        super().load_state(layers, scalars)
        step = (scalars or {}).get("step", 0)
        if not isinstance(step, int) or step < 0:
            raise ValueError(f"adam step count must be an integer >= 0, got {step!r}")
        self.t = step

    def _begin_step(self) -> None:
        self.t += 1

    def _hyper(self):
        b1, b2 = self.beta1, self.BETA2
        return (np.float32(b1), np.float32(b2), np.float32(self.EPS), np.float32(1 - b1 ** self.t),
                np.float32(1 - b2 ** self.t), np.float32(self.weight_decay), self.weight_decay_mode == "decoupled")

    def _fused(self, values, states, grads, lr) -> None:
        _adam_all(values, states[0], states[1], grads, lr, *self._hyper())

    def _indexed(self, values, states, index, grad, lr) -> None:
        _adam_at(values, states[0], states[1], index, grad, lr, *self._hyper())


OPTIMIZERS: dict[str, type[Optimizer]] = {"momentum": MomentumSGD, "adam": Adam}


def make_optimizer(cfg, model: SparseMLP) -> Optimizer:
    """The optimizer cfg.train.optimizer names (cfg: a config.Config), with fresh zero state for `model`."""
    t = cfg.train
    return OPTIMIZERS[t.optimizer](model, t.lr, t.momentum, t.weight_decay, t.weight_decay_mode)


def realign(state: np.ndarray, source: np.ndarray) -> np.ndarray:
    """state gathered at `source` (int64, -1 = new connection, state 0); no temporaries beyond the result."""
    source = np.ascontiguousarray(source, dtype=np.int64)
    if source.size and (source.min() < -1 or source.max() >= state.shape[0]):
        raise ValueError(f"source must hold -1 or indices in [0, {state.shape[0]}), got "
                         f"{int(source.min())}..{int(source.max())}")
    out = np.empty(source.shape[0], dtype=state.dtype)
    _realign_kernel(np.ascontiguousarray(state), source, out)
    return out


@njit(cache=True)
def _realign_kernel(state, source, out):
    for k in range(source.shape[0]):
        s = source[k]
        out[k] = state[s] if s >= 0 else 0


def _check_gradient(grad: np.ndarray, n: int, what: str) -> None:
    """The kernels index without bounds checks: a gradient must be float32 of its layer's length."""
    if grad.dtype != np.float32 or grad.shape != (n,):
        raise ValueError(f"{what} gradient must be float32 of shape ({n},), got {grad.dtype} {grad.shape}")
