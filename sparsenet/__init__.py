"""sparsenet: truly sparse MLPs trained with Sparse Evolutionary Training on CPUs.

From Python: `SETClassifier` / `SETRegressor` (scikit-learn estimators; need scikit-learn),
`load(path)` a checkpoint as a `Model`, `Model.from_sparse(matrices, ...)`, `train(config, X, y)`.
Importing sparsenet starts no MPI and imports neither mpi4py nor scikit-learn (the estimators
import scikit-learn on first use).
"""

__version__ = "0.1.0"

__all__ = ["SETClassifier", "SETRegressor", "Model", "load", "train", "__version__"]

from . import jitcache as _jitcache  # noqa: E402 - before any kernel is defined

_jitcache.use_private_cache()
_jitcache.use_full_vector_width()

import types as _types  # noqa: E402

from . import train as _train_module  # noqa: E402
from .api import Model, load  # noqa: E402


class _CallableModule(_types.ModuleType):
    """sparsenet.train is both the epoch-loop module (sparsenet/train.py: `from sparsenet.train
    import run`, `monkeypatch.setattr("sparsenet.train.run", ...)` keep working) and the API call
    `sparsenet.train(config, X, y, ...)` (api.train), without one name shadowing the other."""

    def __call__(self, config, X, y, **kwargs):
        from .api import train as _train

        return _train(config, X, y, **kwargs)


_train_module.__class__ = _CallableModule
train = _train_module

_LAZY = {"SETClassifier": "estimators", "SETRegressor": "estimators"}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'sparsenet' has no attribute {name!r}")
    if module == "estimators":
        try:
            import sklearn  # noqa: F401
        except ImportError:
            raise ImportError(f"sparsenet.{name} needs scikit-learn >= 1.6: pip install 'sparsenet[sklearn]'") from None
    from importlib import import_module

    return getattr(import_module(f"sparsenet.{module}"), name)


def __dir__():
    return sorted([*globals(), *_LAZY])
