"""Sparse (CSR) inputs end to end: a bag-of-words-like set trained without densifying, against the
same model fed dense inputs of the same non-zeros per sample, in INTERLEAVED epochs.

    PYTHONPATH=. .venv/bin/python scripts/bench_sparse_inputs.py [--samples 50000] [--rounds 4] [--check]

Generated set: --features (1,000,000) columns, --density (0.1 %) of them non-zero per sample at
random (value 1, a word count), plus --words words drawn from the --indicative features (a few
hundred) of the sample's class: the known signal. The first layer trains on CSR batches
(sparse/csr.py) with lazy momentum updates (sparse/lazy.py). The dense twin: the same config on a
dense float32 matrix with as many columns as the sparse set has non-zeros per sample (about 1,000),
same hidden layers. Each round trains one epoch of the sparse model, then one of the dense model
(SET step between epochs included, timed apart), so both see the same machine load: the speed ratio
is the median over rounds 2.. of dense seconds / sparse seconds of that round (round 1 compiles).

PASS/FAIL lines (exit 1 on a FAIL only with --check): (1) peak RSS of the process (both models and sets) well below what a dense
samples x features matrix would need (and below --max-rss-gib); (2) sparse training speed >= 0.5 x
the dense one's; (3) test accuracy on the sparse set well above chance. --profile-batches N times
where a sparse batch's time goes (batch order, catch-up, first-layer forward, first-layer
gradient + update, the rest: hidden layers, loss, other layers' update); an info line times a few
batches of the 1M-input model on CSR against the same batches densified (the path before CSR kernels).

Why (2) is hard: at the same epsilon the 1M-input first layer has ~500x the connections of the
1000-input one (10.0 M vs 20 K at epsilon 10). Lazy updates bring a step's work down to the
connections of the batch's ~120 K distinct features (~1.2 M of them at 0.1 % density and 128 samples),
but those are still ~60x the dense first layer's 20 K, and each sits at a random place in a 10 M
connection layer (memory latency), where the dense model's arrays stay in cache (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import resource
import shlex
import sys
import time

import numba
import numpy as np
from numba import njit, prange

import sparsenet
from sparsenet.sparse import csr


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


@njit(parallel=True)  # not cached: it inlines csr.prefetch_ahead, whose edits numba's cache would not see
def _touch_once(indices, ptr, where, chunks, in_ptr, cols_in, w, v, seen, stamp):
    """The least any momentum step on a CSR batch must do: one pass over every connection of the batch's
    distinct features (read column, weight and velocity; write weight and velocity), prefetched as the lazy kernels do (csr.prefetch_ahead)."""
    n_buckets = ptr.shape[0] - 1
    for c in prange(chunks):
        q0, q1 = ptr[n_buckets * c // chunks], ptr[n_buckets * (c + 1) // chunks]
        for q in range(q0, q1):
            csr.prefetch_ahead(indices, where, q, q1, in_ptr, w, cols_in, v, True)
            i = indices[where[q]]
            if seen[i] == stamp:
                continue
            seen[i] = stamp
            for p in range(in_ptr[i], in_ptr[i + 1]):
                vel = np.float32(0.9) * v[p] - np.float32(1e-12) * np.float32(cols_in[p])
                v[p] = vel
                w[p] += vel


def memory_floor(state, data, batch: int, count: int) -> float:
    """Milliseconds per batch of _touch_once on the trained first layer's input-major layout (a lower bound for
    the first layer's share of a sparse batch: forward and gradient each read these connections again)."""

    x = data.x_train
    layer = state.model.layers[0]
    w = layer.values[layer.in_perm]  # input-major copies, as lazy.py holds them
    v = np.zeros_like(w)
    seen = np.full(layer.n_in, -1, dtype=np.int64)
    orders = [csr.BatchOrder(x.indices, x.indptr, np.arange(k * batch, (k + 1) * batch), x.shape[1])
              for k in range(count + 1)]
    chunks = max(1, min(4 * numba.get_num_threads(), orders[0].ptr.shape[0] - 1))
    args = (layer.in_ptr, layer.cols_in, w, v, seen)
    _touch_once(x.indices, orders[0].ptr, orders[0].where, chunks, *args, 0)  # compile
    t0 = time.perf_counter()
    for k, order in enumerate(orders[1:], start=1):
        _touch_once(x.indices, order.ptr, order.where, chunks, *args, k)
    return 1e3 * (time.perf_counter() - t0) / count


