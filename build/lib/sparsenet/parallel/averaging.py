"""Phase-2 model averaging: the union-average of K sparse replicas, pruned back to a target nnz."""

from __future__ import annotations

import numpy as np

from ..sparse.layer import SparseLayer


def union_average(replicas: list[SparseLayer]) -> SparseLayer:
    """Mean of K replicas of one layer over the union of their connections (absent = 0).

    Values are summed in float64 in replica order, so the result does not depend on thread count.
    """
    first = replicas[0]
    for r in replicas[1:]:
        if (r.n_in, r.n_out) != (first.n_in, first.n_out):
            raise ValueError(f"replica shapes differ: {r.n_in}x{r.n_out} vs {first.n_in}x{first.n_out}")
    keys = np.concatenate([r.keys() for r in replicas])
    values = np.concatenate([r.values.astype(np.float64) for r in replicas])
    order = np.argsort(keys, kind="stable")
    keys, values = keys[order], values[order]
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    sums = np.add.reduceat(values, starts) if keys.shape[0] else values
    bias = np.mean([r.bias.astype(np.float64) for r in replicas], axis=0)
    k = len(replicas)
    return SparseLayer.from_keys(first.n_in, first.n_out, keys[starts], (sums / k).astype(np.float32),
                                 bias.astype(np.float32))


def prune_to_nnz(layer: SparseLayer, target: int) -> SparseLayer:
    """Keep the `target` connections of largest magnitude (those nearest zero on either side go).

    Ties are broken by position, so the result is deterministic.
    """
    if layer.nnz <= target:
        return layer
    order = np.lexsort((np.arange(layer.nnz), -np.abs(layer.values)))
    keep = np.sort(order[:target])
    return SparseLayer.from_keys(layer.n_in, layer.n_out, layer.keys()[keep], layer.values[keep], layer.bias)


def average_replicas(replicas: list[list[SparseLayer]], targets: list[int]) -> list[SparseLayer]:
    """Per layer: union-average the K replicas, then prune back to that layer's target nnz."""
    n_layers = len(replicas[0])
    return [prune_to_nnz(union_average([r[l] for r in replicas]), targets[l]) for l in range(n_layers)]
