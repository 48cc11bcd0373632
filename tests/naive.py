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


def network_gradients(ws, bs, slopes, x, labels, masks=None):
    """Dense backprop of the batch-mean softmax cross-entropy; (summed loss, dW list, db list)."""
    zs, acts = network_forward(ws, bs, slopes, x, masks)
    loss, d = softmax_ce(acts[-1], labels)
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
