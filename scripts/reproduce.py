"""Reproduce the paper's tables 2, 3 and 5 on FashionMNIST and Madelon: every row, several seeds.

Each row is a config + overrides + seeds. Every (row, seed) runs `sparsenet train --resume` as a
subprocess into RUNS/<row>/<seed> (an interrupted run continues from its checkpoint), and its result
is recorded in the results JSON as soon as it finishes (temporary + rename); a run already recorded
is skipped, so the whole set can be built over several sittings. Then the README table (ours beside
the paper's figure, target PASS/FAIL) is printed and the learning curves are drawn.

    .venv/bin/python scripts/reproduce.py                      # every row (days of CPU on 2 cores)
    .venv/bin/python scripts/reproduce.py --rows madelon-allrelu,madelon-relu --jobs 2 --nice 15
    .venv/bin/python scripts/reproduce.py --quick              # 10 epochs, 1 seed, own results file
    .venv/bin/python scripts/reproduce.py --report             # table + figure from what is recorded

Paths are relative to the working directory (run it from the repository root). Timings are
recorded as measured; on a shared machine they are measured under load (the JSON says so).
--set runs are not the table's runs: they need --results and --runs-dir of their own. Exit 0 when every
run finished, 75 after SIGTERM/SIGINT (the runs stop resumably: run the same command again), 1 if a run
failed, 2 for bad arguments or a damaged results file.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

AUTHORS_IP = ["pruning.start_epoch=200", "pruning.every=10", "pruning.percentile=20"]
CONFIG_IP = ["pruning.method=importance", "pruning.start_epoch=200", "pruning.every=25", "pruning.percentile=10"]


@dataclass(frozen=True)
class Row:
    """One line of the table: `config` with `overrides`, trained once per seed (`ranks` MPI ranks)."""

    name: str
    what: str
    config: str | tuple[str, ...]      # one file, or a base and its overlays (merged left to right)
    overrides: tuple[str, ...] = ()
    seeds: tuple[int, ...] = (0, 1, 2)
    paper: float | None = None          # the paper's accuracy [%] (best of 5 runs)
    paper_note: str = ""
    ranks: int = 1
    prefix_of: tuple[str, int] | None = None   # the first epochs of this (row, seed) are this row's run
    target: str = ""                    # key into check_target

    @property
    def configs(self) -> list[str]:
        return [self.config] if isinstance(self.config, str) else list(self.config)

    @property
    def pruned(self) -> bool:
        """Importance Pruning rows: their accuracy is the final, pruned model's (best epoch since the
        last pruning); before the first pruning they are the same run as the unpruned row."""
        return "-ip" in self.name


def _rows() -> list[Row]:
    fm = "configs/fashion_mnist.yaml"
    ip, wasap, wassp = ((fm, f"configs/fashion_mnist_{kind}.yaml") for kind in ("pruning", "wasap", "wassp"))
    rows = [
        Row("madelon-allrelu", "Madelon, All-ReLU (alpha 0.5)", "configs/madelon.yaml", paper=71.33),
        Row("madelon-relu", "Madelon, ReLU", "configs/madelon.yaml", ("model.activation=relu",), paper=68.50),
        Row("madelon-ip", "Madelon, All-ReLU + Importance Pruning (from 200, every 25, 10th pct.)",
            "configs/madelon.yaml", tuple(CONFIG_IP), paper=77.00, paper_note="2,737 of 19,000 weights",
            target="madelon-ip"),
        Row("madelon-ip-authors", "Madelon, All-ReLU + Importance Pruning (authors' schedule: from 200, every 10, 20th pct.)",
            "configs/madelon.yaml", (*CONFIG_IP[:1], *AUTHORS_IP), paper=77.00,
            paper_note="2,737 of 19,000 weights", target="madelon-ip"),
    ]
    table5 = {0.1: 90.87, 0.3: None, 0.5: 91.08, 0.6: 91.38, 0.75: 91.09, 0.9: 91.02}
    for alpha, paper in table5.items():
        rows.append(Row(f"alpha-{alpha:g}", f"FashionMNIST, All-ReLU alpha {alpha:g}, 100 epochs", fm,
                        (f"model.alpha={alpha:g}", "train.epochs=100"), seeds=(0,), paper=paper,
                        paper_note="500 epochs" if paper else "not in table 5 (0.25: 91.00)",
                        prefix_of=("fmnist-allrelu", 0) if alpha == 0.6 else None))
    rows += [
        Row("fmnist-allrelu", "FashionMNIST, All-ReLU (alpha 0.6)", fm, paper=91.38, target="fmnist-allrelu"),
        Row("fmnist-relu", "FashionMNIST, ReLU", fm, ("model.activation=relu",), paper=90.48),
        Row("fmnist-ip", "FashionMNIST, All-ReLU + Importance Pruning (config: from 200, every 25, 10th pct.)",
            ip, paper=90.12, paper_note="25,759 of 126,302 weights", target="fmnist-ip"),
        Row("fmnist-ip-authors", "FashionMNIST, All-ReLU + Importance Pruning (authors' schedule: from 200, every 10, 20th pct.)",
            ip, tuple(AUTHORS_IP), paper=90.12, paper_note="25,759 of 126,302 weights", target="fmnist-ip"),
        Row("fmnist-wasap", "FashionMNIST, WASAP-SGD, 1 server + 2 workers", wasap,
            seeds=(0,), ranks=3, paper=91.23, paper_note="5 workers", target="parallel"),
        Row("fmnist-wassp", "FashionMNIST, WASSP-SGD, 1 server + 2 workers", wassp,
            seeds=(0,), ranks=3, paper=90.52, paper_note="5 workers"),
        Row("fmnist-wasap-ip", "FashionMNIST, WASAP-SGD + Importance Pruning (from 200, every 25, 10th pct.)",
            wasap, tuple(CONFIG_IP), seeds=(0,), ranks=3, paper=90.15,
            paper_note="5 workers"),
    ]
    return rows


ROWS = {r.name: r for r in _rows()}


# ---------------------------------------------------------------- one run's record

def summarize_metrics(rows: list[dict]) -> dict:
    """What the table needs from one run's metrics.jsonl rows (accuracies in %, weights = nonzeros)."""
    best = max(rows, key=lambda r: r["test_accuracy"])
    start, end = sum(rows[0]["nnz"]), sum(rows[-1]["nnz"])
    small = [r for r in rows if sum(r["nnz"]) <= 0.2 * start]
    last_change = max((i for i in range(1, len(rows)) if rows[i].get("neurons") != rows[i - 1].get("neurons")),
                      default=0)
    final = rows[last_change:]
    seconds = sum(r["train_seconds"] + r.get("evolution_seconds", 0.0) for r in rows)
    return {
        "epochs": rows[-1]["epoch"],
        "best_test_accuracy": round(100 * best["test_accuracy"], 4),
        "best_epoch": best["epoch"],
        "last_test_accuracy": round(100 * rows[-1]["test_accuracy"], 4),
        "weights_start": start,
        "weights_end": end,
        "neurons_end": rows[-1].get("neurons"),
        # the best accuracy of the model while it had at most 20 % of its starting weights
        "best_test_accuracy_at_20pct_weights": round(100 * max(r["test_accuracy"] for r in small), 4) if small else None,
        # the model as it ends: the best epoch since the last neuron pruning (no pruning: every epoch)
        "best_test_accuracy_final_model": round(100 * max(r["test_accuracy"] for r in final), 4),
        "final_model_from_epoch": final[0]["epoch"],
        "train_minutes": round(sum(r["train_seconds"] + r.get("evolution_seconds", 0.0) + r.get("eval_seconds", 0.0)
                                   for r in rows) / 60, 2),
        "train_seconds_per_epoch": round(seconds / len(rows), 3),
    }


