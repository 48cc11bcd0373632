"""MPI-free parts of parallel training: retain-valid-updates, phase-2 averaging, which gradient the server takes next."""

import os
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from sparsenet.evolution import prune_and_regrow
from sparsenet.model import SparseMLP
from sparsenet.optim import MomentumSGD
from sparsenet.parallel.averaging import average_replicas, prune_to_nnz, union_average
from sparsenet.config import load_config
from sparsenet.errors import SparsenetError
from sparsenet.parallel.mpi_workers import MPIWorkers
from sparsenet.parallel.run import check_resumable
from sparsenet.parallel.wire import Bundle
from sparsenet.parallel.updates import compose, lineage, retain_valid
from sparsenet.sparse.init import erdos_renyi_layer
from tests import naive


def test_stale_gradient_updates_exactly_the_surviving_connections():
    rng = np.random.default_rng(0)
    model = SparseMLP.initialize([40, 30, 5], epsilon=4, init="he_uniform", activation="relu", alpha=0,
                                 dropout=0, output="softmax", rng=rng)
    opt = MomentumSGD(model, lr=0.1, momentum=0.9, weight_decay=0.001)
    old = model.layers[0]
    stale_grad = rng.standard_normal(old.nnz).astype(np.float32) + 3.0  # never zero
    new, source = prune_and_regrow(old, 0.3, "he_uniform", rng)  # the server evolved meanwhile
    model.layers[0] = new
    opt.follow_topology(0, source)
    before = new.values.copy()
    index, values = retain_valid(lineage(source, old.nnz), stale_grad)
    none, empty = np.zeros(0, np.float32), np.zeros(0, np.int64)  # layer 1 and the biases: no entries
    opt.step_partial(model, [values, none], [none, none], [index, empty], [empty, empty])
    changed = np.flatnonzero(new.values != before)
    survivors = np.flatnonzero(source >= 0)
    np.testing.assert_array_equal(np.sort(changed), survivors)  # every survivor moved, nothing else
    # each survivor moved by exactly its own old gradient entry
    g_for = stale_grad[source[survivors]]
    expected = before[survivors] - 0.1 * (g_for + 0.001 * before[survivors])
    np.testing.assert_allclose(new.values[survivors], expected, rtol=1e-6, atol=1e-7)


def test_union_average_matches_dense_mean():
    rng = np.random.default_rng(1)
    replicas = [erdos_renyi_layer(20, 15, 3, "he_uniform", np.random.default_rng(s)) for s in range(3)]
    for r in replicas:
        r.bias[:] = rng.standard_normal(15).astype(np.float32)
    avg = union_average(replicas)
    dense = np.mean([naive.dense_weights(r) for r in replicas], axis=0)
    np.testing.assert_allclose(naive.dense_weights(avg), dense, rtol=1e-6, atol=1e-7)
    union = np.unique(np.concatenate([r.keys() for r in replicas]))
    np.testing.assert_array_equal(avg.keys(), union)
    np.testing.assert_allclose(avg.bias, np.mean([r.bias for r in replicas], axis=0), rtol=1e-5)


