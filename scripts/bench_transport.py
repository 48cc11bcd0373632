"""Cost of one WASAP update's messages: a FashionMNIST-sized gradient in, the weights back out.

    make setup && .venv/bin/python scripts/bench_transport.py

Starts `mpiexec -n 2` twice per round: plain MPI bundles, and a channel (what phase 1 uses with
`parallel.shared_memory`: the worker's gradient and the server's weights are written in place in
an MPI shared window, posted without a message), alternating them for --rounds rounds so machine
noise hits both alike. Rank 1 plays a worker (send
its gradient, receive the weights and keep them as its model until the next reply arrives, as
workers do), rank 0 the server (receive, touch every array, reply; with a channel it copies the
weights into it, as its momentum step writes them there).
Nobody computes, so the figures are the transport's own: round trips per second and CPU
milliseconds per round trip on each side. Target: the channel at most 25 % of plain MPI's CPU per
round trip (both sides together). Then the CPU a rank burns while it waits WAIT_SECONDS for a
message: in MPI's own blocking MPI_Recv, and in the transport's polling wait.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CPU_TARGET = {"channel": 0.25}
WAIT_SECONDS = 2.0
# nnz per layer of 784-1000-1000-1000-10 at epsilon 20, then the biases
SIZES = (62_720, 40_000, 40_000, 5_000, 1_000, 1_000, 1_000, 10)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--trips", type=int, default=500, help="round trips per run (after 50 unmeasured)")
    p.add_argument("--check", action="store_true", help="exit 1 if the target is missed")
    p.add_argument("--rank-main", nargs=2, metavar=("MODE", "TRIPS"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


def rank_main(mode: str, trips: int) -> None:
    """One run under mpiexec -n 2: rank 0 prints a JSON list with both ranks' figures."""
    import numpy as np

    from sparsenet.parallel.channel import in_window, shape
    from sparsenet.parallel.transport import Transport

    t = Transport()
    if mode in ("channel", "wait"):
        t.enable_shared_memory()
    if mode == "wait":
        wait_main(t)
        return
    rng = np.random.default_rng(0)
    grads = [rng.standard_normal(n).astype(np.float32) for n in SIZES]
    values = [g.copy() for g in grads]
    sizes = np.array(SIZES, dtype=np.int64)
    channel = None
    if mode == "channel":  # in a shared window the server allocates, as in training
        place = {**shape(SIZES), "offset": 0}
        channel = in_window(t.shared_window(place["nbytes"] if t.rank == 0 else 0), place, t.sync)
        if t.rank == 0:
            channel.clear()
        t.barrier()
    adopted: list = []  # the worker's model: the arrays of the last reply
    for measured in (False, True):
        t.barrier()
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(trips if measured else 50):
            if t.rank == 1:
                if channel is not None:  # the gradient kernel writes here; nothing to copy
                    channel.gradients.arrays(SIZES)[0][-1] = grads[0][-1]
                    channel.gradients.post((1, 128, 0.5, 3), sizes)
                    if t.recv_bundle(source=0, tag=2, ready=channel.replies.ready) is not None:
                        raise SystemExit("rank 1: a bundle instead of a channel reply")
                    adopted[:] = channel.replies.take()[1]  # kept as the model, as mpi_workers.adopt_values does
                    continue
                meta = {"version": 1, "samples": 128, "loss": 0.5, "correct": 3}
                pending = t.isend_bundle(0, 1, meta, grads)
                reply = t.recv_bundle(source=0, tag=2)
                adopted[:] = reply.arrays  # kept as the model, as mpi_workers.adopt_values does; the previous reply is let go
                del reply
                pending.wait()
            elif channel is not None:
                if t.recv_bundle(source=1, tag=1, ready=channel.gradients.ready) is not None:
                    raise SystemExit("rank 0: a bundle instead of a channel gradient")
                checksum = sum(float(a[-1]) for a in channel.gradients.take()[1])
                for out, new in zip(channel.replies.arrays(SIZES), values):
                    np.copyto(out, new)
                channel.replies.post((1, int(checksum > 0)), SIZES)
            else:
                gradient = t.recv_bundle(source=1, tag=1)
                checksum = sum(float(a[-1]) for a in gradient.arrays)
                del gradient
                meta = {"kind": "values", "version": 1, "check": checksum}
                t.isend_bundle(1, 2, meta, values).wait()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    rows = t.comm.gather({"rank": t.rank, "trips_per_second": trips / wall, "cpu_ms": 1e3 * cpu / trips})
    if t.rank == 0:
        print(json.dumps(rows), flush=True)


