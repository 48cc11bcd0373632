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
