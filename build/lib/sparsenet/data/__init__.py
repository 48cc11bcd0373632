"""Datasets as float32 feature matrices and int64 labels: `load_dataset(cfg.data, cfg.seed)`."""

from __future__ import annotations

from sparsenet.data.cifar import load_cifar10
from sparsenet.data.files import load_csv, load_hdf5, load_npz
from sparsenet.data.idx import load_mnist_like
from sparsenet.data.prepare import Dataset
from sparsenet.data.synthetic import load_synthetic
from sparsenet.data.synthfile import load_synthetic_hdf5
from sparsenet.errors import DataError

__all__ = ["Dataset", "load_dataset", "LOADERS"]

# data.name -> loader(cfg, seed) -> Dataset
LOADERS = {
    "fashion_mnist": lambda cfg, seed: load_mnist_like(cfg, "fashion_mnist"),
    "mnist": lambda cfg, seed: load_mnist_like(cfg, "mnist"),
    "cifar10": lambda cfg, seed: load_cifar10(cfg),
    "synthetic": load_synthetic,
    "synthetic_hdf5": load_synthetic_hdf5,
    "npz": load_npz,
    "csv": load_csv,
    "hdf5": load_hdf5,
}


def load_dataset(cfg, seed: int) -> Dataset:
    """Load the dataset a DataConfig names; seed drives every shuffle/split (deterministic)."""
    loader = LOADERS.get(cfg.name)
    if loader is None:
        raise DataError(f"unknown dataset '{cfg.name}'; known: {', '.join(LOADERS)}")
    return loader(cfg, seed)
