"""Datasets as float32 feature matrices and int64 labels: `load_dataset(cfg.data, cfg.seed)`."""

from __future__ import annotations

from sparsenet.data.prepare import Dataset
from sparsenet.data.registry import DATASETS
from sparsenet.errors import DataError

__all__ = ["Dataset", "load_dataset", "DATASETS"]


def load_dataset(cfg, seed: int) -> Dataset:
    """Load the dataset a DataConfig names; seed drives every shuffle/split (deterministic)."""
    kind = DATASETS.get(cfg.name)
    if kind is None:
        raise DataError(f"unknown dataset '{cfg.name}'; known: {', '.join(DATASETS)}")
    return kind.load(cfg, seed)