def read_metrics(path: Path) -> list[dict]:
    """The epochs of a metrics.jsonl; a run still writing may have left half a last line (ignored)."""
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return rows


def write_json(path: Path, data: dict) -> None:
    """Temporary file in the same folder, then rename (sparsenet.fileio): a reader never sees half a file."""
    from sparsenet.fileio import prepare_file, write_text

    write_text(prepare_file(path, "results file"), json.dumps(data, indent=1, sort_keys=True) + "\n", "results file")


class results_lock:
    """Exclusive lock on RESULTS.lock around a read-modify-write: runners may share one results file."""

    def __init__(self, path: Path):
        self.path = path.with_name(path.name + ".lock")

    def __enter__(self):
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fh = open(self.path, "a")
        fcntl.flock(self.fh, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        self.fh.close()   # releases the lock


def add_result(path: Path, key: str, entry: dict) -> dict:
    """Record one run (under the lock) and return the whole results file as written."""
    with results_lock(path):
        results = load_results(path)
        results["runs"][key] = entry
        write_json(path, results)
    return results


class BadResults(Exception):
    """A results file this script cannot read as its own: the message names the file and what is wrong."""


NUMBERS = ("best_test_accuracy", "last_test_accuracy", "weights_start", "weights_end", "train_minutes",
           "train_seconds_per_epoch")


def _entry_problem(key: str, entry) -> str:
    """What is wrong with one recorded run ('' if nothing), as the table and the figure read it."""
    if not isinstance(entry, dict):
        return f"run {key!r} is {type(entry).__name__}, not an object"
    wanted = [("row", str), ("seed", int), ("epochs", int)] + [(name, (int, float)) for name in NUMBERS]
    for name, kind in wanted:
        value = entry.get(name)
        if isinstance(value, bool) or not isinstance(value, kind):
            what = {str: "a string", int: "an integer"}.get(kind, "a number")
            return f"run {key!r} has {name} = {json.dumps(value)[:40]}, not {what}"
    return ""


def load_results(path: Path) -> dict:
    """The results file {"runs": {"row/seed": entry}} ({"runs": {}} if there is none); BadResults if it is damaged."""
    if not path.exists():
        return {"runs": {}}
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadResults(f"cannot read results file {path}: {getattr(exc, 'strerror', None) or exc}; "
                         f"fix or move it (nothing was run or written)") from None
    if not isinstance(data, dict) or not isinstance(data.setdefault("runs", {}), dict):
        what = "the file" if not isinstance(data, dict) else "its 'runs'"
        raise BadResults(f"results file {path}: {what} is not a JSON object of runs; fix or move it "
                         f"(nothing was run or written)")
    for key, entry in data["runs"].items():
        if problem := _entry_problem(key, entry):
            raise BadResults(f"results file {path}: {problem}; fix or move it (nothing was run or written)")
    return data


# ---------------------------------------------------------------- running

@dataclass
class Plan:
    epochs: int | None          # --quick: 10
    seeds_per_row: int | None   # --quick: 1
    extra: tuple[str, ...]      # --set, for every run
    threads: int
    nice: int
    runs_dir: Path
    results: Path
    figure: Path
    commit: bool
    timeout_s: float | None = None
    code: str = field(default="")


def row_seeds(row: Row, plan: Plan) -> tuple[int, ...]:
    return row.seeds[:plan.seeds_per_row] if plan.seeds_per_row else row.seeds


def run_overrides(row: Row, seed: int, plan: Plan) -> list[str]:
    sets = [*row.overrides, f"seed={seed}", f"threads={plan.threads}", "train.progress=false"]
    if plan.epochs is not None:
        sets.append(f"train.epochs={plan.epochs}")
    return sets + list(plan.extra)


def expected_epochs(row: Row, plan: Plan) -> int:
    """train.epochs as the run will see it: the last override that sets it, else the config's."""
    sets = [s for s in run_overrides(row, 0, plan) if s.startswith("train.epochs=")]
    if sets:
        return int(sets[-1].split("=", 1)[1])
    from sparsenet.config import load_config

    return load_config(row.configs).train.epochs


def command(row: Row, seed: int, plan: Plan) -> list[str]:
    out = plan.runs_dir / row.name / str(seed)
    cmd = [sys.executable, "-m", "sparsenet", "train", *row.configs, "--out", str(out), "--resume"]
    for s in run_overrides(row, seed, plan):
        cmd += ["--set", s]
    if row.ranks > 1:
        venv_mpiexec = Path(sys.executable).parent / "mpiexec"
        mpiexec = str(venv_mpiexec) if venv_mpiexec.exists() else (shutil.which("mpiexec") or "mpiexec")
        cmd = [mpiexec, "-n", str(row.ranks)] + cmd
    return cmd


def record(row: Row, seed: int, plan: Plan, metrics: Path, wall_s: float | None, cmd: list[str]) -> dict | None:
    """The run's entry if its metrics hold all epochs, else None."""
    if not metrics.exists():
        return None
    rows = read_metrics(metrics)
    want = expected_epochs(row, plan)
    if len(rows) < want:
        return None
    entry = summarize_metrics(rows[:want])
    entry.update({"row": row.name, "seed": seed, "command": " ".join(cmd), "ranks": row.ranks,
                  "metrics": str(metrics), "code": plan.code, "timings": "measured under load (shared 2-core machine)",
                  "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    if wall_s is not None:
        entry["wall_minutes_last_sitting"] = round(wall_s / 60, 2)
    return entry


def commit_results(plan: Plan, message: str) -> None:
    """git add + commit of just the results files (other staged changes stay out); never fatal."""
    paths = [str(p) for p in (plan.results, plan.figure) if p.exists()]
    for attempt in range(5):
        add = subprocess.run(["git", "add", "--", *paths], capture_output=True, text=True)
        done = add.returncode == 0 and subprocess.run(
            ["git", "commit", "-q", "-m", message, "--", *paths], capture_output=True, text=True).returncode == 0
        if done:
            return
        time.sleep(2 + 3 * attempt)   # another git command may hold the index lock
    print(f"reproduce: could not commit {', '.join(paths)} (left for later)", file=sys.stderr)


def run_all(rows: list[Row], plan: Plan, jobs: int) -> dict[str, int | None]:
    """Run every (row, seed) not yet recorded, at most `jobs` ranks' worth at once; record each when done.
    Returns the runs that did not finish: key -> their exit code (None: not started, stopped before)."""
    results = load_results(plan.results)
    unfinished: dict[str, int | None] = {}
    pending = []
    for row in rows:
        for seed in row_seeds(row, plan):
            key = f"{row.name}/{seed}"
            if key in results["runs"]:
                print(f"reproduce: {key} recorded, skipped", flush=True)
                continue
            pending.append((row, seed))
    running: dict[str, tuple[subprocess.Popen, Row, int, float, list[str]]] = {}

    def finish_one(key: str, code: int) -> None:
        proc, row, seed, t0, cmd = running.pop(key)
        metrics = plan.runs_dir / row.name / str(seed) / "metrics.jsonl"
        entry = record(row, seed, plan, metrics, time.perf_counter() - t0, cmd)
        if entry is None:
            unfinished[key] = code
            log = metrics.parent / "train.log"
            if code == 2:   # sparsenet's refusal (bad config, flags or data): rerunning changes nothing
                said = next((line for line in reversed(log.read_text(errors="replace").splitlines())
                             if line.startswith("sparsenet")), "") if log.exists() else ""
                print(f"reproduce: {key} was refused (exit 2): {said or 'see ' + str(log)}", flush=True)
                return
            print(f"reproduce: {key} ended (exit {code}) without all its epochs; rerun to continue it "
                  f"(log: {log})", flush=True)
            return
        results = add_result(plan.results, key, entry)
        print(f"reproduce: {key} done: best {entry['best_test_accuracy']:.2f} % (epoch {entry['best_epoch']}), "
              f"last {entry['last_test_accuracy']:.2f} %, weights {entry['weights_end']}", flush=True)
        report(rows_in_results(results), plan, quiet=True)
        if plan.commit:
            commit_results(plan, f"reproduce: {key} (best {entry['best_test_accuracy']:.2f} %)")

    stop = []
    previous = {s: signal.signal(s, lambda signum, frame: stop.append(signum)) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        while pending or running:
            if stop:   # pass the stop on: each run checkpoints at its epoch boundary and exits
                for proc, *_ in running.values():
                    if proc.poll() is None:
                        proc.send_signal(signal.SIGTERM)
                unfinished.update((f"{r.name}/{s}", None) for r, s in pending)
                pending.clear()
                stop.clear()
            for item in [p for p in pending if p[0].prefix_of and plan.epochs is None]:
                if prefix_record(*item, plan, results_path=plan.results):
                    pending.remove(item)
                    if plan.commit:
                        commit_results(plan, f"reproduce: {item[0].name}/{item[1]} (from {item[0].prefix_of[0]})")
            used = sum(r.ranks for _, r, *_ in running.values())
            deferred = []
            while pending and (not running or used + min(pending[0][0].ranks, jobs) <= jobs):
                row, seed = pending.pop(0)
                key = f"{row.name}/{seed}"
                if row.prefix_of and prefix_record(row, seed, plan, results_path=plan.results):
                    continue
                other = f"{row.prefix_of[0]}/{row.prefix_of[1]}" if row.prefix_of else None
                if other and plan.epochs is None and (
                        other in running or any(f"{r.name}/{s}" == other for r, s in pending + deferred)):
                    deferred.append((row, seed))   # taken from that run once it is done
                    continue
                out = plan.runs_dir / row.name / str(seed)
                out.mkdir(parents=True, exist_ok=True)
                cmd = command(row, seed, plan)
                print(f"reproduce: {key} starting: {' '.join(cmd)}", flush=True)
                log = open(out / "train.log", "ab")
                nice = plan.nice
                proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                        preexec_fn=(lambda: os.nice(nice)) if nice else None)
                log.close()
                running[key] = (proc, row, seed, time.perf_counter(), cmd)
                used += row.ranks
            pending[:0] = deferred
            for key in list(running):
                code = running[key][0].poll()
                if code is not None:
                    finish_one(key, code)
            time.sleep(0.2 if plan.epochs and plan.epochs <= 10 else 2)
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    return unfinished


def unfinished_exit(unfinished: dict[str, int | None]) -> int:
    """Say which runs did not finish and how to go on; 75 (EX_TEMPFAIL) if any stopped resumably or was not
    started because of a stop, else 1 (a run failed or was refused), 0 if every run finished."""
    from sparsenet.signals import EXIT_RESUMABLE

    stopped = [k for k, code in unfinished.items() if code == EXIT_RESUMABLE]
    waiting = [k for k, code in unfinished.items() if code is None]
    failed = [f"{k} (exit {code})" for k, code in unfinished.items() if code not in (None, EXIT_RESUMABLE)]
    if stopped:
        print(f"reproduce: stopped resumably (exit {EXIT_RESUMABLE}): {', '.join(stopped)}; rerun the same "
              f"command to resume them from their checkpoints", file=sys.stderr)
    if waiting:
        print(f"reproduce: not started because of the stop: {', '.join(waiting)}", file=sys.stderr)
    if failed:
        print(f"reproduce: did not finish: {', '.join(failed)} (see above)", file=sys.stderr)
    return EXIT_RESUMABLE if stopped or waiting else (1 if failed else 0)


def prefix_record(row: Row, seed: int, plan: Plan, results_path: Path) -> bool:
    """A row whose run is the first epochs of another row's run: record it from that run's metrics
    once they reach this row's epochs (True), else False (the row is trained itself)."""
    other_row, other_seed = row.prefix_of
    if other_row not in ROWS or (plan.epochs is not None):
        return False
    metrics = plan.runs_dir / other_row / str(other_seed) / "metrics.jsonl"
    entry = record(row, seed, plan, metrics, None, command(ROWS[other_row], other_seed, plan))
    if entry is None:
        return False
    entry["note"] = f"the first {entry['epochs']} epochs of {other_row}/{other_seed} (same config up to train.epochs)"
    add_result(results_path, f"{row.name}/{seed}", entry)
    print(f"reproduce: {row.name}/{seed} taken from {other_row}/{other_seed}", flush=True)
    return True


# ---------------------------------------------------------------- the table and the figure

def rows_in_results(results: dict) -> dict[str, list[dict]]:
    by_row: dict[str, list[dict]] = {}
    for entry in results["runs"].values():
        by_row.setdefault(entry["row"], []).append(entry)
    for entries in by_row.values():
        entries.sort(key=lambda e: e["seed"])
    return by_row


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def check_target(row: Row, by_row: dict[str, list[dict]]) -> str:
    """PASS / FAIL (by how much) against the issue's target for this row, '' if none or no runs."""
    runs = by_row.get(row.name, [])
    if not row.target or not runs:
        return ""
    n = f" ({len(runs)}/{len(row.seeds)} seeds)" if len(runs) < len(row.seeds) else ""
    best = [e["best_test_accuracy"] for e in runs]
    if row.target == "fmnist-allrelu":
        mean, top = statistics.fmean(best), max(best)
        ok = top >= 91.5 and mean >= 91.1
        return (f"{'PASS' if ok else 'FAIL'}: best {top:.2f} vs >= 91.5 ({top - 91.5:+.2f}), "
                f"mean {mean:.2f} vs >= 91.1 ({mean - 91.1:+.2f}){n}")
    final = [e.get("best_test_accuracy_final_model") for e in runs]
    if row.target == "fmnist-ip":
        share = max(e["weights_end"] / e["weights_start"] for e in runs)
        mean = statistics.fmean(final)
        ok = mean >= 90.5 and share <= 0.2
        return (f"{'PASS' if ok else 'FAIL'}: final model {mean:.2f} % vs >= 90.5 ({mean - 90.5:+.2f}) "
                f"with up to {100 * share:.1f} % of the weights vs <= 20 %{n}")
    if row.target == "madelon-ip":
        top = max(final)
        return f"{'PASS' if top >= 77 else 'FAIL'}: final model, best {top:.2f} vs >= 77 ({top - 77:+.2f}){n}"
    if row.target == "parallel":
        seq = {e["seed"]: e["best_test_accuracy"] for e in by_row.get("fmnist-allrelu", [])}
        pairs = [(e["best_test_accuracy"], seq[e["seed"]]) for e in runs if e["seed"] in seq]
        if not pairs:
            return "(needs fmnist-allrelu with the same seed)"
        gap = max(abs(a - b) for a, b in pairs)
        return f"{'PASS' if gap <= 0.3 else 'FAIL'}: {gap:.2f} points from sequential vs <= 0.3"
    return ""


def table(rows: list[Row], by_row: dict[str, list[dict]]) -> str:
    lines = ["| row | ours: best test accuracy (pruning rows: of the final model), mean ± std (best) | seeds | last epoch, mean | weights at the end | "
             "min/run (train + SET + eval), s/epoch (train + SET), under load | paper | target |",
             "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        runs = by_row.get(row.name, [])
        paper = f"{row.paper:.2f} %" if row.paper is not None else "—"
        if row.paper_note:
            paper += f" ({row.paper_note})"
        if not runs:
            lines.append(f"| {row.what} | not run yet | 0/{len(row.seeds)} | | | | {paper} | |")
            continue
        key = "best_test_accuracy_final_model" if row.pruned else "best_test_accuracy"
        accuracies = [e[key] for e in runs]
        mean, std = _mean_std(accuracies)
        top = max(accuracies)
        weights = statistics.fmean(e["weights_end"] for e in runs)
        share = weights / statistics.fmean(e["weights_start"] for e in runs)
        minutes = statistics.fmean(e["train_minutes"] for e in runs)
        per_epoch = statistics.fmean(e["train_seconds_per_epoch"] for e in runs)
        epochs = runs[0]["epochs"]
        last = statistics.fmean(e["last_test_accuracy"] for e in runs)
        lines.append(f"| {row.what} | **{mean:.2f} ± {std:.2f} %** ({top:.2f} %) | {len(runs)}/{len(row.seeds)} "
                     f"| {last:.2f} % | {weights:,.0f} ({100 * share:.0f} %) | {minutes:.1f}, {per_epoch:.2f} ({epochs} ep.) "
                     f"| {paper} | {check_target(row, by_row)} |")
    return "\n".join(lines)


def _curves(row: Row, by_row: dict[str, list[dict]], runs_dir: Path | None):
    """(seed, metrics rows, finished) of a row: recorded runs, then unrecorded ones still on disk."""
    recorded = {e["seed"]: e for e in by_row.get(row.name, [])}
    for entry in recorded.values():
        metrics = Path(entry["metrics"])
        if metrics.exists():
            yield entry["seed"], read_metrics(metrics)[:entry["epochs"]], True
    if runs_dir is None or row.prefix_of:
        return
    for seed in row.seeds:
        metrics = runs_dir / row.name / str(seed) / "metrics.jsonl"
        if seed not in recorded and metrics.exists():
            data = read_metrics(metrics)
            if data:
                yield seed, data, False


def figure(rows: list[Row], by_row: dict[str, list[dict]], path: Path, runs_dir: Path | None = None) -> Path | None:
    """Test accuracy per epoch of every recorded run (one colour per row; runs not finished yet
    dashed), FashionMNIST, Madelon and table 5 side by side, plus the weights of the pruned runs."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("reproduce: no matplotlib, no figure", file=sys.stderr)
        return None
    panels = {"FashionMNIST, 500 epochs": [r for r in rows if r.name.startswith("fmnist")],
              "Madelon, 500 epochs": [r for r in rows if r.name.startswith("madelon")],
              "FashionMNIST, All-ReLU alpha (table 5), 100 epochs": [r for r in rows if r.name.startswith("alpha")]}
    colour = {row.name: f"C{i % 10}" for members in panels.values() for i, row in enumerate(members)}
    fig, axes = plt.subplots(1, 4, figsize=(22, 5))
    for ax, (title, members) in zip(axes, panels.items()):
        for row in members:
            labelled = False
            for seed, data, done in _curves(row, by_row, runs_dir):
                label = None if labelled else (row.name if done else f"{row.name} (not finished)")
                ax.plot([r["epoch"] for r in data], [100 * r["test_accuracy"] for r in data], color=colour[row.name],
                        lw=0.8, alpha=0.8, ls="-" if done else "--", label=label)
                labelled = True
        ax.set(title=title, xlabel="epoch", ylabel="test accuracy [%]")
        if title.startswith("Fashion"):
            ax.set_ylim(85, 92.5)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="lower right")
    ax = axes[3]
    for row in (r for r in rows if r.pruned):
        labelled = False
        for seed, data, done in _curves(row, by_row, runs_dir):
            start = sum(data[0]["nnz"])
            ax.plot([r["epoch"] for r in data], [100 * sum(r["nnz"]) / start for r in data], color=colour[row.name],
                    lw=0.8, ls="-" if done else "--", label=None if labelled else row.name)
            labelled = True
    ax.set(title="Importance Pruning: weights left", xlabel="epoch", ylabel="% of the starting weights")
    ax.axhline(20, color="grey", ls=":", lw=0.8)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    fig.tight_layout()
    png = io.BytesIO()
    try:
        fig.savefig(png, format="png", dpi=90)
    finally:
        plt.close(fig)
    from sparsenet.fileio import prepare_file, write_bytes

    write_bytes(prepare_file(path, "figure"), png.getvalue(), "figure")
    return path


DOCS_START, DOCS_END = "<!-- reproduction table: start -->", "<!-- reproduction table: end -->"


def docs_parts(path: Path) -> tuple[str, str]:
    """(text before the start marker, text from the end marker on, without it) of `path`; else a one-line exit."""
    try:
        doc = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise SystemExit(f"reproduce: cannot read --docs {path}: {getattr(exc, 'strerror', None) or exc}") from None
    if DOCS_START not in doc or DOCS_END not in doc.split(DOCS_START, 1)[1]:
        raise SystemExit(f"reproduce: {path} has no lines '{DOCS_START}' and '{DOCS_END}' (in that order) "
                         f"to put the table between")
    head, rest = doc.split(DOCS_START, 1)
    return head, rest.split(DOCS_END, 1)[1]


def update_docs(path: Path, text: str) -> None:
    """Replace what stands between the two marker lines of `path` by `text` (temporary + rename)."""
    from sparsenet.fileio import write_text

    head, tail = docs_parts(path)
    write_text(path, f"{head}{DOCS_START}\n{text}\n{DOCS_END}{tail}", "--docs file")


def backfill(path: Path) -> None:
    """Records made by an older version of this script lack newer summary fields: recompute them
    from the run's metrics.jsonl where it is still on disk."""
    with results_lock(path):
        results = load_results(path)
        changed = False
        for entry in results["runs"].values():
            metrics = Path(entry.get("metrics", ""))
            if "best_test_accuracy_final_model" in entry or not metrics.is_file():
                continue
            rows = read_metrics(metrics)
            if len(rows) >= entry["epochs"]:
                entry.update(summarize_metrics(rows[:entry["epochs"]]))
                changed = True
        if changed:
            write_json(path, results)


def report(by_row: dict[str, list[dict]], plan: Plan, quiet: bool = False) -> str:
    rows = [r for r in ROWS.values()]
    text = table(rows, by_row)
    figure(rows, by_row, plan.figure, plan.runs_dir)
    if not quiet:
        print(text)
        print(f"\nfigure: {plan.figure}")
    return text


# ---------------------------------------------------------------- command line

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", help=f"comma-separated rows (default all): {', '.join(ROWS)}")
    ap.add_argument("--quick", action="store_true", help="10 epochs, 1 seed, own runs folder and results file")
    ap.add_argument("--report", action="store_true", help="only print the table and draw the figure")
    ap.add_argument("--jobs", type=int, default=1, help="ranks running at once (default 1; an MPI row waits for "
                                                          "enough free slots, or runs alone)")
    ap.add_argument("--threads", type=int, default=1, help="numba threads per run (default 1)")
    ap.add_argument("--nice", type=int, default=0, help="niceness added to each run (default 0)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every run (needs --results and --runs-dir of your own)")
    ap.add_argument("--runs-dir", help="default runs/reproduce (--quick: runs/reproduce-quick)")
    ap.add_argument("--results", help="default scripts/results/reproduction.json (--quick: reproduction_quick.json)")
    ap.add_argument("--figure", help="default scripts/results/reproduction_curves.png (--quick: ..._quick.png)")
    ap.add_argument("--commit", action="store_true", help="git-commit the results file and figure after each run")
    ap.add_argument("--docs", help="also write the table into this Markdown file, between the lines "
                                   f"'{DOCS_START}' and '{DOCS_END}'")
    args = ap.parse_args(argv)
    if args.jobs < 1 or args.threads < 0:
        ap.error("--jobs must be >= 1 and --threads >= 0")
    names = [n.strip() for n in args.rows.split(",")] if args.rows else list(ROWS)
    unknown = [n for n in names if n not in ROWS]
    if unknown:
        ap.error(f"unknown row(s) {', '.join(unknown)}; rows are: {', '.join(ROWS)}")
    suffix = "_quick" if args.quick else ""
    here = Path(__file__).resolve().parent
    stamp = here.parent / "COMMIT"   # a frozen copy of the code that runs long jobs names its commit here
    code = stamp.read_text().strip() if stamp.exists() else subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=here).stdout.strip()
    plan = Plan(epochs=10 if args.quick else None, seeds_per_row=1 if args.quick else None, extra=tuple(args.set),
                threads=args.threads, nice=args.nice,
                runs_dir=Path(args.runs_dir or f"runs/reproduce{'-quick' if args.quick else ''}"),
                results=Path(args.results or f"scripts/results/reproduction{suffix}.json"),
                figure=Path(args.figure or f"scripts/results/reproduction_curves{suffix}.png"),
                commit=args.commit, code=code)
    if args.set and not args.report:
        shared = {Path(f"{p}{s}").resolve() for p, s in (("scripts/results/reproduction", ".json"),
                                                          ("scripts/results/reproduction_quick", ".json"),
                                                          ("runs/reproduce", ""), ("runs/reproduce-quick", ""))}
        if not args.results or not args.runs_dir or {plan.results.resolve(), plan.runs_dir.resolve()} & shared:
            ap.error("--set changes every run, so its runs cannot be recorded under the row/seed keys of the "
                     "shared results (scripts/results/reproduction*.json) nor resume from runs/reproduce*: "
                     "give --results and --runs-dir of your own")
    load_results(plan.results)   # a damaged results file fails now, before any run or write
    if args.docs:
        docs_parts(Path(args.docs))   # a --docs file that cannot take the table fails now, not after the runs
    unfinished = {} if args.report else run_all([ROWS[n] for n in names], plan, args.jobs)
    if plan.results.exists():
        backfill(plan.results)
    text = report(rows_in_results(load_results(plan.results)), plan)
    if args.docs:
        update_docs(Path(args.docs), text)
    return unfinished_exit(unfinished)


if __name__ == "__main__":
    from sparsenet.errors import SparsenetError

    try:
        sys.exit(main())
    except SparsenetError as exc:   # e.g. a results file or figure that cannot be written: one line
        sys.exit(f"reproduce: {exc}")
    except BadResults as exc:
        print(f"reproduce: {exc}", file=sys.stderr)
        sys.exit(2)
