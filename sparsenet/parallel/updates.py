"""Retain-valid-updates: carry a gradient computed on an older topology onto the current one.

Connections are followed by identity, not by position: a connection removed by SET and one
regrown later at the same position are different weights, so a stale gradient of the first
never touches the second.
"""

from __future__ import annotations

import numpy as np


def lineage(source: np.ndarray, old_nnz: int) -> np.ndarray:
    """Index of every old connection after a topology change, or -1 where it was removed.

    `source` is what the topology change returned: per new connection, its old index or -1.
    """
    new_index = np.full(old_nnz, -1, dtype=np.int64)
    kept = np.flatnonzero(source >= 0)
    new_index[source[kept]] = kept
    return new_index


def compose(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Lineage across two successive topology changes."""
    out = np.full(first.shape[0], -1, dtype=np.int64)
    alive = first >= 0
    out[alive] = second[first[alive]]
    return out


def then(first: list[np.ndarray | None], second: list[np.ndarray | None]) -> list[np.ndarray | None]:
    """Per-layer lineages across two successive changes; None: that layer did not change."""
    return [b if a is None else a if b is None else compose(a, b) for a, b in zip(first, second)]


def retain_valid(old_to_new: np.ndarray, grad: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions in the current layer of the gradient entries whose connection still exists, and their values."""
    if old_to_new.shape != grad.shape:
        raise ValueError(f"gradient has {grad.shape[0]} entries for {old_to_new.shape[0]} connections")
    valid = old_to_new >= 0
    return old_to_new[valid], np.ascontiguousarray(grad[valid])


def neuron_lineage(keep: np.ndarray) -> np.ndarray:
    """Index of every old neuron after neuron pruning with keep mask `keep` (bool), or -1 if removed."""
    return np.where(keep, np.cumsum(keep, dtype=np.int64) - 1, -1)


def topology_lineage(nnz_before: list[int], removal, set_sources: dict[int, np.ndarray]
                     ) -> tuple[list[np.ndarray | None], list[np.ndarray | None]]:
    """Per layer, old-to-new connection and bias (output neuron) maps across neuron pruning then SET.

    `removal` is a pruning.NeuronRemoval or None; None in a list means that layer did not change.
    """
    connections, biases = [], [None] * len(nnz_before)
    for l, nnz in enumerate(nnz_before):
        carry = None
        if removal is not None:
            carry = lineage(removal.sources[l], nnz)
            nnz = removal.sources[l].shape[0]
        if l in set_sources:
            after_set = lineage(set_sources[l], nnz)
            carry = after_set if carry is None else compose(carry, after_set)
        connections.append(carry)
    if removal is not None:
        for h, keep in enumerate(removal.keep, start=1):
            biases[h - 1] = neuron_lineage(keep)
    return connections, biases
