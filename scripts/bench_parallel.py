"""Throughput of sequential, WASAP and WASSP training of the FashionMNIST SET-MLP at equal total threads.

    make setup && .venv/bin/python scripts/bench_parallel.py --epochs 4

Runs `sparsenet train` three times in subprocesses: sequentially with T kernel threads, then under
`mpiexec -n K+1` (1 parameter server + K workers, T/K threads each) with WASAP and with WASSP,
phase 1 only. From each run's metrics.jsonl (first epoch dropped: JIT compile) it prints training
samples/s, bytes per update and the server's CPU share while it waits, and checks the targets:
WASAP >= 90 % of sequential samples/s, server CPU < 10 % while waiting, bytes per update
proportional to nnz (weights + biases, float32, both directions) rather than model + velocities.
The runs are repeated in interleaved rounds (--repeat), each kind going first in turn; the throughput
check is the median over rounds of WASAP / sequential within a round (both under that round's load),
the other checks use medians over rounds; because a shared VM's speed drifts, it also prints the ratio in the round with
the fastest sequential run (the nearest to a quiet machine) and the best run of each kind.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from sparsenet.errors import SparsenetError
from sparsenet.fileio import prepare_file, write_text

ROOT = Path(__file__).resolve().parents[1]
THROUGHPUT_TARGET = 0.90
SERVER_CPU_TARGET = 0.10


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=4, help="epochs per run (the first is not counted)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=2, help="total kernel threads of every run")
    p.add_argument("--repeat", type=int, default=3,
                   help="rounds of the three runs, interleaved so machine noise hits all alike; medians are reported")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--json", type=Path, metavar="PATH", help="write the figures as JSON")
    p.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    return p.parse_args(argv)


def mpiexec() -> str:
    local = Path(sys.executable).parent / "mpiexec"
    return str(local) if local.exists() else "mpiexec"


def train(out: Path, config: str, epochs: int, threads: int, overrides: list[str], ranks: int = 1) -> list[dict]:
    """Run one training to `out` and return its metrics rows."""
    cmd = [sys.executable, "-m", "sparsenet", "train", config, "--out", str(out), "--overwrite"]
    for item in [f"train.epochs={epochs}", f"threads={threads}", "train.progress=false",
                 f"parallel.phase1_epochs={epochs}", "checkpoint.every=1000", *overrides]:
        cmd += ["--set", item]
    if ranks > 1:
        cmd = [mpiexec(), "-n", str(ranks)] + cmd
    env = {**os.environ, "HYDRA_LAUNCHER": "fork", "NUMBA_NUM_THREADS": str(threads)}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{shlex.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def summarize(rows: list[dict], n_train: int) -> dict:
    counted = rows[1:] or rows
    seconds = statistics.median(r["train_seconds"] for r in counted)
    result = {"samples_per_second": n_train / seconds, "train_seconds": seconds,
              "test_accuracy": rows[-1]["test_accuracy"], "nnz": sum(rows[-1]["nnz"]), "neurons": rows[-1]["neurons"]}
    if "updates" in rows[-1]:
        first, last = counted[0], counted[-1]
        prev = rows[rows.index(first) - 1] if rows.index(first) > 0 else {"bytes_sent": 0, "bytes_received": 0}
        updates = sum(r["updates"] for r in counted)
        moved = (last["bytes_sent"] - prev["bytes_sent"]) + (last["bytes_received"] - prev["bytes_received"])
        result.update(bytes_per_update=moved / updates, updates=updates,
                      server_wait_cpu_share=statistics.median(r["server_wait_cpu_share"] for r in counted),
                      server_wait_seconds=statistics.median(r["server_wait_seconds"] for r in counted))
    return result


def round_ratios(rounds: dict[str, list[dict]], name: str = "wasap") -> list[float]:
    """`name`'s samples/s over the sequential run's, per interleaved round (both measured under that round's load)."""
    return [run["samples_per_second"] / seq["samples_per_second"] for run, seq in zip(rounds[name], rounds["sequential"])]


def check_targets(results: dict[str, dict], rounds: dict[str, list[dict]]) -> dict[str, bool]:
    """PASS (True) / FAIL per target, from the per-kind medians (`results`) and the interleaved rounds."""
    nnz = int(results["sequential"]["nnz"])
    return {
        "wasap throughput >= 90% of sequential (median of the rounds' ratios)":
            statistics.median(round_ratios(rounds)) >= THROUGHPUT_TARGET,
        "server CPU < 10% while waiting": all(results[k]["server_wait_cpu_share"] < SERVER_CPU_TARGET for k in ("wasap", "wassp")),
        # gradient in + weights out, float32, plus biases and headers: about 8 bytes per connection,
        # where model + velocities both ways would be >= 16
        "bytes per update ~ 8 x nnz": all(results[k]["bytes_per_update"] < 10 * nnz for k in ("wasap", "wassp")),
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.repeat < 1 or args.epochs < 1 or args.workers < 1 or args.threads < 1:
        print("bench_parallel.py: error: --repeat, --epochs, --workers and --threads must be >= 1", file=sys.stderr)
        return 2
    if args.json:
        try:
            prepare_file(args.json, "--json file")   # checked before the runs, not after them
        except SparsenetError as exc:
            print(f"bench_parallel.py: error: {exc}", file=sys.stderr)
            return 2
    per_worker = max(1, args.threads // args.workers)
    ranks = args.workers + 1
    runs = {"sequential": ("configs/fashion_mnist.yaml", args.threads, 1),
            "wasap": ("configs/fashion_mnist_wasap.yaml", per_worker, ranks),
            "wassp": ("configs/fashion_mnist_wassp.yaml", per_worker, ranks)}
    rounds: dict[str, list[dict]] = {name: [] for name in runs}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeat):
            names = list(runs)
            for name in names[r % len(names):] + names[:r % len(names)]:  # each kind goes first in turn
                config, threads, n_ranks = runs[name]
                out = Path(tmp) / f"{name}{r}"
                rows = train(out, config, args.epochs, threads, args.overrides, n_ranks)
                rounds[name].append(summarize(rows, _n_train(out)))
            speed = {name: rounds[name][-1]["samples_per_second"] for name in runs}
            print(f"round {r + 1}/{args.repeat}: " + ", ".join(f"{name} {v:.0f}" for name, v in speed.items())
                  + f" samples/s; wasap {speed['wasap'] / speed['sequential']:.0%} of sequential", flush=True)
    results = {name: _median_run(rs) for name, rs in rounds.items()}
    seq = results["sequential"]
    nnz = int(seq["nnz"])
    print(f"SET-MLP {'-'.join(map(str, seq['neurons']))} (nnz {nnz}), {args.epochs} epochs per run (first not counted), "
          f"median of {args.repeat} interleaved rounds, "
          f"{args.threads} threads in all: sequential {args.threads} threads; parallel 1 server + {args.workers} "
          f"workers x {per_worker} threads")
    print(f"{'run':<11} {'samples/s':>10} {'vs seq':>7} {'s/epoch':>8} {'bytes/update':>13} {'per nnz':>8} "
          f"{'server CPU waiting':>19} {'test acc':>9}")
    for name, r in results.items():
        extra = ""
        if "bytes_per_update" in r:
            extra = (f"{r['bytes_per_update']:>13.0f} {r['bytes_per_update'] / nnz:>8.2f} "
                     f"{100 * r['server_wait_cpu_share']:>18.1f}%")
        else:
            extra = f"{'-':>13} {'-':>8} {'-':>19}"
        print(f"{name:<11} {r['samples_per_second']:>10.0f} {r['samples_per_second'] / seq['samples_per_second']:>6.0%} "
              f"{r['train_seconds']:>8.2f} {extra} {100 * r['test_accuracy']:>8.2f}%")
    # The machine's speed drifts (shared VM): the round in which the sequential run was fastest is the
    # nearest to a quiet machine, and the best run of each kind bounds what each can do.
    quiet = max(range(args.repeat), key=lambda i: rounds["sequential"][i]["samples_per_second"])
    best = {name: max(r["samples_per_second"] for r in rs) for name, rs in rounds.items()}
    quiet_ratio = rounds["wasap"][quiet]["samples_per_second"] / rounds["sequential"][quiet]["samples_per_second"]
    print(f"quietest round ({quiet + 1}, sequential {rounds['sequential'][quiet]['samples_per_second']:.0f} samples/s): "
          f"wasap {quiet_ratio:.0%} of sequential; best run of each: sequential {best['sequential']:.0f}, "
          f"wasap {best['wasap']:.0f} ({best['wasap'] / best['sequential']:.0%}), wassp {best['wassp']:.0f}")
    ratios = round_ratios(rounds)
    print(f"wasap / sequential samples/s per round: {', '.join(f'{r:.0%}' for r in ratios)}; median "
          f"{statistics.median(ratios):.0%} (target >= {THROUGHPUT_TARGET:.0%})")
    checks = check_targets(results, rounds)
    for name, ok in checks.items():
        print(f"target {name}: {'PASS' if ok else 'FAIL'}")
    print(f"machine: {os.cpu_count()} cores | reproduce: cd {ROOT} && {shlex.join([sys.executable, *sys.argv])}")
    if args.json:
        write_text(args.json, json.dumps({"results": results, "checks": checks, "rounds": rounds,
                                          "wasap_round_ratios": ratios,
                                          "wasap_ratio_median": statistics.median(ratios),
                                          "quietest_round": quiet + 1, "quietest_round_wasap_ratio": quiet_ratio,
                                          "best_samples_per_second": best}, indent=2) + "\n", "--json file")
    return 1 if args.check and not all(checks.values()) else 0


def _median_run(runs: list[dict]) -> dict:
    """Per figure, the median over repeated runs (each run's own figures are medians over its epochs)."""
    return {key: runs[0][key] if key == "neurons" else statistics.median(r[key] for r in runs) for key in runs[0]}


def _n_train(out: Path) -> int:
    """Training samples of the run in `out`, from its resolved config."""
    from sparsenet.config import load_config
    from sparsenet.data import load_dataset

    cfg = load_config(out / "config.yaml")
    return load_dataset(cfg.data, cfg.seed).x_train.shape[0]


if __name__ == "__main__":
    sys.exit(main())
