"""Model selection without the test set: the validation split, the best epoch and early stopping.

The criterion is validation accuracy when the run holds out a validation set, else training loss;
never a test-set number. The best epoch and the early-stopping count are replayed from the metrics
history, so a resumed run continues them exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .errors import DataError

VALIDATION_SEED_OFFSET = 0x5E1EC7  # the split's generator: seed + this, apart from every other draw


def validation_split(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(fit, validation) sorted int64 indices into the training samples with labels y (n,): per class,
    round(fraction * count) samples drawn by a generator seeded with `seed` (stratified, reproducible)."""
    rng = np.random.default_rng(seed + VALIDATION_SEED_OFFSET)
    held = []
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        take = int(round(fraction * members.size))
        held.append(rng.permutation(members)[:take])
    val = np.sort(np.concatenate(held)) if held else np.empty(0, dtype=np.int64)
    if val.size == 0 or val.size == y.shape[0]:
        raise DataError(f"data.validation_fraction {fraction:g} of {y.shape[0]} training samples leaves "
                        f"{val.size} for validation and {y.shape[0] - val.size} for training; each needs at least 1")
    keep = np.ones(y.shape[0], dtype=bool)
    keep[val] = False
    return np.flatnonzero(keep).astype(np.int64), val.astype(np.int64)


@dataclass
class Selection:
    """The best epoch on `metric` (maximised if an accuracy, else minimised) and, with `patience`,
    early stopping after `patience` epochs without an improvement larger than `min_delta`."""

    metric: str
    patience: int | None = None
    min_delta: float = 0.0
    best: float | None = None         # the best value seen (strictly better: a new best checkpoint)
    best_epoch: int | None = None
    reference: float | None = None    # early stopping's best: moves only on improvements > min_delta
    wait: int = 0                     # epochs since `reference` last moved

    @classmethod
    def for_run(cls, has_validation: bool, patience: int | None, min_delta: float,
                history: list[dict] = (), accuracy: bool = True) -> "Selection":
        """The run's selection, with the epochs already in `history` replayed (a resumed run); accuracy
        False (an autoencoder): validation loss instead of validation accuracy."""
        held = "validation_accuracy" if accuracy else "validation_loss"
        selection = cls(held if has_validation else "train_loss", patience, min_delta)
        for row in history:
            if selection.metric in row:
                selection.update(row[selection.metric], row["epoch"])
        return selection

    @property
    def maximize(self) -> bool:
        return self.metric.endswith("accuracy")

    def _gain(self, value: float, than: float | None) -> float:
        if than is None:
            return math.inf
        return value - than if self.maximize else than - value

    def update(self, value: float, epoch: int) -> bool:
        """Record epoch `epoch`'s value of the metric; True if it is a new best."""
        improved = self._gain(value, self.best) > 0
        if improved:
            self.best, self.best_epoch = value, epoch
        if self._gain(value, self.reference) > self.min_delta:
            self.reference, self.wait = value, 0
        else:
            self.wait += 1
        return improved

    @property
    def should_stop(self) -> bool:
        """Early stopping is on and `patience` epochs passed without enough improvement."""
        return self.patience is not None and self.wait >= self.patience

    def row(self) -> dict:
        """What the metrics row records about the selection."""
        return {"selection_metric": self.metric, "best_epoch": self.best_epoch,
                "epochs_without_improvement": self.wait}


def hold_out_validation(data, fraction: float, seed: int):
    """(data with its validation samples taken out of the training part, (x_val, y_val)), or (data, None)
    for fraction 0. The test part is never touched."""
    if fraction == 0:
        return data, None
    import dataclasses

    fit, val = validation_split(np.asarray(data.y_train), fraction, seed)
    validation = (data.x_train[val], data.y_train[val])
    return dataclasses.replace(data, x_train=data.x_train[fit], y_train=data.y_train[fit]), validation
