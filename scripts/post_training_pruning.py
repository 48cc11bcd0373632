"""Post-training Importance Pruning of a trained checkpoint at several percentiles (the paper's table 6).

    python scripts/post_training_pruning.py runs/fashion_mnist/checkpoint.h5 [--percentiles 5 10 15 20 25] [--json F]

Each row removes, once, the hidden neurons whose importance (sum of |incoming weights|) is below
that percentile of their layer, then evaluates the smaller model on the test set (no fine-tuning).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time

from sparsenet.checkpoint import load_checkpoint
from sparsenet.config import config_from_yaml
from sparsenet.data import load_dataset
from sparsenet.errors import SparsenetError
from sparsenet.fileio import prepare_file, write_text
from sparsenet.pruning import remove_neurons, select_by_importance
from sparsenet.train import model_from_checkpoint, set_threads


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--percentiles", type=float, nargs="+", default=[5, 10, 15, 20, 25],
                        help="each above 0 and below 100 (as pruning.percentile)")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    bad = [p for p in args.percentiles if not 0 < p < 100]
    if bad:
        parser.error(f"--percentiles must lie above 0 and below 100, got {', '.join(f'{p:g}' for p in bad)}")
    try:
        if args.json:
            prepare_file(args.json, "--json file")   # checked before the work, not after it
        return prune_and_report(args)
    except SparsenetError as exc:
        parser.exit(2, f"{parser.prog}: error: {exc}\n")


def prune_and_report(args) -> int:
    """Prune the checkpoint at each percentile, print the table (and write --json)."""
    saved = load_checkpoint(args.checkpoint)
    cfg = config_from_yaml(saved.config_yaml, f"the config stored in {args.checkpoint}")
    set_threads(args.threads)
    data = load_dataset(cfg.data, cfg.seed)
    batch = cfg.train.eval_batch_size

    def row(label, model, seconds=0.0):
        loss, accuracy = model.evaluate(data.x_test, data.y_test, batch)
        return {"pruning": label, "test_accuracy": accuracy, "test_loss": loss, "weights": sum(model.nnz),
                "parameters": model.n_parameters, "neurons": model.sizes, "prune_seconds": seconds}

    rows = [row("none", model_from_checkpoint(saved))]
    for p in args.percentiles:
        model = model_from_checkpoint(saved)
        t0 = time.perf_counter()
        remove_neurons(model, select_by_importance(model, p))
        rows.append(row(f"{p:g}th percentile", model, time.perf_counter() - t0))

    print(f"post-training Importance Pruning of {args.checkpoint} (epoch {saved.epoch}, data {data.name})")
    print(f"{'pruning':>16} {'accuracy [%]':>13} {'weights':>9} {'of start':>9} {'parameters':>11}  neurons")
    start = rows[0]["weights"]
    for r in rows:
        print(f"{r['pruning']:>16} {100 * r['test_accuracy']:>13.2f} {r['weights']:>9} "
              f"{100 * r['weights'] / start:>8.1f}% {r['parameters']:>11}  {'-'.join(map(str, r['neurons']))}")
    print("reproduce: python " + shlex.join(sys.argv))
    if args.json:
        write_text(args.json, json.dumps(rows, indent=1) + "\n", "--json file")
    return 0


if __name__ == "__main__":
    sys.exit(main())
