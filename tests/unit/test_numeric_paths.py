"""Paths that coverage showed untested or only smoke-tested, checked against tests/naive.py's dense
references, finite differences or hand-computed values: output losses, probabilities, evaluation
chunking, SET and neuron pruning at their edges, prefetching kernels, lazy updates past their plan,
Model.from_sparse and the estimators' predict_proba / score."""

import math

import numpy as np
import pytest
import scipy.sparse as sp

from sparsenet.api import Model, probabilities


def test_sigmoid_probabilities_are_the_normalised_sigmoids_even_when_all_underflow():
    """Before: logits below about -745 made every sigmoid 0 in float64 and predict_proba returned NaN (0 / 0)."""
    p = probabilities("sigmoid", np.array([[0.0, math.log(3.0)], [-800.0, -801.0], [-2000.0, 5.0]], np.float32))
    np.testing.assert_allclose(p[0], [0.5 / 1.25, 0.75 / 1.25], rtol=1e-7)  # log 3 rounded to float32
    np.testing.assert_allclose(p[1], [1 / (1 + math.exp(-1)), math.exp(-1) / (1 + math.exp(-1))], rtol=1e-6)
    np.testing.assert_array_equal(p[2], [0.0, 1.0])
    model = Model.from_sparse([sp.csr_array(np.array([[-800.0], [-801.0]]))], output="sigmoid")
    np.testing.assert_allclose(model.predict_proba(np.ones((1, 1))), p[1:2], rtol=1e-6)
    assert model.predict(np.ones((1, 1))).tolist() == [0]
    np.testing.assert_allclose(probabilities("softmax", np.array([[0.0, math.log(3.0)]])), [[0.25, 0.75]], rtol=1e-12)


def test_csr_column_statistics_match_the_dense_ones_and_a_constant_column_has_std_0():
    """Before: CSR std came from E[x^2] - mean^2, so a column of 0.1 on 1000 rows got std 6e-9 instead of 0;
    standardisation multiplied it by 1.7e7 and SETClassifier.fit on the sparse X diverged (the dense X trained)."""
    from sparsenet import SETClassifier
    from sparsenet.data.csr import CSRRows
    from sparsenet.data.prepare import _column_stats

    rng = np.random.default_rng(0)
    x = sp.random(1000, 6, density=0.3, random_state=1, format="csr", dtype=np.float32)
    x = sp.hstack([x, sp.csr_array(np.full((1000, 2), [0.1, 3.3], np.float32))], format="csr")
    rows = CSRRows(x.data, x.indices, x.indptr.astype(np.int64), x.shape)
    mean, std = rows.column_stats()
    dense_mean, dense_std = _column_stats(x.toarray())
    np.testing.assert_allclose(mean, dense_mean, rtol=1e-12)
    np.testing.assert_allclose(std, dense_std, rtol=1e-9)
    assert std[-2:].tolist() == [0.0, 0.0] and 0.1 < std[0] < 0.5
    X = rng.standard_normal((1000, 4))
    X[:, 3] = 0.1
    y = (X[:, 0] > 0).astype(int)
    clf = SETClassifier(hidden=(8,), epochs=1, seed=0).fit(sp.csr_array(X), y)
    assert clf.model_.preprocessing.std[3] == 1.0 and math.isfinite(clf.history_[0]["train_loss"])
