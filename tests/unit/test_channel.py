"""sparsenet.parallel.channel in one process: two Channels over one buffer stand for the server and a
worker of one node (they share a shared window's pages as two ranks would)."""

from __future__ import annotations

import numpy as np
import pytest

from sparsenet.parallel.channel import Channel, in_window, layout, shape, views
from sparsenet.parallel.wire import ALIGN

SIZES = [1000, 300, 17, 0, 40, 40, 10, 5]  # weights of 4 layers, then their biases


def pair(tmp_path, sizes=SIZES) -> tuple[Channel, Channel]:
    """The server's and the worker's view of the second channel of a window, the first one's bytes dirty."""
    place = {**shape(sizes), "offset": shape(sizes)["nbytes"]}
    memory = np.full(2 * place["nbytes"], 0xAB, dtype=np.uint8)  # a new window's contents are undefined
    syncs = []
    server, worker = (in_window(memory, place, lambda: syncs.append(1)) for _ in range(2))
    server.clear()
    assert syncs and np.all(memory[:place["nbytes"]] == 0xAB), "clear() stays inside its channel"
    return server, worker


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


def test_gradient_and_reply_travel_in_place_with_what_was_said(tmp_path):
    server, worker = pair(tmp_path)
    assert not server.gradients.ready() and not worker.replies.ready()
    grads = worker.gradients.arrays(SIZES)
    for i, g in enumerate(grads):
        g[:] = np.arange(g.size) + 0.25 * i
    worker.gradients.post((7, 128, 99, 1.0 / 3.0, 2 ** 53), np.array(SIZES, dtype=np.int64))
    assert server.gradients.ready() and not worker.replies.ready()
    words, got = server.gradients.take()
    assert words[:5] == [7, 128, 99, 1.0 / 3.0, 2 ** 53]  # float64: bit-exact, integers below 2**53 too
    assert [a.size for a in got] == SIZES and not server.gradients.ready()
    for i, a in enumerate(got):
        assert a.dtype == np.float32 and np.array_equal(a, np.arange(a.size) + np.float32(0.25 * i))
        assert a.size == 0 or np.shares_memory(a, server.gradients.buffers[0])  # a view, not a copy
    out = server.replies.arrays(SIZES)
    for i, o in enumerate(out):
        o[:] = -i
    server.replies.post((8, 3), SIZES)
    assert worker.replies.ready() and not server.gradients.ready()
    words, weights = worker.replies.take()
    assert words[:2] == [8, 3] and not worker.replies.ready()
    assert [w.size for w in weights] == SIZES and all(np.all(w == -i) for i, w in enumerate(weights))
    assert all(w.size == 0 or np.shares_memory(w, worker.replies.buffers[0]) for w in weights)


def test_buffers_alternate_so_a_pipelining_worker_keeps_reading_its_weights(tmp_path):
    server, worker = pair(tmp_path)
    sizes = np.array(SIZES, dtype=np.int64)
    held = []
    for step in range(5):
        g = worker.gradients.arrays(SIZES)
        g[0][:] = step
        worker.gradients.post((step,), sizes)
        _, got = server.gradients.take()
        assert got[0][0] == step
        out = server.replies.arrays(SIZES)
        out[0][:] = 100 + step
        server.replies.post((step, 0), SIZES)
        held.append(worker.replies.take()[1][0])
        # the reply before this one (still read while this one was written) is intact
        if step:
            assert held[-2][0] == 100 + step - 1 and not np.shares_memory(held[-1], held[-2])
    assert held[0] is held[2] or np.shares_memory(held[0], held[2])  # two buffers, reused in turn
    assert worker.gradients.posted == server.gradients.taken == 5 == server.replies.posted == worker.replies.taken


def test_gradient_buffers_alternate_so_the_server_reads_while_the_next_is_written(tmp_path):
    server, worker = pair(tmp_path)
    sizes = np.array(SIZES, dtype=np.int64)
    for step in range(4):
        worker.gradients.arrays(SIZES)[0][:] = step
        worker.gradients.post((step,), sizes)
        taken = server.gradients.take()[1][0]
        if step:  # still intact although the worker wrote this gradient after the server took it
            assert np.all(previous == step - 1) and not np.shares_memory(previous, taken)
        previous = taken
    assert np.all(taken == 3)


def test_smaller_and_fewer_arrays_fit_larger_ones_do_not(tmp_path):
    server, worker = pair(tmp_path)
    assert worker.fits([5, 3]) and worker.fits(SIZES)
    assert not worker.fits([10 ** 7]) and not worker.fits(SIZES + [1, 1])  # too large; more arrays than room
    with pytest.raises(ValueError, match="made for 8 and 6"):
        worker.gradients.post((0,), np.array(SIZES + [1, 1], dtype=np.int64))
    with pytest.raises(ValueError, match="made for 8 and 6"):
        worker.replies.post(range(7), [5, 3])
    worker.gradients.arrays([5, 3])[1][:] = 4
    worker.gradients.post((0,), np.array([5, 3], dtype=np.int64))
    assert [a.tolist() for a in server.gradients.take()[1]][1] == [4, 4, 4]
    worker.gradients.post((0,), np.array([5, 3], dtype=np.int64))
    worker.gradients.control[9] = 10 ** 7  # a corrupted size: refused, not read past the buffer
    with pytest.raises(ValueError, match="overflows"):
        server.gradients.take()
    worker.gradients.post((0,), np.array([5, 3], dtype=np.int64))
    worker.gradients.control[7] = 10 ** 9  # a corrupted count: refused, not read past the control block
    with pytest.raises(ValueError, match="overflows"):
        server.gradients.take()


def test_a_window_slice_too_small_for_the_channel_is_refused():
    geometry = shape(SIZES)
    with pytest.raises(ValueError, match="cannot hold"):
        in_window(np.zeros(geometry["nbytes"], np.uint8), {**geometry, "offset": 64}, lambda: None)
