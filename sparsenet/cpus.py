"""How many CPUs this process may really use: its affinity, a cgroup CPU quota, Slurm's allocation.

`os.cpu_count()` (and numba's default pool size) counts every core of the machine; a process pinned
by taskset or a cpuset, throttled by a cgroup quota (containers) or given `--cpus-per-task` by Slurm
that starts that many kernel threads oversubscribes what it has, and its threads then wait for each
other at every parallel region.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path

from .cgroups import own_cgroup_paths


def _affinity() -> int | None:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def cgroup_cpu_quota(root: str | os.PathLike = "/sys/fs/cgroup",
                     self_cgroup: str | os.PathLike = "/proc/self/cgroup") -> float | None:
    """CPUs' worth of time per period a cgroup grants this process (v2 cpu.max, v1 cfs quota), None if unlimited."""
    root = Path(root)
    v2_path, v1_path = own_cgroup_paths("cpu", self_cgroup)
    limits = []
    if v2_path is not None:
        for base in (root / v2_path.lstrip("/"), root):
            fields = (_read(base / "cpu.max") or "").split()
            if len(fields) == 2 and fields[0] != "max":
                try:
                    limits.append(int(fields[0]) / int(fields[1]))
                except (ValueError, ZeroDivisionError):
                    pass
                break
    if v1_path is not None:
        for base in (root / "cpu" / v1_path.lstrip("/"), root / "cpu", root / "cpu,cpuacct" / v1_path.lstrip("/")):
            quota, period = _read(base / "cpu.cfs_quota_us"), _read(base / "cpu.cfs_period_us")
            try:
                q, p = int(quota or ""), int(period or "")
            except ValueError:
                continue
            if q > 0 and p > 0:
                limits.append(q / p)
                break
    return min(limits) if limits else None


def usable_cpus(environ: Mapping[str, str] | None = None, affinity: int | None = -1,
                quota: float | None = -1.0) -> tuple[int, str]:
    """(CPUs, why): the smallest of the affinity mask, the cgroup quota (rounded up) and SLURM_CPUS_PER_TASK."""
    environ = os.environ if environ is None else environ
    affinity = _affinity() if affinity == -1 else affinity
    quota = cgroup_cpu_quota() if quota == -1.0 else quota
    options = [(os.cpu_count() or 1, "cores")]
    if affinity:
        options.append((affinity, "CPU affinity"))
    if quota is not None:
        options.append((max(1, math.ceil(quota - 1e-9)), f"cgroup CPU quota {quota:g}"))
    slurm = environ.get("SLURM_CPUS_PER_TASK", "")
    if slurm.isdigit() and int(slurm) > 0:
        options.append((int(slurm), "SLURM_CPUS_PER_TASK"))
    return min(options, key=lambda o: o[0])


def machine_busy_seconds(path: str = "/proc/stat", cpus: set[int] | None = None) -> float | None:
    """CPU seconds the CPUs `cpus` (None: all) spent busy since boot (user, nice, system, irq, softirq,
    steal; not idle or iowait), from /proc/stat's per-CPU lines; None if unknown."""
    total, seen = 0, False
    try:
        with open(path) as fh:
            for line in fh:
                fields = line.split()
                if not fields or not fields[0].startswith("cpu") or not fields[0][3:].isdigit():
                    continue
                if cpus is not None and int(fields[0][3:]) not in cpus:
                    continue
                if len(fields) < 9:
                    return None
                user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[1:9])
                total += user + nice + system + irq + softirq + steal
                seen = True
    except (OSError, ValueError):
        return None
    return total / os.sysconf("SC_CLK_TCK") if seen else None


def process_cpu_seconds() -> float:
    """CPU seconds this process (all its threads) has used."""
    t = os.times()
    return t.user + t.system


class ThreadGovernor:
    """Kernel threads matched to the CPUs other processes leave free, judged every `period` seconds.

    The threads of a parallel region wait for each other at its end: when another process takes one
    of the CPUs, a thread preempted there stalls the rest, so fewer threads than CPUs go faster (a
    CPU hog beside a 2-thread run made its epochs 13.6x slower, 1.6x with the governor:
    scripts/bench_contention.py). Results do not depend on the count.
    """

    def __init__(self, cpus: int, set_threads, period: float = 1.0, busy=None, watched: int | None = None,
                 mine=process_cpu_seconds, clock=None):
        """cpus: most threads to run; watched: how many CPUs `busy` (busy seconds of those CPUs) covers,
        by default the CPUs of this process's affinity mask."""
        import time

        if busy is None:
            mask = os.sched_getaffinity(0)
            busy, watched = (lambda: machine_busy_seconds(cpus=mask)), len(mask)
        self.cpus, self.set_threads, self.period = max(1, cpus), set_threads, period
        self.watched = self.cpus if watched is None else watched
        self.busy, self.mine, self.clock = busy, mine, clock or time.monotonic
        self.threads = self.cpus
        self._mark = self._sample()

    def _sample(self) -> tuple[float, float | None, float]:
        return self.clock(), self.busy(), self.mine()

    def tick(self) -> int:
        """Re-judge the thread count if a period has passed; returns the count in use."""
        now = self.clock()
        if now - self._mark[0] < self.period:
            return self.threads
        sample = self._sample()
        (t0, busy0, mine0), (t1, busy1, mine1) = self._mark, sample
        self._mark = sample
        if busy0 is None or busy1 is None:
            return self.threads
        others = max(0.0, (busy1 - busy0) - (mine1 - mine0)) / (t1 - t0)
        wanted = max(1, min(self.cpus, math.floor(self.watched - others + 0.25)))
        if wanted != self.threads:
            self.threads = wanted
            self.set_threads(wanted)
        return self.threads
