"""Sparse (CSR) inputs end to end: a bag-of-words-like set trained without densifying, against the
same model fed dense inputs of the same non-zeros per sample.

    PYTHONPATH=. .venv/bin/python scripts/bench_sparse_inputs.py [--samples 50000] [--epochs 3]

Generated set: --features (1,000,000) columns, --density (0.1 %) of them non-zero per sample at
random (value 1, a word count), plus --words words drawn from the --indicative features (a few
hundred) of the sample's class: the known signal. Trained through sparsenet.train on scipy CSR
(first layer on CSR batches, sparse/csr.py); then the same config on a dense float32 matrix with
as many columns as the sparse set has non-zeros per sample (about 1,000), same hidden layers.

PASS/FAIL lines: (1) peak RSS of the sparse run well below what a dense samples x features matrix
would need (and below --max-rss-gib); (2) sparse training seconds per epoch within 1 / 0.5 of the
dense one (>= 50 % of its speed); (3) test accuracy on the sparse set well above chance. An info
line times a few batches of the same 1M-input model on CSR against the same batches densified
(the path before CSR kernels). Timings under load are not evidence: run it on a quiet machine.

Why (2) is hard: at the same epsilon the 1M-input first layer has ~500x the connections of the
1000-input one (10.0 M vs 20 K at epsilon 10), the optimizer updates all of them every batch, and
each CSR non-zero reaches its connections' weights by random access, where the dense first layer
streams a few thousand weights through SIMD lanes (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import resource
import shlex
import sys
import time

import numpy as np
from numba import njit

import sparsenet


@njit(cache=True)
def _bag_of_words(n, n_features, per_row, words, vocab, labels, seed, indptr, indices):
    """Canonical CSR rows: per_row random columns plus `words` columns from vocab[labels[r]], sorted, unique."""
    np.random.seed(seed)
    row = np.empty(per_row + words, dtype=np.int64)
    pos = 0
    indptr[0] = 0
    for r in range(n):
        for k in range(per_row):
            row[k] = np.random.randint(0, n_features)
        own = vocab[labels[r]]
        for k in range(words):
            row[per_row + k] = own[np.random.randint(0, own.shape[0])]
        row.sort()
        last = -1
        for k in range(row.shape[0]):
            if row[k] != last:
                indices[pos] = row[k]
                pos += 1
                last = row[k]
        indptr[r + 1] = pos
    return pos


def bag_of_words(n: int, n_features: int, density: float, classes: int, indicative: int, words: int, seed: int):
    """(scipy CSR float32 (n, n_features), labels (n,), the indicative feature ids (classes, indicative // classes))."""
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    vocab = rng.choice(n_features, size=indicative // classes * classes, replace=False).reshape(classes, -1)
    labels = rng.integers(0, classes, size=n)
    per_row = int(round(density * n_features))
    indptr = np.empty(n + 1, dtype=np.int64)
    indices = np.empty(n * (per_row + words), dtype=np.int32)
    nnz = _bag_of_words(n, n_features, per_row, words, vocab.astype(np.int64), labels, seed, indptr, indices)
    indices = indices[:nnz].copy()
    x = sp.csr_array((np.ones(nnz, dtype=np.float32), indices, indptr), shape=(n, n_features))
    return x, labels, vocab


def dense_like(n: int, n_features: int, classes: int, seed: int):
    """A dense float32 (n, n_features) set with a learnable signal in a few columns (its speed is what counts)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, size=n)
    x = rng.standard_normal((n, n_features), dtype=np.float32)
    x[np.arange(n), labels] += 3.0
    return x, labels


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def densified_batches(model, x, y, batch: int, count: int) -> tuple[float, float]:
    """Seconds per training batch (gradients) of the trained 1M-input model on CSR batches, and on the same
    batches densified into its (features, batch) input buffer (the path before CSR kernels; its workspace
    alone is 3 x features x batch x 4 B)."""
    from sparsenet.inputs import as_samples
    from sparsenet.train import compute_gradients

    rows = as_samples(x)
    net, rng = model.network, np.random.default_rng(0)
    index = [np.arange(k * batch, (k + 1) * batch) for k in range(count)]
    t0 = time.perf_counter()
    for idx in index:
        compute_gradients(net, rng, rows, y, idx)
    sparse = (time.perf_counter() - t0) / count
    t0 = time.perf_counter()
    for idx in index:
        buf = net.input_buffer(batch)
        buf.fill(0)
        for b, r in enumerate(idx):
            s, e = rows.indptr[r], rows.indptr[r + 1]
            buf[rows.indices[s:e], b] = rows.data[s:e]
        net.gradients(batch, y[idx], np.zeros(len(net.layers), dtype=np.int64))
    return sparse, (time.perf_counter() - t0) / count


def run(name: str, config: dict, x, y, x_test, y_test) -> dict:
    t0 = time.perf_counter()
    model, history = sparsenet.train(config, x, y, X_test=x_test, y_test=y_test)
    wall = time.perf_counter() - t0
    seconds = [row["train_seconds"] for row in history]
    steady = seconds[1:] if len(seconds) > 1 else seconds  # the first epoch includes numba compiles
    result = {"name": name, "train_seconds_per_epoch": float(np.median(steady)), "epoch_seconds": seconds,
              "test_accuracy": [row["test_accuracy"] for row in history], "wall_seconds": wall,
              "peak_rss_gib": peak_rss_gib()}
    print(f"{name}: train {result['train_seconds_per_epoch']:.2f} s/epoch (median after the first; all "
          f"{', '.join(f'{s:.2f}' for s in seconds)}), test accuracy "
          f"{', '.join(f'{100 * a:.2f}%' for a in result['test_accuracy'])}, peak RSS so far "
          f"{result['peak_rss_gib']:.2f} GiB, wall {wall:.1f} s", flush=True)
    result["model"] = model
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--features", type=int, default=1_000_000)
    p.add_argument("--density", type=float, default=0.001)
    p.add_argument("--samples", type=int, default=50_000, help="train + test")
    p.add_argument("--test-fraction", type=float, default=0.2)
    p.add_argument("--classes", type=int, default=4)
    p.add_argument("--indicative", type=int, default=400, help="features that carry the label, split over the classes")
    p.add_argument("--words", type=int, default=8, help="indicative words per sample (from its class)")
    p.add_argument("--hidden", type=int, nargs="+", default=[1000, 1000])
    p.add_argument("--epsilon", type=float, default=10.0)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--standardize", action="store_true", help="scale features by their std (off: word counts as "
                   "they are; scale-only standardisation blows rare words up ~30x)")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-rss-gib", type=float, default=4.0)
    p.add_argument("--min-speed", type=float, default=0.5, help="sparse speed / dense speed required")
    p.add_argument("--densified-batches", type=int, default=3, help="after the sparse run, time this many batches "
                   "of the same model on CSR and densified (the old path; needs 3 x features x batch x 4 B more, "
                   "so it runs after the peak RSS is read); 0 = skip")
    p.add_argument("--json", help="write the measurements here")
    args = p.parse_args(argv)
    print("reproduce: PYTHONPATH=. python " + " ".join(shlex.quote(a) for a in sys.argv), flush=True)
    config = {"seed": args.seed, "threads": args.threads, "data": {"standardize": args.standardize},
              "model": {"hidden": args.hidden, "epsilon": args.epsilon, "dropout": 0.0},
              "train": {"epochs": args.epochs, "batch_size": args.batch, "lr": args.lr, "progress": False}}

    t0 = time.perf_counter()
    x, y, _ = bag_of_words(args.samples, args.features, args.density, args.classes, args.indicative, args.words,
                           args.seed)
    n_test = int(round(args.samples * args.test_fraction))
    x_train, y_train, x_test, y_test = x[n_test:], y[n_test:], x[:n_test], y[:n_test]
    del x
    per_sample = x_train.nnz / x_train.shape[0]
    print(f"sparse set: {args.samples:,} samples x {args.features:,} features, {x_train.nnz + x_test.nnz:,} non-zeros "
          f"({per_sample:.0f} per sample, density {per_sample / args.features:.4%}), {args.classes} classes, "
          f"{args.indicative} indicative features, {args.words} of them per sample; generated in "
          f"{time.perf_counter() - t0:.1f} s", flush=True)
    sparse = run("sparse (CSR)", config, x_train, y_train, x_test, y_test)
    if args.densified_batches:
        csr_s, dense_s = densified_batches(sparse["model"], x_train, y_train, args.batch, args.densified_batches)
        sparse["densified_batch_seconds"], sparse["csr_batch_seconds"] = dense_s, csr_s
        print(f"same {args.features:,}-input model, {args.densified_batches} batches: {1e3 * csr_s:.1f} ms per batch on CSR vs "
              f"{1e3 * dense_s:.1f} ms densified into a {args.features:,} x {args.batch} input buffer (the path "
              f"before CSR kernels): {dense_s / csr_s:.1f}x", flush=True)
    del sparse["model"], x_train, x_test

    n_dense = int(round(per_sample))
    xd, yd = dense_like(args.samples, n_dense, args.classes, args.seed)
    dense = run(f"dense ({n_dense} features)", config, xd[n_test:], yd[n_test:], xd[:n_test], yd[:n_test])
    del dense["model"]

    dense_gib = args.samples * args.features * 4 / 2**30
    speed = dense["train_seconds_per_epoch"] / sparse["train_seconds_per_epoch"]
    chance = 1.0 / args.classes
    accuracy = sparse["test_accuracy"][-1]
    checks = [
        (sparse["peak_rss_gib"] < min(args.max_rss_gib, dense_gib / 10),
         f"peak RSS of the sparse run {sparse['peak_rss_gib']:.2f} GiB; a dense samples x features float32 matrix "
         f"alone would need {dense_gib:,.1f} GiB (limit {args.max_rss_gib:g} GiB)"),
        (speed >= args.min_speed,
         f"sparse speed {speed:.2f} x the dense model's ({sparse['train_seconds_per_epoch']:.2f} vs "
         f"{dense['train_seconds_per_epoch']:.2f} s per epoch; need >= {args.min_speed:g})"),
        (accuracy >= chance + 0.5 * (1 - chance),
         f"test accuracy {100 * accuracy:.2f}% on the sparse set (chance {100 * chance:.0f}%; need at least "
         f"halfway from chance to 100%)"),
    ]
    for ok, text in checks:
        print(("PASS " if ok else "FAIL ") + text)
    if args.json:
        from sparsenet.fileio import write_text

        write_text(args.json, json.dumps({"args": vars(args), "sparse": sparse, "dense": dense, "speed_ratio": speed,
                                          "dense_matrix_gib": dense_gib, "passed": all(ok for ok, _ in checks)},
                                         indent=1) + "\n", "results file")
    return 0 if all(ok for ok, _ in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
