"""Lazy momentum updates of a CSR-fed first layer (sparse/lazy.py) against the eager update of every
connection: the same training to float32 rounding, bit for bit where no step is skipped, the same bits
for any thread count, exact catch-up before checkpoints, resume and evaluation.

Why a tolerance: a feature absent from k batches is brought forward by A^k (float64, one rounding to
float32) where the eager path rounds 2 float32 operations per step k times; the recurrence is
contractive (eigenvalues 1 - lr*wd .. momentum, all <= 1), so the difference stays within a few
float32 ulps of the weights' scale per skipped step: we allow 4 * steps ulps of max |w|.
"""

import numba
import numpy as np
import pytest
import scipy.sparse as sp

from sparsenet.checkpoint import load_checkpoint
from sparsenet.config import config_from_dict
from sparsenet.data.csr import CSRRows
from sparsenet.optim import _momentum_into
from sparsenet.sparse.lazy import zero_gradient_powers
from sparsenet.state import new_state
from sparsenet.train import lazy_session, train_epoch

ULP = 2.0**-24


def bag(n, d, per_row, seed, words=None):
    """CSR rows with per_row random features each (counts 1..3) and labels carried by `words`."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, size=n)
    cols = [np.unique(np.concatenate([rng.choice(d, per_row, replace=False), [y[r] * 5 + rng.integers(0, 5)]]))
            for r in range(n)]
    indptr = np.zeros(n + 1, np.int64)
    indptr[1:] = np.cumsum([c.size for c in cols])
    indices = np.concatenate(cols).astype(np.int32)
    data = rng.integers(1, 4, size=indices.size).astype(np.float32)
    return CSRRows(data, indices, indptr, (n, d)), y


def config(mode="coupled", **train):
    return config_from_dict({"seed": 3, "model": {"hidden": [24, 16], "epsilon": 4, "dropout": 0.2},
                             "train": {"batch_size": 16, "lr": 0.05, "momentum": 0.9, "weight_decay": 0.01,
                                       "weight_decay_mode": mode, **train}})


def two_runs(cfg, x, y, epochs=1):
    """(lazy state, eager state) after `epochs` epochs of the same batches."""
    lazy, eager = new_state(cfg, x.shape[1], 3), new_state(cfg, x.shape[1], 3)
    eager.lazy_updates = False
    results = [[train_epoch(s, x, y, cfg.train.batch_size) for _ in range(epochs)] for s in (lazy, eager)]
    return lazy, eager, results


def assert_close_to_eager(lazy, eager, steps):
    for l, (a, b) in enumerate(zip(lazy.model.layers, eager.model.layers)):
        scale = float(np.abs(b.values).max())
        tol = 4 * steps * ULP * scale
        assert np.abs(a.values - b.values).max() <= tol, (l, np.abs(a.values - b.values).max(), tol)
        va, vb = lazy.optimizer.velocities[l], eager.optimizer.velocities[l]
        assert np.abs(va - vb).max() <= 4 * steps * ULP * float(np.abs(vb).max() + scale), l
        np.testing.assert_allclose(a.bias, b.bias, rtol=0, atol=tol)


@pytest.mark.parametrize("mode", ["coupled", "decoupled"])
def test_a_lazy_epoch_equals_the_eager_one_to_float32_rounding(mode):
    x, y = bag(200, 3000, 20, 0)  # each batch of 16 touches ~10 % of the features: most steps are skipped
    cfg = config(mode)
    lazy, eager, (ra, rb) = two_runs(cfg, x, y, epochs=2)
    steps = 2 * -(-200 // 16)
    assert_close_to_eager(lazy, eager, steps)
    assert not np.array_equal(lazy.model.layers[0].values, eager.model.layers[0].values)  # rounding differs...
    assert np.count_nonzero(lazy.model.layers[0].values != eager.model.layers[0].values) > 100
    for (la, aa), (lb, ab) in zip(ra, rb):
        assert la == pytest.approx(lb, rel=1e-6) and aa == ab
    # ...and what was skipped really decayed: an input never seen moved only by momentum and weight decay
    unseen = np.setdiff1d(np.arange(3000), x.indices)
    layer = lazy.model.layers[0]
    conn = np.isin(layer.rows, unseen)
    assert conn.sum() > 20
    start = new_state(cfg, 3000, 3).model.layers[0].values[conn]
    a = zero_gradient_powers(steps, cfg.train.lr, 0.9, 0.01, mode == "decoupled")[steps]
    np.testing.assert_allclose(layer.values[conn], start * a[0], rtol=1e-6)  # v starts at 0


def test_with_every_feature_in_every_batch_lazy_is_eager_bit_for_bit():
    """No step skipped: gradients, forward and update are the eager ones in the same order."""
    dense = np.random.default_rng(4).integers(1, 3, size=(96, 40)).astype(np.float32)
    x = CSRRows(*(lambda m: (m.data, m.indices.astype(np.int32), m.indptr.astype(np.int64)))(sp.csr_array(dense)),
                (96, 40))
    y = np.random.default_rng(5).integers(0, 3, size=96)
    lazy, eager, (ra, rb) = two_runs(config(), x, y, epochs=2)
    assert ra == rb
    for l, (a, b) in enumerate(zip(lazy.model.layers, eager.model.layers)):
        np.testing.assert_array_equal(a.values, b.values)
        np.testing.assert_array_equal(lazy.optimizer.velocities[l], eager.optimizer.velocities[l])


@pytest.mark.parametrize("decoupled", [False, True])
def test_the_power_table_is_the_eager_zero_gradient_step_repeated(decoupled):
    rng = np.random.default_rng(6)
    w = rng.standard_normal(50).astype(np.float32)
    v = (0.1 * rng.standard_normal(50)).astype(np.float32)
    lr, m, wd = np.float32(0.05), np.float32(0.9), np.float32(0.02)
    powers = zero_gradient_powers(40, lr, m, wd, decoupled)
    np.testing.assert_array_equal(powers[0], [1, 0, 0, 1])
    ew, ev = w.copy(), v.copy()
    zero = np.zeros(50, np.float32)
    for k in range(1, 41):
        _momentum_into(ew, ev, zero, lr, m, wd, decoupled)
        a, b, c, d = powers[k]
        lw, lv = a * w.astype(np.float64) + b * v, c * w.astype(np.float64) + d * v
        assert np.abs(lw - ew).max() <= 4 * k * ULP * np.abs(w).max()
        assert np.abs(lv - ev).max() <= 4 * k * ULP * np.abs(w).max()


def test_the_same_bits_for_any_thread_count():
    x, y = bag(160, 5000, 30, 7)  # several feature buckets per chunk and sample blocks
    cfg = config()
    runs = []
    for threads in (1, 2):
        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
        try:
            s = new_state(cfg, 5000, 3)
            result = [train_epoch(s, x, y, 16) for _ in range(2)]
            runs.append((result, [l.values.copy() for l in s.model.layers], s.optimizer.velocities[0].copy()))
        finally:
            numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    assert runs[0][0] == runs[1][0]
    for a, b in zip(runs[0][1], runs[1][1]):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(runs[0][2], runs[1][2])


def test_only_momentum_on_csr_samples_is_lazy():
    x, _ = bag(20, 300, 5, 8)
    state = new_state(config(), 300, 3)
    assert lazy_session(state, x, 2) is not None
    assert lazy_session(state, np.zeros((20, 300), np.float32), 2) is None
    assert lazy_session(new_state(config(optimizer="adam"), 300, 3), x, 2) is None
    state.lazy_updates = False
    assert lazy_session(state, x, 2) is None


def test_a_stopped_epoch_is_caught_up_before_anything_reads_the_layer():
    """train_epoch stopped after 6 batches: every weight is caught up (within rounding of the eager run
    stopped there) and the model scores as the eager one; continuing the epoch ends as the eager one."""
    x, y = bag(240, 4000, 20, 9)
    cfg = config()
    lazy, eager = new_state(cfg, 4000, 3), new_state(cfg, 4000, 3)
    eager.lazy_updates = False
    for s in (lazy, eager):
        count = iter(range(100))
        assert train_epoch(s, x, y, 16, stop=lambda: next(count) >= 5) is None
        assert s.partial["step"] == 6
    assert_close_to_eager(lazy, eager, 6)
    la, lb = lazy.model.evaluate(x, y, 64), eager.model.evaluate(x, y, 64)
    assert la[0] == pytest.approx(lb[0], rel=1e-6) and la[1] == lb[1]
    ra, rb = train_epoch(lazy, x, y, 16), train_epoch(eager, x, y, 16)
    assert ra[0] == pytest.approx(rb[0], rel=1e-6) and ra[1] == rb[1]
    assert_close_to_eager(lazy, eager, 15)


def test_a_run_stopped_mid_epoch_resumes_to_float32_rounding_and_at_epoch_ends_bit_for_bit(tmp_path, monkeypatch):
    """SIGUSR1 during epoch 2 of a CSR run: the resumed run ends within rounding of the uninterrupted
    one (the catch-up of a skipped stretch is split at the stop: its rounding differs). A run of 2
    epochs resumed for a third is the uninterrupted run bit for bit (every epoch ends caught up)."""
    import os
    import signal

    import sparsenet.train as train
    from sparsenet.data.prepare import Dataset
    from tests.unit.test_train import assert_same_checkpoint

    x, y = bag(240, 4000, 20, 9)
    data = Dataset(x.take(np.arange(40, 240)), y[40:], x.take(np.arange(40)), y[:40], 3, "bag")

    def cfg(epochs):
        return config_from_dict({"seed": 3, "model": {"hidden": [24, 16], "epsilon": 4, "dropout": 0.0},
                                 "data": {"standardize": False}, "evolution": {"zeta": 0.2},
                                 "train": {"batch_size": 16, "lr": 0.05, "epochs": epochs, "progress": False},
                                 "checkpoint": {"every": 1}})

    train.run(cfg(3), tmp_path / "straight", dataset=data)
    train.run(cfg(2), tmp_path / "two", dataset=data)
    train.run(cfg(3), tmp_path / "two", resume=True, dataset=data)
    assert_same_checkpoint(tmp_path / "straight" / "checkpoint.h5", tmp_path / "two" / "checkpoint.h5")

    calls, real_step = [], train.train_step

    def step_then_signal(state, xx, yy, index, lazy=None):
        result = real_step(state, xx, yy, index, lazy)
        calls.append(state.epoch)
        if len(calls) == 13 + 6:  # batch 6 of epoch 2 (200 training samples: 13 batches)
            os.kill(os.getpid(), signal.SIGUSR1)
        return result

    monkeypatch.setattr(train, "train_step", step_then_signal)
    train.run(cfg(3), tmp_path / "stopped", dataset=data)
    saved = load_checkpoint(tmp_path / "stopped" / "checkpoint.h5")
    assert saved.epoch == 1 and saved.partial_epoch["step"] == 6
    monkeypatch.setattr(train, "train_step", real_step)
    train.run(cfg(3), tmp_path / "stopped", resume=True, dataset=data)
    a, b = load_checkpoint(tmp_path / "straight" / "checkpoint.h5"), load_checkpoint(tmp_path / "stopped" / "checkpoint.h5")
    assert a.epoch == b.epoch == 3 and b.partial_epoch is None
    for la, lb in zip(a.layers, b.layers):
        np.testing.assert_array_equal(la.rows, lb.rows)
        np.testing.assert_array_equal(la.cols, lb.cols)
        assert np.abs(la.values - lb.values).max() <= 4 * 39 * ULP * float(np.abs(la.values).max())


def test_the_memory_plan_counts_the_lazy_copies_for_csr_data_only():
    from sparsenet.memory import DataShape, expected_nnz, plan_memory

    def lazy_items(optimizer, nnz):
        cfg = config_from_dict({"model": {"hidden": [100]}, "train": {"optimizer": optimizer}})
        plan = plan_memory(cfg, 1, DataShape(1000, 200, 50000, 3, "test", nnz=nnz), available=1 << 40)
        return [i.bytes for i in plan.ranks[0].items if i.name == "lazy first layer"]

    assert lazy_items("momentum", 60000) == [8 * expected_nnz(50000, 100, 20.0) + 4 * 50000]
    assert lazy_items("momentum", 0) == [] and lazy_items("adam", 60000) == []


CACHED_RUN = """
import numpy as np
from numba.core.dispatcher import Dispatcher
from sparsenet.sparse import csr, kernels, lazy
from sparsenet.sparse.init import erdos_renyi_layer
from tests.unit.test_lazy_updates import bag
x, _ = bag(40, 300, 10, 0)
layer = erdos_renyi_layer(300, 20, 4.0, "he_uniform", np.random.default_rng(0))
index = np.arange(16)
order = csr.BatchOrder(x.indices, x.indptr, index, 300)
out, factor = np.empty((20, 16), np.float32), np.empty((20, 16), np.float32)
options = kernels.forward_options(out, 20, 16, 0.0, 0.2, 7, factor)
session = lazy.LazyFirstLayer(layer, np.zeros(layer.nnz, np.float32), 0.05, 0.9, 0.01, False, 4)
session.catch_up(x, order)
session.forward(x, order, out, options, layer.bias)
session.step(x, order, out)
csr.forward(layer, x.data, x.indices, x.indptr, x.shape, index, out, slope=0.0)
kernels = {k for module in (csr, lazy) for k in vars(module).values() if isinstance(k, Dispatcher)}
print(sum(sum(k.stats.cache_hits.values()) for k in kernels), sum(sum(k.stats.cache_misses.values()) for k in kernels))
"""


@pytest.mark.skipif(numba.config.DISABLE_JIT, reason="no compiled kernels, no cache")
def test_the_csr_and_lazy_kernels_load_from_numba_cache_in_a_new_process(tmp_path):
    """The second process compiles none of them. Before, lazy.py's kernels closed over their jitted prefetch
    helper, whose pickle (part of numba's cache key for a closure) differs in every process: compiled every run."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "numba_cache"))
    counts = []  # (cache hits, cache misses) of every compiled kernel of csr.py and lazy.py
    for _ in range(2):
        proc = subprocess.run([sys.executable, "-c", CACHED_RUN], capture_output=True, text=True, env=env, timeout=600)
        assert proc.returncode == 0, proc.stderr
        counts.append(tuple(map(int, proc.stdout.split()[-2:])))
    assert counts == [(0, 6), (6, 0)]
