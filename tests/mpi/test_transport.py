"""sparsenet.parallel.wire in-process; sparsenet.parallel.transport under mpiexec."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sparsenet.parallel import transport, wire
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
    assert wire.validate_chunk_bytes(value) == int(value)


@pytest.mark.parametrize("value", [0, -1, 1023, 2**31, 2**40, 1.5e6, True, "4096", None])
def test_chunk_bytes_outside_range_is_a_clear_value_error(value):
    with pytest.raises(ValueError, match="chunk_bytes"):
        wire.validate_chunk_bytes(value)


def test_a_wait_sleeps_its_anticipated_share_once_then_backs_off_from_the_shortest_sleep(monkeypatch):
    slept = []
    monkeypatch.setattr(transport.time, "sleep", slept.append)
    backoff = transport._Backoff(max_sleep=4 * transport.MIN_SLEEP, first=1.2e-3)
    for _ in range(5):
        backoff.sleep()
    backoff.sleep(limit=1e-6)  # a deadline nearer than the next sleep shortens it
    m = transport.MIN_SLEEP
    assert slept == pytest.approx([1.2e-3, m, 2 * m, 4 * m, 4 * m, 1e-6])
    slept.clear()
    plain = transport._Backoff(max_sleep=4 * m)
    plain.sleep(), plain.sleep()
    assert slept == pytest.approx([m, 2 * m])


def test_the_typical_wait_follows_recent_waits_and_one_long_wait_barely_moves_it():
    typical = 0.0
    for _ in range(60):
        typical = transport.next_typical_wait(typical, 1.5e-3)
    assert typical == pytest.approx(1.5e-3, rel=1e-4)
    after_outlier = transport.next_typical_wait(typical, 5.0)  # start-up or a SET step: counted as the cap
    assert after_outlier == pytest.approx(0.8 * typical + 0.2 * transport.ANTICIPATE_CAP)
    assert transport.ANTICIPATE * after_outlier < 1.3e-3


def test_importing_transport_does_not_start_mpi():
    code = ("import sys, sparsenet, sparsenet.parallel, sparsenet.parallel.transport; "
            "assert 'mpi4py.MPI' not in sys.modules, 'mpi4py.MPI imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_header_validation_rejects_garbage():
    arrays = [np.zeros((2, 300), np.float32), np.ones(4, bool)]  # over one 1 KiB chunk
    header, inline = wire.encode({"k": 17}, arrays, 1024)
    bundle, chunk_bytes = wire.decode(header, 1, 2)
    assert not inline and chunk_bytes == 1024 and bundle.meta == {"k": 17}
    assert [(a.dtype, a.shape) for a in bundle.arrays] == [(np.dtype(np.float32), (2, 300)), (np.dtype(bool), (4,))]
    text = header[wire.PREFIX:].tobytes()
    for old, new, message in [(b'"version":2', b'"version":9', "version"),
                              (b'"chunk_bytes":1024', b'"chunk_bytes":10', "chunk_bytes"),
                              (b'"float32"', b'"float16"', "dtype"), (b"[2,300]", b"[2,-300]", "shape"),
                              (b'"meta"', b'"mewa"', "not bundle JSON"), (b'{"k"', b'{"k"}', "not bundle JSON")]:
        bad = text.replace(old, new)
        prefix = np.array([wire.MAGIC, len(bad)], np.int64).view(np.uint8)
        raw = np.concatenate([prefix, np.frombuffer(bad, np.uint8)])
        with pytest.raises(wire.TransportError, match=message):
            wire.decode(raw, 1, 2)
    for bad, message in [(np.arange(6, dtype=np.int64).view(np.uint8), "magic"), (header[:-3], "header in a")]:
        with pytest.raises(wire.TransportError, match=message):
            wire.decode(bad, 1, 2)


def test_a_bundle_within_one_chunk_is_one_zero_padded_message_read_as_aligned_views():
    arrays = [np.ones(3, np.float32), np.arange(5, dtype=np.int16), np.arange(6, dtype=np.float64).reshape(2, 3)]
    packed, inline = wire.encode({"k": 1}, arrays, 1 << 20)
    json_end = wire.PREFIX + int(packed[8:16].view(np.int64)[0])
    first = -(-json_end // wire.ALIGN) * wire.ALIGN  # the first array's offset
    assert inline and packed.size % wire.ALIGN == 0 and json_end < first and not packed[json_end:first].any()
    got, chunk_bytes = wire.decode(packed, 1, 2)
    assert chunk_bytes is None and got.meta == {"k": 1} and (got.source, got.tag, got.nbytes) == (1, 2, packed.size)
    for g, a in zip(got.arrays, arrays, strict=True):
        np.testing.assert_array_equal(g, a)
        assert g.dtype == a.dtype and np.shares_memory(g, packed) and (g.ctypes.data - packed.ctypes.data) % wire.ALIGN == 0
    header, inline = wire.encode({"k": 1}, [np.zeros(1 << 20, np.uint8)], 1 << 20)
    assert not inline and header.size < 100, "over one chunk: the arrays follow the header"
    with pytest.raises(wire.TransportError, match="header describes"):
        wire.decode(packed[:-64], 1, 2)


@pytest.mark.parametrize("ranks", [2, 3])
def test_bundles_round_trip(ranks):
    assert_ok(run_mpi(ranks, [SCRIPT], timeout=120))


@pytest.mark.parametrize("ranks", [2, 3])
def test_channels_in_a_shared_window_round_trip(ranks):
    assert_ok(run_mpi(ranks, [SCRIPT, "--shared"], timeout=120))


@pytest.mark.parametrize("shared", [False, True], ids=["plain", "shared_memory"])
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
