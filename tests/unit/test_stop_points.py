"""A stop signal at every moment of a phase-1 run of the parameter server (in-process fake workers, no MPI).

A signal changes nothing but the flag the server reads through StopRequest.signal_name, so signalling
just before each read of that flag in turn covers every moment a real signal can land: after any
gradient of a round, between a round's update and its replies, during a SET step or neuron pruning,
around an epoch's end. Each stopped run is resumed and must end as a run never stopped would (WASSP:
bit for bit), and no stop may leave a gradient on its way (over MPI it would be dropped while the
worker's position counts its batch).
"""

import os
import signal

import numba
import numpy as np
import pytest

from sparsenet import signals
from sparsenet.checkpoint import load_checkpoint
from sparsenet.signals import StopRequest
from tests.unit.test_server import TIMINGS, resume, serve

PRUNE = ["pruning.method=importance", "pruning.start_epoch=1", "pruning.every=1", "pruning.percentile=20"]
# 105 training samples: 4 rounds of 2 workers per epoch; SET and neuron pruning before epoch 2
PHASE1 = ["data.samples=150", "train.epochs=2", "parallel.phase1_epochs=2", "evolution.zeta=0.3",
          "parallel.warmup_epochs=2", "checkpoint.best=false", *PRUNE]


@pytest.fixture(autouse=True)
def quick(monkeypatch):
    """Dozens of tiny runs: one kernel thread (no thread hand-offs on a busy machine), no fsync."""
    monkeypatch.setattr(os, "fsync", lambda fd: None)
    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    yield
    numba.set_num_threads(threads)


class SignalAtRead:
    """Counts reads of the stop flag while a run listens for signals; sends this process SIGUSR1 just
    before read number `at` (None: never)."""

    def __init__(self, monkeypatch):
        self.at, self.reads, self.seen = None, 0, None
        name = StopRequest.signal_name.fget

        def read(request):
            if signal.getsignal(signal.SIGUSR1) is not signals._handle:  # the run is over (or not begun)
                return name(request)
            self.reads += 1
            if self.reads == self.at:
                os.kill(os.getpid(), signal.SIGUSR1)
                self.seen = name(request)  # the handler has run: this very read sees the request
            return name(request)

        monkeypatch.setattr(StopRequest, "signal_name", property(read))

    def arm(self, at: int | None) -> None:
        self.at, self.reads, self.seen = at, 0, None


def partial_epoch(out) -> dict | None:
    """Where the checkpoint in `out` stopped part-way through an epoch (None: none, or no checkpoint)."""
    path = out / "checkpoint.h5"
    return load_checkpoint(path).parallel_partial_epoch if path.exists() else None


def go_on(out, *extra):
    """--resume in `out` with 2 fake workers (a stop before the first epoch saved nothing: a new run)."""
    if (out / "checkpoint.h5").exists():
        _, workers, state = resume(out, 2, *extra)
    else:
        _, workers, state, _, _ = serve(out, 2, *extra)
    return workers, state


def final_streams(workers) -> list[dict]:
    return [workers.streams[w][1].position() for w in workers.ids]


def assert_same_run(a_path, b_path, a_rows, b_rows):
    a, b = load_checkpoint(a_path / "checkpoint.h5"), load_checkpoint(b_path / "checkpoint.h5")
    assert b.parallel_partial_epoch is None and (a.epoch, a.version, a.rng_state) == (b.epoch, b.version, b.rng_state)
    for la, lb in zip(a.layers, b.layers):
        assert la.state.keys() == lb.state.keys()
        for x, y in [(la.rows, lb.rows), (la.cols, lb.cols), (la.values, lb.values), (la.bias, lb.bias),
                     *((la.state[k], lb.state[k]) for k in la.state)]:
            np.testing.assert_array_equal(x, y)
    assert ([{k: v for k, v in r.items() if k not in TIMINGS} for r in a_rows]
            == [{k: v for k, v in r.items() if k not in TIMINGS} for r in b_rows])


def test_a_wassp_run_stopped_before_any_read_of_the_stop_flag_resumes_bit_identically(tmp_path, monkeypatch):
    """WASSP, 2 workers, 2 phase-1 epochs of 4 rounds with SET, neuron pruning and the lr warm-up: a
    signal before each read of the stop flag in turn (every moment of the run), then --resume; the
    weights, optimizer state, the server's and the workers' RNG states and every metrics row are
    those of the run never stopped."""
    common = ["parallel.algorithm=wassp", *PHASE1]
    hook = SignalAtRead(monkeypatch)
    (tmp_path / "straight").mkdir()
    _, workers, straight, _, _ = serve(tmp_path / "straight", 2, *common)
    reads, streams = hook.reads, final_streams(workers)
    assert straight.epoch == 2 and len(workers.taken) == 2 * 8 and reads > 2 * 4
    stopped_in = set()
    for at in range(1, reads + 1):
        out = tmp_path / f"at{at}"
        out.mkdir()
        hook.arm(at)
        _, workers, stopped, _, _ = serve(out, 2, *common)
        assert hook.seen == "SIGUSR1", at
        assert workers.lost == [], f"stop at read {at} left gradients of workers {workers.lost} on their way"
        part = partial_epoch(out)
        if part is not None:  # it stopped at the round whose read saw the signal, taking no gradient after it
            stopped_in.add((stopped.epoch + 1, part["updates"]))
            assert len(workers.taken) == 8 * stopped.epoch + part["updates"], at
        hook.arm(None)
        if stopped.epoch < 2:
            workers, stopped = go_on(out, *common)
        assert stopped.epoch == 2 and stopped.stopped_by is None, at
        assert_same_run(tmp_path / "straight", out, straight.history, stopped.history)
        assert final_streams(workers) == streams, at
    # the sweep stopped every epoch part-way, after every round but an epoch's last (which ends the epoch)
    assert stopped_in == {(e, 2 * r) for e in (1, 2) for r in range(1, 4)}


def test_a_wasap_stop_at_any_read_of_the_stop_flag_applies_every_gradient_on_its_way(tmp_path, monkeypatch):
    """WASAP (asynchronous, so a resume is not bit-identical): whatever the moment, the stop applies the
    gradient every worker has on its way before saving, and the resumed run logs epochs 1-2 once."""
    common = ["parallel.algorithm=wasap", *PHASE1]
    hook = SignalAtRead(monkeypatch)
    (tmp_path / "straight").mkdir()
    serve(tmp_path / "straight", 2, *common)
    reads = hook.reads
    for at in range(1, reads + 1):
        out = tmp_path / f"at{at}"
        out.mkdir()
        hook.arm(at)
        _, workers, stopped, _, _ = serve(out, 2, *common)
        assert workers.lost == [], f"stop at read {at} left gradients of workers {workers.lost} on their way"
        hook.arm(None)
        if stopped.epoch < 2:
            _, stopped = go_on(out, *common)
        assert [r["epoch"] for r in stopped.history] == [1, 2] and stopped.stopped_by is None, at
