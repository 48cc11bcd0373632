"""Neuron pruning that shrinks layers: importance (sum of |incoming weights|), Importance Pruning, NPSET.

Hidden neuron layers are numbered h = 1..L-1 as in `SparseMLP.sizes` (0 is the input, L the
output); model.layers[h - 1] feeds hidden layer h and model.layers[h] reads from it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .model import SparseMLP
from .sparse.layer import SparseLayer


def neuron_importance(layer: SparseLayer) -> np.ndarray:
    """Sum of |incoming weights| of each output neuron of `layer` (paper eq. 4), float64 (n_out,)."""
    return np.bincount(layer.cols, weights=np.abs(layer.values), minlength=layer.n_out)


def input_strength(layer: SparseLayer) -> np.ndarray:
    """Sum of |outgoing weights| of each input neuron of `layer` (QuickSelection's strength), float64 (n_in,)."""
    return np.bincount(layer.rows, weights=np.abs(layer.values), minlength=layer.n_in)


def connection_counts(model: SparseMLP, hidden: int) -> np.ndarray:
    """Incoming plus outgoing connections of each neuron of hidden layer `hidden`, int64 (n_h,)."""
    n = model.sizes[hidden]
    incoming = np.bincount(model.layers[hidden - 1].cols, minlength=n)
    outgoing = np.bincount(model.layers[hidden].rows, minlength=n)
    return (incoming + outgoing).astype(np.int64)


def keep_by_importance(importance: np.ndarray, percentile: float) -> np.ndarray:
    """Keep mask (bool, n): neurons whose importance is not below the layer's `percentile`-th percentile.

    The most important neuron always stays, so a layer never vanishes.
    """
    if importance.shape[0] == 0:
        return np.zeros(0, dtype=bool)
    keep = importance >= np.percentile(importance, percentile)
    keep[int(np.argmax(importance))] = True
    return keep


def keep_most_connected(degree: np.ndarray, importance: np.ndarray, fraction: float) -> np.ndarray:
    """Keep mask (bool, n) dropping round(fraction * n) neurons with the fewest connections (NPSET).

    Ties go to the lower importance, then the lower index; at least one neuron stays.
    """
    n = degree.shape[0]
    count = min(int(round(fraction * n)), max(n - 1, 0))
    keep = np.ones(n, dtype=bool)
    if count:
        order = np.lexsort((np.arange(n), importance, degree))
        keep[order[:count]] = False
    return keep


@dataclass
class NeuronRemoval:
    """What `remove_neurons` did: per hidden layer the keep mask, per model layer the connection source."""

    keep: list[np.ndarray]      # keep[h - 1]: bool (old n_h,) for hidden layer h
    sources: list[np.ndarray]   # sources[l]: int64 (new nnz,) old index of each remaining connection

    @property
    def removed(self) -> list[int]:
        return [int(k.shape[0] - k.sum()) for k in self.keep]


def remove_neurons(model: SparseMLP, keep: list[np.ndarray]) -> NeuronRemoval:
    """Remove the hidden neurons not in `keep` (one bool mask per hidden layer), in place.

    Their incoming and outgoing connections and biases go and the layers shrink. A removed neuron
    with no incoming connection outputs the constant f(bias); its outgoing contribution is folded
    into the next layer's biases, so removing it changes no output.
    """
    sizes = model.sizes
    hidden = len(sizes) - 2
    if len(keep) != hidden:
        raise ValueError(f"need one keep mask per hidden layer ({hidden}), got {len(keep)}")
    for h, mask in enumerate(keep, start=1):
        if mask.dtype != np.bool_ or mask.shape != (sizes[h],):
            raise ValueError(f"keep mask of hidden layer {h} must be bool of shape ({sizes[h]},), "
                             f"got {mask.dtype} {mask.shape}")
        if not mask.any():
            raise ValueError(f"keep mask of hidden layer {h} removes every neuron")
    masks = [None, *keep, None]  # by neuron layer; input and output neurons always stay
    folded = [_folded_bias(model, h, masks[h]) for h in range(1, hidden + 1)]
    sources = []
    new_layers = []
    for l, layer in enumerate(model.layers):
        rows_keep, cols_keep = masks[l], masks[l + 1]
        conn_keep = np.ones(layer.nnz, dtype=bool)
        if rows_keep is not None:
            conn_keep &= rows_keep[layer.rows]
        if cols_keep is not None:
            conn_keep &= cols_keep[layer.cols]
        source = np.flatnonzero(conn_keep)
        bias = layer.bias.copy() if l == 0 else layer.bias + folded[l - 1]
        # Renumbering kept neurons in order keeps the connections output-major.
        rows = _renumber(rows_keep, layer.rows[source])
        cols = _renumber(cols_keep, layer.cols[source])
        n_in = layer.n_in if rows_keep is None else int(rows_keep.sum())
        n_out = layer.n_out if cols_keep is None else int(cols_keep.sum())
        if cols_keep is not None:
            bias = bias[cols_keep]
        new_layers.append(SparseLayer(n_in, n_out, rows, cols, layer.values[source], bias))
        sources.append(source.astype(np.int64))
    model.layers = new_layers
    model.topology_changed()
    return NeuronRemoval([m.copy() for m in keep], sources)


def _renumber(mask: np.ndarray | None, index: np.ndarray) -> np.ndarray:
    if mask is None:
        return index
    new_index = np.cumsum(mask, dtype=np.int64) - 1
    return new_index[index].astype(index.dtype)


def _folded_bias(model: SparseMLP, h: int, keep: np.ndarray) -> np.ndarray:
    """Bias shift (float32, n_{h+1}) standing in for hidden layer h's removed neurons without inputs."""
    incoming, outgoing = model.layers[h - 1], model.layers[h]
    no_input = np.bincount(incoming.cols, minlength=incoming.n_out) == 0
    constant = (~keep) & no_input
    if not constant.any():
        return np.zeros(outgoing.n_out, dtype=np.float32)
    b = incoming.bias.astype(np.float64)
    slope = model.slopes[h - 1]
    activation = np.where(b > 0, b, slope * b) * constant  # f(bias) for those neurons, 0 elsewhere
    return np.bincount(outgoing.cols, weights=outgoing.values * activation[outgoing.rows],
                       minlength=outgoing.n_out).astype(np.float32)


def select_by_importance(model: SparseMLP, percentile: float) -> list[np.ndarray]:
    """Importance Pruning's keep masks, one per hidden layer."""
    return [keep_by_importance(neuron_importance(model.layers[h - 1]), percentile)
            for h in range(1, len(model.sizes) - 1)]


def select_npset(model: SparseMLP, fraction: float) -> list[np.ndarray]:
    """NPSET's keep masks: per hidden layer, drop the `fraction` with the fewest connections."""
    return [keep_most_connected(connection_counts(model, h), neuron_importance(model.layers[h - 1]), fraction)
            for h in range(1, len(model.sizes) - 1)]


def pruning_due(method: str, start_epoch: int, every: int, duration: int, completed_epoch: int) -> bool:
    """Whether neurons are pruned after `completed_epoch` (between it and the next epoch)."""
    if method == "importance":
        return completed_epoch >= start_epoch and (completed_epoch - start_epoch) % every == 0
    if method == "npset":
        return start_epoch <= completed_epoch < start_epoch + duration
    return False
