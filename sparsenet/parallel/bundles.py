"""Models, gradients and optimizer state as flat lists of arrays for the transport, and back."""

from __future__ import annotations

import numpy as np

from ..checkpoint import LayerArrays
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


def replica_arrays(layers: list[LayerArrays]) -> list[np.ndarray]:
    """A model with its optimizer state (as the checkpoint holds it): per layer rows, cols, values, bias,
    then its state arrays in sorted name order (state_names)."""
    names = state_names(layers)
    return [a for la in layers for a in (la.rows, la.cols, la.values, la.bias, *(la.state[n] for n in names))]


def state_names(layers: list[LayerArrays]) -> list[str]:
    return sorted(layers[0].state)


def replica_layers(arrays: list[np.ndarray], sizes: list[int], names: list[str]) -> list[LayerArrays]:
    """The layers replica_arrays sent, for layer widths `sizes` and state `names`."""
    per, n_layers = 4 + len(names), len(sizes) - 1
    if len(arrays) != per * n_layers:
        raise ValueError(f"expected {per * n_layers} replica arrays, got {len(arrays)}")
    return [LayerArrays(sizes[l], sizes[l + 1], *arrays[per * l:per * l + 4], dict(zip(names, arrays[per * l + 4:per * (l + 1)])))
            for l in range(n_layers)]