def test_prune_to_nnz_keeps_largest_magnitudes():
    layer = erdos_renyi_layer(30, 30, 5, "he_uniform", np.random.default_rng(2))
    pruned = prune_to_nnz(layer, layer.nnz // 2)
    assert pruned.nnz == layer.nnz // 2
    assert np.abs(pruned.values).min() >= np.sort(np.abs(layer.values))[::-1][layer.nnz // 2 - 1]
    assert np.all(np.isin(pruned.keys(), layer.keys()))


def test_average_replicas_returns_target_nnz_per_layer():
    reps = [[erdos_renyi_layer(12, 9, 2, "xavier", np.random.default_rng(10 * k + l)) for l in range(2)]
            for k in range(2)]
    targets = [reps[0][0].nnz, reps[0][1].nnz]
    out = average_replicas(reps, targets)
    assert [layer.nnz for layer in out] == targets


def test_lineage_composes_over_two_topology_changes():
    rng = np.random.default_rng(3)
    v0 = erdos_renyi_layer(25, 25, 4, "he_uniform", rng)
    v1, s1 = prune_and_regrow(v0, 0.3, "he_uniform", rng)
    v2, s2 = prune_and_regrow(v1, 0.3, "he_uniform", rng)
    both = compose(lineage(s1, v0.nnz), lineage(s2, v1.nnz))
    alive = both >= 0
    # a connection that survived both steps keeps its position and value
    np.testing.assert_array_equal(v2.keys()[both[alive]], v0.keys()[alive])
    # and every connection of v2 with a v0 ancestor is reached exactly once
    assert np.unique(both[alive]).shape[0] == alive.sum()
    assert alive.sum() < v0.nnz  # some were removed


def test_stale_gradient_follows_connections_and_biases_across_neuron_pruning_and_set():
    from sparsenet.parallel.updates import neuron_lineage, topology_lineage
    from sparsenet.train import TrainingState, apply_neuron_removal, evolve
    from sparsenet.pruning import select_by_importance

    rng = np.random.default_rng(7)
    model = SparseMLP.initialize([20, 30, 24, 4], epsilon=4, init="he_uniform", activation="all_relu", alpha=0.6,
                                 dropout=0, output="softmax", rng=rng)
    opt = MomentumSGD(model, lr=0.1, momentum=0.0, weight_decay=0.0)
    state = TrainingState(model, opt, rng, 0, [])
    old_layers = list(model.layers)
    nnz_before = model.nnz
    removal = apply_neuron_removal(state, select_by_importance(model, 20))
    changes = evolve(state, load_config(None, ["evolution.zeta=0.3"]))
    connections, biases = topology_lineage(nnz_before, removal, changes)
    masks = [None, *removal.keep, None]
    for l, (old, new) in enumerate(zip(old_layers, model.layers)):
        carry = connections[l]
        alive = carry >= 0
        renumber_rows = neuron_lineage(masks[l]) if masks[l] is not None else np.arange(old.n_in)
        renumber_cols = neuron_lineage(masks[l + 1]) if masks[l + 1] is not None else np.arange(old.n_out)
        # a carried connection lands on its own (renumbered) position with its own value
        np.testing.assert_array_equal(new.rows[carry[alive]], renumber_rows[old.rows[alive]])
        np.testing.assert_array_equal(new.cols[carry[alive]], renumber_cols[old.cols[alive]])
        np.testing.assert_array_equal(new.values[carry[alive]], old.values[alive])
        # connections touching a removed neuron are never carried
        gone = (renumber_rows[old.rows] < 0) | (renumber_cols[old.cols] < 0)
        assert gone.any() == (l < 3) and not alive[gone].any()
        # a stale bias gradient reaches exactly the surviving neurons
        stale_bias = np.arange(old.n_out, dtype=np.float32) + 1
        if biases[l] is None:
            assert l == 2 and new.n_out == old.n_out
            continue
        before = new.bias.copy()
        index, values = retain_valid(biases[l], stale_bias)
        empty = np.zeros(0, np.int64)
        where = [empty] * len(model.layers)
        bias_where = [index if j == l else empty for j in range(len(model.layers))]
        opt.step_partial(model, [np.zeros(0, np.float32)] * len(model.layers),
                         [values if j == l else np.zeros(0, np.float32) for j in range(len(model.layers))], where, bias_where)
        np.testing.assert_allclose(before - new.bias, 0.1 * stale_bias[masks[l + 1]], rtol=1e-6)


def test_worker_adopts_received_weights_without_copying_and_refuses_misfits():
    from sparsenet.parallel import mpi_workers

    rng = np.random.default_rng(3)
    model = SparseMLP.initialize([12, 9, 4], epsilon=3, init="he_uniform", activation="relu", alpha=0,
                                 dropout=0, output="softmax", rng=rng)
    received = [np.ascontiguousarray(layer.values * 2) for layer in model.layers]
    received += [np.full(layer.n_out, 0.5, dtype=np.float32) for layer in model.layers]
    mpi_workers.adopt_values(model, received)
    for l, layer in enumerate(model.layers):
        assert layer.values is received[l] and layer.bias is received[2 + l]
    x = rng.standard_normal((12, 7)).astype(np.float32)
    model.input_buffer(7)[:] = x
    ws = [naive.dense_weights(layer) for layer in model.layers]
    _, acts = naive.network_forward(ws, [r.astype(np.float64) for r in received[2:]], [0.0], x.astype(np.float64))
    np.testing.assert_allclose(model.logits(7), acts[-1], rtol=1e-4, atol=1e-5)  # the kernels read the adopted arrays
    with pytest.raises(ValueError, match="do not fit"):
        mpi_workers.adopt_values(model, [received[0][:-1]] + received[1:])
    with pytest.raises(ValueError, match="float32"):
        mpi_workers.adopt_values(model, [received[0].astype(np.float64)] + received[1:])


class _BusyLane:
    """A worker's gradient lane that always has a gradient waiting."""

    def __init__(self):
        self.taken = 0

    def ready(self) -> bool:
        return True

    def take(self):
        self.taken += 1
        return [0, 16, 0, 0.0, 0, 0], [np.zeros(2, dtype=np.float32)]


class _BusyTransport:
    """Rank 3 (no channel, another node) always has a gradient bundle waiting."""

    size = 4

    def poll(self, source=None, tag=None):
        return 3, tag

    def recv_bundle(self, source=None, tag=None, timeout=None, ready=None):
        if ready is not None and ready():
            return None
        meta = {"version": 0, "samples": 16, "loss": 0.0, "correct": 0}
        return Bundle(source=3, tag=tag, meta=meta, arrays=[np.zeros(2, dtype=np.float32)], nbytes=0)


def test_a_busy_server_serves_every_worker_in_turn():
    """Workers 1 and 2 post through channels, worker 3 sends bundles, and all three always have a
    gradient waiting: the server takes them round-robin over the channels, a bundle every other time."""
    workers = MPIWorkers(load_config(None, ["parallel.shared_memory=false"]), _BusyTransport(), None)
    workers.channels = {1: SimpleNamespace(gradients=_BusyLane()), 2: SimpleNamespace(gradients=_BusyLane())}
    order = [workers.take_gradient().source for _ in range(8)]
    assert order == [1, 3, 2, 3, 1, 3, 2, 3]
    assert workers.take_gradient(2).source == 2  # a named source is what is taken
    assert workers.channel_bytes[1] == 5 * 8  # the channels' 5 gradients of 2 float32 each


def test_a_checkpoint_another_parallel_run_stopped_is_refused_with_what_to_change():
    """run.check_resumable: every refusal names the checkpoint and what to resume it with; what fits passes."""
    cfg = load_config(None, ["train.epochs=6", "parallel.phase1_epochs=3", "train.batch_size=10"])

    def saved(phase=1, partial_epoch=None, workers=None, replicas=0):
        stopped = None if workers is None else {"workers": workers}
        return SimpleNamespace(phase=phase, partial_epoch=partial_epoch, parallel_partial_epoch=stopped,
                               replicas=[[]] * replicas)

    def check(s, epoch=2, workers=2, n_train=41):
        check_resumable(cfg, s, epoch, workers, n_train, "run/checkpoint.h5")

    check(saved())  # a parallel run between epochs, or stopped inside one, as this one would run it
    check(saved(workers=[{}, {}]))
    check(saved(phase=2, replicas=2), epoch=4)
    check(saved(phase=2, workers=[{"position": {"n_steps": 3}}, {"report": {}}]), epoch=4)  # 21 and 20 samples
    refusals = {
        "was stopped part-way through epoch 3 by a sequential run; resume it with one process":
            saved(partial_epoch={"step": 1}),
        "is in phase 2 at epoch 2; resume it with parallel.phase1_epochs <= 2, not 3": saved(phase=2, replicas=2),
        "was stopped part-way through epoch 3 with 3 workers; resume it with 4 ranks, not 3": saved(workers=[{}] * 3),
    }
    for why, s in refusals.items():
        with pytest.raises(SparsenetError, match=re.escape(f"checkpoint run/checkpoint.h5 {why}")):
            check(s)
    with pytest.raises(SparsenetError, match=re.escape("phase-1 epoch 4; resume it with parallel.phase1_epochs > 3, not 3")):
        check(saved(workers=[{}, {}]), epoch=3)
    with pytest.raises(SparsenetError, match=re.escape("phase-2 epoch 5 at 2 batches per epoch on worker 2; "
                                                       "train.batch_size 10 gives 3 (keep")):
        check(saved(phase=2, workers=[{"report": {}}, {"position": {"n_steps": 2}}]), epoch=4, n_train=50)
    with pytest.raises(SparsenetError, match=re.escape("holds 3 phase-2 replicas; resume it with 4 ranks, not 3")):
        check(saved(phase=2, replicas=3), epoch=4)


def test_an_aborting_rank_removes_only_the_mpich_files_it_maps(tmp_path):
    """transport.remove_mpi_shm_files reads the maps file: anonymous mappings (no path) are skipped, only
    /dev/shm/mpich_shm_* files are unlinked, a file of ours named otherwise stays, a vanished one is no error."""
    from sparsenet.parallel.transport import remove_mpi_shm_files

    tag = f"sparsenet_test_{os.getpid()}"
    mpich, other = Path(f"/dev/shm/mpich_shm_{tag}"), Path(f"/dev/shm/{tag}")
    try:
        mpich.write_bytes(b"x")
        other.write_bytes(b"y")
        maps = tmp_path / "maps"
        maps.write_text(
            "7f00-7f01 rw-p 00000000 00:00 0 \n"  # anonymous: five fields
            f"7f01-7f02 rw-s 00000000 00:1a 11 {mpich}\n"
            f"7f02-7f03 rw-s 00000000 00:1a 12 {mpich}\n"  # mapped twice, removed once
            f"7f03-7f04 rw-s 00000000 00:1a 13 {other}\n"
            "7f04-7f05 rw-s 00000000 00:1a 14 /dev/shm/mpich_shm_gone_already\n"
            "7f05-7f06 r--p 00000000 08:01 15 /usr/lib/libmpi.so.12 (deleted)\n")
        assert remove_mpi_shm_files(str(maps)) == [str(mpich)]
        assert not mpich.exists() and other.read_bytes() == b"y"
        assert remove_mpi_shm_files(str(tmp_path / "missing")) == []
    finally:
        mpich.unlink(missing_ok=True)
        other.unlink(missing_ok=True)
