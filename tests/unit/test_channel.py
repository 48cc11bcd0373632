"""sparsenet.parallel.channel in one process: the created and the attached Channel stand for the
server and a worker of one node (they share the file's pages as two ranks would)."""

from __future__ import annotations

import numpy as np
import pytest

from sparsenet.parallel.channel import ALIGN, Channel, layout, views

SIZES = [1000, 300, 17, 0, 40, 40, 10, 5]  # weights of 4 layers, then their biases


def pair(tmp_path, sizes=SIZES) -> tuple[Channel, Channel]:
    server = Channel.create(str(tmp_path / "sparsenet-test-chan1"), sizes)
    return server, Channel.attach(server.path)


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
    assert not (tmp_path / "sparsenet-test-chan1").exists(), "the worker unlinks the file when it maps it"
    assert not server.gradient_ready() and not worker.reply_ready()
    grads = worker.gradient_arrays(SIZES)
    for i, g in enumerate(grads):
        g[:] = np.arange(g.size) + 0.25 * i
    worker.post_gradient(7, 128, 1.0 / 3.0, 99, np.array(SIZES, dtype=np.int64))
    assert server.gradient_ready() and not worker.reply_ready()
    version, samples, loss, correct, got = server.take_gradient()
    assert (version, samples, loss, correct) == (7, 128, 1.0 / 3.0, 99)  # float64 loss: bit-exact
    assert [a.size for a in got] == SIZES and not server.gradient_ready()
    for i, a in enumerate(got):
        assert a.dtype == np.float32 and np.array_equal(a, np.arange(a.size) + np.float32(0.25 * i))
        assert a.size == 0 or np.shares_memory(a, server.gradient_buffers[0])  # a view, not a copy
    out = server.reply_arrays(SIZES)
    for i, o in enumerate(out):
        o[:] = -i
    server.post_reply(8, 3)
    assert worker.reply_ready()
    version, epoch, weights = worker.take_reply(SIZES)
    assert (version, epoch) == (8, 3) and not worker.reply_ready()
    assert all(np.all(w == -i) for i, w in enumerate(weights))


def test_buffers_alternate_so_a_pipelining_worker_keeps_reading_its_weights(tmp_path):
    server, worker = pair(tmp_path)
    sizes = np.array(SIZES, dtype=np.int64)
    held = []
    for step in range(5):
        g = worker.gradient_arrays(SIZES)
        g[0][:] = step
        worker.post_gradient(step, 1, 0.0, 0, sizes)
        _, _, _, _, got = server.take_gradient()
        assert got[0][0] == step
        out = server.reply_arrays(SIZES)
        out[0][:] = 100 + step
        server.post_reply(step, 0)
        held.append(worker.take_reply(SIZES)[2][0])
        # the reply before this one (still read while this one was written) is intact
        if step:
            assert held[-2][0] == 100 + step - 1 and not np.shares_memory(held[-1], held[-2])
    assert held[0] is held[2] or np.shares_memory(held[0], held[2])  # two buffers, reused in turn
    assert worker.gradients_posted == server.gradients_taken == 5 == server.replies_posted == worker.replies_taken


def test_gradient_buffers_alternate_so_the_server_reads_while_the_next_is_written(tmp_path):
    server, worker = pair(tmp_path)
    sizes = np.array(SIZES, dtype=np.int64)
    for step in range(4):
        worker.gradient_arrays(SIZES)[0][:] = step
        worker.post_gradient(step, 1, 0.0, 0, sizes)
        taken = server.take_gradient()[4][0]
        if step:  # still intact although the worker wrote this gradient after the server took it
            assert np.all(previous == step - 1) and not np.shares_memory(previous, taken)
        previous = taken
    assert np.all(taken == 3)


def test_smaller_and_fewer_arrays_fit_larger_ones_do_not(tmp_path):
    server, worker = pair(tmp_path)
    assert worker.fits([5, 3]) and worker.fits(SIZES)
    assert not worker.fits([10 ** 7]) and not worker.fits(SIZES + [1, 1])  # too large; more arrays than room
    with pytest.raises(ValueError, match="made for 8"):
        worker.post_gradient(0, 1, 0.0, 0, np.array(SIZES + [1, 1], dtype=np.int64))
    worker.gradient_arrays([5, 3])[1][:] = 4
    worker.post_gradient(0, 1, 0.0, 0, np.array([5, 3], dtype=np.int64))
    assert [a.tolist() for a in server.take_gradient()[4]][1] == [4, 4, 4]
    worker.post_gradient(0, 1, 0.0, 0, np.array([5, 3], dtype=np.int64))
    worker.control[16] = 10 ** 7  # a corrupted size: refused, not read past the buffer
    with pytest.raises(ValueError, match="overflows"):
        server.take_gradient()


