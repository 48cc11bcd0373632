"""sparsenet.parallel.transport: chunk-size validation in-process, everything else under mpiexec."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sparsenet.parallel import transport
from tests.mpi.conftest import run_mpi

SCRIPT = str(Path(__file__).with_name("transport_roundtrip.py"))
BIG_MIN_AVAILABLE_GB = 7.0  # two ranks hold ~2.1 GB each, plus headroom for the rest of the machine


def available_memory_gb() -> float:
    """MemAvailable from /proc/meminfo in GB (0 if unknown)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024 / 1e9
    except OSError:
        pass
    return 0.0


def assert_ok(result: subprocess.CompletedProcess) -> None:
    """mpiexec exited 0 and rank 0 reported ALL OK."""
    detail = f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert result.returncode == 0, f"exit code {result.returncode}\n{detail}"
    assert "ALL OK" in result.stdout.splitlines(), detail


@pytest.mark.parametrize("value", [1024, 4096, 1 << 30, 2**31 - 1, np.int64(1 << 20)])
def test_chunk_bytes_accepts_1024_up_to_below_2_31(value):
    assert transport.validate_chunk_bytes(value) == int(value)


@pytest.mark.parametrize("value", [0, -1, 1023, 2**31, 2**40, 1.5e6, True, "4096", None])
def test_chunk_bytes_outside_range_is_a_clear_value_error(value):
    with pytest.raises(ValueError, match="chunk_bytes"):
        transport.validate_chunk_bytes(value)


