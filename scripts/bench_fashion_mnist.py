"""Benchmark one FashionMNIST SET-MLP epoch as configured in configs/fashion_mnist.yaml.

    make setup && .venv/bin/python scripts/bench_fashion_mnist.py --epochs 3

Times train (`train_epoch`), evolution (`evolve`) and evaluation separately per epoch, after an
uncounted numba warm-up, checks train + evolution against the per-epoch target and, if torch is
importable, times a masked dense PyTorch SET-MLP of the same shape as a baseline.
Options: --set KEY=VALUE (config override, repeatable), --epochs N, --threads N (0 = config /
all cores), --json PATH, --check (exit 1 on FAIL), --no-torch (skip the PyTorch baseline).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from sparsenet.activations import hidden_slopes
from sparsenet.config import config_to_dict, load_config
from sparsenet.data import load_dataset
from sparsenet.errors import SparsenetError
from sparsenet.fileio import prepare_file, write_text
from sparsenet.sparse.init import erdos_renyi_density
from sparsenet.train import evolve, new_state, set_threads, train_epoch

ROOT = Path(__file__).resolve().parents[1]
CONFIG = "configs/fashion_mnist.yaml"
TARGET_SECONDS = 1.5  # train + evolution per epoch on the 2-core development machine
WARMUP_BATCHES = 4
FLOP_FORMULA = "GFLOP/s = 6 * total_nnz * samples_per_epoch / train_seconds / 1e9"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="kernel threads (0 = config value / all cores)")
    p.add_argument("--json", type=Path, metavar="PATH", help="write all figures as JSON")
    p.add_argument("--check", action="store_true", help="exit non-zero if the target is missed")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch baseline even if torch is importable")
    return p.parse_args(argv)


def machine_info(threads: int) -> dict:
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as fh:
            model = next((l.split(":", 1)[1].strip() for l in fh if l.startswith("model name")), model)
    except OSError:
        pass
    return {"cpu": model, "cores": os.cpu_count(), "threads": threads,
            "load_average_1min": round(os.getloadavg()[0], 2)}


def reproduce_command() -> str:
    python = os.path.relpath(sys.executable, ROOT)
    python = sys.executable if python.startswith("..") else python
    return f"cd {ROOT} && {python} scripts/bench_fashion_mnist.py {shlex.join(sys.argv[1:])}".rstrip()


def warm_up(cfg, data) -> float:
    """Compile (or load) every numba kernel on a throwaway model: a few batches, one SET step, eval."""
    t0 = time.perf_counter()
    state = new_state(cfg, data.n_features, data.n_classes)
    n = WARMUP_BATCHES * cfg.train.batch_size
    train_epoch(state, data.x_train[:n], data.y_train[:n], cfg.train.batch_size)
    evolve(state, cfg)
    state.model.evaluate(data.x_test[:n], data.y_test[:n], cfg.train.eval_batch_size)
    return time.perf_counter() - t0


def timed_epoch(state, cfg, data) -> dict:
    """One epoch: train, evaluate the trained model, then the SET step (as `run` does between epochs)."""
    nnz = sum(state.model.nnz)
    t0 = time.perf_counter()
    train_loss, _ = train_epoch(state, data.x_train, data.y_train, cfg.train.batch_size)
    t1 = time.perf_counter()
    _, test_acc = state.model.evaluate(data.x_test, data.y_test, cfg.train.eval_batch_size)
    t2 = time.perf_counter()
    evolve(state, cfg)
    t3 = time.perf_counter()
    train_s, eval_s, evo_s = t1 - t0, t2 - t1, t3 - t2
    return {"train_s": train_s, "evolution_s": evo_s, "eval_s": eval_s, "train_evolution_s": train_s + evo_s,
            "gflops": 6 * nnz * data.x_train.shape[0] / train_s / 1e9, "total_nnz": nnz,
            "train_loss": train_loss, "test_accuracy": test_acc}


def print_table(rows: list[dict]) -> None:
    print(f"{'epoch':>5} {'train s':>8} {'evol s':>8} {'eval s':>8} {'train+evol s':>13} {'GFLOP/s':>8} {'test acc':>9}")
    for i, r in enumerate(rows, 1):
        print(f"{i:>5} {r['train_s']:8.3f} {r['evolution_s']:8.3f} {r['eval_s']:8.3f} "
              f"{r['train_evolution_s']:13.3f} {r['gflops']:8.2f} {100 * r['test_accuracy']:8.2f}%")
    print(f"({FLOP_FORMULA}; total_nnz = {rows[0]['total_nnz']})")


def medians(rows: list[dict]) -> dict:
    keys = ("train_s", "evolution_s", "eval_s", "train_evolution_s", "gflops")
    return {k: statistics.median(r[k] for r in rows) for k in keys}


# ---------------------------------------------------------------- PyTorch baseline (dense masks)

def torch_baseline(cfg, data, epochs: int, threads: int) -> dict:
    """Masked dense PyTorch SET-MLP of the same shape: weights * fixed 0/1 Erdős–Rényi masks.

    Dense masks are used ONLY here, as the comparison baseline. Returns per-epoch train and
    evolution seconds (one uncounted warm-up on a few batches first) and the final test accuracy.
    """
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    torch.manual_seed(cfg.seed)
    m, t = cfg.model, cfg.train
    sizes = [data.n_features, *m.hidden, data.n_classes]
    slopes = hidden_slopes(m.activation, m.alpha, len(m.hidden))  # All-ReLU: -a, +a, -a
    x_tr, y_tr = torch.from_numpy(np.asarray(data.x_train)), torch.from_numpy(data.y_train)
    x_te, y_te = torch.from_numpy(np.asarray(data.x_test)), torch.from_numpy(data.y_test)

    def build():
        weights, biases, masks = [], [], []
        for n_in, n_out in zip(sizes[:-1], sizes[1:]):
            mask = (torch.rand(n_out, n_in) < erdos_renyi_density(n_in, n_out, m.epsilon)).float()
            limit = (6.0 / n_in) ** 0.5  # he_uniform
            weights.append(((torch.rand(n_out, n_in) * 2 - 1) * limit * mask).requires_grad_())
            biases.append(torch.zeros(n_out, requires_grad=True))
            masks.append(mask)
        opt = torch.optim.SGD([*weights, *biases], lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
        return weights, biases, masks, opt

    def forward(net, x, train):
        weights, biases, masks, _ = net
        for l, (w, b, mask) in enumerate(zip(weights, biases, masks)):
            x = F.linear(x, w * mask, b)  # gradient is zero off the mask, so w stays 0 there
            if l < len(slopes):
                x = F.dropout(torch.where(x > 0, x, slopes[l] * x), m.dropout, training=train)
        return x

    def train(net, order):
        for start in range(0, order.shape[0], t.batch_size):
            idx = order[start:start + t.batch_size]
            net[3].zero_grad(set_to_none=True)
            F.cross_entropy(forward(net, x_tr[idx], True), y_tr[idx]).backward()
            net[3].step()

    def set_step(net):
        weights, _, masks, opt = net
        layers = len(weights) if cfg.evolution.evolve_output else len(weights) - 1
        with torch.no_grad():
            for w, mask in zip(weights[:layers], masks[:layers]):
                on = mask.view(-1).nonzero().squeeze(1)
                vals = w.view(-1)[on]
                pos, neg = on[vals >= 0], on[vals < 0]
                n_pos, n_neg = int(cfg.evolution.zeta * pos.numel()), int(cfg.evolution.zeta * neg.numel())
                drop = torch.cat([pos[torch.topk(w.view(-1)[pos], n_pos, largest=False).indices],
                                  neg[torch.topk(w.view(-1)[neg], n_neg, largest=True).indices]])
                mask.view(-1)[drop] = 0
                free = (mask.view(-1) == 0).nonzero().squeeze(1)
                grow = free[torch.randperm(free.numel())[:drop.numel()]]
                mask.view(-1)[grow] = 1
                w.view(-1)[drop] = 0
                w.view(-1)[grow] = (torch.rand(grow.numel()) * 2 - 1) * (6.0 / w.shape[1]) ** 0.5
                buf = opt.state[w].get("momentum_buffer")
                if buf is not None:
                    buf.view(-1)[drop] = 0
                    buf.view(-1)[grow] = 0

    warm = build()
    train(warm, torch.arange(WARMUP_BATCHES * t.batch_size))
    set_step(warm)
    net, rows = build(), []
    for _ in range(epochs):
        t0 = time.perf_counter()
        train(net, torch.randperm(x_tr.shape[0]))
        t1 = time.perf_counter()
        set_step(net)
        t2 = time.perf_counter()
        rows.append({"train_s": t1 - t0, "evolution_s": t2 - t1, "train_evolution_s": t2 - t0})
    with torch.no_grad():
        acc = (forward(net, x_te, False).argmax(1) == y_te).float().mean().item()
    return {"epochs": rows, "test_accuracy_after_last_epoch": acc,
            "median_train_evolution_s": statistics.median(r["train_evolution_s"] for r in rows)}


# ---------------------------------------------------------------- main

def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        if args.json:
            prepare_file(args.json, "--json file")   # checked before the benchmark, not after it
        cfg = load_config(ROOT / CONFIG, args.overrides)
        data = load_dataset(cfg.data, cfg.seed)
    except SparsenetError as exc:   # a bad --set, missing data, a --json path that cannot be written
        print(f"bench_fashion_mnist.py: error: {exc}", file=sys.stderr)
        return 2
    threads = set_threads(args.threads or cfg.threads)
    machine = machine_info(threads)
    print(f"sparsenet SET-MLP {'-'.join(map(str, [data.n_features, *cfg.model.hidden, data.n_classes]))}, "
          f"eps {cfg.model.epsilon:g}, {cfg.model.activation}, batch {cfg.train.batch_size}, "
          f"dropout {cfg.model.dropout:g}, zeta {cfg.evolution.zeta:g}; {data.x_train.shape[0]} train / "
          f"{data.x_test.shape[0]} test samples; {threads} threads")
    print(f"warm-up (numba JIT, {WARMUP_BATCHES} batches, not counted): {warm_up(cfg, data):.2f}s")
    state = new_state(cfg, data.n_features, data.n_classes)
    rows = [timed_epoch(state, cfg, data) for _ in range(args.epochs)]
    print_table(rows)
    med = medians(rows)
    passed = med["train_evolution_s"] <= TARGET_SECONDS
    accuracy = rows[-1]["test_accuracy"]
    print(f"median per epoch: train {med['train_s']:.3f}s, evolution {med['evolution_s']:.3f}s, "
          f"eval {med['eval_s']:.3f}s, train+evolution {med['train_evolution_s']:.3f}s, "
          f"{med['gflops']:.2f} GFLOP/s | test accuracy {100 * accuracy:.2f}% after {args.epochs} epochs | "
          f"{machine['cpu']}, {machine['cores']} cores, {threads} numba threads, "
          f"load average {machine['load_average_1min']} at start | {reproduce_command()}")
    print(f"target train+evolution <= {TARGET_SECONDS:.2f}s per epoch: {'PASS' if passed else 'FAIL'} "
          f"({med['train_evolution_s']:.3f}s)")

    baseline = None
    try:
        if args.no_torch:
            raise ImportError
        import torch  # noqa: F401
    except ImportError:
        print("PyTorch comparison skipped: --no-torch given or torch not importable "
              "(enable it with `.venv/bin/pip install torch==2.13.0`, a CPU wheel on this machine's disk)")
    else:
        baseline = torch_baseline(cfg, data, args.epochs, threads)
        per_epoch = ", ".join(f"{r['train_evolution_s']:.3f}" for r in baseline["epochs"])
        ratio = baseline["median_train_evolution_s"] / med["train_evolution_s"]
        baseline["ratio_torch_over_sparsenet"] = ratio
        print(f"PyTorch masked dense SET-MLP ({torch.__version__}, {threads} threads) train+evolution s per "
              f"epoch: {per_epoch}; median {baseline['median_train_evolution_s']:.3f}s; test accuracy "
              f"{100 * baseline['test_accuracy_after_last_epoch']:.2f}% | ratio torch / sparsenet {ratio:.2f}x")

    if args.json:
        report = {"config": config_to_dict(cfg), "machine": machine, "command": reproduce_command(),
                  "flop_formula": FLOP_FORMULA, "epochs": rows, "median": med, "test_accuracy": accuracy,
                  "target_seconds": TARGET_SECONDS, "passed": passed, "torch": baseline}
        write_text(args.json, json.dumps(report, indent=2) + "\n", "--json file")
        print(f"figures written to {args.json}")
    return 1 if args.check and not passed else 0


if __name__ == "__main__":
    sys.exit(main())