def wait_main(t) -> None:
    """Rank 0 waits WAIT_SECONDS for rank 1's message two ways; prints its CPU share of each wait."""
    import numpy as np

    share = {}
    for how in ("MPI_Recv", "polling"):
        t.barrier()
        if t.rank == 1:
            time.sleep(WAIT_SECONDS)
            t.comm.Send(np.zeros(1, np.uint8), 0, 4) if how == "MPI_Recv" else t.send_bundle(0, 4, {})
            continue
        wall, cpu = time.perf_counter(), time.process_time()
        t.comm.Recv(np.zeros(1, np.uint8), 1, 4) if how == "MPI_Recv" else t.recv_bundle(source=1, tag=4)
        share[how] = (time.process_time() - cpu) / (time.perf_counter() - wall)
    if t.rank == 0:
        print(json.dumps(share), flush=True)


def run(mode: str, trips: int) -> dict[int, dict]:
    local = Path(sys.executable).parent / "mpiexec"
    cmd = [str(local) if local.exists() else "mpiexec", "-n", "2", sys.executable, __file__,
           "--rank-main", mode, str(trips)]
    proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "HYDRA_LAUNCHER": "fork"},
                          capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise SystemExit(f"{shlex.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    rows = next(json.loads(line) for line in proc.stdout.splitlines() if line.startswith(("[", "{")))
    return rows if mode == "wait" else {row["rank"]: row for row in rows}


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.rank_main:
        rank_main(args.rank_main[0], int(args.rank_main[1]))
        return 0
    results: dict[str, list] = {"mpi": [], "channel": []}
    for r in range(args.rounds):
        for mode in results:
            results[mode].append(run(mode, args.trips))
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(
            f"{m} {results[m][-1][0]['trips_per_second']:.0f} trips/s" for m in results), flush=True)
    nbytes = 4 * sum(SIZES)
    print(f"one round trip: {nbytes / 1e6:.2f} MB gradient in, {nbytes / 1e6:.2f} MB weights out "
          f"(FashionMNIST 784-1000-1000-1000-10); medians of {args.rounds} rounds")
    print(f"{'transport':<10} {'trips/s':>8} {'server CPU ms':>14} {'worker CPU ms':>14} {'both':>6}")
    both = {}
    for mode, runs in results.items():
        trips = statistics.median(run_[0]["trips_per_second"] for run_ in runs)
        server = statistics.median(run_[0]["cpu_ms"] for run_ in runs)
        worker = statistics.median(run_[1]["cpu_ms"] for run_ in runs)
        both[mode] = server + worker
        print(f"{mode:<10} {trips:>8.0f} {server:>14.3f} {worker:>14.3f} {both[mode]:>6.3f}")
    ok = True
    for mode, target in CPU_TARGET.items():
        ratio = both[mode] / both["mpi"]
        ok = ok and ratio <= target
        print(f"target {mode} CPU per round trip <= {target:.0%} of MPI's: {ratio:.0%} "
              f"{'PASS' if ratio <= target else 'FAIL'}")
    share = run("wait", 0)
    print(f"CPU share of a rank waiting {WAIT_SECONDS:.0f} s for a message: " +
          ", ".join(f"{how} {100 * value:.1f} %" for how, value in share.items()))
    print(f"machine: {os.cpu_count()} cores | reproduce: cd {ROOT} && {shlex.join([sys.executable, *sys.argv])}")
    return 1 if args.check and not ok else 0


if __name__ == "__main__":
    sys.exit(main())
