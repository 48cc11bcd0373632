"""`sparsenet train` in which some workers get no shared-memory channel, as if on another node, or
none does because the model is too large for the shared window.

    mpiexec -n 3 python tests/mpi/partial_channels.py --no-channel 2 train CONFIG [--set ...]
    mpiexec -n 3 python tests/mpi/partial_channels.py --shared-max-bytes 1024 train CONFIG [--set ...]

The server then takes those workers' gradients as MPI bundles while the others use channels.
"""

from __future__ import annotations

import argparse
import sys

from sparsenet.cli import main
from sparsenet.parallel import transport
from sparsenet.parallel.mpi_workers import MPIWorkers


def without_channels(ranks: set[int]) -> None:
    """Make MPIWorkers give no channel to the given worker ranks."""
    channel_peers = MPIWorkers.channel_peers
    MPIWorkers.channel_peers = lambda self: [k for k in channel_peers(self) if k not in ranks]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-channel", type=int, action="append", default=[], metavar="RANK")
    parser.add_argument("--shared-max-bytes", type=int, metavar="BYTES")
    args, rest = parser.parse_known_args()
    without_channels(set(args.no_channel))
    if args.shared_max_bytes is not None:
        transport.SHARED_MAX_BYTES = args.shared_max_bytes
    sys.exit(main(rest))
