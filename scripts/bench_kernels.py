"""GFLOP/s of the sparse kernels on one layer, forward and backward, at 1 and 2 threads.

    PYTHONPATH=. .venv/bin/python scripts/bench_kernels.py [--repeat 5] [--only small|large] [--offset 16]

(a) the FashionMNIST hidden layer 1000x1000 eps 20, (b) 500000x500000 eps 10; batch 128.
Forward (with dropout) = 2 * nnz * batch flops; backward with dx = 4 * nnz * batch flops (weight
gradient and delta of the layer below); weight gradient alone (the first layer's) = 2 * nnz * batch.
Prints the median and best of --repeat timed calls after a warm-up (weight gradient: the median).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time

import numba
import numpy as np

from sparsenet.sparse import kernels
from sparsenet.sparse.init import erdos_renyi_layer

CASES = {"small": (1000, 1000, 20.0), "large": (500_000, 500_000, 10.0)}


def bench(fn, repeat: int) -> tuple[float, float]:
    fn()  # warm-up (compile / caches)
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times)), float(min(times))


def activations(n: int, batch: int, value=0.0, offset: int = 0) -> np.ndarray:
    """(n, batch) float32 starting `offset` bytes past a cache line (0: as the model's workspace holds
    them, kernels.aligned_floats; 16: where numpy's large arrays start), filled with `value`."""
    a = kernels.aligned_floats(n * batch + offset // 4)[offset // 4:].reshape(n, batch)
    a[...] = value
    return a


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--only", choices=sorted(CASES), action="append")
    p.add_argument("--offset", type=int, default=0, choices=range(0, 64, 4), metavar="BYTES",
                   help="activation buffers this many bytes past a cache line (numpy's large arrays: 16)")
    args = p.parse_args(argv)
    most = numba.config.NUMBA_NUM_THREADS
    if args.repeat < 1 or args.batch < 1 or not all(1 <= t <= most for t in args.threads):
        p.error(f"need --repeat >= 1, --batch >= 1 and --threads between 1 and {most} (NUMBA_NUM_THREADS), "
                f"got {args.repeat}, {args.batch}, {' '.join(map(str, args.threads))}")
    print("reproduce: PYTHONPATH=. python " + " ".join(shlex.quote(a) for a in sys.argv))
    print(f"{'layer':>24} {'thr':>3} {'fwd GF/s':>9} {'(best)':>7} {'bwd GF/s':>9} {'(best)':>7} {'wgrad GF/s':>10}")
    for name in args.only or ["small", "large"]:
        n_in, n_out, eps = CASES[name]
        rng = np.random.default_rng(0)
        layer = erdos_renyi_layer(n_in, n_out, eps, "he_uniform", rng)
        b = args.batch
        off = args.offset
        x = activations(n_in, b, rng.standard_normal((n_in, b), dtype=np.float32), off)
        out, factor = activations(n_out, b, 0.0, off), activations(n_out, b, 1.0, off)
        delta = activations(n_out, b, rng.standard_normal((n_out, b), dtype=np.float32), off)
        gf_in, dx = activations(n_in, b, 1.0, off), activations(n_in, b, 0.0, off)
        sums = np.empty(n_in, np.float32)
        grad = np.empty(layer.nnz, np.float32)
        label = f"{n_in}x{n_out} eps{eps:g} nnz {layer.nnz / 1e6:.2f}M"
        for t in args.threads:
            numba.set_num_threads(t)
            fwd = bench(lambda: kernels.forward(layer, x, out, slope=0.0, dropout=0.3, drop_key=1,
                                                grad_factor=factor), args.repeat)
            bwd = bench(lambda: kernels.backward(layer, x, delta, grad, dx, gf_in, sums), args.repeat)
            wgrad = bench(lambda: kernels.backward(layer, x, delta, grad), args.repeat)  # the first layer's
            ff, fb = 2 * layer.nnz * b / 1e9, 4 * layer.nnz * b / 1e9
            print(f"{label:>24} {t:>3} {ff / fwd[0]:9.2f} {ff / fwd[1]:7.2f} {fb / bwd[0]:9.2f} {fb / bwd[1]:7.2f}"
                  f" {ff / wgrad[0]:10.2f}", flush=True)


if __name__ == "__main__":
    main()
