"""Kernel threads follow the CPUs a process may use: affinity, cgroup CPU quota (v1, v2), Slurm."""

import os

import numba

from sparsenet.cpus import cgroup_cpu_quota, usable_cpus
from sparsenet.train import set_threads


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_v2_quota(tmp_path):
    _write(tmp_path / "self", "0::/job/42\n")
    _write(tmp_path / "root" / "job" / "42" / "cpu.max", "150000 100000\n")
    assert cgroup_cpu_quota(tmp_path / "root", tmp_path / "self") == 1.5
    _write(tmp_path / "root" / "job" / "42" / "cpu.max", "max 100000\n")
    assert cgroup_cpu_quota(tmp_path / "root", tmp_path / "self") is None


def test_cgroup_v1_quota(tmp_path):
    _write(tmp_path / "self", "4:memory:/x\n1:cpu,cpuacct:/box\n")
    _write(tmp_path / "root" / "cpu" / "box" / "cpu.cfs_quota_us", "200000\n")
    _write(tmp_path / "root" / "cpu" / "box" / "cpu.cfs_period_us", "100000\n")
    assert cgroup_cpu_quota(tmp_path / "root", tmp_path / "self") == 2.0
    _write(tmp_path / "root" / "cpu" / "box" / "cpu.cfs_quota_us", "-1\n")
    assert cgroup_cpu_quota(tmp_path / "root", tmp_path / "self") is None


def test_usable_cpus_takes_the_tightest_limit():
    cores = os.cpu_count()
    assert usable_cpus({}, affinity=None, quota=None) == (cores, "cores")
    assert usable_cpus({}, affinity=1, quota=None) == (1, "CPU affinity")
    assert usable_cpus({}, affinity=None, quota=0.5) == (1, "cgroup CPU quota 0.5")
    assert usable_cpus({"SLURM_CPUS_PER_TASK": "1"}, affinity=None, quota=None) == (1, "SLURM_CPUS_PER_TASK")
    assert usable_cpus({"SLURM_CPUS_PER_TASK": "junk"}, affinity=None, quota=None) == (cores, "cores")


def test_set_threads_follows_the_affinity_mask():
    """A process pinned to one CPU runs one kernel thread, whatever the machine's core count."""
    before = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {min(before)})
        assert set_threads(0) == 1 == numba.get_num_threads()
    finally:
        os.sched_setaffinity(0, before)
        set_threads(0)
    assert numba.get_num_threads() == min(len(before), numba.config.NUMBA_NUM_THREADS)
