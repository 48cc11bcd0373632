"""How many of a checkpoint's strongest input features are the synthetic file's useful columns.

    python scripts/feature_recall.py CHECKPOINT SYNTHETIC.h5 [--top 20]

Ranks the inputs as `sparsenet features` does (sum of |outgoing weights|) and counts how many of
the top N are among the file's `useful_columns` (the informative and redundant columns that
`sparsenet data synth` records). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import h5py


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("synthetic")
    parser.add_argument("--top", type=int, default=20)
    args = parser.parse_args()
    with h5py.File(args.synthetic, "r") as fh:
        useful = [int(i) for i in fh["useful_columns"][:]]
    out = subprocess.run([sys.executable, "-m", "sparsenet", "features", args.checkpoint, "--top", str(args.top),
                          "--json"], check=True, capture_output=True, text=True).stdout
    top = [f["feature"] for f in json.loads(out)["top"]]
    found = [i for i in top if i in set(useful)]
    print(json.dumps({"checkpoint": args.checkpoint, "top": args.top, "useful_in_top": len(found),
                      "useful_columns": len(useful), "ranks_of_useful": [top.index(i) + 1 for i in found]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
