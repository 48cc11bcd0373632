"""How many of a checkpoint's strongest input features are the synthetic file's useful columns.

    python scripts/feature_recall.py CHECKPOINT SYNTHETIC.h5 [--top 20]

Ranks the inputs as `sparsenet features` does (sum of |outgoing weights|) and counts how many of
the top N are among the file's `useful_columns` (the informative and redundant columns that
`sparsenet data synth` records). Prints one JSON line, with the command that reproduces it.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys

import h5py


def useful_columns(parser: argparse.ArgumentParser, path: str) -> list[int]:
    """The file's `useful_columns`, or a one-line exit saying why they cannot be read."""
    try:
        with h5py.File(path, "r") as fh:
            if "useful_columns" not in fh:
                parser.error(f"{path} has no 'useful_columns' dataset: give a file `sparsenet data synth` wrote")
            return [int(i) for i in fh["useful_columns"][:]]
    except OSError as exc:   # missing, unreadable or not HDF5
        parser.error(f"cannot read the synthetic file {path}: {' '.join(str(exc).split())}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("synthetic")
    parser.add_argument("--top", type=int, default=20)
    args = parser.parse_args(argv)
    if args.top < 1:
        parser.error(f"--top must be >= 1, got {args.top}")
    useful = useful_columns(parser, args.synthetic)
    done = subprocess.run([sys.executable, "-m", "sparsenet", "features", args.checkpoint, "--top", str(args.top),
                           "--json"], capture_output=True, text=True)
    if done.returncode != 0:   # sparsenet's own one-line error (a missing or bad checkpoint)
        parser.exit(2, done.stderr.strip().splitlines()[-1] + "\n" if done.stderr.strip() else
                    f"{parser.prog}: error: sparsenet features exited {done.returncode}\n")
    top = [f["feature"] for f in json.loads(done.stdout)["top"]]
    found = [i for i in top if i in set(useful)]
    print(json.dumps({"checkpoint": args.checkpoint, "top": args.top, "useful_in_top": len(found),
                      "useful_columns": len(useful), "ranks_of_useful": [top.index(i) + 1 for i in found],
                      "command": shlex.join(["python", "scripts/feature_recall.py", *sys.argv[1:]])}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
