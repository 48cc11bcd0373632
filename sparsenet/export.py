"""Export a model for other tools: npz (scipy CSR arrays, readable with numpy + scipy alone) and torch.

Layouts are documented in docs/python-api.md ("Export"); both hold each layer as CSR of shape
(n_out, n_in) with out = W @ x + bias, the hidden slopes and the input standardisation.
"""

from __future__ import annotations

import os

import numpy as np

from .api import Model
from .errors import SparsenetError

EXPORT_FORMAT = "sparsenet-export"
EXPORT_VERSION = 1


def npz_arrays(model: Model) -> dict[str, np.ndarray]:
    """The arrays of the npz export (see docs/python-api.md)."""
    arrays = {"format": np.array(EXPORT_FORMAT), "format_version": np.array(EXPORT_VERSION),
              "n_layers": np.array(len(model.network.layers)), "output": np.array(model.output),
              "slopes": np.asarray(model.slopes, dtype=np.float64)}
    for l, (w, b) in enumerate(zip(model.layers, model.biases)):
        arrays[f"layer{l}_data"] = w.data.astype(np.float32)
        arrays[f"layer{l}_indices"] = w.indices.astype(np.int32)
        arrays[f"layer{l}_indptr"] = w.indptr.astype(np.int64)
        arrays[f"layer{l}_shape"] = np.array(w.shape, dtype=np.int64)
        arrays[f"layer{l}_bias"] = b
    pre = model.preprocessing
    if pre.mean is not None:
        arrays["mean"], arrays["std"] = pre.mean, pre.std
    if pre.classes is not None:
        arrays["classes"] = pre.classes
    return arrays


def export_npz(model: Model, path: str | os.PathLike) -> None:
    arrays = npz_arrays(model)
    _write_atomic(path, lambda fh: np.savez(fh, **arrays), "npz export")


def torch_state(model: Model) -> dict:
    """{"state_dict": tensors (layers.<l>.weight as sparse CSR, layers.<l>.bias, slopes, mean, std),
    "output": str, "classes": list or None}; loadable with torch.load(..., weights_only=True)."""
    try:
        import torch
    except ImportError:
        raise SparsenetError("--format torch needs PyTorch: pip install torch") from None
    import warnings

    sd = {}
    for l, (w, b) in enumerate(zip(model.layers, model.biases)):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            sd[f"layers.{l}.weight"] = torch.sparse_csr_tensor(
                torch.from_numpy(w.indptr.astype(np.int64)), torch.from_numpy(w.indices.astype(np.int64)),
                torch.from_numpy(w.data.astype(np.float32)), size=w.shape, check_invariants=True)
        sd[f"layers.{l}.bias"] = torch.from_numpy(b)
    sd["slopes"] = torch.tensor(model.slopes, dtype=torch.float32)
    pre = model.preprocessing
    if pre.mean is not None:
        sd["mean"], sd["std"] = torch.from_numpy(pre.mean.copy()), torch.from_numpy(pre.std.copy())
    classes = None if pre.classes is None else pre.classes.tolist()
    return {"state_dict": sd, "output": model.output, "classes": classes}


def export_torch(model: Model, path: str | os.PathLike) -> None:
    state = torch_state(model)  # raises SparsenetError without torch
    import torch

    _write_atomic(path, lambda fh: torch.save(state, fh), "torch export")


def _write_atomic(path: str | os.PathLike, write, what: str) -> None:
    """write(file object) into a private temporary beside path, then renamed over it (fileio.replacing)."""
    from .fileio import prepare_file, replacing

    with replacing(prepare_file(path, what), what) as (_, fd):
        with os.fdopen(os.dup(fd), "wb") as fh:
            write(fh)
