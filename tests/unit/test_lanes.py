"""sparsenet.parallel.lanes in one process: two Lanes objects stand for two ranks of one node."""

from __future__ import annotations

import numpy as np
import pytest

from sparsenet.parallel.lanes import ALIGN, BUFFERS, Lanes, layout, views


def pair(tmp_path, max_bytes: int = 1 << 20) -> tuple[Lanes, Lanes]:
    """Rank 0 and rank 1, each other's only same-node peer, with files in tmp_path."""
    peers = {0: "sparsenet-test-r0", 1: "sparsenet-test-r1"}
    return (Lanes(0, peers[0], {1: peers[1]}, max_bytes, directory=str(tmp_path)),
            Lanes(1, peers[1], {0: peers[0]}, max_bytes, directory=str(tmp_path)))


def test_layout_aligns_every_array_and_views_fit_the_buffer():
    offsets, end = layout([3, 0, 16, 17])
    assert offsets == [0, 64, 64, 128] and end == 128 + 128
    base = np.zeros(end, dtype=np.uint8)
    arrays = views(base, [3, 0, 16, 17])
    assert [a.shape for a in arrays] == [(3,), (0,), (16,), (17,)]
    assert all(a.dtype == np.float32 and (a.ctypes.data - base.ctypes.data) % ALIGN == 0 for a in arrays)
    arrays[2][:] = 1.5
    assert base[64:128].view(np.float32).tolist() == [1.5] * 16
    with pytest.raises(ValueError, match="do not fit"):
        views(base, [65])
    with pytest.raises(ValueError, match=">= 0"):
        layout([-1])


def test_receiver_reads_in_place_and_releases_only_unreferenced_buffers(tmp_path):
    sender, receiver = pair(tmp_path)
    ticket = sender.take(1, [5, 2])
    ticket.arrays[0][:] = np.arange(5)
    ticket.arrays[1][:] = [7, 8]
    got = receiver.open(0, ticket.generation, ticket.index, [5, 2])
    assert got[0].tolist() == [0, 1, 2, 3, 4] and got[1].tolist() == [7, 8]
    assert not (tmp_path / f"sparsenet-test-r0-lane1-g{ticket.generation}").exists(), "receiver unlinks on map"
    ticket.arrays[0][0] = 42  # the same memory: no copy on either side
    assert got[0][0] == 42
    assert receiver.released(0) == [], "views are alive"
    del got
    assert receiver.released(0) == [(ticket.generation, ticket.index)]
    assert receiver.released(0) == [], "each release is reported once"


def test_sender_reuses_a_buffer_only_after_it_is_acknowledged(tmp_path):
    sender, _ = pair(tmp_path)
    tickets = [sender.take(1, [10]) for _ in range(BUFFERS)]
    assert sorted(t.index for t in tickets) == list(range(BUFFERS))
    assert sender.take(1, [10]) is None and sender.misses == 1, "every buffer busy: send a bundle instead"
    sender.acknowledge(1, [(tickets[1].generation + 1, tickets[1].index)])  # another generation: ignored
    assert sender.take(1, [10]) is None
    sender.acknowledge(1, [(tickets[1].generation, tickets[1].index)])
    again = sender.take(1, [10])
    assert again is not None and again.index == tickets[1].index


def test_growing_lane_gets_a_new_generation_and_old_views_stay_valid(tmp_path):
    sender, receiver = pair(tmp_path)
    small = sender.take(1, [4])
    small.arrays[0][:] = 3.0
    old = receiver.open(0, small.generation, small.index, [4])
    big = sender.take(1, [100_000])
    assert big.generation == small.generation + 1 and big.index == 0, "new file, every buffer free"
    big.arrays[0][:] = 9.0
    new = receiver.open(0, big.generation, big.index, [100_000])
    assert old[0].tolist() == [3.0] * 4 and float(new[0].sum()) == 900_000.0
    sender.acknowledge(1, [(small.generation, small.index)])  # stale generation: nothing to free
    assert sum(sender.out[1].busy) == 1
    assert set(receiver.inbound[0]) == {small.generation, big.generation}, "the old one is still read"
    del old, new
    assert sorted(receiver.released(0)) == [(small.generation, small.index), (big.generation, big.index)]
    assert set(receiver.inbound[0]) == {big.generation}, "superseded and released: unmapped"


def test_lanes_refuse_what_they_cannot_carry(tmp_path):
    sender, receiver = pair(tmp_path, max_bytes=4096)
    assert sender.take(5, [4]) is None, "rank 5 is not on this node"
    assert sender.take(1, [2000]) is None and sender.misses == 1, "larger than max_bytes"
    ticket = sender.take(1, [4])
    with pytest.raises(ValueError, match="buffer 7"):
        receiver.open(0, ticket.generation, 7, [4])
    with pytest.raises(ValueError, match="do not fit"):
        receiver.open(0, ticket.generation, ticket.index, [5000])
    with pytest.raises(ValueError, match="not a same-node peer"):
        receiver.open(3, 0, 0, [4])
    missing = Lanes(0, "sparsenet-test-x", {1: "sparsenet-test-y"}, 4096, directory=str(tmp_path / "none"))
    assert missing.take(1, [4]) is None and missing.disabled


def test_close_unlinks_files_the_receiver_never_mapped(tmp_path):
    sender, _ = pair(tmp_path)
    sender.take(1, [4])
    sender.take(1, [10_000])  # a second generation
    assert len(list(tmp_path.iterdir())) == 2
    sender.close(grace=0)
    assert list(tmp_path.iterdir()) == []
