"""scikit-learn's own estimator checks on SETClassifier and SETRegressor."""

import pytest

pytest.importorskip("sklearn", minversion="1.6")

from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

from sparsenet import SETClassifier, SETRegressor  # noqa: E402

# Small, quick networks that still learn scikit-learn's check problems (blobs, make_regression).
SMALL = dict(hidden=(32,), epsilon=8, epochs=40, batch_size=16, dropout=0.0, lr=0.05, threads=1)

# Every check expected to fail (xfail), with the reason: none; all of scikit-learn's checks pass.
EXPECTED_FAILURES: dict[str, str] = {}
# Checks scikit-learn itself skips here, with its reason:
# - check_array_api_input (both estimators): skipped unless the environment sets SCIPY_ARRAY_API=1;
#   sparsenet does not claim array-API support (its array_api_support tag is False), it converts
#   input to numpy float32 at the boundary.


# ... and with a validation split and early stopping (validation_fraction, n_iter_no_change) in play.
HELD_OUT = dict(SMALL, validation_fraction=0.2, n_iter_no_change=5)


@parametrize_with_checks([SETClassifier(**SMALL), SETRegressor(**SMALL), SETClassifier(**HELD_OUT),
                          SETRegressor(**HELD_OUT)],
                         expected_failed_checks=lambda est: EXPECTED_FAILURES)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)
