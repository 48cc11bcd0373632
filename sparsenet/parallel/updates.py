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


def retain_valid(old_to_new: np.ndarray, grad: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions in the current layer of the gradient entries whose connection still exists, and their values."""
    if old_to_new.shape != grad.shape:
        raise ValueError(f"gradient has {grad.shape[0]} entries for {old_to_new.shape[0]} connections")
    valid = old_to_new >= 0
    return old_to_new[valid], np.ascontiguousarray(grad[valid])
