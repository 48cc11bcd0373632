"""Kernel threads follow the CPUs a process may use: affinity, cgroup CPU quota (v1, v2), Slurm."""

import os

import numba

from sparsenet.cpus import ThreadGovernor, cgroup_cpu_quota, machine_busy_seconds, usable_cpus
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


class _Clock:
    def __init__(self):
        self.now, self.busy, self.mine = 0.0, 0.0, 0.0


def _governor(clock, cpus=2):
    chosen = []
    g = ThreadGovernor(cpus, chosen.append, period=1.0, busy=lambda: clock.busy, mine=lambda: clock.mine,
                       clock=lambda: clock.now)
    return g, chosen


def _second(clock, ours: float, others: float):
    clock.now += 1.0
    clock.mine += ours
    clock.busy += ours + others


def test_governor_gives_up_the_cpu_another_process_takes_and_takes_it_back():
    clock = _Clock()
    g, chosen = _governor(clock)
    _second(clock, ours=2.0, others=0.0)          # alone: keeps 2 threads
    assert g.tick() == 2 and chosen == []
    _second(clock, ours=1.33, others=0.67)        # a hog starts: 3 busy threads share 2 CPUs
    assert g.tick() == 1 and chosen == [1]
    _second(clock, ours=1.0, others=1.0)          # the hog keeps its CPU: stay at 1
    assert g.tick() == 1 and chosen == [1]
    _second(clock, ours=1.0, others=0.05)         # the hog is gone: back to 2
    assert g.tick() == 2 and chosen == [1, 2]


def test_governor_waits_a_period_and_ignores_missing_counters():
    clock = _Clock()
    g, chosen = _governor(clock)
    clock.now += 0.5
    clock.busy += 1.0
    assert g.tick() == 2 and chosen == []        # half a period: not judged yet
    g.busy = lambda: None
    _second(clock, ours=0.0, others=2.0)
    assert g.tick() == 2 and chosen == []        # no /proc/stat: never changes anything


def test_machine_busy_seconds_reads_proc_stat(tmp_path):
    stat = tmp_path / "stat"
    ticks = os.sysconf("SC_CLK_TCK")
    stat.write_text(f"cpu  {3 * ticks} {ticks} {ticks} {50 * ticks} {9 * ticks} 0 0 {ticks} 0 0\ncpu0 ...\n")
    assert machine_busy_seconds(str(stat)) == 6.0   # user 3 + nice 1 + system 1 + steal 1; idle, iowait not
    stat.write_text("garbage\n")
    assert machine_busy_seconds(str(stat)) is None
