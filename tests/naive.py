"""Slow dense references for the tests: the only place where a dense weight matrix may exist."""

from __future__ import annotations

import numpy as np


def dense_weights(layer) -> np.ndarray:
    """The layer's weights as a dense (n_in, n_out) float64 matrix."""
    w = np.zeros((layer.n_in, layer.n_out))
    w[layer.rows, layer.cols] = layer.values
    return w


def leaky(z: np.ndarray, slope: float) -> np.ndarray:
    return np.where(z > 0, z, slope * z)


def leaky_grad(z: np.ndarray, slope: float) -> np.ndarray:
    return np.where(z > 0, 1.0, slope)


def softmax_ce(logits: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    """Summed cross-entropy of logits (n_classes, batch) and dLoss_mean/dlogits."""
    z = logits - logits.max(axis=0)
    p = np.exp(z) / np.exp(z).sum(axis=0)
    batch = logits.shape[1]
    loss = -np.log(p[labels, np.arange(batch)]).sum()
    d = p.copy()
    d[labels, np.arange(batch)] -= 1.0
    return float(loss), d / batch


def sigmoid_mse(logits: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    """Summed half squared error of sigmoid(logits) (n_classes, batch) against one-hot labels, and dLoss_mean/dlogits."""
    a = 1.0 / (1.0 + np.exp(-logits))
    t = np.zeros_like(a)
    t[labels, np.arange(logits.shape[1])] = 1.0
    return float(0.5 * ((a - t) ** 2).sum()), (a - t) * a * (1 - a) / logits.shape[1]


def mse_targets(output: str, logits: np.ndarray, targets: np.ndarray) -> tuple[float, np.ndarray]:
    """Summed half squared error of the linear or sigmoid outputs (n_out, batch) against targets (batch, n_out)."""
    a = logits if output == "linear" else 1.0 / (1.0 + np.exp(-logits))
    d = a - targets.T
    grad = d if output == "linear" else d * a * (1 - a)
    return float(0.5 * (d ** 2).sum()), grad / logits.shape[1]


def network_forward(ws, bs, slopes, x, masks=None):
    """Dense forward in float64: returns pre-activations zs and activations acts (input first)."""
    acts, zs = [x], []
    for l, (w, b) in enumerate(zip(ws, bs)):
        z = w.T @ acts[-1] + b[:, None]
        zs.append(z)
        if l < len(ws) - 1:
            a = leaky(z, slopes[l])
            if masks is not None:
                a = a * masks[l]
            acts.append(a)
        else:
            acts.append(z)
    return zs, acts


def network_gradients(ws, bs, slopes, x, labels, masks=None, loss=softmax_ce):
    """Dense backprop of the batch-mean loss(logits, labels) (softmax cross-entropy unless given);
    (summed loss, dW list, db list)."""
    zs, acts = network_forward(ws, bs, slopes, x, masks)
    loss, d = loss(acts[-1], labels)
    dws, dbs = [None] * len(ws), [None] * len(ws)
    for l in range(len(ws) - 1, -1, -1):
        dws[l] = acts[l] @ d.T
        dbs[l] = d.sum(axis=1)
        if l > 0:
            d = (ws[l] @ d) * leaky_grad(zs[l - 1], slopes[l - 1])
            if masks is not None:
                d = d * masks[l - 1]
    return loss, dws, dbs


def csr_dense(x) -> np.ndarray:
    """CSR samples (data/indices/indptr/shape) as a dense float64 (n_rows, n_features) matrix (duplicates add)."""
    dense = np.zeros(x.shape)
    rows = np.repeat(np.arange(x.shape[0]), np.diff(x.indptr))
    np.add.at(dense, (rows, x.indices), x.data)
    return dense
