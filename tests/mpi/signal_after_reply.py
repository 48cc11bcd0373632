"""`sparsenet train` whose parameter server sends itself SIGUSR1 right after its N-th model reply to a
worker, as a scheduler's signal may land: after a WASSP round's update, while its replies go out.

    mpiexec -n 3 python tests/mpi/signal_after_reply.py --after N train CONFIG [--set ...]

(debug.stop_at_update signals when a gradient is taken, before the round's update.)
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

from sparsenet.cli import main
from sparsenet.parallel.server import ParameterServer


def signal_after_reply(n: int) -> None:
    """Make ParameterServer.send_model send SIGUSR1 to this process after its n-th call."""
    send_model = ParameterServer.send_model
    calls = 0

    def counted(self, *args, **kwargs):
        nonlocal calls
        send_model(self, *args, **kwargs)
        calls += 1
        if calls == n:
            os.kill(os.getpid(), signal.SIGUSR1)

    ParameterServer.send_model = counted


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--after", type=int, required=True, metavar="N")
    args, rest = parser.parse_known_args()
    signal_after_reply(args.after)
    sys.exit(main(rest))