def test_importing_transport_does_not_start_mpi():
    code = ("import sys, sparsenet, sparsenet.parallel, sparsenet.parallel.transport; "
            "assert 'mpi4py.MPI' not in sys.modules, 'mpi4py.MPI imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_header_validation_rejects_garbage():
    arrays = [np.zeros((2, 3), np.float32), np.ones(4, bool)]
    header = transport.encode_header(4096, 17, arrays)
    chunk_bytes, meta_nbytes, specs = transport.decode_header(header.view(np.uint8))
    assert (chunk_bytes, meta_nbytes) == (4096, 17)
    assert specs == [(np.dtype(np.float32), (2, 3)), (np.dtype(bool), (4,))]
    for index, value, message in [(0, 7, "magic"), (1, 99, "version"), (2, 10, "chunk_bytes"),
                                  (3, 3, "arrays"), (5, 77, "dtype code"), (6, 9, "ndim"),
                                  (11, 5, "claims")]:
        bad = header.copy()
        bad[index] = value
        with pytest.raises(transport.TransportError, match=message):
            transport.decode_header(bad.view(np.uint8))
    with pytest.raises(transport.TransportError, match="header size"):
        transport.decode_header(header.view(np.uint8)[:-3])


def test_buffer_pool_reuses_only_unreferenced_buffers():
    pool = transport.BufferPool(max_buffers=2, max_bytes=1 << 20)
    first = pool.take(1000)
    assert first.shape == (1000,) and first.dtype == np.uint8 and first.base is pool.buffers[0]
    view = first[10:20].view(np.int16)  # like a received bundle's array
    del first
    second = pool.take(500)
    assert second.base is pool.buffers[1], "a buffer with a live view was handed out again"
    del view
    again = pool.take(800)
    assert again.base is pool.buffers[0] and again.shape == (800,), "a free buffer that fits was not reused"
    del again, second
    bigger = pool.take(2000)  # both free buffers are too small: the smaller is replaced
    assert bigger.base is pool.buffers[1] and [b.size for b in pool.buffers] == [1000, 2000]
    assert pool.take(2 << 20).base is None, "a buffer above max_bytes must not be pooled"
    assert len(pool.buffers) == 2


def test_packed_bundle_padding_is_zeroed_even_in_a_dirty_pooled_buffer():
    pool = transport.BufferPool()
    dirty = pool.take(4096)
    dirty[:] = 0xAB
    del dirty
    arrays = [np.ones(3, np.float32), np.arange(5, dtype=np.int16)]
    meta = np.frombuffer(transport.encode_meta({"k": 1}), dtype=np.uint8)
    packed = transport._pack(meta, arrays, 1 << 20, pool.take)
    clean = transport._pack(meta, arrays, 1 << 20)
    assert packed.base is not None, "the pooled buffer was not used"
    assert np.array_equal(packed, clean)


def test_unpack_reuses_decoded_layouts_and_still_checks_every_message():
    receiver = object.__new__(transport.Transport)  # no MPI needed to unpack
    receiver.bytes_received, receiver._layouts = 0, {}
    arrays = [np.arange(6, dtype=np.float32).reshape(2, 3), np.arange(4, dtype=np.int64)]
    for value in (1, 7):
        meta = np.frombuffer(transport.encode_meta({"v": value}), dtype=np.uint8)
        got = receiver._unpack(transport._pack(meta, [a * value for a in arrays], 1 << 20), 1, 2)
        assert got.meta == {"v": value}
        for g, a in zip(got.arrays, arrays):
            np.testing.assert_array_equal(g, a * value)
    assert len(receiver._layouts) == 1, "the second message with the same header was decoded again"
    truncated = transport._pack(meta, arrays, 1 << 20)[:-64]
    with pytest.raises(transport.TransportError, match="header describes"):
        receiver._unpack(truncated, 1, 2)


def test_shared_memory_pointer_is_decoded_and_bad_ones_are_refused():
    pointer = transport._pointer(2, 5, "sparsenet-abc-r1-to0-s2-g5", 123_456)
    assert transport._decode_pointer(pointer, 1) == (2, 5, "sparsenet-abc-r1-to0-s2-g5", 123_456)
    with pytest.raises(transport.TransportError, match="not a sparsenet segment"):
        transport._decode_pointer(transport._pointer(0, 0, "../etc/passwd", 10), 1)
    with pytest.raises(transport.TransportError, match="malformed"):
        transport._decode_pointer(pointer[:24], 1)


def test_mailboxes_without_a_writable_directory_fall_back_to_mpi(tmp_path):
    from sparsenet.parallel.shm import MIN_BYTES, Mailboxes

    missing = Mailboxes(0, {0, 1}, control_comm=None, max_bytes=1 << 20, directory=str(tmp_path / "none"))
    assert missing.disabled and missing.reserve(1, MIN_BYTES) is None
    boxes = Mailboxes(0, {0, 1, 2}, control_comm=None, max_bytes=1 << 20, directory=str(tmp_path))
    assert boxes.reserve(5, MIN_BYTES) is None, "rank 5 is on another node"
    assert boxes.reserve(1, MIN_BYTES - 1) is None, "small bundles go through MPI"
    assert boxes.reserve(1, (1 << 20) + 1) is None and boxes.fallbacks == 1, "too large for a slot"


@pytest.mark.parametrize("ranks", [2, 3])
def test_bundles_round_trip(ranks):
    assert_ok(run_mpi(ranks, [SCRIPT], timeout=120))


@pytest.mark.parametrize("ranks", [2, 3])
def test_bundles_round_trip_through_shared_memory(ranks):
    assert_ok(run_mpi(ranks, [SCRIPT, "--shared"], timeout=120))


@pytest.mark.parametrize("shared", [False, True], ids=["polling", "doorbell"])
def test_waiting_recv_sleeps_instead_of_spinning(shared):
    result = run_mpi(3, [SCRIPT, "--idle"] + (["--shared"] if shared else []), timeout=120)
    assert_ok(result)
    match = re.search(r"IDLE wall=([\d.]+)s cpu=([\d.]+)s", result.stdout)
    assert match, result.stdout
    wall, cpu = map(float, match.groups())
    assert cpu < 0.10 * wall, result.stdout


@pytest.mark.slow
def test_bundle_larger_than_2_gib():
    available = available_memory_gb()
    if available < BIG_MIN_AVAILABLE_GB:
        pytest.skip(f"needs {BIG_MIN_AVAILABLE_GB} GB of available memory, have {available:.1f} GB")
    result = run_mpi(2, [SCRIPT, "--big"], timeout=600)
    print(result.stdout)  # transfer rate and peak RSS per rank, shown with -s
    assert_ok(result)
    assert "BIG OK" in result.stdout, result.stdout
