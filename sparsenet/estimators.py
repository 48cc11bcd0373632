"""scikit-learn estimators: SETClassifier (softmax + cross-entropy) and SETRegressor (sigmoid + MSE).

Parameters are the YAML config keys (train.lr -> lr, model.hidden -> hidden, pruning.method ->
pruning, pruning.every -> pruning_every, data.validation_fraction -> validation_fraction,
train.early_stopping_patience -> n_iter_no_change, train.early_stopping_min_delta -> tol, ...; PARAMETERS
lists them all) with the same defaults (no validation split, no early stopping);
fit builds a Config from them, so config.py validates them with its rules and messages. Nothing
is written or printed unless verbose. scipy.sparse input stays sparse: the first layer
reads CSR batches (sparse/csr.py), standardised by scale only (docs/data.md).
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from .api import Model, _standardized, check_memory, fit_epochs, forward_logits, probabilities
from .config import Config, config_from_dict, config_to_dict
from .errors import ConfigError, DataError, InputError, ParameterError
from .inputs import Preprocessing, as_samples, check_sparse_indices

__all__ = ["SETClassifier", "SETRegressor", "PARAMETERS"]

# estimator parameter -> config key (SETClassifier also has output -> model.output)
PARAMETERS = {
    "hidden": "model.hidden", "epsilon": "model.epsilon", "activation": "model.activation", "alpha": "model.alpha",
    "init": "model.init", "dropout": "model.dropout",
    "epochs": "train.epochs", "batch_size": "train.batch_size", "lr": "train.lr", "momentum": "train.momentum",
    "weight_decay": "train.weight_decay", "weight_decay_mode": "train.weight_decay_mode",
    "eval_batch_size": "train.eval_batch_size",
    "zeta": "evolution.zeta", "evolve_output": "evolution.evolve_output",
    "pruning": "pruning.method", "pruning_start_epoch": "pruning.start_epoch", "pruning_every": "pruning.every",
    "pruning_percentile": "pruning.percentile", "pruning_fraction": "pruning.fraction",
    "pruning_duration": "pruning.duration",
    "standardize": "data.standardize", "seed": "seed", "threads": "threads",
    # validation and early stopping, named as scikit-learn's MLPClassifier names them
    "validation_fraction": "data.validation_fraction", "n_iter_no_change": "train.early_stopping_patience",
    "tol": "train.early_stopping_min_delta",
}

_DEFAULTS = config_to_dict(Config())
# besides model.*, the parameters a warm start or partial_fit cannot change (the network and its statistics use them)
FROZEN_KEYS = ("seed", "data.standardize")


def _cut(values: list, limit: int = 20) -> str:
    return str(values[:limit])[:-1] + (", ...]" if len(values) > limit else "]")


def _at(tree: dict, key: str):
    """The value of a dotted key ("train.lr") in a nested config dict (config_to_dict)."""
    for part in key.split("."):
        tree = tree[part]
    return tree


def _default(key: str):
    node = _at(_DEFAULTS, key)
    return tuple(node) if isinstance(node, list) else node


class _SETBase(BaseEstimator):
    _output = "softmax"

    def _keep(self, params: dict) -> None:
        """Store __init__'s arguments (its locals()) as attributes of the same names, as scikit-learn expects."""
        for name, value in params.items():
            if name != "self":
                setattr(self, name, value)

    def _params_config(self) -> Config:
        """A Config from the parameters, validated by config.py (its message, naming the parameter)."""
        raw: dict = {}
        mapping = dict(PARAMETERS, **({"output": "model.output"} if "output" in self.get_params() else {}))
        for param, key in mapping.items():
            *path, leaf = key.split(".")
            node = raw
            for part in path:
                node = node.setdefault(part, {})
            node[leaf] = getattr(self, param)
        raw["model"].setdefault("output", self._output)
        raw["train"]["progress"] = bool(self.verbose)
        try:
            return config_from_dict(raw)
        except ConfigError as e:
            message = str(e)
            for param, key in mapping.items():
                message = message.replace(f"config key '{key}'", f"parameter '{param}' (config key '{key}')")
            raise ParameterError(f"{type(self).__name__}: {message}") from None

    def _validate(self, X, y="no_validation", *, reset: bool, **y_options):
        check_sparse_indices(X, "X")  # before scikit-learn converts it
        return validate_data(self, X, y, reset=reset, accept_sparse="csr", dtype=np.float32, **y_options)

    def _train(self, X, targets: np.ndarray, cfg: Config, first: bool, partial: bool, n_out: int,
               strata: np.ndarray) -> None:
        """Epochs on X, targets; fit (not partial_fit) holds out validation_fraction of them (stratified by
        strata, seeded), stops after n_iter_no_change epochs without a gain > tol (validation score, else
        training loss, within this call) and keeps the epoch best on validation for predicting."""
        from .api import _rows, snapshot
        from .selection import validation_split
        from .train import new_state, set_threads

        set_threads(cfg.threads)
        if not first:
            self._continue_with(cfg)
        self._cfg = cfg
        x = as_samples(X, where="X") if first else as_samples(X, self.n_features_in_, self._pre)
        validation = None
        if not partial and cfg.data.validation_fraction > 0:  # held out before the statistics are taken
            try:
                fit, held = validation_split(strata, cfg.data.validation_fraction, cfg.seed)
            except DataError as e:  # too few samples for the share: a ValueError, as scikit-learn expects
                raise InputError(f"{type(self).__name__}: {e} (n_samples={strata.shape[0]})".replace(
                    "data.validation_fraction", "validation_fraction")) from None
            validation, x, targets = (_rows(x, held), targets[held]), _rows(x, fit), targets[fit]
        if first:
            check_memory(cfg, x, n_out, validation)
            self._pre = Preprocessing.fit(x, cfg.data.standardize)
            x = _standardized(x, self._pre)
            if validation is not None:
                validation = (_standardized(validation[0], self._pre), validation[1])
            self._state = new_state(cfg, x.shape[1], n_out)
        self._best = None
        fit_epochs(self._state, cfg, x, targets, 1 if partial else cfg.train.epochs, validation=validation,
                   verbose=bool(self.verbose), fresh_selection=True,
                   on_best=lambda epoch: setattr(self, "_best", (snapshot(self._state.model), epoch)))
        self.history_ = self._state.history
        self.n_iter_ = self._state.epoch
        self.best_epoch_ = self._best[1] if self._best else self._state.epoch
        self._eval_batch = cfg.train.eval_batch_size

    def _continue_with(self, cfg: Config) -> None:
        """warm_start / partial_fit go on with the fitted network: a changed architecture, seed or standardize is a
        ParameterError (as on `sparsenet train --resume`); changed train parameters (lr, momentum, weight_decay,
        weight_decay_mode) apply from this call on, the optimizer's state kept."""
        from .optim import make_optimizer

        old = getattr(self, "_cfg", None)
        if old is None:  # fitted by a version that did not keep its config
            return
        before, now = config_to_dict(old), config_to_dict(cfg)
        mapping = dict(PARAMETERS, output="model.output")
        frozen = [(param, key) for param, key in mapping.items() if key.startswith("model.") or key in FROZEN_KEYS]
        changed = [f"{param} ({_at(before, key)!r} -> {_at(now, key)!r})" for param, key in frozen
                   if _at(before, key) != _at(now, key)]
        if changed:
            raise ParameterError(f"{type(self).__name__}: warm_start and partial_fit continue the fitted network, but "
                                 f"{', '.join(changed)} changed since it was fitted; set them back, or fit anew with "
                                 f"warm_start=False")
        if cfg.train != old.train:
            state = self._state
            optimizer = make_optimizer(cfg, state.model)
            optimizer.load_state([state.optimizer.layer_state(l) for l in range(len(state.model.layers))],
                                 state.optimizer.scalars())
            state.optimizer = optimizer

    def _network(self):
        """The network that predicts: the epoch best on validation (fit with validation_fraction), else the last."""
        return self._best[0] if getattr(self, "_best", None) else self._state.model

    def _model(self, cfg: Config, classes) -> Model:
        return Model(self._network(), Preprocessing(self._pre.mean, self._pre.std, classes), cfg,
                     self._state.history, self.best_epoch_)

    def _logits(self, X) -> np.ndarray:
        check_is_fitted(self)
        X = self._validate(X, reset=False)
        return forward_logits(self._network(), as_samples(X, self.n_features_in_, self._pre), self._eval_batch)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        return tags


