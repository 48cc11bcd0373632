"""Transient memory of Erdős–Rényi init and of one SET step, in bytes per connection.

    PYTHONPATH=. .venv/bin/python scripts/bench_memory.py [--n 2000000] [--eps 10] [--zeta 0.3]

Initialises an n x n layer (nnz ~ eps * 2n; the defaults give ~40M connections), then runs
prune_and_regrow on it. For each phase prints the peak growth over the memory held before it,
per connection: `traced` from tracemalloc (every numpy allocation, exact) and `rss` from a thread
sampling /proc/self/statm every millisecond (also counts numba-internal allocations). The result
itself is included (an initialised layer holds 20 B/nnz; a SET step's new layer 20 B/nnz plus its
int64 `source` 8 B/nnz, while the old layer stays alive).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import threading
import time
import tracemalloc

import numpy as np

from sparsenet.evolution import prune_and_regrow
from sparsenet.sparse.init import erdos_renyi_layer

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * PAGE


class PeakRss:
    def __enter__(self):
        self.base = self.peak = rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss())
            time.sleep(0.001)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss())


def measure(label: str, fn, nnz_of):
    tracemalloc.reset_peak()
    traced_base = tracemalloc.get_traced_memory()[0]
    t = time.perf_counter()
    with PeakRss() as m:
        result = fn()
    secs = time.perf_counter() - t
    traced_peak = tracemalloc.get_traced_memory()[1] - traced_base
    nnz = nnz_of(result)
    print(f"{label:>6}: nnz {nnz:,}  traced peak {traced_peak / nnz:6.1f} B/nnz  "
          f"rss peak {(m.peak - m.base) / nnz:6.1f} B/nnz  {secs:6.2f} s", flush=True)
    return result


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=2_000_000)
    p.add_argument("--eps", type=float, default=10.0)
    p.add_argument("--zeta", type=float, default=0.3)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    print("reproduce: PYTHONPATH=. python " + " ".join(shlex.quote(a) for a in sys.argv))
    rng = np.random.default_rng(args.seed)
    erdos_renyi_layer(1000, 1000, 5.0, "he_uniform", rng)  # compile numba helpers outside the measurement
    prune_and_regrow(erdos_renyi_layer(1000, 1000, 5.0, "he_uniform", rng), 0.3, "he_uniform", rng)
    tracemalloc.start()
    layer = measure("init", lambda: erdos_renyi_layer(args.n, args.n, args.eps, "he_uniform", rng), lambda l: l.nnz)
    measure("SET", lambda: prune_and_regrow(layer, args.zeta, "he_uniform", rng), lambda r: r[0].nnz)


if __name__ == "__main__":
    main()
