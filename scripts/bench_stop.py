"""Seconds from a stop signal to the exit of every rank of a parallel run, signalled part-way through an epoch.

    python scripts/bench_stop.py --ranks 3 --out /tmp/stop -- parallel.algorithm=wassp parallel.phase1_epochs=0 ...

Starts `mpiexec -n RANKS python -m sparsenet train CONFIG --out OUT --set ITEM ...` (each ITEM after `--`
becomes one --set; OUT must not hold a run yet), waits for epoch `--after`'s row,
sleeps half that epoch's train_seconds, sends SIGUSR1 to mpiexec (which forwards it to every rank, as srun
does) and prints: the epoch's length, seconds from the signal to the "stopped" log line (checkpoint
written) and to mpiexec's exit, its exit code and where each worker stood in the checkpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sparsenet.checkpoint import load_checkpoint  # noqa: E402
from tests.mpi.conftest import mpi_env, mpiexec_command  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=3)
    parser.add_argument("--config", default="configs/fashion_mnist.yaml")
    parser.add_argument("--out", required=True)
    parser.add_argument("--after", type=int, default=1, help="signal half an epoch after this epoch's row")
    parser.add_argument("sets", nargs="*", help="KEY=VALUE config overrides (each becomes a --set), after --")
    args = parser.parse_args()
    flags = [item for item in args.sets if item.startswith("-")]
    if flags:
        parser.error(f"give the overrides after -- as KEY=VALUE, without --set: got {' '.join(flags)}")
    out, rows = Path(args.out), Path(args.out) / "metrics.jsonl"
    command = mpiexec_command(args.ranks) + [sys.executable, "-m", "sparsenet", "train", args.config, "--out", str(out)]
    for item in args.sets:
        command += ["--set", item]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=mpi_env(), start_new_session=True)
    seen: dict[str, float] = {}

    def read() -> None:
        for line in proc.stdout:
            if "received: stopped" in line:
                seen["stopped"] = time.monotonic()
            sys.stdout.write(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    while not (rows.exists() and len(rows.read_text().splitlines()) >= args.after):
        if proc.poll() is not None:
            raise SystemExit(f"the run ended ({proc.returncode}) before epoch {args.after}")
        time.sleep(0.05)
    epoch = json.loads(rows.read_text().splitlines()[args.after - 1])
    time.sleep(epoch["train_seconds"] / 2)
    os.kill(proc.pid, signal.SIGUSR1)
    sent = time.monotonic()
    code = proc.wait()
    ended = time.monotonic()
    reader.join(5)
    saved = load_checkpoint(out / "checkpoint.h5")
    part = saved.parallel_partial_epoch or {}
    where = [None if w is None else "done" if "report" in w else w["position"]["step"] if "position" in w
             else w["start"] for w in part.get("workers", [])]  # phase 2: batches done; phase 1: samples of the pass
    print(f"epoch {args.after} trained in {epoch['train_seconds']:.2f} s; SIGUSR1 -> checkpoint written "
          f"{seen.get('stopped', float('nan')) - sent:.2f} s, -> mpiexec exited {ended - sent:.2f} s with {code}; "
          f"stopped in epoch {saved.epoch + 1} (phase {saved.phase}), workers at {where}")
    print("reproduce: python " + shlex.join(sys.argv) + " (with a fresh --out)")


if __name__ == "__main__":
    main()