class SETClassifier(ClassifierMixin, _SETBase):
    """Truly sparse MLP classifier trained with SET (softmax + cross-entropy by default).

    Labels are strings or integers (whole-number floats too; scikit-learn refuses continuous ones):
    classes_ holds them sorted, output i stands for classes_[i]. `warm_start=True` makes fit
    continue the same network and optimizer for `epochs` more epochs; `partial_fit` trains one
    epoch per call (the first call needs `classes`). With standardize=True the statistics come from
    the first fit (or partial_fit) call. model_ is the trained sparsenet.Model (layers as scipy CSR).
    validation_fraction > 0: fit holds out that stratified share of X and predicts with the epoch best on its
    accuracy (best_epoch_; as MLPClassifier's early_stopping); n_iter_no_change (None: off) stops a fit after
    that many epochs without a gain > tol (validation accuracy, else training loss). partial_fit uses neither.
    """

    def __init__(self, hidden=_default("model.hidden"), epsilon=_default("model.epsilon"),
                 activation=_default("model.activation"), alpha=_default("model.alpha"),
                 init=_default("model.init"), dropout=_default("model.dropout"), output=_default("model.output"),
                 epochs=_default("train.epochs"), batch_size=_default("train.batch_size"), lr=_default("train.lr"),
                 momentum=_default("train.momentum"), weight_decay=_default("train.weight_decay"),
                 weight_decay_mode=_default("train.weight_decay_mode"),
                 eval_batch_size=_default("train.eval_batch_size"),
                 zeta=_default("evolution.zeta"), evolve_output=_default("evolution.evolve_output"),
                 pruning=_default("pruning.method"), pruning_start_epoch=_default("pruning.start_epoch"),
                 pruning_every=_default("pruning.every"), pruning_percentile=_default("pruning.percentile"),
                 pruning_fraction=_default("pruning.fraction"), pruning_duration=_default("pruning.duration"),
                 standardize=_default("data.standardize"), seed=_default("seed"), threads=_default("threads"),
                 validation_fraction=_default("data.validation_fraction"),
                 n_iter_no_change=_default("train.early_stopping_patience"),
                 tol=_default("train.early_stopping_min_delta"), warm_start=False, verbose=False):
        self._keep(locals())

    def fit(self, X, y):
        """Train `epochs` epochs on X (n_samples, n_features) and labels y (n_samples,)."""
        return self._fit(X, y, partial=False, classes=None)

    def partial_fit(self, X, y, classes=None):
        """One epoch on X, y; the first call needs `classes` (every label the model will see)."""
        return self._fit(X, y, partial=True, classes=classes)

    def _fit(self, X, y, *, partial: bool, classes):
        cfg = self._params_config()
        first = not hasattr(self, "_state") or not (partial or self.warm_start)
        X, y = self._validate(X, y, reset=first)
        check_classification_targets(y)
        if first:
            if partial and classes is None:
                raise ValueError("SETClassifier.partial_fit: the first call needs classes=[every label]")
            known = np.unique(y if classes is None else np.asarray(classes))
            if known.shape[0] < 2:
                raise ValueError(f"SETClassifier needs at least 2 classes in y, got 1 class ({known[0].item()!r})")
        else:
            known = self.classes_
            if classes is not None and not np.array_equal(np.unique(np.asarray(classes)), known):
                raise ValueError(f"SETClassifier.partial_fit: classes={_cut(np.asarray(classes).tolist())} differs from "
                                 f"the first call's classes_ {_cut(known.tolist())}; the outputs are fixed by the first call")
        index = np.searchsorted(known, y)
        unknown = (index >= known.shape[0]) | (known[np.minimum(index, known.shape[0] - 1)] != y)
        if unknown.any():
            raise ValueError(f"y holds a label outside classes_: {y[np.argmax(unknown)].item()!r}; "
                             f"classes_ are {known[:20].tolist()}")
        self.classes_ = known
        index = np.ascontiguousarray(index, dtype=np.int64)
        self._train(X, index, cfg, first, partial, known.shape[0], index)
        self.model_ = self._model(cfg, _storable_classes(known))
        return self

    def predict_proba(self, X) -> np.ndarray:
        """(n_samples, n_classes) float64, columns in the order of classes_."""
        z = self._logits(X)
        return probabilities(self._network().output, z)

    def predict(self, X) -> np.ndarray:
        z = self._logits(X)
        return self.classes_[np.argmax(z, axis=1)]


