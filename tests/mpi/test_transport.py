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


def test_importing_transport_does_not_start_mpi():
    code = ("import sys, sparsenet, sparsenet.parallel, sparsenet.parallel.transport; "
            "assert 'mpi4py.MPI' not in sys.modules, 'mpi4py.MPI imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_header_validation_rejects_garbage():
    arrays = [np.zeros((2, 3), np.float32), np.ones(4, bool)]
    header = wire.encode_header(4096, 17, arrays)
    chunk_bytes, meta_nbytes, specs = wire.decode_header(header.view(np.uint8))
    assert (chunk_bytes, meta_nbytes) == (4096, 17)
    assert specs == [(np.dtype(np.float32), (2, 3)), (np.dtype(bool), (4,))]
    for index, value, message in [(0, 7, "magic"), (1, 99, "version"), (2, 10, "chunk_bytes"),
                                  (3, 3, "arrays"), (5, 77, "dtype code"), (6, 9, "ndim"),
                                  (11, 5, "claims")]:
        bad = header.copy()
        bad[index] = value
        with pytest.raises(wire.TransportError, match=message):
            wire.decode_header(bad.view(np.uint8))
    with pytest.raises(wire.TransportError, match="header size"):
        wire.decode_header(header.view(np.uint8)[:-3])


def test_packed_bundle_is_zero_padded_and_unpacked_into_aligned_views():
    arrays = [np.ones(3, np.float32), np.arange(5, dtype=np.int16), np.arange(6, dtype=np.float64).reshape(2, 3)]
    meta = np.frombuffer(wire.encode_meta({"k": 1}), dtype=np.uint8)
    packed = wire.pack(meta, arrays, 1 << 20)
    header = wire.encode_header(1 << 20, meta.size, arrays).nbytes
    assert packed.size % wire.ALIGN == 0 and not packed[header + meta.size:wire.ALIGN * 4].any()
    got = wire.unpack(packed, 1, 2)
    assert got.meta == {"k": 1} and (got.source, got.tag, got.nbytes) == (1, 2, packed.size)
    for g, a in zip(got.arrays, arrays, strict=True):
        np.testing.assert_array_equal(g, a)
        assert g.dtype == a.dtype and np.shares_memory(g, packed) and (g.ctypes.data - packed.ctypes.data) % wire.ALIGN == 0
    assert wire.pack(meta, [np.zeros(1 << 20, np.uint8)], 1 << 20) is None, "over one chunk: not packed"
    with pytest.raises(wire.TransportError, match="header describes"):
        wire.unpack(packed[:-64], 1, 2)


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
