"""Importance Pruning during training vs the same run without it, on FashionMNIST (issue 4's check).

    python scripts/bench_pruning.py [--epochs 40 --start 10 --every 5 --percentile 15] [--threads 2] [--check]

Prints test accuracy, weights at start and end, and the training seconds per epoch before pruning
starts and at the end; --check fails unless the end has <= 30% of the starting weights, accuracy is
within 1.5 points of the unpruned run, and late epochs train faster than early ones.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

from sparsenet.config import load_config
from sparsenet.train import run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/fashion_mnist_pruning.yaml")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--start", type=int, default=10)
    parser.add_argument("--every", type=int, default=5)
    parser.add_argument("--percentile", type=float, default=15)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--out", help="keep the runs here (default: a temporary folder)")
    parser.add_argument("--json", help="write the figures to this JSON file")
    parser.add_argument("--check", action="store_true", help="exit 1 unless the issue's targets are met")
    args = parser.parse_args()

    common = [f"train.epochs={args.epochs}", f"pruning.start_epoch={args.start}", f"pruning.every={args.every}",
              f"pruning.percentile={args.percentile}", f"threads={args.threads}", "train.progress=false",
              f"checkpoint.every={args.epochs}"]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(args.out or tmp)
        for method in ("none", "importance"):
            cfg = load_config(args.config, common + [f"pruning.method={method}"])
            history = run(cfg, base / method).history
            early = [r["train_seconds"] for r in history[1:args.start]]  # epoch 1 also compiles nothing, but warms caches
            late = [r["train_seconds"] for r in history[-5:]]
            results[method] = {
                "test_accuracy_last": history[-1]["test_accuracy"],
                "test_accuracy_best": max(r["test_accuracy"] for r in history),
                "weights_start": sum(history[0]["nnz"]), "weights_end": sum(history[-1]["nnz"]),
                "neurons_end": history[-1]["neurons"],
                "train_seconds_early": statistics.median(early), "train_seconds_late": statistics.median(late),
                "train_seconds_total": sum(r["train_seconds"] for r in history)}

    none, pruned = results["none"], results["importance"]
    weight_share = pruned["weights_end"] / pruned["weights_start"]
    gap = 100 * (none["test_accuracy_last"] - pruned["test_accuracy_last"])
    speedup = pruned["train_seconds_early"] / pruned["train_seconds_late"]
    print(f"FashionMNIST, {args.epochs} epochs; Importance Pruning from epoch {args.start} every {args.every} "
          f"epochs at the {args.percentile:g}th percentile")
    print(f"{'run':>11} {'acc last':>9} {'acc best':>9} {'weights start':>14} {'weights end':>12} "
          f"{'s/epoch early':>14} {'s/epoch late':>13}  neurons at the end")
    for name, r in results.items():
        print(f"{name:>11} {100 * r['test_accuracy_last']:>8.2f}% {100 * r['test_accuracy_best']:>8.2f}% "
              f"{r['weights_start']:>14} {r['weights_end']:>12} {r['train_seconds_early']:>14.2f} "
              f"{r['train_seconds_late']:>13.2f}  {'-'.join(map(str, r['neurons_end']))}")
    checks = {"weights at the end <= 30% of start": weight_share <= 0.30,
              "accuracy within 1.5 points of no pruning": gap <= 1.5,
              "late epochs train faster than early ones": speedup > 1.2}
    print(f"weights at the end: {100 * weight_share:.1f}% of start; accuracy gap {gap:+.2f} points; "
          f"epoch time early/late {speedup:.2f}x")
    for name, ok in checks.items():
        print(f"  {'PASS' if ok else 'FAIL'}  {name}")
    print("reproduce: python " + " ".join(sys.argv))
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results}, indent=1))
    return 0 if (all(checks.values()) or not args.check) else 1


if __name__ == "__main__":
    sys.exit(main())
