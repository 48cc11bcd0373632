"""FashionMNIST epochs alone, beside a CPU hog, and two trainings at once; wide layers' step time and memory.

    .venv/bin/python scripts/bench_contention.py [--check] [--skip-wide | --only-wide] [--wide-steps N] [--json PATH]

Every condition runs `sparsenet train configs/fashion_mnist.yaml` (default settings, 4 epochs) in its
own process and takes the median of epochs 2-4 of train + evolution seconds from its metrics.jsonl:
1. alone: <= ALONE_TARGET seconds;
2. beside `python3 -c "while 1: pass"`: <= HOG_FACTOR x alone;
3. two trainings started together: each <= PAIR_FACTOR x alone, combined throughput >= PAIR_THROUGHPUT
   of one run alone;
4. wide layers, 784-50000-50000-10 (epsilon 20, batch 128), the full 60k/10k data in memory: seconds
   per training step (epoch 2's train seconds / its steps) and the process's peak RSS
   (VmHWM, in MiB: 2**20 bytes). The run is train.run on the whole configuration with two short epochs of --wide-steps
   batches each (the other training samples stay loaded), so it has every peak of a full run: data,
   init, training, the SET step, evaluation on all 10k test samples, metrics and checkpoints.
WASAP against the sequential trainer is scripts/bench_parallel.py --check. Run on a quiet machine:
any other load distorts every figure.
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
import time
from pathlib import Path

from sparsenet.errors import SparsenetError
from sparsenet.fileio import prepare_file, write_text

ROOT = Path(__file__).resolve().parents[1]
CONFIG = "configs/fashion_mnist.yaml"
ALONE_TARGET = 0.9        # seconds per epoch (train + evolution)
HOG_FACTOR = 2.2
PAIR_FACTOR = 2.5
PAIR_THROUGHPUT = 0.8
WIDE = ["model.hidden=[50000,50000]", "model.epsilon=20", "train.batch_size=128"]
WIDE_STEP_TARGET = 0.15   # seconds per step
WIDE_RSS_TARGET_MIB = 600.0


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=4, help="epochs per run; the median is over epochs 2..N")
    p.add_argument("--skip-wide", action="store_true", help="skip the 784-50000-50000-10 run (~1.5 minutes)")
    p.add_argument("--only-wide", action="store_true", help="only the 784-50000-50000-10 run")
    p.add_argument("--wide-steps", type=int, default=200, help="training steps per epoch of the wide run (2 epochs)")
    p.add_argument("--wide-child", type=Path, help=argparse.SUPPRESS)  # internal: the wide run itself, into this folder
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for every FashionMNIST run (repeatable)")
    p.add_argument("--json", type=Path, help="where the figures go (default scripts/results/bench_contention.json, "
                   "with --only-wide bench_contention_wide.json)")
    p.add_argument("--check", action="store_true", help="exit 1 if any target is missed")
    args = p.parse_args(argv)
    if args.epochs < 2:
        p.error("--epochs must be >= 2 (epoch 1 is not counted)")
    if args.wide_steps < 1:
        p.error("--wide-steps must be >= 1")
    if args.skip_wide and args.only_wide:
        p.error("--skip-wide and --only-wide exclude each other")
    return args


def start_training(out: Path, epochs: int, overrides: list[str]) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "sparsenet", "train", CONFIG, "--out", str(out), "--overwrite",
           "--set", f"train.epochs={epochs}", "--set", "train.progress=false", "--set", "checkpoint.every=1000"]
    for o in overrides:
        cmd += ["--set", o]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, out: Path) -> list[dict]:
    _, err = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"bench_contention: training in {out} failed (exit {proc.returncode}): {err.strip()[-500:]}")
    with open(out / "metrics.jsonl") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def epoch_seconds(rows: list[dict]) -> float:
    """Median over epochs 2.. of train + evolution seconds (epoch 1 loads the kernels)."""
    return statistics.median(r["train_seconds"] + r["evolution_seconds"] for r in rows[1:])


def run_alone(tmp: Path, tag: str, epochs: int, overrides: list[str]) -> list[dict]:
    out = tmp / tag
    return finish(start_training(out, epochs, overrides), out)


def run_beside_hog(tmp: Path, epochs: int, overrides: list[str]) -> list[dict]:
    hog = subprocess.Popen([sys.executable, "-c", "while 1: pass"])
    try:
        time.sleep(0.5)
        return run_alone(tmp, "hog", epochs, overrides)
    finally:
        hog.kill()
        hog.wait()


def run_pair(tmp: Path, epochs: int, overrides: list[str]) -> tuple[list[dict], list[dict]]:
    procs = [(start_training(tmp / f"pair{k}", epochs, overrides), tmp / f"pair{k}") for k in (1, 2)]
    return tuple(finish(p, out) for p, out in procs)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def wide_child(out: Path, steps: int, overrides: list[str]) -> None:
    """The wide run (in its own process): as `sparsenet train` does it, with the training set cut to
    `steps` batches per epoch while the whole dataset stays in memory; prints its peak RSS in MiB."""
    import dataclasses

    from sparsenet import cli  # noqa: F401 - the modules `sparsenet train` has loaded
    from sparsenet.config import load_config
    from sparsenet.data import load_dataset
    from sparsenet.memory import check_memory, plan_memory
    from sparsenet.metrics import log
    from sparsenet.train import run

    cfg = load_config(ROOT / CONFIG, [*overrides, *WIDE, "train.epochs=2", "train.progress=false"])
    check_memory(cfg, 1, say=log)
    full = load_dataset(cfg.data, cfg.seed)  # held until the end: all 60k/10k samples stay in memory
    n = min(steps * cfg.train.batch_size, full.x_train.shape[0])
    run(cfg, out, dataset=dataclasses.replace(full, x_train=full.x_train[:n], y_train=full.y_train[:n]))
    with open("/proc/self/status") as fh:  # VmHWM: ru_maxrss would include the forking parent's size
        hwm_kb = next(int(line.split()[1]) for line in fh if line.startswith("VmHWM"))
    print(json.dumps({"peak_rss_mib": hwm_kb / 1024,
                      "planned_mib": plan_memory(cfg, 1).total / 2**20, "steps": -(-n // cfg.train.batch_size),
                      "train_samples_held": full.x_train.shape[0]}))


def run_wide(tmp: Path, steps: int, overrides: list[str]) -> tuple[float, float, float]:
    """(seconds per step in epoch 2, peak RSS MiB, the memory planner's estimate MiB) of the wide run."""
    out = tmp / "wide"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--wide-child", str(out), "--wide-steps", str(steps)]
    for o in overrides:
        cmd += ["--set", o]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"bench_contention: the wide run failed (exit {proc.returncode}): {proc.stderr.strip()[-500:]}")
    child = json.loads(proc.stdout.strip().splitlines()[-1])
    with open(out / "metrics.jsonl") as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    return rows[1]["train_seconds"] / child["steps"], child["peak_rss_mib"], child["planned_mib"]


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.wide_child is not None:
        wide_child(args.wide_child, args.wide_steps, args.overrides)
        return 0
    default = "bench_contention_wide.json" if args.only_wide else "bench_contention.json"
    try:   # the figures file is checked before the runs, not after them
        figures = prepare_file(args.json or ROOT / "scripts" / "results" / default, "--json file")
    except SparsenetError as exc:
        raise SystemExit(f"bench_contention: {exc}") from None
    results, lines, notes, checks, ok = {}, [], [], [], True
    with tempfile.TemporaryDirectory(prefix="bench-contention-") as name:
        tmp = Path(name)
        run_alone(tmp, "warmup", 2, args.overrides + ["data.max_train=2048"])  # numba cache warm
        if not args.only_wide:
            alone = epoch_seconds(run_alone(tmp, "alone", args.epochs, args.overrides))
            hog = epoch_seconds(run_beside_hog(tmp, args.epochs, args.overrides))
            pair = [epoch_seconds(rows) for rows in run_pair(tmp, args.epochs, args.overrides)]
            throughput = sum(alone / s for s in pair)
            checks += [
                ("alone, s/epoch", alone, alone <= ALONE_TARGET, f"<= {ALONE_TARGET}"),
                ("beside a CPU hog, x alone", hog / alone, hog / alone <= HOG_FACTOR, f"<= {HOG_FACTOR}"),
                ("two at once, slower one, x alone", max(pair) / alone, max(pair) / alone <= PAIR_FACTOR,
                 f"<= {PAIR_FACTOR}"),
                ("two at once, combined throughput / one alone", throughput, throughput >= PAIR_THROUGHPUT,
                 f">= {PAIR_THROUGHPUT}"),
            ]
            results.update(alone_seconds=alone, hog_seconds=hog, pair_seconds=pair, pair_throughput=throughput)
        if not args.skip_wide:
            step, rss, planned = run_wide(tmp, args.wide_steps, args.overrides)
            checks += [("wide 784-50000-50000-10, s/step", step, step <= WIDE_STEP_TARGET, f"<= {WIDE_STEP_TARGET}"),
                       ("wide, peak RSS MiB", rss, rss <= WIDE_RSS_TARGET_MIB, f"<= {WIDE_RSS_TARGET_MIB:g}")]
            results.update(wide_step_seconds=step, wide_steps_per_second=1 / step, wide_peak_rss_mib=rss,
                           wide_planned_mib=planned, wide_steps_per_epoch=args.wide_steps)
            notes.append(f"(wide: {1 / step:.2f} steps/s; the memory planner expected {planned:.0f} MiB, "
                         f"{planned / rss - 1:+.0%} of the measured peak)")
    for what, value, passed, target in checks:
        ok &= passed
        lines.append(f"{what:<48}{value:>9.3f}  target {target:<8} {verdict(passed)}")
    command = f"cd {ROOT} && {os.path.relpath(sys.executable, ROOT)} scripts/bench_contention.py {shlex.join(sys.argv[1:])}".rstrip()
    print("\n".join(lines + notes))
    print(f"reproduce: {command}")
    results.update(checks=[{"what": w, "value": v, "target": t, "pass": p} for w, v, p, t in checks],
                   command=command, load_average_1min=round(os.getloadavg()[0], 2),
                   cpu=_cpu_model(), cores=os.cpu_count())
    write_text(figures, json.dumps(results, indent=1) + "\n", "--json file")
    return 0 if ok or not args.check else 1


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            return next((l.split(":", 1)[1].strip() for l in fh if l.startswith("model name")), "unknown CPU")
    except OSError:
        return "unknown CPU"


if __name__ == "__main__":
    sys.exit(main())
