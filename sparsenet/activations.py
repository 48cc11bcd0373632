"""Hidden activations as per-layer negative slopes, and the output losses (softmax + CE, sigmoid + MSE,
linear + MSE for the autoencoder's reconstruction).

Every hidden activation here is f(z) = z for z > 0 and slope * z otherwise, so one kernel serves
them all: relu (slope 0), leaky_relu (slope alpha) and All-ReLU (paper eq. 3).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .errors import DataError

HIDDEN_ACTIVATIONS = ("relu", "leaky_relu", "all_relu")
OUTPUTS = ("softmax", "sigmoid", "linear")


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


@njit(fastmath=False, cache=True)
def _linear_mse_targets(z, targets, delta, scale, start):
    n_out, batch = z.shape
    loss = start
    for b in range(batch):
        for c in range(n_out):
            d = np.float64(z[c, b]) - np.float64(targets[b, c])
            loss += 0.5 * d * d
            delta[c, b] = d * scale
    return loss


def output_loss(output: str, z: np.ndarray, labels: np.ndarray, delta: np.ndarray,
                start: float = 0.0) -> tuple[float, int]:
    """Summed loss and correct count of logits z (n_classes, batch); delta gets dLoss/dz / batch.

    labels: int (batch,) class indices in 0..n_classes-1, or float targets (batch, n_out) for the
    sigmoid output (in [0, 1]) and the linear one (the autoencoder's inputs); the correct count is then 0.
    The loss on float targets is half the squared error summed over the outputs.
    The per-sample losses are added, in order, to `start` (float64): a running sum over several
    calls equals one call on all the samples, bit for bit.
    """
    if z.shape != delta.shape:
        raise ValueError(f"shape mismatch: z {z.shape}, delta {delta.shape}")
    scale = 1.0 / z.shape[1]
    if labels.ndim == 2 and labels.dtype.kind == "f":
        if output not in ("sigmoid", "linear") or labels.shape != (z.shape[1], z.shape[0]):
            raise ValueError(f"float targets need the sigmoid or linear output and shape {(z.shape[1], z.shape[0])}, "
                             f"got output {output!r}, targets {labels.shape}")
        kernel = _sigmoid_mse_targets if output == "sigmoid" else _linear_mse_targets
        return float(kernel(z, labels, delta, scale, float(start))), 0
    if output == "linear":
        raise ValueError("the linear output reconstructs float targets (batch, n_out), not class labels")
    if labels.shape != (z.shape[1],):
        raise ValueError(f"shape mismatch: z {z.shape}, delta {delta.shape}, labels {labels.shape}")
    if labels.shape[0] and (labels.min() < 0 or labels.max() >= z.shape[0]):  # the kernels index z[label]
        raise DataError(f"label {int(labels.min()) if labels.min() < 0 else int(labels.max())} is outside the "
                        f"model's {z.shape[0]} outputs (0..{z.shape[0] - 1})")
    if output == "softmax":
        loss, correct = _softmax_cross_entropy(z, labels, delta, scale, float(start))
    elif output == "sigmoid":
        loss, correct = _sigmoid_mse(z, labels, delta, scale, float(start))
    else:
        raise ValueError(f"unknown output {output!r}; allowed: {', '.join(OUTPUTS)}")
    return float(loss), int(correct)
