"""Every dataset sparsenet knows, in one place: how to load it and what is known of its size before
loading (for the memory planner). config's data.name choice, data.load_dataset and
memory.data_shape all read DATASETS; this module imports nothing heavy, so config may use it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class DatasetKind:
    """loader "module:function", called function(cfg, seed, *args), or function(cfg, *args) if not seeded.

    sizes: fixed (train samples, test samples, features, classes), or None; reads_file: loaded from
    data.path (required); synthetic: generated from the data section (its size is the config's);
    feature_bytes: bytes per feature in memory (1: the files hold bytes, kept as uint8 by data/rows.py);
    pixels: images whose raw values 0..255 the model reads as value / 255.
    """

    loader: str
    args: tuple = ()
    seeded: bool = True
    sizes: tuple[int, int, int, int] | None = None
    reads_file: bool = False
    synthetic: bool = False
    feature_bytes: int = 4
    pixels: bool = False

    def load(self, cfg, seed: int):
        module, name = self.loader.split(":")
        function = getattr(importlib.import_module(module), name)
        return function(cfg, seed, *self.args) if self.seeded else function(cfg, *self.args)


DATASETS = {
    "fashion_mnist": DatasetKind("sparsenet.data.idx:load_mnist_like", ("fashion_mnist",), False, (60000, 10000, 784, 10),
                                 feature_bytes=1, pixels=True),
    "mnist": DatasetKind("sparsenet.data.idx:load_mnist_like", ("mnist",), False, (60000, 10000, 784, 10),
                         feature_bytes=1, pixels=True),
    "cifar10": DatasetKind("sparsenet.data.cifar:load_cifar10", (), False, (50000, 10000, 3072, 10), feature_bytes=1,
                           pixels=True),
    "synthetic": DatasetKind("sparsenet.data.synthetic:load_synthetic", synthetic=True),
    "synthetic_hdf5": DatasetKind("sparsenet.data.synthfile:load_synthetic_hdf5", synthetic=True),
    "npz": DatasetKind("sparsenet.data.files:load_npz", reads_file=True),
    "csv": DatasetKind("sparsenet.data.files:load_csv", reads_file=True),
    "hdf5": DatasetKind("sparsenet.data.files:load_hdf5", reads_file=True),
}
