"""`sparsenet train` in which some workers get no shared-memory channel, as if on another node.

    mpiexec -n 3 python tests/mpi/partial_channels.py --no-channel 2 train CONFIG [--set ...]

The server then takes those workers' gradients as MPI bundles while the others use channels.
"""

from __future__ import annotations

import argparse
import sys

from sparsenet.cli import main
from sparsenet.parallel.transport import Transport


def without_channels(ranks: set[int]) -> None:
    """Make Transport.open_channel refuse the given peer ranks."""
    open_channel = Transport.open_channel

    def patched(self, peer, sizes):
        return None if peer in ranks else open_channel(self, peer, sizes)

    Transport.open_channel = patched


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-channel", type=int, action="append", default=[], metavar="RANK")
    args, rest = parser.parse_known_args()
    without_channels(set(args.no_channel))
    sys.exit(main(rest))
