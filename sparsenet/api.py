"""The Python API below the estimators: Model (load, build from scipy matrices, predict), train().

Training from here writes no file and prints nothing unless verbose; it runs the same building
blocks as `sparsenet train` (train.new_state, train_epoch, between_epochs).
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Mapping

import numpy as np

from .config import Config, config_from_dict, load_config
from .errors import ConfigError, DivergedError, InputError
from .inputs import CSRRows, Preprocessing, as_samples, check_sparse_indices, label_indices, standardize_csr
from .model import SparseMLP, eval_chunk
from .sparse import csr, kernels
from .sparse.layer import SparseLayer

__all__ = ["Model", "load", "train", "as_config"]


class Model:
    """A trained truly sparse MLP ready for inference, with the preprocessing of its training data.

    `network` is the SparseMLP; `preprocessing` standardises raw samples and names the outputs.
    Raw samples go in as given to training (numpy of any real dtype, pandas, scipy.sparse); they
    are checked, converted to float32 and standardised here.
    """

    def __init__(self, network: SparseMLP, preprocessing: Preprocessing | None = None,
                 config: Config | None = None, history: list[dict] | None = None, epoch: int | None = None):
        """epoch: the training epoch whose weights `network` holds (default: the last in history)."""
        self.network = network
        self.preprocessing = preprocessing if preprocessing is not None else Preprocessing()
        self.preprocessing.check(network.sizes[0], network.sizes[-1], "model preprocessing")
        self.config = config if config is not None else Config()
        self.history = list(history or [])
        self.epoch = len(self.history) if epoch is None else int(epoch)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_sparse(cls, weights, biases=None, *, activation: str = "all_relu", alpha: float = 0.6,
                    slopes=None, output: str = "softmax", classes=None, mean=None, std=None) -> "Model":
        """A model from scipy.sparse weight matrices, layer 0 first, each (n_out, n_in): out = W @ x + b.

        biases: one 1-D array per layer (default zeros). Hidden activations from `activation`/`alpha`
        (the config's model.activation / model.alpha rules) or explicit negative-side `slopes`.
        Stored zeros stay connections. classes/mean/std: as in Preprocessing.
        """
        import scipy.sparse as sp

        _check_model_keys(activation=activation, alpha=alpha, output=output)
        weights = list(weights)
        if not weights:
            raise InputError("from_sparse needs at least one weight matrix")
        if biases is not None and len(biases) != len(weights):
            raise InputError(f"from_sparse got {len(weights)} weight matrices but {len(biases)} biases")
        layers = []
        for l, w in enumerate(weights):
            if not sp.issparse(w):
                raise InputError(f"weights[{l}] must be a scipy.sparse matrix or array (truly sparse: no dense "
                                f"weights), got {type(w).__name__}")
            if w.dtype.kind not in "biuf":  # complex would lose its imaginary part in the float32 cast
                raise InputError(f"weights[{l}] must hold real numbers, got dtype {w.dtype}")
            check_sparse_indices(w, f"weights[{l}]")
            csr = sp.csr_array(w, dtype=np.float32, copy=True)
            csr.sum_duplicates()
            n_out, n_in = csr.shape
            if not (0 < n_in < 2**31 and 0 < n_out < 2**31):
                raise InputError(f"weights[{l}] has shape {csr.shape}; both sides must be in 1..2**31-1")
            if layers and n_in != layers[-1].n_out:
                raise InputError(f"weights[{l}] takes {n_in} inputs but weights[{l - 1}] has {layers[-1].n_out} outputs")
            bias = np.zeros(n_out, dtype=np.float32) if biases is None else _reals(biases[l], f"biases[{l}]")
            if bias.shape != (n_out,):
                raise InputError(f"biases[{l}] must have shape ({n_out},), got {bias.shape}")
            if not (np.all(np.isfinite(csr.data)) and np.all(np.isfinite(bias))):
                raise InputError(f"weights[{l}] or biases[{l}] hold NaN or infinity")
            cols = np.repeat(np.arange(n_out, dtype=np.int32), np.diff(csr.indptr))  # output-major order
            layers.append(SparseLayer(n_in, n_out, csr.indices.astype(np.int32), cols, csr.data, bias))
        if slopes is None:
            from .activations import hidden_slopes

            slopes = hidden_slopes(activation, alpha, len(layers) - 1)
        slopes = [float(s) for s in _reals(slopes, "slopes", np.float64).ravel()]
        if len(slopes) != len(layers) - 1 or not all(math.isfinite(s) for s in slopes):
            raise InputError(f"need {len(layers) - 1} finite hidden slopes (one per hidden layer), got {slopes}")
        pre = Preprocessing(None if mean is None else _reals(mean, "mean"), None if std is None else _reals(std, "std"),
                            None if classes is None else np.asarray(classes))
        return cls(SparseMLP(layers, slopes, 0.0, output), pre)

    # ------------------------------------------------------------------ what it is
    @property
    def layers(self):
        """Weight matrices as scipy.sparse.csr_array, shape (n_out, n_in), layer 0 first (copies)."""
        import scipy.sparse as sp

        return [sp.csr_array((layer.values.copy(), layer.rows.copy(), layer.out_ptr.copy()),
                             shape=(layer.n_out, layer.n_in)) for layer in self.network.layers]

    @property
    def biases(self) -> list[np.ndarray]:
        return [layer.bias.copy() for layer in self.network.layers]

    @property
    def slopes(self) -> list[float]:
        """Negative-side slope of each hidden layer's activation (f(z) = z if z > 0 else slope * z)."""
        return list(self.network.slopes)

    @property
    def output(self) -> str:
        return self.network.output

    @property
    def sizes(self) -> list[int]:
        return self.network.sizes

    @property
    def n_features_in_(self) -> int:
        return self.network.sizes[0]

    @property
    def classes_(self) -> np.ndarray:
        return self.preprocessing.classes_or_range(self.network.sizes[-1])

    def __repr__(self) -> str:
        return (f"sparsenet.Model({'-'.join(map(str, self.sizes))}, nnz {self.network.nnz}, output {self.output}, "
                f"{'standardised inputs' if self.preprocessing.mean is not None else 'raw inputs'})")

    # ------------------------------------------------------------------ inference
    def samples(self, X, where: str = "X"):
        """X checked against the model and standardised: a float32 array or CSRRows."""
        return as_samples(X, self.n_features_in_, self.preprocessing, where)

    def logits(self, X) -> np.ndarray:
        """Output pre-activations, float32 (n_samples, n_outputs), no dropout."""
        return forward_logits(self.network, self.samples(X), self.config.train.eval_batch_size)

    def predict_proba(self, X) -> np.ndarray:
        """float64 (n_samples, n_classes): softmax of the logits; for the sigmoid output, the
        sigmoids normalised to sum 1."""
        self._classifier("predict_proba")
        return probabilities(self.output, self.logits(X))

    def predict(self, X) -> np.ndarray:
        """The label of the largest output of each sample (classes_[argmax])."""
        self._classifier("predict")
        return self.classes_[np.argmax(self.logits(X), axis=1)]

    def evaluate(self, X, y) -> dict:
        """Mean loss and accuracy on labelled samples; a label outside classes_ is a DataError."""
        self._classifier("evaluate")
        x = self.samples(X)
        idx = label_indices(y, self.classes_)
        if idx.shape[0] != x.shape[0]:
            raise InputError(f"y has {idx.shape[0]} labels but X has {x.shape[0]} samples")
        loss, accuracy = evaluate_samples(self.network, x, idx, self.config.train.eval_batch_size)
        return {"loss": loss, "accuracy": accuracy, "samples": int(x.shape[0])}

    def _classifier(self, what: str) -> None:
        """Class scores need a classifier: an autoencoder's outputs reconstruct its inputs (argmax would name a feature)."""
        if self.config.model.task != "classifier" or self.output == "linear":
            raise InputError(f"{what}: this model is an autoencoder (model.task {self.config.model.task}, output "
                             f"{self.output}); its outputs reconstruct the inputs and name no class: use logits(X)")

    def save(self, path: str | os.PathLike) -> None:
        """Write a checkpoint (zero optimizer state) that `sparsenet.load`, `sparsenet predict` and
        `sparsenet export` read; its history ends at self.epoch (as checkpoint_best.h5's does)."""
        from . import checkpoint as ckpt
        from .config import config_to_yaml
        from .fileio import prepare_file
        from .optim import make_optimizer
        from .train import layers_to_checkpoint

        path = prepare_file(path, "checkpoint")
        opt = make_optimizer(self.config, self.network)  # fresh: zero state
        pre = self.preprocessing
        ckpt.save_checkpoint(path, ckpt.CheckpointData(
            layers_to_checkpoint(self.network, opt), self.network.slopes, self.network.dropout, self.output,
            self.epoch, np.random.default_rng(self.config.seed).bit_generator.state, self.history[:self.epoch],
            config_to_yaml(self.config), optimizer=opt.name, optimizer_scalars=opt.scalars(),
            mean=pre.mean, std=pre.std, classes=pre.classes))


def _reals(values, what: str, dtype=np.float32) -> np.ndarray:
    """values as a `dtype` array; anything but real numbers (strings, complex, objects) is an InputError naming `what`."""
    try:
        a = np.asarray(values)
    except (TypeError, ValueError) as e:
        raise InputError(f"{what} must be real numbers: {' '.join(str(e).split())[:120]}") from None
    if a.dtype.kind not in "biuf":
        raise InputError(f"{what} must be real numbers, got dtype {a.dtype}")
    with np.errstate(over="ignore"):  # beyond float32: infinite, refused by the finiteness checks
        return a.astype(dtype)


def forward_logits(net: SparseMLP, x, batch_size: int) -> np.ndarray:
    """Logits (n, n_out) float32 of samples x (float32 array or CSRRows), in chunks within the eval budget."""
    sizes = net.sizes
    n = x.shape[0]
    sparse = isinstance(x, CSRRows)
    widths = [0 if sparse else sizes[0], *sizes[1:]]
    chunk = min(eval_chunk(widths, batch_size) if sparse else net.eval_chunk(batch_size), max(n, 1))
    bufs = (kernels.aligned_floats(max(widths[0::2]) * chunk), kernels.aligned_floats(max(widths[1::2]) * chunk))
    out = np.empty((n, sizes[-1]), dtype=np.float32)
    last = len(net.layers) - 1
    bias0 = _centred_bias(net.layers[0], x.center) if sparse and x.center is not None else net.layers[0].bias
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        index = np.arange(start, start + m, dtype=np.int64)
        if not sparse:
            a = bufs[0][:sizes[0] * m].reshape(sizes[0], m)
            kernels.gather_batch(x, index, a)
        for l, layer in enumerate(net.layers):
            o = bufs[(l + 1) % 2][:layer.n_out * m].reshape(layer.n_out, m)
            slope = None if l == last else net.slopes[l]
            if l == 0 and sparse:
                csr.forward(layer, x.data, x.indices, x.indptr, x.shape, index, o, slope=slope, bias=bias0)
            else:
                kernels.forward(layer, a, o, slope=slope)
            a = o
        out[start:start + m] = a.T
    return out


def _centred_bias(layer, center: np.ndarray) -> np.ndarray:
    """bias - W center (float32, n_out): the first layer's bias when its input would be x - center."""
    shift = np.bincount(layer.cols, weights=layer.values.astype(np.float64) * center[layer.rows], minlength=layer.n_out)
    return (layer.bias - shift).astype(np.float32)


def probabilities(output: str, z: np.ndarray) -> np.ndarray:
    """float64 (n, n_out) from logits z (n, n_out): softmax, or the sigmoids normalised to sum 1."""
    z = z.astype(np.float64)
    if output == "softmax":
        e = np.exp(z - z.max(axis=1, keepdims=True))
    else:  # in log space: a sample's sigmoids may all underflow to 0 (logits below -745), which gave 0 / 0
        log_sigmoid = -np.logaddexp(0.0, -z)
        e = np.exp(log_sigmoid - log_sigmoid.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def evaluate_samples(net: SparseMLP, x, y: np.ndarray, batch_size: int) -> tuple[float, float]:
    """Mean loss and accuracy; dense input through SparseMLP.evaluate, CSR input chunk by chunk."""
    if not isinstance(x, CSRRows):
        return net.evaluate(x, y, batch_size)
    from .activations import output_loss

    z = np.ascontiguousarray(forward_logits(net, x, batch_size).T)
    loss, correct = output_loss(net.output, z, y, np.empty_like(z))
    n = max(x.shape[0], 1)
    return loss / n, correct / n


# ---------------------------------------------------------------------- training

def as_config(config) -> Config:
    """A Config from a Config, a nested mapping of YAML keys, a YAML file path, or None (defaults)."""
    if config is None:
        return Config()
    if isinstance(config, Config):
        return config
    if isinstance(config, Mapping):
        return config_from_dict(config)
    if isinstance(config, (str, os.PathLike)):
        return load_config(config)
    raise ConfigError(f"config must be a sparsenet Config, a mapping of YAML keys or a YAML file path, "
                      f"got {type(config).__name__}")


def _check_model_keys(**model_keys) -> None:
    """Validate model.* values with config.py's rules (and messages)."""
    config_from_dict({"model": model_keys})


def fit_epochs(state, cfg: Config, x, y: np.ndarray, epochs: int, *, test=None, validation=None,
               verbose: bool = False, on_best=None, fresh_selection: bool = False) -> list[dict]:
    """Train `epochs` more epochs of `state` on x (float32 array or CSRRows) and y (class indices,
    or float targets (n, n_out) for the sigmoid output); test / validation: optional (x, y) scored
    after each epoch. SET (and scheduled neuron pruning) runs before every epoch but a run's first,
    as in `sparsenet train`; the best epoch and early stopping as there (selection.py: validation
    accuracy (validation loss for float targets), else training loss), replayed from state.history unless
    fresh_selection (then counted over these epochs only); on_best(epoch), if given, is called after each
    epoch that is a new best on the validation set. Appends to and returns state.history."""
    from .logs import to_stdout

    adapting = _adapt_threads(state, cfg)
    try:
        with to_stdout(verbose):
            return _fit_epochs(state, cfg, x, y, epochs, test, validation, verbose, on_best, fresh_selection)
    finally:
        if adapting:  # the state stays picklable, and prediction gets every thread back
            import numba

            numba.set_num_threads(state.governor.cpus)
            state.governor = None


def _adapt_threads(state, cfg: Config) -> bool:
    """The governor `sparsenet train` has (train.thread_governor), for this call; True if one was added."""
    import numba

    from .train import thread_governor

    if state.governor is not None:
        return False
    state.governor = thread_governor(cfg, numba.get_num_threads())
    return state.governor is not None


def _fit_epochs(state, cfg: Config, x, y: np.ndarray, epochs: int, test, validation, verbose: bool,
                on_best, fresh_selection: bool) -> list[dict]:
    from .jitcache import compile_notice
    from .metrics import ProgressBar, log
    from .selection import Selection
    from .train import between_epochs, train_epoch

    notice = compile_notice() if verbose else None
    if notice:
        log(notice)
    regression = y.ndim == 2
    if isinstance(x, CSRRows) and x.center is not None:
        raise InputError("cannot train on sparse X: this model's standardisation centres its inputs (it was fitted "
                         "on dense X), which would make every sample dense; fit on sparse X from the start")
    selection = Selection.for_run(validation is not None, cfg.train.early_stopping_patience,
                                  cfg.train.early_stopping_min_delta, () if fresh_selection else state.history,
                                  accuracy=not regression)
    for _ in range(epochs):
        if selection.should_stop:
            break
        t0 = time.perf_counter()
        removal = between_epochs(state, cfg)[0] if state.epoch > 0 else None
        t1 = time.perf_counter()
        bar = ProgressBar(-(-x.shape[0] // cfg.train.batch_size), f"epoch {state.epoch + 1}",
                          enabled=verbose and cfg.train.progress)
        loss, accuracy = train_epoch(state, x, y, cfg.train.batch_size, bar)
        bar.close()
        t2 = time.perf_counter()
        state.epoch += 1
        row = {"epoch": state.epoch, "train_loss": loss, "train_accuracy": None if regression else accuracy}
        for name, held in (("validation", validation), ("test", test)):
            if held is not None:
                loss_, accuracy_ = evaluate_samples(state.model, held[0], held[1], cfg.train.eval_batch_size)
                row[f"{name}_loss"], row[f"{name}_accuracy"] = loss_, None if regression else accuracy_
        row.update({"train_seconds": t2 - t1, "evolution_seconds": t1 - t0, "nnz": state.model.nnz,
                    "neurons": state.model.sizes, "parameters": state.model.n_parameters,
                    "neurons_removed": removal.removed if removal else [0] * (len(state.model.sizes) - 2)})
        if not all(math.isfinite(row[k]) for k in ("train_loss", "validation_loss", "test_loss") if k in row):
            raise DivergedError(f"training diverged at epoch {state.epoch}: train loss {row['train_loss']}; "
                                f"lower lr")
        improved = selection.update(row[selection.metric], state.epoch)
        if improved and on_best is not None and selection.metric.startswith("validation"):
            on_best(state.epoch)
        row.update(selection.row())
        state.history.append(row)
        if verbose:
            tail = f" test_accuracy {100 * row['test_accuracy']:.2f}%" if test is not None else ""
            log(f"epoch {state.epoch} train_loss {loss:.4f}{tail} | nnz {sum(row['nnz'])}")
    if selection.should_stop:
        log(f"early stopping after epoch {state.epoch}: best epoch {selection.best_epoch} on {selection.metric}")
    return state.history


def train(config, X, y, *, X_test=None, y_test=None, verbose: bool = False) -> tuple[Model, list[dict]]:
    """Train a classifier per `config` (Config, mapping of YAML keys, YAML path or None) on samples X
    and labels y (integers or strings, whole-number floats as integers; classes_ = their sorted unique
    values). Writes nothing.

    Uses the config's seed, threads, adapt_threads, data.standardize, data.validation_fraction (a stratified part of
    X held out: validation_* in the history, early stopping on it), model, train (epochs, batch_size,
    lr, early_stopping_*, ...), evolution and pruning sections; data.name/path are ignored.
    X_test/y_test, if given, are scored after every epoch (labels must be among y's). Returns (model, history: one
    dict per epoch). With a validation split the model is the epoch best on validation accuracy (the weights
    checkpoint_best.h5 holds in `sparsenet train`; like scikit-learn's MLPClassifier with early_stopping, and kept
    as an O(nnz) copy while training), else the last epoch's; model.epoch says which.
    """
    from .train import new_state, set_threads

    cfg = as_config(config)
    if cfg.model.task != "classifier":
        raise ConfigError(f"sparsenet.train trains classifiers; train model.task {cfg.model.task!r} with "
                          f"`sparsenet train CONFIG` and rank its inputs with `sparsenet features`")
    x = as_samples(X, where="X")
    classes, idx = _encode(y, x.shape[0])
    validation = None
    if cfg.data.validation_fraction > 0:  # held out before the standardisation statistics are taken
        from .selection import validation_split

        fit, held = validation_split(idx, cfg.data.validation_fraction, cfg.seed)
        validation, x, idx = (_rows(x, held), idx[held]), _rows(x, fit), idx[fit]
    pre = Preprocessing.fit(x, cfg.data.standardize, classes)
    x = _standardized(x, pre)
    if validation is not None:
        validation = (_standardized(validation[0], pre), validation[1])
    test = None
    if X_test is not None or y_test is not None:
        if X_test is None or y_test is None:
            raise InputError("give both X_test and y_test, or neither")
        xt = as_samples(X_test, x.shape[1], pre, where="X_test")
        yt = label_indices(y_test, classes, where="y_test")
        if yt.shape[0] != xt.shape[0]:
            raise InputError(f"y_test has {yt.shape[0]} labels but X_test has {xt.shape[0]} samples")
        test = (xt, yt)
    set_threads(cfg.threads)
    check_memory(cfg, x, len(classes), validation)
    state = new_state(cfg, x.shape[1], len(classes))
    best = {}
    history = fit_epochs(state, cfg, x, idx, cfg.train.epochs, test=test, validation=validation, verbose=verbose,
                         on_best=lambda epoch: best.update(network=snapshot(state.model), epoch=epoch))
    if not best:
        return Model(state.model, pre, cfg, history), history
    return Model(best["network"], pre, cfg, history, best["epoch"]), history


def check_memory(cfg: Config, x, n_out: int, held=None) -> None:
    """Before the network is built: its planned peak (memory.plan_memory, as `sparsenet train` plans it) for x
    (float32 array or CSRRows) and the held-out samples, against the memory available (cfg.memory_limit_gb if
    set); InsufficientMemoryError (one line) if it does not fit."""
    from .memory import DataShape, InsufficientMemoryError, plan_memory

    n_held = 0 if held is None else held[0].shape[0]
    sparse = isinstance(x, CSRRows)  # nnz 0 would plan dense rows
    nnz = max(1, x.nnz + (held[0].nnz if held is not None else 0)) if sparse else 0
    data = DataShape(x.shape[0], n_held, x.shape[1], n_out, "X", nnz=nnz)
    plan = plan_memory(cfg, data=data, available=None, suggest=False)
    if not plan.fits:
        raise InsufficientMemoryError(
            f"not enough memory: training {'-'.join(map(str, plan.sizes))} with {sum(plan.nnz):,} connections needs "
            f"about {plan.total / 2**30:.2f} GiB, but only {plan.available / 2**30:.2f} GiB is available "
            f"({plan.available_source}); use fewer or narrower hidden layers, a smaller epsilon or batch size")


def snapshot(net: SparseMLP) -> SparseMLP:
    """A copy of net's weights, biases and activations (O(nnz)), without its training workspace."""
    copy = SparseMLP([SparseLayer(l.n_in, l.n_out, l.rows.copy(), l.cols.copy(), l.values.copy(), l.bias.copy())
                      for l in net.layers], net.slopes, net.dropout, net.output)
    copy.task, copy.input_noise = net.task, net.input_noise
    return copy


def _encode(y, n_samples: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels -> (sorted distinct classes, int64 indices); at least 2 classes, one label per sample."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y.ravel()
    if y.ndim != 1 or y.shape[0] != n_samples:
        raise InputError(f"y must hold one label per sample ({n_samples}), got shape {y.shape}")
    if y.dtype.kind == "O" and all(isinstance(v, str) for v in y):
        y = y.astype(str)
    if y.dtype.kind == "f" and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
        y = y.astype(np.int64)  # 1.0, 2.0, ...: integer labels stored as floats
    if y.dtype.kind not in "iuU":
        raise InputError(f"labels in y must be integers or strings (whole-number floats count as integers), "
                        f"got dtype {y.dtype}")
    classes, idx = np.unique(y, return_inverse=True)
    if len(classes) < 2:
        raise InputError(f"y must hold at least 2 classes, got 1 class ({classes[0]!r})")
    return classes, np.ascontiguousarray(idx.ravel(), dtype=np.int64)


def _rows(x, index: np.ndarray):
    """Samples `index` (sorted) of a float32 array or CSRRows, as the same kind."""
    return x.take(index) if isinstance(x, CSRRows) else x[index]


def _standardized(x, pre: Preprocessing):
    """x (fresh float32 copy or CSRRows from as_samples) with pre's standardisation applied."""
    if pre.mean is None:
        return x
    if isinstance(x, CSRRows):
        return standardize_csr(x, pre.mean, pre.std)
    x -= pre.mean
    x /= pre.std
    return x


def warn_pixel_statistics(data, cfg: Config, path) -> None:
    """A UserWarning for a checkpoint of an image set written before checkpoint format 3, whose mean/std
    (if `sparsenet train` read the image files) are for pixels / 255, not raw pixels."""
    from .checkpoint import RAW_STATISTICS_SINCE
    from .data.registry import DATASETS

    kind = DATASETS.get(cfg.data.name)
    if data.format_version < RAW_STATISTICS_SINCE and kind is not None and kind.pixels:
        warnings.warn(f"{os.fspath(path)} has checkpoint format {data.format_version} and names {cfg.data.name}: "
                      f"if `sparsenet train` read the image files, its preprocessing is for pixels / 255, so divide "
                      f"raw 0..255 pixels by 255 before predicting (not needed for a model trained on your own "
                      f"arrays, nor for `sparsenet evaluate`)", UserWarning, stacklevel=3)


def load(path: str | os.PathLike) -> Model:
    """The model in a checkpoint (`sparsenet train` output or Model.save), with its preprocessing."""
    from . import checkpoint as ckpt
    from .config import config_from_yaml
    from .train import model_from_checkpoint

    data = ckpt.load_checkpoint(path)
    cfg = config_from_yaml(data.config_yaml, f"the config stored in {os.fspath(path)}")
    warn_pixel_statistics(data, cfg, path)
    return Model(model_from_checkpoint(data), Preprocessing(data.mean, data.std, data.classes), cfg, data.history)
