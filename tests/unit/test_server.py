"""The parameter server's algorithm, driven through the seam by in-process fake workers (no MPI)."""

import copy
import json
import os
import signal

import numpy as np
import pytest

from sparsenet.checkpoint import load_checkpoint
from sparsenet.config import load_config
from sparsenet.data import load_dataset
from sparsenet.optim import make_optimizer
from sparsenet.parallel.averaging import average_replicas
from sparsenet.parallel.server import ParameterServer
from sparsenet.sparse.layer import SparseLayer
from sparsenet.state import new_state
from tests.unit.fake_workers import FakeWorkers

SMALL = ["data.name=synthetic", "data.samples=300", "data.features=20", "data.informative=6", "data.redundant=2",
         "data.classes=3", "model.hidden=[24,16]", "model.epsilon=4", "model.dropout=0", "train.batch_size=16",
         "train.lr=0.02", "train.progress=false", "checkpoint.every=1", "seed=2"]


def serve(tmp_path, k, *extra, on_take=None):
    cfg = load_config(None, SMALL + list(extra))
    data = load_dataset(cfg.data, cfg.seed)
    state = new_state(cfg, data.n_features, data.n_classes)
    start = copy.deepcopy(state.model)
    workers = FakeWorkers(cfg, data, k, on_take)
    server = ParameterServer(cfg, data, workers, state, tmp_path)
    return server, workers, server.run(), start, cfg


