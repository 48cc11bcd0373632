"""Importance Pruning during training vs the same run without it, on FashionMNIST (issue 4's check).

    python scripts/bench_pruning.py [--epochs 40 --start 10 --every 5 --percentile 15] [--threads 2] [--check]

Prints test accuracy, weights at start and end, and the median training seconds per epoch before pruning
starts (epochs 2..start; epoch 1 warms caches) and after it (the last 5 epochs, all after the first pruning);
--check fails unless the end has <= 30% of the starting weights, accuracy is within 1.5 points of the
unpruned run, and those late epochs train over 1.2x faster than the early ones.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import tempfile
from pathlib import Path

from sparsenet.config import load_config
from sparsenet.errors import SparsenetError
from sparsenet.fileio import prepare_file, write_text
from sparsenet.train import run

LATE_EPOCHS = 5


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/fashion_mnist_pruning.yaml")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--start", type=int, default=10, help="first pruning after this epoch (>= 2)")
    parser.add_argument("--every", type=int, default=5)
    parser.add_argument("--percentile", type=float, default=15)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for both runs (repeatable)")
    parser.add_argument("--out", help="keep the runs here (default: a temporary folder)")
    parser.add_argument("--json", help="write the figures to this JSON file")
    parser.add_argument("--check", action="store_true", help="exit 1 unless the issue's targets are met")
    args = parser.parse_args(argv)
    # epochs 2..start are the unpruned ones timed (epoch 1 warms caches); at least one epoch must follow a pruning
    if args.start < 2 or args.epochs <= args.start:
        parser.error(f"need 2 <= --start < --epochs (epochs 2..start are timed before pruning, the epochs after "
                     f"start after it), got --start {args.start} --epochs {args.epochs}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        if args.json:
            prepare_file(args.json, "--json file")   # checked before the runs, not after them
        return compare(args)
    except SparsenetError as exc:   # a bad --set/--config value, an --out folder that cannot be used
        print(f"bench_pruning.py: error: {exc}", file=sys.stderr)
        return 2


def compare(args) -> int:
    """Train with and without pruning, print the table and the checks; 1 if --check and a check fails."""
    common = [f"train.epochs={args.epochs}", f"pruning.start_epoch={args.start}", f"pruning.every={args.every}",
              f"pruning.percentile={args.percentile}", f"threads={args.threads}", "train.progress=false",
              f"checkpoint.every={args.epochs}", *args.overrides]
    late_from = max(args.start, args.epochs - LATE_EPOCHS)   # pruned after epoch `start`: later epochs are smaller
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(args.out or tmp)
        for method in ("none", "importance"):
            cfg = load_config(args.config, common + [f"pruning.method={method}"])
            history = run(cfg, base / method).history
            early = [r["train_seconds"] for r in history[1:args.start]]
            late = [r["train_seconds"] for r in history[late_from:]]
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
              "late epochs train > 1.2x faster than early ones": speedup > 1.2}
    print(f"weights at the end: {100 * weight_share:.1f}% of start; accuracy gap {gap:+.2f} points; "
          f"epoch time early/late {speedup:.2f}x")
    for name, ok in checks.items():
        print(f"  {'PASS' if ok else 'FAIL'}  {name}")
    print("reproduce: python " + shlex.join(sys.argv))
    if args.json:
        write_text(args.json, json.dumps({"args": vars(args), "results": results, "checks": checks}, indent=1) + "\n",
                   "--json file")
    return 0 if (all(checks.values()) or not args.check) else 1


if __name__ == "__main__":
    sys.exit(main())