def peak_rss_gib() -> float:
    """Peak resident memory of this process so far, GiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def densified_batches(net, rows, y, batch: int, count: int) -> tuple[float, float]:
    """Seconds per batch of gradients (no update) of the trained 1M-input model `net` on CSR batches of
    `rows` (CSRRows), and on the same batches densified into its (features, batch) input buffer (the path
    before CSR kernels; its workspace alone is 3 x features x batch x 4 B). Each path first runs one untimed
    batch: training used the lazy kernels, so the eager CSR ones (and the densified buffer) are new here."""
    from sparsenet.train import compute_gradients

    rng = np.random.default_rng(0)
    warm, *index = [np.arange(k * batch, (k + 1) * batch) for k in range(count + 1)]

    def densified(idx):
        buf = net.input_buffer(batch)
        buf.fill(0)
        for b, r in enumerate(idx):
            s, e = rows.indptr[r], rows.indptr[r + 1]
            buf[rows.indices[s:e], b] = rows.data[s:e]
        net.gradients(batch, y[idx], np.zeros(len(net.layers), dtype=np.int64))

    compute_gradients(net, rng, rows, y, warm)
    t0 = time.perf_counter()
    for idx in index:
        compute_gradients(net, rng, rows, y, idx)
    sparse = (time.perf_counter() - t0) / count
    densified(warm)
    t0 = time.perf_counter()
    for idx in index:
        densified(idx)
    return sparse, (time.perf_counter() - t0) / count


def make_state(config: dict, x, y, x_test, y_test, classes: int, name: str):
    """(TrainingState, Config, Dataset) as sparsenet.train would build them (no standardisation)."""
    from sparsenet.config import config_from_dict
    from sparsenet.data.prepare import Dataset
    from sparsenet.inputs import as_samples
    from sparsenet.train import new_state, set_threads

    cfg = config_from_dict(config)
    set_threads(cfg.threads)
    data = Dataset(as_samples(x), np.asarray(y, np.int64), as_samples(x_test), np.asarray(y_test, np.int64), classes,
                   name)
    return new_state(cfg, data.n_features, classes), cfg, data


def train_round(state, cfg, data, epoch: int) -> dict:
    """One epoch (SET step before it from epoch 2) and its test accuracy; seconds as the trainer reports them."""
    from sparsenet.train import run_epoch

    cpu = time.process_time()
    row = run_epoch(state, cfg, data.x_train, data.y_train, epoch)
    cpu = time.process_time() - cpu  # this process's CPU seconds (every thread), SET step included
    state.epoch = epoch
    _, accuracy = state.model.evaluate(data.x_test, data.y_test, cfg.train.eval_batch_size)
    return {"train_seconds": row["train_seconds"], "evolution_seconds": row["evolution_seconds"],
            "cpu_seconds": cpu, "test_accuracy": accuracy}


def profile_batches(state, data, batch: int, count: int) -> dict:
    """Milliseconds per sparse training batch by phase over `count` batches (one lazy session)."""
    from sparsenet.train import lazy_session, train_step

    x, y = data.x_train, data.y_train
    index = [np.arange(k * batch, (k + 1) * batch) for k in range(count)]
    lazy = lazy_session(state, x, count)
    spent = {"catch-up": 0.0, "first-layer forward": 0.0, "first-layer gradient + update": 0.0}
    for name, method in (("catch-up", "catch_up"), ("first-layer forward", "forward"),
                         ("first-layer gradient + update", "step")):
        def timed(*a, _f=getattr(lazy, method), _n=name):
            t0 = time.perf_counter()
            _f(*a)
            spent[_n] += time.perf_counter() - t0
        setattr(lazy, method, timed)
    t0 = time.perf_counter()
    for idx in index:
        train_step(state, x, y, idx, lazy)
    total = time.perf_counter() - t0
    t0 = time.perf_counter()
    lazy.sync()
    sync = time.perf_counter() - t0
    t0 = time.perf_counter()
    for idx in index:
        csr.BatchOrder(x.indices, x.indptr, idx, x.shape[1])
    spent["batch order (CSR slicing)"] = time.perf_counter() - t0
    spent["rest (hidden layers, loss, other layers' update)"] = total - sum(spent.values())
    ms = {k: 1e3 * v / count for k, v in spent.items()}
    ms["total"] = 1e3 * total / count
    batches = -(-x.shape[0] // batch)   # the epoch's batches: the sync runs once per epoch
    ms[f"catch-up of every connection at the epoch end, per batch of a {batches}-batch epoch"] = 1e3 * sync / batches
    return ms


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
    p.add_argument("--rounds", type=int, default=4, help="interleaved epochs of each model (round 1 compiles)")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-rss-gib", type=float, default=4.0)
    p.add_argument("--min-speed", type=float, default=0.5, help="sparse speed / dense speed required")
    p.add_argument("--profile-batches", type=int, default=40, help="after the rounds, time this many sparse batches "
                   "by phase; 0 = skip")
    p.add_argument("--densified-batches", type=int, default=3, help="after the rounds, time this many batches "
                   "of the same model on CSR and densified (the old path; needs 3 x features x batch x 4 B more, "
                   "so it runs after the peak RSS is read); 0 = skip")
    p.add_argument("--json", help="write the measurements here")
    p.add_argument("--check", action="store_true", help="exit 1 if a PASS/FAIL line FAILs")
    args = p.parse_args(argv)
    if min(args.rounds, args.batch, args.features, args.samples, args.words) < 1 or args.classes < 2 \
            or not 0 < args.density <= 1 or not 0 < args.test_fraction < 1:
        p.error("need --rounds, --batch, --features, --samples, --words >= 1, --classes >= 2, 0 < --density <= 1 "
                "and 0 < --test-fraction < 1")
    if args.json:
        from sparsenet.errors import SparsenetError
        from sparsenet.fileio import prepare_file

        try:
            prepare_file(args.json, "--json file")   # checked before the rounds, not after them
        except SparsenetError as exc:
            p.error(str(exc))
    command = "PYTHONPATH=. python " + " ".join(shlex.quote(a) for a in sys.argv)
    print("reproduce: " + command, flush=True)
    config = {"seed": args.seed, "threads": args.threads, "data": {"standardize": False},
              "model": {"hidden": args.hidden, "epsilon": args.epsilon, "dropout": 0.0},
              "train": {"epochs": args.rounds, "batch_size": args.batch, "lr": args.lr, "progress": False}}

    t0 = time.perf_counter()
    x, y, _ = bag_of_words(args.samples, args.features, args.density, args.classes, args.indicative, args.words,
                           args.seed)
    n_test = int(round(args.samples * args.test_fraction))
    per_sample = x.nnz / x.shape[0]
    print(f"sparse set: {args.samples:,} samples x {args.features:,} features, {x.nnz:,} non-zeros "
          f"({per_sample:.0f} per sample, density {per_sample / args.features:.4%}), {args.classes} classes, "
          f"{args.indicative} indicative features, {args.words} of them per sample; generated in "
          f"{time.perf_counter() - t0:.1f} s", flush=True)
    sparse_state, cfg, sparse_data = make_state(config, x[n_test:], y[n_test:], x[:n_test], y[:n_test], args.classes,
                                                "bag of words")
    del x
    n_dense = int(round(per_sample))
    xd, yd = dense_like(args.samples, n_dense, args.classes, args.seed)
    dense_state, _, dense_data = make_state(config, xd[n_test:], yd[n_test:], xd[:n_test], yd[:n_test], args.classes,
                                            "dense twin")
    del xd
    print(f"models: sparse {'-'.join(map(str, sparse_state.model.sizes))} nnz {sparse_state.model.nnz}; dense "
          f"{'-'.join(map(str, dense_state.model.sizes))} nnz {dense_state.model.nnz}; interleaved rounds "
          f"(sparse epoch, dense epoch) x {args.rounds}", flush=True)
    sparse, dense = [], []
    for epoch in range(1, args.rounds + 1):
        sparse.append(train_round(sparse_state, cfg, sparse_data, epoch))
        dense.append(train_round(dense_state, cfg, dense_data, epoch))
        s, d = sparse[-1], dense[-1]
        print(f"round {epoch}: sparse train {s['train_seconds']:.2f} s (SET {s['evolution_seconds']:.2f} s) test "
              f"{100 * s['test_accuracy']:.2f}% | dense train {d['train_seconds']:.2f} s (SET "
              f"{d['evolution_seconds']:.2f} s) test {100 * d['test_accuracy']:.2f}% | speed ratio "
              f"{d['train_seconds'] / s['train_seconds']:.3f} (CPU seconds of train + SET: sparse {s['cpu_seconds']:.2f}, "
              f"dense {d['cpu_seconds']:.2f})", flush=True)
    peak = peak_rss_gib()
    steady = slice(1, None) if args.rounds > 1 else slice(None)
    ratios = [d["train_seconds"] / s["train_seconds"] for s, d in zip(sparse[steady], dense[steady])]
    speed = float(np.median(ratios))
    sparse_epoch = float(np.median([r["train_seconds"] for r in sparse[steady]]))
    dense_epoch = float(np.median([r["train_seconds"] for r in dense[steady]]))
    cpu_ratio = float(np.median([d["cpu_seconds"] / s["cpu_seconds"] for s, d in zip(sparse[steady], dense[steady])]))
    print(f"CPU-time ratio (dense / sparse CPU seconds of train + SET, median of rounds 2..): {cpu_ratio:.3f} (with "
          f"--threads 1 and the machine busy, closer to a quiet machine's wall-clock ratio than the wall clock)",
          flush=True)
    result = {"sparse": sparse, "dense": dense, "speed_ratios": ratios, "cpu_ratio": cpu_ratio, "peak_rss_gib": peak}
    args.profile_batches = min(args.profile_batches, sparse_data.x_train.shape[0] // args.batch - 1)
    args.densified_batches = min(args.densified_batches, sparse_data.x_train.shape[0] // args.batch - 1)
    if args.profile_batches > 0:
        ms = profile_batches(sparse_state, sparse_data, args.batch, args.profile_batches)
        result["profile_ms_per_batch"] = ms
        print(f"where a sparse batch's time goes ({args.profile_batches} batches; dense batch for comparison "
              f"{1e3 * dense_epoch / -(-dense_data.x_train.shape[0] // args.batch):.2f} ms):", flush=True)
        for k, v in ms.items():
            print(f"  {k}: {v:.2f} ms", flush=True)
        floor = memory_floor(sparse_state, sparse_data, args.batch, args.profile_batches)
        dense_batch = 1e3 * dense_epoch / -(-dense_data.x_train.shape[0] // args.batch)
        result["first_layer_floor_ms"] = floor
        rest = ms["rest (hidden layers, loss, other layers' update)"]
        print(f"the least the first layer's step can cost (one read+write pass over the batch's connections, "
              f"prefetched): {floor:.2f} ms; with the rest of the batch ({rest:.2f} ms) that is "
              f"{floor + rest:.2f} ms, a ceiling of {dense_batch / (floor + rest):.2f} x the dense model's speed for "
              f"any implementation on this machine ({dense_batch / args.min_speed:.2f} ms per batch would meet "
              f"--min-speed {args.min_speed:g})", flush=True)
    if args.densified_batches > 0:
        csr_s, dense_s = densified_batches(sparse_state.model, sparse_data.x_train, sparse_data.y_train, args.batch,
                                           args.densified_batches)
        result["densified_batch_seconds"], result["csr_eager_batch_seconds"] = dense_s, csr_s
        print(f"same {args.features:,}-input model, {args.densified_batches} batches of gradients: {1e3 * csr_s:.1f} ms "
              f"per batch on CSR vs {1e3 * dense_s:.1f} ms densified into a {args.features:,} x {args.batch} input "
              f"buffer (the path before CSR kernels): {dense_s / csr_s:.1f}x", flush=True)

    dense_gib = args.samples * args.features * 4 / 2**30
    chance = 1.0 / args.classes
    accuracy = sparse[-1]["test_accuracy"]
    checks = [
        (peak < min(args.max_rss_gib, dense_gib / 10),
         f"peak RSS {peak:.2f} GiB (both models and sets, before the densified comparison); a dense samples x "
         f"features float32 matrix alone would need {dense_gib:,.1f} GiB (limit {args.max_rss_gib:g} GiB)"),
        (speed >= args.min_speed,
         f"sparse speed {speed:.3f} x the dense model's (median of rounds 2..{args.rounds}: "
         f"{', '.join(f'{r:.3f}' for r in ratios)}; median {sparse_epoch:.2f} vs {dense_epoch:.2f} s per epoch; "
         f"need >= {args.min_speed:g})"),
        (accuracy >= chance + 0.5 * (1 - chance),
         f"test accuracy {100 * accuracy:.2f}% on the sparse set (chance {100 * chance:.0f}%; need at least "
         f"halfway from chance to 100%)"),
    ]
    for ok, text in checks:
        print(("PASS " if ok else "FAIL ") + text)
    print("reproduce: " + command)
    if args.json:
        from sparsenet.fileio import write_text

        write_text(args.json, json.dumps({"args": vars(args), **result, "speed_ratio": speed,
                                          "dense_matrix_gib": dense_gib, "passed": all(ok for ok, _ in checks)},
                                         indent=1) + "\n", "results file")
    return 1 if args.check and not all(ok for ok, _ in checks) else 0


if __name__ == "__main__":
    sys.exit(main())