def test_wassp_applies_the_sample_weighted_mean_of_each_round_once(tmp_path):
    server, workers, state, start, cfg = serve(tmp_path, 2, "parallel.algorithm=wassp", "parallel.lr_scaling=false",
                                               "train.epochs=1", "parallel.phase1_epochs=1")
    taken = workers.taken
    assert len(taken) == 2 * -(-210 // 32) and [g.source for g in taken[:4]] == [1, 2, 1, 2]  # 210 train samples
    reference, opt = start, make_optimizer(cfg, start)
    for a, b in zip(taken[0::2], taken[1::2]):
        total = a.samples + b.samples
        mean = [np.float32(a.samples / total) * x + np.float32(b.samples / total) * y
                for x, y in zip(a.arrays, b.arrays)]
        n = len(reference.layers)
        opt.step(reference, mean[:n], mean[n:], 0.02)
    for mine, theirs in zip(state.model.layers, reference.layers):
        np.testing.assert_array_equal(mine.values, theirs.values)
        np.testing.assert_array_equal(mine.bias, theirs.bias)
    row = state.history[0]
    assert (row["updates"], row["stale_updates"], row["phase"]) == (len(taken), 0, 1)
    assert row["train_loss"] == pytest.approx(sum(g.loss for g in taken) / sum(g.samples for g in taken))
    assert workers.stopped and load_checkpoint(tmp_path / "checkpoint.h5").epoch == 1


def test_wasap_carries_the_gradients_computed_before_a_set_step_onto_the_new_topology(tmp_path):
    server, workers, state, _, _ = serve(tmp_path, 3, "parallel.algorithm=wasap", "train.epochs=2",
                                         "parallel.phase1_epochs=2", "evolution.zeta=0.3")
    rows = state.history
    # the worker that handed in epoch 1's last gradient gets the new topology first; the two others
    # hand in one gradient each on the old one, carried over, then get the new topology too
    assert [r["stale_updates"] for r in rows] == [0, 2] and rows[1]["version"] == 1
    assert sorted(w for kind, w, v in workers.sent if kind == "topology" and v == 1) == [1, 2, 3]
    assert [g.version for g in workers.taken].count(0) == rows[0]["updates"] + 2
    assert rows[1]["test_loss"] < rows[0]["test_loss"]
    assert list(server.lineages) == [0]  # the map from version 0, dropped at the next SET step


def test_phase2_averages_the_replicas_and_prunes_back_to_the_targets(tmp_path):
    server, workers, state, _, _ = serve(tmp_path, 2, "train.epochs=3", "parallel.phase1_epochs=1",
                                         "parallel.algorithm=wassp")
    assert [r["phase"] for r in state.history] == [1, 2, 2] and workers.stopped
    targets = state.history[0]["nnz"]
    last = workers.replicas[-1]
    expected = average_replicas([[SparseLayer(a.n_in, a.n_out, a.rows, a.cols, a.values, a.bias) for a in r.layers]
                                 for r in last], targets)
    for mine, theirs in zip(state.model.layers, expected):
        np.testing.assert_array_equal(mine.keys(), theirs.keys())
        np.testing.assert_array_equal(mine.values, theirs.values)
    assert state.model.nnz == targets
    samples = [r.report["samples"] for r in last]
    assert state.history[-1]["train_loss"] == pytest.approx((0.5 * samples[0] + 1.0 * samples[1]) / sum(samples))
    assert workers.masks == [[], []]  # one start, one continue, no pruning
    saved = load_checkpoint(tmp_path / "checkpoint.h5")
    assert saved.phase == 2 and saved.replica_optimizer_scalars == [{"step": 1}, {"step": 2}]
    np.testing.assert_array_equal(saved.replicas[1][0].values, last[1].layers[0].values)


def resume(tmp_path, k, *extra, on_take=None):
    """A new server (and fake workers) resumed from tmp_path's checkpoint."""
    from sparsenet.loop import start_run

    cfg = load_config(None, SMALL + list(extra))
    data = load_dataset(cfg.data, cfg.seed)
    state, saved = start_run(cfg, tmp_path, data.n_features, data.n_classes, resume=True)
    workers = FakeWorkers(cfg, data, k, on_take)
    server = ParameterServer(cfg, data, workers, state, tmp_path, saved.version, partial=saved.parallel_partial_epoch)
    return server, workers, server.run()


def stop_at(n):
    def on_take(taken):
        if taken == n:
            os.kill(os.getpid(), signal.SIGUSR1)
    return on_take


TIMINGS = {"train_seconds", "evolution_seconds", "eval_seconds", "peak_rss_mb"}


def test_a_stop_signal_ends_a_wasap_epoch_at_the_next_update_and_resume_continues_it(tmp_path):
    """SIGUSR1 during the 5th gradient of epoch 1 (of 14 per epoch): the server applies it and the one
    gradient each worker still has on its way, stops the workers and saves where the epoch stands."""
    common = ["parallel.algorithm=wasap", "train.epochs=3", "parallel.phase1_epochs=3"]
    server, workers, state, _, _ = serve(tmp_path, 2, *common, on_take=stop_at(5))
    assert state.stopped_by == "SIGUSR1" and state.epoch == 0 and workers.stopped and state.history == []
    assert len(workers.taken) == 5 + 2
    saved = load_checkpoint(tmp_path / "checkpoint.h5")
    part = saved.parallel_partial_epoch
    assert saved.epoch == 0 and saved.phase == 1
    assert (part["updates"], part["samples"], part["stale"]) == (7, 7 * 16, 0)
    assert part["loss"] == pytest.approx(sum(g.loss for g in workers.taken))
    assert part["correct"] == sum(g.correct for g in workers.taken)
    positions = [workers.streams[w][1].position() for w in workers.ids]
    assert part["workers"] == positions and positions[0]["start"] == 4 * 16  # worker 1 drew batches 1, 3, 5, 7
    for layer, mine in zip(saved.layers, state.model.layers):
        np.testing.assert_array_equal(layer.values, mine.values)

    server, resumed, state = resume(tmp_path, 2, *common)
    assert state.stopped_by is None and [r["epoch"] for r in state.history] == [1, 2, 3]
    assert resumed.positions_sent == {1: positions[0], 2: positions[1]}  # each worker continues its stream
    assert [kind for kind, _, _ in resumed.sent[:2]] == ["topology", "topology"]
    # epoch 1 counts the 7 gradients before the stop and the 7 after it (fake gradients are of 16 samples)
    assert [r["updates"] for r in state.history] == [14, 14, 14] and len(resumed.taken) == 7 + 14 + 14 + 1
    assert load_checkpoint(tmp_path / "checkpoint.h5").parallel_partial_epoch is None


def test_a_wassp_run_stopped_mid_epoch_resumes_bit_identically(tmp_path):
    common = ["parallel.algorithm=wassp", "train.epochs=3", "parallel.phase1_epochs=3", "evolution.zeta=0.3",
              "parallel.warmup_epochs=2"]
    for name in ("straight", "stopped"):
        (tmp_path / name).mkdir()
    _, _, straight, _, _ = serve(tmp_path / "straight", 2, *common)
    _, workers, stopped, _, _ = serve(tmp_path / "stopped", 2, *common, on_take=stop_at(14 + 9))  # epoch 2, round 5
    assert stopped.epoch == 1 and stopped.stopped_by == "SIGUSR1" and len(workers.taken) == 24
    part = load_checkpoint(tmp_path / "stopped" / "checkpoint.h5").parallel_partial_epoch
    assert (part["updates"], part["samples"]) == (10, 160)
    _, _, resumed = resume(tmp_path / "stopped", 2, *common)
    assert resumed.epoch == 3
    a, b = load_checkpoint(tmp_path / "straight" / "checkpoint.h5"), load_checkpoint(tmp_path / "stopped" / "checkpoint.h5")
    assert a.rng_state == b.rng_state and a.version == b.version == 2
    for la, lb in zip(a.layers, b.layers):
        for x, y in [(la.rows, lb.rows), (la.values, lb.values), (la.bias, lb.bias), *zip(la.state.values(), lb.state.values())]:
            np.testing.assert_array_equal(x, y)
    assert ([{k: v for k, v in r.items() if k not in TIMINGS} for r in straight.history]
            == [{k: v for k, v in r.items() if k not in TIMINGS} for r in resumed.history])


@pytest.mark.parametrize("algorithm", ["wasap", "wassp"])
def test_a_stop_inside_a_diverged_phase1_epoch_keeps_the_last_good_checkpoints(tmp_path, algorithm):
    """lr 1e6 from epoch 2 on and SIGUSR1 at its 6th gradient: the server's weights are NaN by then, so the
    run ends with DivergedError and neither checkpoint changes (before, the stop's checkpoint held them)."""
    from sparsenet.errors import DivergedError

    common = [f"parallel.algorithm={algorithm}", "train.epochs=3", "parallel.phase1_epochs=3"]
    serve(tmp_path, 2, *common[:1], "train.epochs=1", *common[2:])
    names = ("checkpoint.h5", "checkpoint_best.h5")
    good = {name: (tmp_path / name).read_bytes() for name in names}
    with pytest.raises(DivergedError, match=r"diverged in epoch 2: layer \d's (weights|biases) hold NaN or infinity"):
        resume(tmp_path, 2, *common, "train.lr=1e6", on_take=stop_at(6))
    assert {name: (tmp_path / name).read_bytes() for name in names} == good
    assert load_checkpoint(tmp_path / "checkpoint.h5").epoch == 1


def test_a_stop_in_the_last_update_of_an_epoch_completes_the_epoch(tmp_path):
    """WASSP, 210 samples in rounds of 2 x 16: the 14th gradient ends epoch 1, which is saved whole."""
    _, workers, state, _, _ = serve(tmp_path, 2, "parallel.algorithm=wassp", "train.epochs=3",
                                    "parallel.phase1_epochs=3", on_take=stop_at(14))
    assert state.epoch == 1 and state.stopped_by == "SIGUSR1" and workers.stopped
    assert load_checkpoint(tmp_path / "checkpoint.h5").parallel_partial_epoch is None


def test_a_mid_epoch_parallel_checkpoint_is_validated_and_refused_by_the_sequential_trainer(tmp_path):
    import json

    import h5py

    from sparsenet.errors import CheckpointError, ConfigError
    from sparsenet.train import run

    common = ["parallel.algorithm=wassp", "train.epochs=2", "parallel.phase1_epochs=2"]
    serve(tmp_path, 2, *common, on_take=stop_at(4))
    path = tmp_path / "checkpoint.h5"
    part = load_checkpoint(path).parallel_partial_epoch
    assert part["updates"] == 4 and len(part["workers"]) == 2
    with pytest.raises(ConfigError, match="stopped part-way through epoch 1 by a parallel run with 2 workers; "
                                          "resume it under MPI with 3 ranks"):
        run(load_config(None, SMALL + common), tmp_path, resume=True)
    for bad in ({**part, "samples": -1}, {**part, "workers": [{"start": 3, "rng_state": {"bit_generator": "nope"}}]},
                {**part, "loss": float("nan")}, [1, 2]):
        with h5py.File(path, "a") as f:
            del f["parallel_partial_epoch"]
            f.create_dataset("parallel_partial_epoch", data=json.dumps(bad))
        with pytest.raises(CheckpointError, match="parallel_partial_epoch"):
            load_checkpoint(path)


def test_a_phase2_checkpoint_is_refused_by_the_sequential_trainer(tmp_path):
    """Before, `sparsenet train --resume` without MPI continued a phase-2 checkpoint from the last average with the
    server's fresh optimizer (Adam at step 0), dropping the replicas' models, moments and generators without a word."""
    from sparsenet.errors import ConfigError
    from sparsenet.train import run

    common = ["parallel.algorithm=wassp", "train.epochs=2", "parallel.phase1_epochs=1", "train.optimizer=adam"]
    serve(tmp_path, 2, *common)
    saved = load_checkpoint(tmp_path / "checkpoint.h5")
    assert (saved.epoch, saved.phase, len(saved.replicas), saved.optimizer_scalars) == (2, 2, 2, {"step": 0})
    before = (tmp_path / "checkpoint.h5").read_bytes()
    with pytest.raises(ConfigError, match=r"^cannot resume: the checkpoint is in phase 2 of a parallel run after "
                                          r"epoch 2, holding the replicas of its 2 workers \(models, optimizer state, "
                                          r"generators\); resume it under MPI with 3 ranks$"):
        run(load_config(None, SMALL + common[:-2] + ["train.epochs=3", "train.optimizer=adam"]), tmp_path, resume=True)
    assert (tmp_path / "checkpoint.h5").read_bytes() == before


def test_a_batch_stream_restored_from_its_position_draws_the_same_batches():
    from sparsenet.parallel.worker import BatchStream

    a = BatchStream(10, 4, np.random.default_rng(5))
    assert a.position()["order_rng_state"] is None and a.position()["start"] == 10
    for _ in range(4):  # into the second pass: 4 + 4 + 2, then 4
        next(a)
    where = json.loads(json.dumps(a.position()))
    assert where["start"] == 4
    ahead = [next(a) for _ in range(5)] + [a.rng.integers(0, 100, size=3)]
    b = BatchStream(10, 4, np.random.default_rng(99))
    b.restore(where)
    again = [next(b) for _ in range(5)] + [b.rng.integers(0, 100, size=3)]
    for x, y in zip(ahead, again):
        np.testing.assert_array_equal(x, y)
    assert [len(x) for x in ahead[:5]] == [4, 2, 4, 4, 2]


def test_a_stop_while_phase2_starts_ends_the_run_at_the_first_replica_exchange(tmp_path, monkeypatch):
    """Before, a stop arriving while the replicas went out ran no phase-2 epoch: the server told workers
    busy training to stop and never took their replicas (over MPI a worker could hang sending one)."""
    start = FakeWorkers.start_replicas

    def start_then_signal(self, *args):
        start(self, *args)
        os.kill(os.getpid(), signal.SIGUSR1)

    monkeypatch.setattr(FakeWorkers, "start_replicas", start_then_signal)
    _, workers, state, _, _ = serve(tmp_path, 2, "train.epochs=3", "parallel.phase1_epochs=1",
                                    "parallel.algorithm=wassp")
    assert state.stopped_by == "SIGUSR1" and [r["phase"] for r in state.history] == [1, 2]
    assert len(workers.replicas) == 1 and workers.stopped
    saved = load_checkpoint(tmp_path / "checkpoint.h5")
    assert saved.epoch == 2 and saved.phase == 2 and len(saved.replicas) == 2


def test_a_stop_during_the_set_step_lands_at_the_first_update_after_it_and_resumes_bit_identically(tmp_path,
                                                                                                    monkeypatch):
    import sparsenet.parallel.server as server_module

    common = ["parallel.algorithm=wassp", "train.epochs=2", "parallel.phase1_epochs=2", "evolution.zeta=0.3"]
    for name in ("straight", "stopped"):
        (tmp_path / name).mkdir()
    _, _, straight, _, _ = serve(tmp_path / "straight", 2, *common)
    evolve = server_module.between_epochs

    def evolve_then_signal(state, cfg):
        result = evolve(state, cfg)
        os.kill(os.getpid(), signal.SIGUSR1)
        return result

    monkeypatch.setattr(server_module, "between_epochs", evolve_then_signal)
    _, workers, stopped, _, _ = serve(tmp_path / "stopped", 2, *common)
    monkeypatch.setattr(server_module, "between_epochs", evolve)
    assert stopped.epoch == 1 and len(workers.taken) == 14 + 2  # epoch 1, then epoch 2's first round
    assert load_checkpoint(tmp_path / "stopped" / "checkpoint.h5").parallel_partial_epoch["updates"] == 2
    _, _, resumed = resume(tmp_path / "stopped", 2, *common)
    a, b = load_checkpoint(tmp_path / "straight" / "checkpoint.h5"), load_checkpoint(tmp_path / "stopped" / "checkpoint.h5")
    assert a.rng_state == b.rng_state and resumed.epoch == 2
    for la, lb in zip(a.layers, b.layers):
        np.testing.assert_array_equal(la.rows, lb.rows)
        np.testing.assert_array_equal(la.values, lb.values)
