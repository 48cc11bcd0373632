"""Momentum SGD on a CSR-fed first layer in O(touched connections) per step: lazy updates.

A batch of CSR rows touches only the connections of its active input features; every other
connection gets a zero gradient, and its momentum/weight-decay step is linear in (w, v):

    coupled    v' = m v - lr wd w,  w' = w + v' = (1 - lr wd) w + m v   A = [[1 - lr wd, m], [-lr wd, m]]
    decoupled  v' = m v,            w' = w + v' - wd w = (1 - wd) w + m v  A = [[1 - wd, m], [0, m]]

(optim.MomentumSGD's rule with g = 0). So a feature's connections are left alone while it is not in
a batch and brought forward by A^gap (a float64 table of powers) the next time it is, or at sync().
The layer's weights and velocities are held input-major (the order CSR batches read them) in
copies made by the LazyFirstLayer and written back, caught up, by sync(): call it before anything
reads the layer (evaluation, SET, pruning, checkpoint). Within a session lr, momentum and weight
decay are fixed. Work per step: O(nnz of the batch x connections per input); O(nnz) once per session.

The caught-up values differ from the eager updates only by float32 rounding (one rounding of A^gap
applied in float64 instead of gap float32 steps). Touched features' gradients and updates are the
eager ones bit for bit (same sums in the same order). Results are the same for any thread count.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from . import csr
from .csr import prefetch_ahead
from .kernels import FASTMATH
from .layer import SparseLayer


@njit(inline="always")
def _advance(w, v, k, powers, p):
    """(w[p], v[p]) <- A^k (w[p], v[p]) in float64, rounded once to float32."""
    a, b, c, d = powers[k, 0], powers[k, 1], powers[k, 2], powers[k, 3]
    wp, vp = np.float64(w[p]), np.float64(v[p])
    w[p] = np.float32(a * wp + b * vp)
    v[p] = np.float32(c * wp + d * vp)


def _define_kernels(digest):
    """The kernels, as closures over the digest of csr.py (prefetch_ahead) and what it inlines, so that their
    numba cache key (which hashes closure variables) changes when an inlined helper changes."""

    @njit(parallel=True, cache=True)
    def _catch_up(indices, ptr, where, chunks, in_ptr, w, v, nxt, t, powers):
        """Every feature of the batch: its connections brought to step t (nxt[i] = t)."""
        if digest == 0:  # never true; ties the cache to csr.py, kernels.py, simd.py
            return
        n_buckets = ptr.shape[0] - 1
        for c in prange(chunks):
            q1 = ptr[n_buckets * (c + 1) // chunks]
            for q in range(ptr[n_buckets * c // chunks], q1):
                prefetch_ahead(indices, where, q, q1, in_ptr, w, w, v, True)
                i = indices[where[q]]
                gap = t - nxt[i]
                if gap > 0:
                    for p in range(in_ptr[i], in_ptr[i + 1]):
                        _advance(w, v, gap, powers, p)
                    nxt[i] = t


    @njit(parallel=True, fastmath=set(FASTMATH), cache=True)
    def _grad_and_step(data, indices, ptr, where, sample, chunks, shift, delta, in_ptr, cols_in, w, v, nxt, t,
                       lr, momentum, weight_decay, decoupled):
        """Per range of buckets (disjoint features): each bucket's weight gradient (summed in sample order, as
        csr._weight_grad_kernel) in a local buffer, then one momentum step of its features (as optim._momentum_at).
        nxt[i] is -t - 1 while feature i's gradient is being summed."""
        if digest == 0:  # never true; ties the cache to csr.py, kernels.py, simd.py
            return
        n_buckets = ptr.shape[0] - 1
        n_in = in_ptr.shape[0] - 1
        for c in prange(chunks):
            k0, k1 = n_buckets * c // chunks, n_buckets * (c + 1) // chunks
            q1 = ptr[k1]
            size = 0
            for k in range(k0, k1):
                size = max(size, in_ptr[min((k + 1) << shift, n_in)] - in_ptr[k << shift])
            g = np.empty(size, dtype=np.float32)
            for k in range(k0, k1):
                base = in_ptr[k << shift]
                for q in range(ptr[k], ptr[k + 1]):
                    prefetch_ahead(indices, where, q, q1, in_ptr, w, cols_in, v, True)
                    p0 = where[q]
                    i = indices[p0]
                    x = data[p0]
                    b = sample[q]
                    if nxt[i] == t:  # the feature's first non-zero in the batch: its sum starts here
                        nxt[i] = -t - 1
                        for p in range(in_ptr[i], in_ptr[i + 1]):
                            g[p - base] = x * delta[cols_in[p], b]
                    else:
                        for p in range(in_ptr[i], in_ptr[i + 1]):
                            g[p - base] += x * delta[cols_in[p], b]
                for q in range(ptr[k], ptr[k + 1]):
                    i = indices[where[q]]
                    if nxt[i] != -t - 1:
                        continue
                    nxt[i] = t + 1
                    for p in range(in_ptr[i], in_ptr[i + 1]):
                        grad = g[p - base]
                        if decoupled:
                            vel = momentum * v[p] - lr * grad
                            w[p] += vel - weight_decay * w[p]
                        else:
                            vel = momentum * v[p] - lr * (grad + weight_decay * w[p])
                            w[p] += vel
                        v[p] = vel

    return _catch_up, _grad_and_step


