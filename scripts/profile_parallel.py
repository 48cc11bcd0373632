"""Where a parallel run's time goes: wall and thread-CPU milliseconds per call of the hot functions, per rank.

    HYDRA_LAUNCHER=fork .venv/bin/mpiexec -n 3 .venv/bin/python scripts/profile_parallel.py \\
        configs/fashion_mnist_wasap.yaml --set train.epochs=3 --set threads=1 --set train.progress=false

Runs `sparsenet train` with timing wrappers around the worker's gradient, the transport's send,
receive, encode, decode and wait, and the server's update and reply; at exit every rank prints one
table to stderr. Wall minus CPU is time the rank was descheduled or asleep. A diagnostic, not a
benchmark: the wrappers add a few microseconds per call.
"""

from __future__ import annotations

import atexit
import collections
import sys
import time

from sparsenet.cli import main
from sparsenet.parallel import channel, mpi_workers, server, transport, worker

WALL: dict[str, float] = collections.defaultdict(float)
CPU: dict[str, float] = collections.defaultdict(float)
CALLS: collections.Counter = collections.Counter()

HOT = [(worker, "compute_gradients", "worker gradient"), (worker, "adopt_values", "worker adopt values"),
       (channel.Lane, "take", "channel take (both sides)"), (channel.Lane, "post", "channel post (both sides)"),
       (mpi_workers.MPIWorkers, "take_gradient", "server receive"),
       (transport.Transport, "isend_bundle", "isend_bundle"), (transport.Transport, "recv_bundle", "recv_bundle"),
       (transport.Transport, "_probe_message", "  of which waiting"), (transport, "decode", "  of which decode"),
       (transport, "encode", "encode (in sends)"), (transport.PendingSend, "wait", "send completion"),
       (server.ParameterServer, "apply", "server update"), (server.ParameterServer, "send_model", "server reply"),
       (server.ParameterServer, "phase1_epoch", "server epoch")]


def timed(owner, name: str, label: str) -> None:
    """Replace owner.name with a wrapper that adds its wall and thread-CPU time under `label`."""
    inner = getattr(owner, name)

    def wrapper(*args, **kwargs):
        wall, cpu = time.perf_counter(), time.thread_time()
        try:
            return inner(*args, **kwargs)
        finally:
            WALL[label] += time.perf_counter() - wall
            CPU[label] += time.thread_time() - cpu
            CALLS[label] += 1

    setattr(owner, name, wrapper)


def report(start: float) -> None:
    from mpi4py import MPI

    lines = [f"rank {MPI.COMM_WORLD.Get_rank()}: {time.perf_counter() - start:.1f} s wall, "
             f"{time.process_time():.1f} s CPU",
             f"  {'function':<22} {'calls':>7} {'wall ms/call':>13} {'CPU ms/call':>12}"]
    for _, _, label in HOT:
        if CALLS[label]:
            n = CALLS[label]
            lines.append(f"  {label:<22} {n:>7} {1e3 * WALL[label] / n:>13.3f} {1e3 * CPU[label] / n:>12.3f}")
    sys.stderr.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    for owner, name, label in HOT:
        timed(owner, name, label)
    atexit.register(report, time.perf_counter())
    sys.exit(main(["train", *sys.argv[1:]]))
