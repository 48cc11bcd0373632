"""Million-neuron models on this machine: the paper's table 4 (init / train / test / evolution per epoch, peak RSS).

    python scripts/bench_scale.py [--configs configs/scale_1m.yaml configs/scale_10m.yaml] [--epochs 2] [--json F]

Each config trains in its own process (so peak RSS is that model's), `--epochs` epochs (2 by
default, so the SET step between them is timed), on the synthetic 65536-feature set that
`sparsenet data synth` writes. Minutes are per epoch: the median over the epochs trained; peak RSS in GiB.
The PASS/FAIL line needs a 1M-neuron config among --configs (the target is scale_1m.yaml's): without one it
FAILs. The lines are printed always; --check makes a FAIL exit 1, as the other benchmarks do.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sparsenet.errors import SparsenetError
from sparsenet.fileio import prepare_file, write_text

DEFAULT_CONFIGS = ["configs/scale_1m.yaml", "configs/scale_10m.yaml"]
TARGET_TRAIN_MINUTES_1M = 3.0  # issue 5: 65536-500000-500000-2 trains an epoch in <= 3 minutes here


def run_config(config: str, epochs: int, out: Path, extra: list[str]) -> dict:
    """Train `config` in a subprocess; per-epoch figures from its metrics and log."""
    cmd = [sys.executable, "-m", "sparsenet", "train", config, "--out", str(out), "--overwrite", "--set", f"train.epochs={epochs}",
           "--set", "train.progress=false", "--set", f"checkpoint.every={epochs}"]
    for item in extra:
        cmd += ["--set", item]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{config} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    log = proc.stderr + proc.stdout
    init = re.search(r"model ([\d-]+), nnz per layer \[([\d, ]+)\], \d+ parameters, init ([\d.]+)s", log)
    if init is None:
        raise SystemExit(f"{config}: could not find the model line in its log:\n{log[-2000:]}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    sizes = [int(n) for n in init.group(1).split("-")]
    evolution = [r["evolution_seconds"] for r in rows[1:]]
    return {"config": config, "architecture": init.group(1), "neurons": sum(sizes),
            "weights": sum(int(n) for n in init.group(2).split(",")), "workers": 0,
            "init_minutes": float(init.group(3)) / 60,
            "train_minutes": statistics.median(r["train_seconds"] for r in rows) / 60,
            "test_minutes": statistics.median(r["eval_seconds"] for r in rows) / 60,
            "evolution_minutes": statistics.median(evolution) / 60 if evolution else None,
            "peak_rss_gb": max(r["peak_rss_mb"] for r in rows) / 1024,
            "train_loss": [round(r["train_loss"], 4) for r in rows],
            "test_loss": [round(r["test_loss"], 4) for r in rows],
            "test_accuracy": [round(r["test_accuracy"], 4) for r in rows],
            "epochs": len(rows), "wall_minutes": wall / 60,
            "epsilon": _epsilon(out / "config.yaml")}


def _epsilon(config_yaml: Path) -> float:
    match = re.search(r"^\s+epsilon:\s*([\d.eE+-]+)", config_yaml.read_text(), re.M)
    return float(match.group(1)) if match else float("nan")


def check(rows: list[dict]) -> list[tuple[bool, str]]:
    """(passed, line) per target: each 1M-neuron row's training minutes; a FAIL if no row has 1M neurons."""
    lines = [(r["train_minutes"] <= TARGET_TRAIN_MINUTES_1M,
              f"{r['architecture']}: {r['train_minutes']:.2f} min of training per epoch "
              f"(target <= {TARGET_TRAIN_MINUTES_1M:g})") for r in rows if 1_000_000 <= r["neurons"] < 2_000_000]
    return lines or [(False, f"no 1M-neuron model among the configs run, nothing to check the "
                             f"<= {TARGET_TRAIN_MINUTES_1M:g} min target on (add configs/scale_1m.yaml)")]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra override for every config")
    parser.add_argument("--out", help="keep the runs under this folder (default: a temporary one)")
    parser.add_argument("--json", help="write the rows to this JSON file")
    parser.add_argument("--check", action="store_true", help="exit 1 unless the 1M model trains an epoch in <= 3 minutes")
    args = parser.parse_args(argv)
    if args.epochs < 1:
        parser.error(f"--epochs must be >= 1, got {args.epochs}")
    if args.json:
        try:
            prepare_file(args.json, "--json file")   # checked before hours of training, not after them
        except SparsenetError as exc:
            parser.error(str(exc))

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(args.out or tmp)
        for config in args.configs:
            print(f"training {config} for {args.epochs} epochs ...", flush=True)
            rows.append(run_config(config, args.epochs, base / Path(config).stem, args.set))

    cpu = platform.processor() or platform.machine()
    print(f"\nmachine: {os.cpu_count()} cores ({cpu}), "
          f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB RAM; minutes per epoch")
    head = (f"{'architecture':<34} {'eps':>4} {'neurons':>11} {'weights':>12} {'workers':>7} {'init':>6} "
            f"{'train':>7} {'test':>6} {'evol.':>6} {'peak RSS':>9}  train / test loss per epoch")
    print(head)
    for r in rows:
        evo = f"{r['evolution_minutes']:>6.2f}" if r["evolution_minutes"] is not None else f"{'-':>6}"
        print(f"{r['architecture']:<34} {r['epsilon']:>4g} {r['neurons']:>11,} {r['weights']:>12,} {r['workers']:>7} "
              f"{r['init_minutes']:>6.2f} {r['train_minutes']:>7.2f} {r['test_minutes']:>6.2f} {evo} "
              f"{r['peak_rss_gb']:>6.1f}GiB  {r['train_loss']} / {r['test_loss']}")
    print("reproduce: python " + shlex.join(sys.argv))
    if args.json:
        write_text(args.json, json.dumps(rows, indent=1) + "\n", "--json file")
    results = check(rows)
    for passed, line in results:
        print(f"  {'PASS' if passed else 'FAIL'}  {line}")
    return 1 if args.check and not all(passed for passed, _ in results) else 0

if __name__ == "__main__":
    sys.exit(main())
