"""Hidden activations as per-layer negative slopes, and the output losses (softmax + CE, sigmoid + MSE).

Every hidden activation here is f(z) = z for z > 0 and slope * z otherwise, so one kernel serves
them all: relu (slope 0), leaky_relu (slope alpha) and All-ReLU (paper eq. 3).
"""

from __future__ import annotations

import numpy as np
from numba import njit

HIDDEN_ACTIVATIONS = ("relu", "leaky_relu", "all_relu")
OUTPUTS = ("softmax", "sigmoid")


def hidden_slopes(activation: str, alpha: float, n_hidden: int) -> list[float]:
    """Negative-side slope of each hidden layer, first hidden layer first.

    All-ReLU numbers neuron layers from the input (l = 1), so the first hidden layer is l = 2:
    slope -alpha where l is even, +alpha where l is odd.
    """
    if activation == "relu":
        return [0.0] * n_hidden
    if activation == "leaky_relu":
        return [float(alpha)] * n_hidden
    if activation == "all_relu":
        return [-float(alpha) if (h + 2) % 2 == 0 else float(alpha) for h in range(n_hidden)]
    raise ValueError(f"unknown activation {activation!r}; allowed: {', '.join(HIDDEN_ACTIVATIONS)}")


@njit(fastmath=False, cache=True)
def _softmax_cross_entropy(z, labels, delta, scale, start):
    n_classes, batch = z.shape
    loss = start
    correct = 0
    for b in range(batch):
        m = z[0, b]
        best = 0
        for c in range(1, n_classes):
            if z[c, b] > m:
                m = z[c, b]
                best = c
        total = 0.0
        for c in range(n_classes):
            total += np.exp(np.float64(z[c, b] - m))
        log_total = np.log(total)
        y = labels[b]
        loss += log_total - (z[y, b] - m)
        correct += best == y
        for c in range(n_classes):
            p = np.exp(np.float64(z[c, b] - m) - log_total)
            delta[c, b] = (p - (1.0 if c == y else 0.0)) * scale
    return loss, correct


@njit(fastmath=False, cache=True)
def _sigmoid_mse(z, labels, delta, scale, start):
    n_classes, batch = z.shape
    loss = start
    correct = 0
    for b in range(batch):
        y = labels[b]
        best = 0
        for c in range(n_classes):
            a = 1.0 / (1.0 + np.exp(-np.float64(z[c, b])))
            t = 1.0 if c == y else 0.0
            loss += 0.5 * (a - t) ** 2
            delta[c, b] = (a - t) * a * (1.0 - a) * scale
            if z[c, b] > z[best, b]:
                best = c
        correct += best == y
    return loss, correct


@njit(fastmath=False, cache=True)
def _sigmoid_mse_targets(z, targets, delta, scale, start):
    n_out, batch = z.shape
    loss = start
    for b in range(batch):
        for c in range(n_out):
            a = 1.0 / (1.0 + np.exp(-np.float64(z[c, b])))
            t = np.float64(targets[b, c])
            loss += 0.5 * (a - t) ** 2
            delta[c, b] = (a - t) * a * (1.0 - a) * scale
    return loss


def output_loss(output: str, z: np.ndarray, labels: np.ndarray, delta: np.ndarray,
                start: float = 0.0) -> tuple[float, int]:
    """Summed loss and correct count of logits z (n_classes, batch); delta gets dLoss/dz / batch.

    labels: int (batch,) class indices in 0..n_classes-1, or, for the sigmoid output only, float
    targets (batch, n_out) in [0, 1] (regression; the correct count is then 0).
    The per-sample losses are added, in order, to `start` (float64): a running sum over several
    calls equals one call on all the samples, bit for bit.
    """
    if z.shape != delta.shape:
        raise ValueError(f"shape mismatch: z {z.shape}, delta {delta.shape}")
    scale = 1.0 / z.shape[1]
    if labels.ndim == 2 and labels.dtype.kind == "f":
        if output != "sigmoid" or labels.shape != (z.shape[1], z.shape[0]):
            raise ValueError(f"float targets need the sigmoid output and shape {(z.shape[1], z.shape[0])}, "
                             f"got output {output!r}, targets {labels.shape}")
        return float(_sigmoid_mse_targets(z, labels, delta, scale, float(start))), 0
    if labels.shape != (z.shape[1],):
        raise ValueError(f"shape mismatch: z {z.shape}, delta {delta.shape}, labels {labels.shape}")
    if labels.shape[0] and (labels.min() < 0 or labels.max() >= z.shape[0]):
        # the kernels index z[label]: a label outside the output layer would read out of bounds
        raise ValueError(f"labels must be class indices in 0..{z.shape[0] - 1}, "
                         f"got {labels.min()}..{labels.max()}")
    if output == "softmax":
        loss, correct = _softmax_cross_entropy(z, labels, delta, scale, float(start))
    elif output == "sigmoid":
        loss, correct = _sigmoid_mse(z, labels, delta, scale, float(start))
    else:
        raise ValueError(f"unknown output {output!r}; allowed: {', '.join(OUTPUTS)}")
    return float(loss), int(correct)
