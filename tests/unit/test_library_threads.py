"""sparsenet.train and the estimators follow adapt_threads (a ThreadGovernor while they train), as the CLI does."""

import pickle

import numba
import numpy as np
import pytest

import sparsenet
import sparsenet.cpus
from sparsenet import SETClassifier


@pytest.fixture
def governors(monkeypatch):
    """Record the governors made and their ticks; numba reports 2 threads and records what is set."""
    made, ticks, chosen = [], [], []

    class Recording:
        def __init__(self, cpus, set_threads):
            self.cpus = cpus
            made.append(cpus)

        def tick(self):
            ticks.append(self.cpus)
            return self.cpus

    monkeypatch.setattr(sparsenet.cpus, "ThreadGovernor", Recording)
    monkeypatch.setattr(numba, "get_num_threads", lambda: 2)
    monkeypatch.setattr(numba, "set_num_threads", chosen.append)
    return made, ticks, chosen


def _data():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 64)
    return rng.normal(size=(64, 6)) + y[:, None], y


def test_train_adapts_threads_per_step_and_gives_them_back(governors):
    made, ticks, chosen = governors
    x, y = _data()
    sparsenet.train({"model": {"hidden": [8]}, "train": {"epochs": 2, "batch_size": 16}}, x, y)
    assert made == [2] and len(ticks) == 2 * 4  # one tick per step, 4 steps per epoch
    assert chosen[-1] == 2                      # all threads again after training
    made.clear()
    sparsenet.train({"adapt_threads": False, "model": {"hidden": [8]}, "train": {"epochs": 1}}, x, y)
    sparsenet.train({"threads": 1, "model": {"hidden": [8]}, "train": {"epochs": 1}}, x, y)
    assert made == []


def test_estimator_adapts_threads_and_stays_picklable(governors):
    made, ticks, chosen = governors
    x, y = _data()
    clf = SETClassifier(hidden=(8,), epochs=2, batch_size=32).fit(x, y)
    assert made == [2] and len(ticks) == 2 * 2
    assert clf._state.governor is None
    assert np.array_equal(pickle.loads(pickle.dumps(clf)).predict(x), clf.predict(x))
