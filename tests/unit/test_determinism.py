"""Kernels give the same bits with 1 and 2 threads and from a fresh compile and a cached one."""

import os
import subprocess
import sys
from pathlib import Path

import numba
import pytest

from tests.unit.determinism_run import run

ROOT = Path(__file__).resolve().parents[2]


def test_same_bits_with_one_and_two_threads():
    before = numba.get_num_threads()
    try:
        one = run(1)
        two = run(min(2, numba.config.NUMBA_NUM_THREADS))
    finally:
        numba.set_num_threads(before)
    assert one == two


def _run_fresh_process(cache_dir: Path, threads: int) -> str:
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache_dir), PYTHONPATH=str(ROOT))
    res = subprocess.run([sys.executable, "-m", "tests.unit.determinism_run", str(threads)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


@pytest.mark.parametrize("threads", [2])
def test_fresh_compile_and_cached_kernels_agree(tmp_path, threads):
    fresh = _run_fresh_process(tmp_path, threads)  # compiles and writes the cache
    cached_files = list(tmp_path.rglob("*_backward_kernel*.nbc"))
    assert cached_files, "the first run should have cached the kernels"
    stamp = {f: f.stat().st_mtime_ns for f in cached_files}
    cached = _run_fresh_process(tmp_path, threads)  # loads them
    assert {f: f.stat().st_mtime_ns for f in cached_files} == stamp  # loaded, not recompiled
    assert fresh == cached
    assert fresh == run(threads)  # and this process (whatever its cache state) agrees


def test_prefetching_does_not_change_results(monkeypatch):
    from sparsenet.sparse import kernels

    plain = run(1)
    monkeypatch.setattr(kernels, "PREFETCH_MIN_BYTES", 0)  # prefetch even these small arrays
    assert run(1) == plain
