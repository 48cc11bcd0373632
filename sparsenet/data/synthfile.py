"""The paper's big artificial dataset as an HDF5 file: Madelon generator, written in row chunks.

`sklearn.datasets.make_classification` on 10000 x 65536 would build a 5 GB float64 matrix. Its
useful columns (informative + redundant) are what makes it the Madelon generator; the rest are
standard-normal noise. So: the useful columns come from make_classification(shuffle=False) on
informative + redundant features only, the noise is drawn chunk by chunk, the useful columns land
at random feature positions (as make_classification's own column shuffle would put them), and the
rows are shuffled and split into train/test before they are written. Peak memory is one row
chunk plus the small useful block, whatever the file size.

File layout: float32 x_train, x_test (chunked by rows), int64 y_train, y_test, int64
`useful_columns` (the informative columns first, then the redundant ones) and the generation
parameters as attributes.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sparsenet.data.prepare import Dataset, finish
from sparsenet.data.sources import cache_dir
from sparsenet.errors import DataError, OutputError
from sparsenet.fileio import prepare_file, replacing

FORMAT = "sparsenet-synthetic-1"
_GENERATION_CHUNK_BYTES = 64 << 20   # float32 rows generated and written at a time
_HDF5_CHUNK_BYTES = 4 << 20          # HDF5 storage chunk: whole rows, about this big
PARAMETERS = ("samples", "features", "informative", "redundant", "classes", "test_fraction")


@dataclass(frozen=True)
class SynthInfo:
    path: Path
    n_train: int
    n_test: int
    n_features: int
    seconds: float


def synth_seed(cfg, seed: int) -> int:
    """The generation seed: data.seed if set, else the run's seed."""
    return seed if getattr(cfg, "seed", None) is None else int(cfg.seed)


def synth_filename(cfg, seed: int) -> str:
    """File name that encodes every generation parameter, e.g. madelon_65536x10000_c2_i5_r15_t0.3_s0.h5."""
    return (f"madelon_{cfg.features}x{cfg.samples}_c{cfg.classes}_i{cfg.informative}_r{cfg.redundant}"
            f"_t{cfg.test_fraction:g}_s{synth_seed(cfg, seed)}.h5")


def default_path(cfg, seed: int) -> Path:
    """Where `sparsenet data synth` writes by default: <cache>/synthetic/<synth_filename>."""
    return cache_dir("synthetic") / synth_filename(cfg, seed)


def synth_path(cfg, seed: int) -> Path:
    """data.path if given, else the default cache file for the generation parameters."""
    return Path(cfg.path).expanduser() if cfg.path else default_path(cfg, seed)


def synth_command(cfg, seed: int) -> str:
    """The exact `sparsenet data synth` command that writes the file a config reads."""
    cmd = (f"sparsenet data synth --samples {cfg.samples} --features {cfg.features} --informative {cfg.informative} "
           f"--redundant {cfg.redundant} --classes {cfg.classes} --test-fraction {cfg.test_fraction:g} "
           f"--seed {synth_seed(cfg, seed)}")
    return cmd + (f" --out {cfg.path}" if cfg.path else "")


def split_sizes(samples: int, test_fraction: float) -> tuple[int, int]:
    """(n_train, n_test) as `prepare.split` makes them: round(samples * test_fraction) test samples."""
    n_test = int(round(samples * test_fraction))
    if n_test < 1 or n_test > samples - 1:
        raise DataError(f"cannot split {samples} samples with test_fraction {test_fraction}; "
                        f"need at least 1 training and 1 test sample")
    return samples - n_test, n_test


def _useful_block(cfg, seed: int) -> tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import make_classification
    except ImportError as e:
        raise DataError("sparsenet data synth needs scikit-learn (the Madelon generator): "
                        "pip install scikit-learn, or pip install sparsenet[sklearn]") from e
    n_useful = cfg.informative + cfg.redundant
    try:
        x, y = make_classification(n_samples=cfg.samples, n_features=n_useful, n_informative=cfg.informative,
                                   n_redundant=cfg.redundant, n_repeated=0, n_classes=cfg.classes,
                                   shuffle=False, random_state=seed)
    except ValueError as e:
        raise DataError(f"cannot make synthetic data with samples={cfg.samples}, informative={cfg.informative}, "
                        f"redundant={cfg.redundant}, classes={cfg.classes}: {' '.join(str(e).split())}") from e
    return x.astype(np.float32), y.astype(np.int64)


def _check_memory(cfg, block_bytes: int) -> None:
    """What writing the file holds at once, against the memory available: a block of noise rows and its copy in
    HDF5's chunk buffer, the useful columns (float64 from the generator, then float32), labels and row order."""
    from sparsenet.memory import check_available

    if 4 * cfg.features >= 1 << 32:
        raise DataError(f"--features {cfg.features}: one sample would be {4 * cfg.features / 2**30:.1f} GiB, more than "
                        f"an HDF5 chunk holds (4 GiB: at most {(1 << 30) - 1:,} features)")
    check_available(2 * block_bytes + cfg.samples * (cfg.informative + cfg.redundant) * 12 + cfg.samples * 24,
                    f"writing {cfg.samples:,} samples of {cfg.features:,} features needs about", " at once")


def write_synthetic(cfg, seed: int, path: str | os.PathLike | None = None,
                    chunk_rows: int | None = None) -> SynthInfo:
    """Write the dataset a (validated) DataConfig describes to `path` (default: synth_path).

    Deterministic for a seed, whatever chunk_rows is. The file appears only once complete.
    """
    import h5py

    t0 = time.perf_counter()
    seed = synth_seed(cfg, seed)
    out = Path(path).expanduser() if path is not None else synth_path(cfg, seed)
    n_train, n_test = split_sizes(cfg.samples, cfg.test_fraction)
    features = cfg.features
    row_bytes = 4 * features
    if chunk_rows is None:
        chunk_rows = max(1, _GENERATION_CHUNK_BYTES // row_bytes)
    if chunk_rows < 1:
        raise DataError(f"chunk_rows must be >= 1, got {chunk_rows}")
    _check_memory(cfg, min(chunk_rows, cfg.samples) * row_bytes)
    useful, labels = _useful_block(cfg, seed)
    rng = np.random.default_rng([seed, 0x5E7])
    columns = rng.choice(features, size=useful.shape[1], replace=False).astype(np.int64)
    order = rng.permutation(cfg.samples)          # row shuffle; the first n_test rows are the test set
    parts = (("x_test", "y_test", order[:n_test]), ("x_train", "y_train", order[n_test:]))
    noise = np.random.default_rng([seed, 0xA015E])  # one stream, drawn in row order: chunking cannot change it
    try:
        prepare_file(out, "synthetic data file")
        size = cfg.samples * (row_bytes + 8) + (1 << 20)  # x and y, plus metadata: reserved before HDF5 writes
        with replacing(out, "synthetic data file", reserve=size) as (tmp, _):
            with h5py.File(tmp, "w") as fh:
                fh.attrs["format"] = FORMAT
                fh.attrs["generator"] = "sklearn.datasets.make_classification (Madelon), noise columns N(0, 1)"
                for name in PARAMETERS:
                    fh.attrs[name] = getattr(cfg, name)
                fh.attrs["seed"] = seed
                fh.create_dataset("useful_columns", data=columns)
                for x_name, y_name, rows in parts:
                    storage_rows = int(min(len(rows), max(1, _HDF5_CHUNK_BYTES // row_bytes)))
                    xs = fh.create_dataset(x_name, shape=(len(rows), features), dtype=np.float32,
                                           chunks=(storage_rows, features))
                    fh.create_dataset(y_name, data=labels[rows])
                    for start in range(0, len(rows), chunk_rows):
                        take = rows[start:start + chunk_rows]
                        block = noise.standard_normal((len(take), features), dtype=np.float32)
                        block[:, columns] = useful[take]
                        xs[start:start + len(take)] = block
                        del block
    except OutputError as e:
        raise DataError(str(e)) from None
    return SynthInfo(out, n_train, n_test, features, time.perf_counter() - t0)


def file_shapes(path: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """Shapes of x_train, y_train, x_test, y_test in a synthetic (or any split) HDF5 file."""
    import h5py

    from sparsenet import h5safe

    fh = h5safe.open_file(Path(path), DataError, f"cannot read HDF5 file '{path}'")
    try:
        with fh:
            found = {k: h5safe.dataset(fh, k, f"'{path}'", DataError, h5safe.file_size(path))
                     for k in ("x_train", "y_train", "x_test", "y_test")}
            missing = [k for k, ds in found.items() if ds is None]
            if missing:
                raise DataError(f"'{path}' lacks the arrays {', '.join(missing)}; expected x_train, y_train, "
                                f"x_test, y_test (write it with sparsenet data synth)")
            return {k: tuple(int(n) for n in ds.shape) for k, ds in found.items()}
    except (OSError, RuntimeError, KeyError, ValueError, TypeError) as e:  # h5py on a damaged file
        raise DataError(f"cannot read HDF5 file '{path}': {' '.join(str(e).split())}") from e


def _read_rows(ds, keep: int | None, where: str, name: str) -> np.ndarray:
    """The first `keep` rows of a float dataset, read straight into one float32 array."""
    if ds.ndim != 2 or ds.dtype.kind != "f":
        raise DataError(f"{where}: {name} must be a 2-D float array, got shape {ds.shape} dtype {ds.dtype}")
    n = ds.shape[0] if keep is None else min(keep, ds.shape[0])
    out = np.empty((n, ds.shape[1]), dtype=np.float32)
    if n:
        ds.read_direct(out, source_sel=np.s_[:n])
    return out


def load_synthetic_hdf5(cfg, seed: int) -> Dataset:
    """The file `sparsenet data synth` wrote (data.path, or the default name for the parameters)."""
    path = synth_path(cfg, seed)
    if not path.exists():
        where = "data.path" if cfg.path else "the cache (data.path not set)"
        raise DataError(f"synthetic data file '{path}' not found ({where}); write it first with: "
                        f"{synth_command(cfg, seed)}")
    if not path.is_file():
        raise DataError(f"synthetic data file '{path}' is not a regular file")
    try:
        import h5py
    except ImportError as e:
        raise DataError("reading HDF5 files needs h5py: pip install h5py") from e
    where = f"'{path}'"
    file_shapes(path)  # a clear error if arrays are missing
    try:
        with h5py.File(path, "r") as fh:
            x_train = _read_rows(fh["x_train"], cfg.max_train, where, "x_train")
            x_test = _read_rows(fh["x_test"], cfg.max_test, where, "x_test")
            y_train = np.asarray(fh["y_train"][:x_train.shape[0]], dtype=np.int64)
            y_test = np.asarray(fh["y_test"][:x_test.shape[0]], dtype=np.int64)
            n_classes = int(fh.attrs.get("classes", 0))
    except (OSError, RuntimeError, KeyError, ValueError, TypeError) as e:  # h5py on a damaged file
        raise DataError(f"cannot read HDF5 file '{path}': {' '.join(str(e).split())}") from e
    labels_max = max(int(y_train.max(initial=0)), int(y_test.max(initial=0)))
    n_classes = max(n_classes, labels_max + 1)
    if n_classes != cfg.classes:  # the memory plan and the model's output layer follow data.classes
        raise DataError(f"{where} holds {n_classes} classes (attribute 'classes' and its labels) but data.classes "
                        f"is {cfg.classes}; set data.classes={n_classes} if the file is right")
    if min(int(y_train.min(initial=0)), int(y_test.min(initial=0))) < 0:
        raise DataError(f"{where}: labels must be in 0..{n_classes - 1}, found a negative one")
    # float32, owned, C-contiguous and already truncated: finish() standardises in place, no copy.
    return finish(cfg, "synthetic_hdf5", x_train, y_train, x_test, y_test, n_classes)