_catch_up, _grad_and_step = _define_kernels(csr.SOURCE_DIGEST)


@njit(parallel=True, cache=True)
def _gather(values, velocity, in_perm, w, v):
    for p in prange(in_perm.shape[0]):
        w[p] = values[in_perm[p]]
        v[p] = velocity[in_perm[p]]


@njit(parallel=True, cache=True)
def _sync(in_ptr, in_perm, w, v, nxt, t, powers, values, velocity):
    """Every feature's connections brought to step t and written back output-major; nxt reset to 0."""
    for i in prange(in_ptr.shape[0] - 1):
        gap = t - nxt[i]
        for p in range(in_ptr[i], in_ptr[i + 1]):
            if gap > 0:
                _advance(w, v, gap, powers, p)
            values[in_perm[p]] = w[p]
            velocity[in_perm[p]] = v[p]
        nxt[i] = 0


def planned_bytes(n_in: int, nnz: int) -> int:
    """Bytes a LazyFirstLayer holds while its session lasts: w and v (float32 per connection), a step per input."""
    return 8 * nnz + 4 * n_in


def zero_gradient_powers(steps: int, lr: float, momentum: float, weight_decay: float, decoupled: bool) -> np.ndarray:
    """(steps + 1, 4) float64: row k = A^k as (a, b, c, d) with w' = a w + b v, v' = c w + d v; A is one
    momentum step with a zero gradient, built from the float32 hyperparameters the eager kernel uses."""
    lr, m, wd = (float(np.float32(h)) for h in (lr, momentum, weight_decay))
    a = np.array([[1.0 - wd, m], [0.0, m]]) if decoupled else np.array([[1.0 - lr * wd, m], [-lr * wd, m]])
    out = np.empty((steps + 1, 4))
    power = np.eye(2)
    for k in range(steps + 1):
        out[k] = power.ravel()
        power = a @ power
    return out


class LazyFirstLayer:
    """Layer 0 of a model trained on CSR batches with lazy momentum SGD; `velocity` is the optimizer's
    array for it (output-major, like layer.values), written back with the values by sync()."""

    def __init__(self, layer: SparseLayer, velocity: np.ndarray, lr: float, momentum: float, weight_decay: float,
                 decoupled: bool, steps: int):
        """steps: the session's expected number of steps (the power table grows if it runs longer)."""
        self.layer, self.velocity = layer, velocity
        self.hyper = (np.float32(lr), np.float32(momentum), np.float32(weight_decay), bool(decoupled))
        self.w = np.empty(layer.nnz, dtype=np.float32)
        self.v = np.empty(layer.nnz, dtype=np.float32)
        _gather(layer.values, velocity, layer.in_perm, self.w, self.v)
        self.nxt = np.zeros(layer.n_in, dtype=np.int32)
        self.t = np.int32(0)
        self.powers = zero_gradient_powers(max(1, steps), lr, momentum, weight_decay, decoupled)

    def _powers_to(self, t: int) -> np.ndarray:
        if t >= self.powers.shape[0]:
            self.powers = zero_gradient_powers(2 * t, float(self.hyper[0]), float(self.hyper[1]),
                                               float(self.hyper[2]), self.hyper[3])
        return self.powers

    def _chunks(self, order) -> int:
        return max(1, min(4 * numba.get_num_threads(), order.ptr.shape[0] - 1))

    def catch_up(self, x, order) -> None:
        """Bring the features of the batch `order` (csr.BatchOrder of CSR rows x) to the current step."""
        _catch_up(x.indices, order.ptr, order.where, self._chunks(order), self.layer.in_ptr, self.w, self.v,
                  self.nxt, self.t, self._powers_to(self.t))

    def forward(self, x, order, out: np.ndarray, options: tuple, bias: np.ndarray) -> None:
        """out (n_out, batch) for the batch `order` of x, after catch_up; options: kernels.forward_options(...)."""
        blocks = max(1, min(numba.get_num_threads(), order.index.shape[0]))
        csr.input_major_forward(x.data, x.indices, order.where, order.sample, blocks, self.layer.in_ptr,
                                self.layer.in_perm, self.layer.cols_in, self.w, bias, *options)

    def step(self, x, order, delta: np.ndarray) -> None:
        """Gradient of the batch's features from delta (n_out, batch) and one update of them: step t done."""
        _grad_and_step(x.data, x.indices, order.ptr, order.where, order.sample, self._chunks(order), order.shift,
                       delta, self.layer.in_ptr, self.layer.cols_in, self.w, self.v, self.nxt, self.t, *self.hyper)
        self.t = np.int32(self.t + 1)

    def sync(self) -> None:
        """Every connection caught up to the steps taken and written back to layer.values and the velocity."""
        _sync(self.layer.in_ptr, self.layer.in_perm, self.w, self.v, self.nxt, self.t, self._powers_to(self.t),
              self.layer.values, self.velocity)
        self.t = np.int32(0)