def test_attach_refuses_a_file_that_is_not_a_channel(tmp_path):
    other = tmp_path / "results.txt"
    other.write_bytes(b"\0" * 8192)
    with pytest.raises(ValueError, match="not named like"):
        Channel.attach(str(other))
    assert other.exists(), "a file that is not a channel is left alone"
    fake = tmp_path / "sparsenet-test-chan2"
    fake.write_bytes(b"\0" * 8192)
    with pytest.raises(ValueError, match="not a sparsenet channel"):
        Channel.attach(str(fake))


# ---------------------------------------------------------------- other users of /dev/shm (issue 15 item 11)

class _NoAcks:
    def Iprobe(self, source, tag):
        return False


def test_names_are_unguessable_so_planted_files_do_not_force_the_slow_path(tmp_path):
    from sparsenet.parallel.channel import channel_path
    from sparsenet.parallel.shm import MIN_BYTES, Mailboxes

    boxes = Mailboxes(0, {0, 1}, control_comm=_NoAcks(), max_bytes=1 << 20, directory=str(tmp_path))
    # what a run's visible prefix let another user predict: its next segment and channel names
    (tmp_path / f"{boxes.prefix}-to1-s0-g0").write_bytes(b"")
    (tmp_path / f"{boxes.prefix}-chan1").write_bytes(b"")
    slot = boxes.reserve(1, MIN_BYTES)
    assert slot is not None and not boxes.disabled and boxes.fallbacks == 0
    assert slot[1].name.startswith(f"{boxes.prefix}-to1-s0-g0-") and len(slot[1].name.rsplit("-", 1)[1]) == 16
    path = channel_path(boxes.prefix, 1, str(tmp_path))
    assert path != channel_path(boxes.prefix, 1, str(tmp_path)) and len(path.rsplit("-", 1)[1]) == 16
    assert Channel.attach(Channel.create(path, SIZES).path).capacity > 0
    boxes.close(grace=0)


def _someone_elses(path, monkeypatch):
    import os

    if os.geteuid() == 0:
        os.chown(path, 65534, -1, follow_symlinks=False)
    else:
        real = os.geteuid()
        monkeypatch.setattr(os, "geteuid", lambda: real + 1)


def test_receivers_refuse_symlinks_fifos_and_files_of_other_users(tmp_path, monkeypatch):
    import os

    from sparsenet.parallel.shm import map_segment

    segment = tmp_path / "sparsenet-x-r1-to0-s0-g0-0123456789abcdef"
    segment.write_bytes(b"\0" * 8192)
    link = tmp_path / "sparsenet-x-r1-to0-s0-g1-0123456789abcdef"
    link.symlink_to(segment)
    with pytest.raises(OSError):  # ELOOP: O_NOFOLLOW
        map_segment(str(link))
    fifo = tmp_path / "sparsenet-x-r1-to0-s0-g2-0123456789abcdef"
    os.mkfifo(fifo, 0o600)
    with pytest.raises(PermissionError, match="is not a regular file"):  # and no hang opening it
        map_segment(str(fifo))
    chan = tmp_path / "sparsenet-x-r0-chan1-0123456789abcdef"
    Channel.create(str(chan), SIZES)
    _someone_elses(segment, monkeypatch)
    _someone_elses(chan, monkeypatch)
    with pytest.raises(PermissionError, match="owner uid"):
        map_segment(str(segment))
    with pytest.raises(PermissionError, match="owner uid"):
        Channel.attach(str(chan))
    assert segment.exists() and chan.exists() and link.is_symlink(), "refused files are left alone"


def test_doorbells_open_only_our_own_fifos(tmp_path, monkeypatch):
    import os

    from sparsenet.parallel.shm import Doorbells

    bell = Doorbells("sparsenet-x-r0", directory=str(tmp_path))
    assert len(bell.name.rsplit("-", 1)[1]) == 16
    (tmp_path / "sparsenet-x-r1-bell").symlink_to(bell.path)
    (tmp_path / "sparsenet-x-r2-bell").write_bytes(b"")
    for name in ("sparsenet-x-r1-bell", "sparsenet-x-r2-bell"):
        with pytest.raises(OSError):
            bell.connect({1: name}, directory=str(tmp_path))
    os.mkfifo(tmp_path / "sparsenet-x-r3-bell", 0o600)
    reader = os.open(tmp_path / "sparsenet-x-r3-bell", os.O_RDONLY | os.O_NONBLOCK)  # rank 3 listening
    bell.connect({3: "sparsenet-x-r3-bell"}, directory=str(tmp_path))
    _someone_elses(tmp_path / "sparsenet-x-r3-bell", monkeypatch)
    with pytest.raises(PermissionError, match="owner uid"):
        bell.connect({4: "sparsenet-x-r3-bell"}, directory=str(tmp_path))
    assert list(bell.peers) == [3]
    bell.close()
    os.close(reader)