def _storable_classes(known: np.ndarray) -> np.ndarray | None:
    """classes_ as a checkpoint stores them (int64 or str, same order), or None (outputs named 0..n-1) for labels
    that are neither: pandas' object strings and whole-number floats (1.0, 4.0) keep their names in model_."""
    if known.dtype.kind in "iuU":
        return known
    if known.dtype.kind == "O" and all(isinstance(v, str) for v in known.tolist()):
        return known.astype(str)
    if known.dtype.kind == "f" and np.all(np.isfinite(known)) and np.all(known == np.round(known)) \
            and np.all(np.abs(known) < 2**63):
        return known.astype(np.int64)
    return None


class SETRegressor(RegressorMixin, _SETBase):
    """Truly sparse MLP regressor trained with SET: sigmoid outputs and mean squared error.

    Each target column is mapped linearly from its training range [min, max] onto [0.1, 0.9] of
    the sigmoid (scale kept from the first fit); predictions map back, so they lie within the
    training range widened by 1/8 of it on either side. y may be 1-D or (n_samples, n_targets).
    validation_fraction, n_iter_no_change, tol: as SETClassifier's, on validation loss (mean squared error).
    """

    _output = "sigmoid"
    MARGIN = 0.1

    def __init__(self, hidden=_default("model.hidden"), epsilon=_default("model.epsilon"),
                 activation=_default("model.activation"), alpha=_default("model.alpha"),
                 init=_default("model.init"), dropout=_default("model.dropout"),
                 epochs=_default("train.epochs"), batch_size=_default("train.batch_size"), lr=_default("train.lr"),
                 momentum=_default("train.momentum"), weight_decay=_default("train.weight_decay"),
                 weight_decay_mode=_default("train.weight_decay_mode"),
                 eval_batch_size=_default("train.eval_batch_size"),
                 zeta=_default("evolution.zeta"), evolve_output=_default("evolution.evolve_output"),
                 pruning=_default("pruning.method"), pruning_start_epoch=_default("pruning.start_epoch"),
                 pruning_every=_default("pruning.every"), pruning_percentile=_default("pruning.percentile"),
                 pruning_fraction=_default("pruning.fraction"), pruning_duration=_default("pruning.duration"),
                 standardize=_default("data.standardize"), seed=_default("seed"), threads=_default("threads"),
                 validation_fraction=_default("data.validation_fraction"),
                 n_iter_no_change=_default("train.early_stopping_patience"),
                 tol=_default("train.early_stopping_min_delta"), warm_start=False, verbose=False):
        self._keep(locals())

    def fit(self, X, y):
        """Train `epochs` epochs on X (n_samples, n_features) and targets y (n_samples[, n_targets])."""
        return self._fit(X, y, partial=False)

    def partial_fit(self, X, y):
        """One epoch on X, y (the first call fixes the target scaling)."""
        return self._fit(X, y, partial=True)

    def _fit(self, X, y, *, partial: bool):
        cfg = self._params_config()
        first = not hasattr(self, "_state") or not (partial or self.warm_start)
        X, y = self._validate(X, y, reset=first, multi_output=True, y_numeric=True)
        y2 = np.asarray(y, dtype=np.float64).reshape(y.shape[0], -1)
        if first:
            self._y_shape = y.shape[1:]
            self._y_min = y2.min(axis=0)
            span = y2.max(axis=0) - self._y_min
            self._y_span = np.where(span > 0, span, 1.0)
        elif y2.shape[1] != self._y_min.shape[0]:
            raise ValueError(f"y has {y2.shape[1]} target columns but the model was fitted on {self._y_min.shape[0]}")
        targets = self.MARGIN + (1 - 2 * self.MARGIN) * (y2 - self._y_min) / self._y_span
        self._train(X, np.ascontiguousarray(targets, dtype=np.float32), cfg, first, partial, y2.shape[1],
                    np.zeros(y2.shape[0], dtype=np.int64))
        self.model_ = self._model(cfg, None)
        return self

    def predict(self, X) -> np.ndarray:
        z = self._logits(X).astype(np.float64)
        sigmoid = np.exp(-np.logaddexp(0.0, -z))  # 1 / (1 + exp(-z)) overflowed (a RuntimeWarning) below z = -709
        unit = (sigmoid - self.MARGIN) / (1 - 2 * self.MARGIN)
        out = unit * self._y_span + self._y_min
        return out.reshape((out.shape[0], *self._y_shape))

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags
