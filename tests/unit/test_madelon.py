"""Madelon as Guyon built it: the generator's keys reach make_classification, configs/madelon.yaml
asks for her recipe, and the original UCI files load as CSV."""

from dataclasses import replace

import numpy as np
import pytest

from sparsenet.config import DataConfig, load_config
from sparsenet.data import load_dataset
from sparsenet.errors import ConfigError

# 5 well separated informative features and nothing else, unstandardized: each sample sits near one
# hypercube vertex (+-class_sep per feature), so the sign pattern of a row names its cluster's vertex.
VERTICES = DataConfig(name="synthetic", samples=6400, features=5, informative=5, redundant=0, classes=2,
                      class_sep=8.0, flip_y=0.0, standardize=False, test_fraction=0.5)


def _vertex_labels(ds) -> dict[tuple, set]:
    x = np.concatenate([ds.x_train, ds.x_test])
    y = np.concatenate([ds.y_train, ds.y_test])
    found: dict[tuple, set] = {}
    for row, label in zip(x > 0, y):
        found.setdefault(tuple(row.tolist()), set()).add(int(label))
    return found


def test_clusters_per_class_fills_the_hypercube():
    sixteen = _vertex_labels(load_dataset(replace(VERTICES, clusters_per_class=16), 0))
    assert len(sixteen) == 32                                  # every vertex of the 5-cube holds a cluster
    assert all(len(labels) == 1 for labels in sixteen.values())  # flip_y 0: one class per cluster
    assert sorted(next(iter(v)) for v in sixteen.values()) == [0] * 16 + [1] * 16
    two = _vertex_labels(load_dataset(replace(VERTICES, clusters_per_class=2), 0))
    assert len(two) == 4


def test_flip_y_relabels_that_share_of_samples():
    ds = load_dataset(replace(VERTICES, clusters_per_class=16, flip_y=0.5), 0)
    found = _vertex_labels(ds)
    assert all(labels == {0, 1} for labels in found.values())
    # flip_y 0.5 draws a random class for half of the samples: about a quarter end up in the other class
    x = np.concatenate([ds.x_train, ds.x_test]) > 0
    y = np.concatenate([ds.y_train, ds.y_test])
    keys = [tuple(r.tolist()) for r in x]
    majority = {k: np.bincount(y[[i for i, kk in enumerate(keys) if kk == k]]).argmax() for k in found}
    wrong = np.mean([y[i] != majority[k] for i, k in enumerate(keys)])
    assert 0.2 < wrong < 0.3


def test_hypercube_false_moves_clusters_off_the_vertices():
    on = load_dataset(replace(VERTICES, clusters_per_class=16), 0)
    off = load_dataset(replace(VERTICES, clusters_per_class=16, hypercube=False), 0)
    # on the hypercube every feature is near +-8 (|x| > 4 for almost all samples); off it, centroids
    # are drawn inside the cube, so many features are near 0
    assert np.mean(np.abs(on.x_train) > 4) > 0.99
    assert np.mean(np.abs(off.x_train) > 4) < 0.8


def test_madelon_config_is_guyons_recipe():
    cfg = load_config("configs/madelon.yaml")
    d = cfg.data
    assert (d.name, d.features, d.informative, d.redundant, d.classes) == ("synthetic", 500, 5, 15, 2)
    assert (d.clusters_per_class, d.hypercube, d.flip_y, d.class_sep) == (16, True, 0.01, 1.0)
    ds = load_dataset(d, cfg.seed)
    assert ds.x_train.shape == (2000, 500) and ds.x_test.shape == (600, 500) and ds.n_classes == 2
    assert abs(ds.y_train.mean() - 0.5) < 0.03
    # data.seed fixes the draw: one Madelon for every run seed, as there is one original
    other = load_dataset(d, cfg.seed + 7)
    assert np.array_equal(ds.x_train, other.x_train) and np.array_equal(ds.y_test, other.y_test)
    # the 20 useful columns are 5 informative ones and 15 linear combinations of them: rank 5
    corr = np.abs(np.corrcoef(ds.x_train.T.astype(np.float64)))
    np.fill_diagonal(corr, 0)
    useful = np.flatnonzero(corr.max(axis=1) > 0.3)
    assert len(useful) == 20
    assert np.linalg.matrix_rank(ds.x_train[:, useful].astype(np.float64), tol=1e-2 * 2000 ** 0.5) == 5


def test_run_seed_draws_the_data_when_data_seed_is_null():
    cfg = replace(VERTICES, samples=200, clusters_per_class=4)
    assert not np.array_equal(load_dataset(cfg, 0).x_train, load_dataset(cfg, 1).x_train)
    assert np.array_equal(load_dataset(replace(cfg, seed=3), 0).x_train, load_dataset(replace(cfg, seed=3), 1).x_train)


@pytest.mark.parametrize("overrides, message", [
    (["data.clusters_per_class=0"], "config key 'data.clusters_per_class' must be >= 1, got 0"),
    (["data.clusters_per_class=17"],
     "config key 'data.informative' must be >= 6 for data.classes 2 and data.clusters_per_class 17"),
    (["data.flip_y=1"], "config key 'data.flip_y'"),
    (["data.class_sep=0"], "config key 'data.class_sep'"),
    (["data.hypercube=2"], "config key 'data.hypercube'"),
    (["data.name=synthetic_hdf5"],
     "config key 'data.clusters_per_class' must be 2 (the generator's default) for data.name 'synthetic_hdf5'"),
])
def test_bad_generator_keys(overrides, message):
    with pytest.raises(ConfigError) as info:
        load_config("configs/madelon.yaml", overrides)
    assert str(info.value).startswith(message)


def test_original_uci_files_load_as_csv(tmp_path):
    """UCI's madelon_train.data (integers, space separated, a trailing space) with madelon_train.labels
    (-1/1) pasted as the last column, commas between: what docs/benchmarks.md says to run."""
    rng = np.random.default_rng(0)
    features = rng.integers(400, 600, size=(26, 500))
    labels = np.where(np.arange(26) % 2 == 0, -1, 1)
    path = tmp_path / "madelon.csv"
    path.write_text("".join(",".join(map(str, row)) + f",{label}\n" for row, label in zip(features, labels)))
    cfg = load_config("configs/madelon.yaml", ["data.name=csv", f"data.path={path}"]).data
    ds = load_dataset(cfg, 0)
    assert ds.x_train.shape == (20, 500) and ds.x_test.shape == (6, 500) and ds.n_classes == 2
    assert sorted(set(np.concatenate([ds.y_train, ds.y_test]).tolist())) == [0, 1]
    assert np.bincount(np.concatenate([ds.y_train, ds.y_test])).tolist() == [13, 13]
