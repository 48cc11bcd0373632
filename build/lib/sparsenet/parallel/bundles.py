"""Models, gradients and optimizer state as flat lists of arrays for the transport, and back."""

from __future__ import annotations

import numpy as np

from ..model import SparseMLP
from ..sparse.layer import SparseLayer


def values_arrays(model: SparseMLP) -> list[np.ndarray]:
    """Weights then biases of every layer: what a worker needs while the topology is unchanged."""
    return [layer.values for layer in model.layers] + [layer.bias for layer in model.layers]


def topology_arrays(model: SparseMLP) -> list[np.ndarray]:
    """rows, cols, values, bias of every layer: a whole model."""
    return [a for layer in model.layers for a in (layer.rows, layer.cols, layer.values, layer.bias)]


def gradient_arrays(model: SparseMLP) -> list[np.ndarray]:
    return list(model.grads) + list(model.bias_grads)


def split_pairs(arrays: list[np.ndarray], n_layers: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """A [per-layer weights..., per-layer biases...] list split into its two halves, checked."""
    if len(arrays) != 2 * n_layers:
        raise ValueError(f"expected {2 * n_layers} arrays (weights and biases of {n_layers} layers), got {len(arrays)}")
    return arrays[:n_layers], arrays[n_layers:]


def adopt_values(model: SparseMLP, arrays: list[np.ndarray]) -> None:
    """Make the received float32 weights and biases the model's own, without copying (same topology).

    A received bundle's arrays are views of its message buffer, shared-memory slot or channel buffer,
    which stay reserved for as long as the model holds them, and are released when the next reply
    replaces them.
    """
    values, biases = split_pairs(arrays, len(model.layers))
    for layer, v, b in zip(model.layers, values, biases):
        if v.shape != layer.values.shape or b.shape != layer.bias.shape:
            raise ValueError(f"values of shape {v.shape} / {b.shape} do not fit a layer of {layer.nnz} connections")
        if v.dtype != np.float32 or b.dtype != np.float32 or not (v.flags.c_contiguous and b.flags.c_contiguous):
            raise ValueError(f"weights must be contiguous float32, got {v.dtype} / {b.dtype}")
        layer.values, layer.bias = v, b


def layers_from_topology(arrays: list[np.ndarray], sizes: list[int]) -> list[SparseLayer]:
    if len(arrays) != 4 * (len(sizes) - 1):
        raise ValueError(f"expected {4 * (len(sizes) - 1)} topology arrays, got {len(arrays)}")
    return [SparseLayer(sizes[l], sizes[l + 1], *arrays[4 * l:4 * l + 4]) for l in range(len(sizes) - 1)]


def state_arrays(model: SparseMLP, velocities: list[np.ndarray], bias_velocities: list[np.ndarray]) -> list[np.ndarray]:
    """A model with its optimizer state: topology arrays, then velocities, then bias velocities."""
    return topology_arrays(model) + list(velocities) + list(bias_velocities)


def split_state(arrays: list[np.ndarray], n_layers: int) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    topo = arrays[:4 * n_layers]
    velocities, bias_velocities = split_pairs(arrays[4 * n_layers:], n_layers)
    return topo, velocities, bias_velocities
