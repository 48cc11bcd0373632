"""Synthetic classification data from sklearn.datasets.make_classification."""

from __future__ import annotations

from sparsenet.data.prepare import Dataset, finish, split
from sparsenet.errors import DataError


def load_synthetic(cfg, seed: int) -> Dataset:
    """cfg.samples samples of cfg.features features, split with cfg.test_fraction; seeded."""
    try:
        from sklearn.datasets import make_classification
    except ImportError as e:
        raise DataError("data.name 'synthetic' needs scikit-learn: pip install scikit-learn, or pip install sparsenet[sklearn]") from e
    try:
        x, y = make_classification(
            n_samples=cfg.samples, n_features=cfg.features, n_informative=cfg.informative,
            n_redundant=cfg.redundant, n_classes=cfg.classes, random_state=seed)
    except ValueError as e:
        # e.g. n_classes * n_clusters_per_class > 2 ** n_informative
        raise DataError(f"cannot make synthetic data with samples={cfg.samples}, "
                        f"features={cfg.features}, informative={cfg.informative}, "
                        f"redundant={cfg.redundant}, classes={cfg.classes}: "
                        f"{' '.join(str(e).split())}") from e
    x_train, y_train, x_test, y_test = split(x, y, cfg.test_fraction, seed, "dataset 'synthetic'")
    return finish(cfg, "synthetic", x_train, y_train, x_test, y_test, cfg.classes)
