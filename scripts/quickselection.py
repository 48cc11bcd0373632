"""QuickSelection (Atashgahi et al. 2022) with `model.task: autoencoder`: unsupervised feature selection.

    python scripts/quickselection.py [--epochs 10] [--draws 5] [--skip-fmnist] [--skip-synthetic] [--large]

1. FashionMNIST: trains the sparse denoising autoencoder of configs/quickselection_fashion_mnist.yaml
   (784-1000-784), takes the 50 strongest pixels from `sparsenet features CKPT --top 50 --json` and
   scores two scikit-learn classifiers trained on those 50 pixels only (ExtraTrees, 50 trees, and
   logistic regression), against the same classifiers on 50 pixels drawn at random (mean over --draws
   draws) and on all 784.
2. Synthetic (the Madelon generator, as tests/unit/test_feature_selection.py): 2000 samples, 2000
   columns of which 10 are useful (5 informative + 5 linear combinations of them, so correlated; the
   other 1990 independent noise); trains the autoencoder without labels and counts the useful columns
   among the top 10/20/50, for the QuickSelection setting and the issue-13 recipe, over 3 seeds.
   --large: the same on the 65536-column file (20 useful) of configs/scale_1m.yaml.

Prints one line per figure and merges them into scripts/results/quickselection.json (--results; with its command).
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

from sparsenet.checkpoint import load_checkpoint
from sparsenet.config import config_from_yaml, load_config
from sparsenet.data import load_dataset
from sparsenet.data.synthfile import default_path, synth_command, write_synthetic
from sparsenet.fileio import write_text
from sparsenet.train import run

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "scripts" / "results" / "quickselection.json"
# configs/scale_1m.yaml's file, where `sparsenet data synth` (its defaults) writes it: the user's cache
LARGE_DATA = ["data.name=synthetic_hdf5", "data.samples=10000", "data.features=65536", "data.informative=5",
              "data.redundant=15", "data.seed=0"]
# The synthetic runs: QuickSelection's own setting (noise 0.2, init he_uniform) and the issue-13 recipe
# (first layer from 0, regrowth at 0, weights sized for each neuron's fan-in) with stronger noise (1.0),
# which makes reconstructing a column from its correlated neighbours pay more than copying it.
AUTOENCODER = ["model.task=autoencoder", "model.output=linear", "model.hidden=[200]", "model.epsilon=13",
               "evolution.zeta=0.2", "evolution.evolve_output=true", "train.lr=0.01", "train.batch_size=100",
               "train.weight_decay=0.00001", "train.progress=false"]
SETTINGS = {"quickselection": ["model.input_noise=0.2", "model.dropout=0.2"],
            "recipe": ["model.input_noise=1.0", "model.dropout=0", "model.init=he_uniform_sparse",
                       "model.input_init=zero", "evolution.regrow=zero"]}


def top_features(checkpoint: Path, k: int) -> list[int]:
    """The k strongest inputs, as `sparsenet features` ranks them."""
    out = subprocess.run([sys.executable, "-m", "sparsenet", "features", str(checkpoint), "--top", str(k), "--json"],
                         check=True, capture_output=True, text=True).stdout
    return [f["feature"] for f in json.loads(out)["top"]]


def classifier_scores(x_train, y_train, x_test, y_test, columns) -> dict[str, float]:
    """Test accuracy of ExtraTrees (50 trees) and logistic regression trained on `columns` only."""
    from sklearn.ensemble import ExtraTreesClassifier
    from sklearn.linear_model import LogisticRegression

    a, b = np.ascontiguousarray(x_train[:, columns]), np.ascontiguousarray(x_test[:, columns])
    trees = ExtraTreesClassifier(n_estimators=50, random_state=0, n_jobs=1).fit(a, y_train)
    logistic = LogisticRegression(max_iter=1000).fit(a, y_train)
    return {"extra_trees": float(trees.score(b, y_test)), "logistic": float(logistic.score(b, y_test))}


def fashion_mnist(args, work: Path) -> dict:
    """Train (or take --checkpoint) and score the classifiers on its top pixels, on the data it was trained for."""
    config = "configs/quickselection_fashion_mnist.yaml"
    cfg = load_config(ROOT / config, [f"train.epochs={args.epochs}", "train.progress=false"])
    t0 = time.perf_counter()
    checkpoint = Path(args.checkpoint) if args.checkpoint else work / "fmnist" / "checkpoint.h5"
    if not args.checkpoint:
        run(cfg, work / "fmnist")
    seconds = time.perf_counter() - t0
    saved = load_checkpoint(checkpoint)
    history = saved.history
    if args.checkpoint:   # its features index its own data (and preprocessing), not the config file's
        config = f"the config stored in {checkpoint}"
        cfg = config_from_yaml(saved.config_yaml, config)
    top = top_features(checkpoint, args.k)
    data = load_dataset(cfg.data, cfg.seed)
    rows = np.sort(np.random.default_rng(0).choice(data.x_train.shape[0], args.classifier_train, replace=False))
    xs = (data.x_train[rows], data.y_train[rows], data.x_test, data.y_test)
    selected = classifier_scores(*xs, top)
    rng = np.random.default_rng(0)
    draws = [classifier_scores(*xs, np.sort(rng.choice(data.n_features, args.k, replace=False)).tolist())
             for _ in range(args.draws)]
    random = {m: {"mean": float(np.mean([d[m] for d in draws])), "std": float(np.std([d[m] for d in draws])),
                  "draws": [d[m] for d in draws]} for m in selected}
    every = classifier_scores(*xs, list(range(data.n_features))) if args.all_pixels else None
    for m in selected:
        print(f"FashionMNIST {m}: top {args.k} QuickSelection pixels {100 * selected[m]:.2f} %, "
              f"{args.k} random pixels {100 * random[m]['mean']:.2f} +- {100 * random[m]['std']:.2f} % "
              f"({args.draws} draws)" + (f", all {data.n_features} {100 * every[m]:.2f} %" if every else ""),
              flush=True)
    return {"config": config, "data": cfg.data.name, "epochs": len(history), "k": args.k,
            "checkpoint": str(checkpoint), "seconds_under_load": round(seconds, 1),
            "test_loss": [round(r["test_loss"], 3) for r in history], "nnz": history[-1]["nnz"], "top": top,
            "selected": selected, "random": random, "all_pixels": every,
            "classifiers": f"scikit-learn ExtraTreesClassifier(n_estimators=50, random_state=0), "
                           f"LogisticRegression(max_iter=1000); standardised pixels; trained on {args.classifier_train} "
                           f"training samples drawn with seed 0, scored on the {data.x_test.shape[0]} test samples"}


def recall(checkpoint: Path, useful: set[int], ks=(10, 20, 50)) -> dict[str, int]:
    top = top_features(checkpoint, max(ks))
    return {f"top{k}": sum(i in useful for i in top[:k]) for k in ks}


def synthetic(args, work: Path) -> dict:
    path = work / "synth2000.h5"
    data = ["data.name=synthetic_hdf5", "data.samples=2000", "data.features=2000", "data.informative=5",
            "data.redundant=5", f"data.path={path}"]
    write_synthetic(load_config(None, data).data, 0)
    with h5py.File(path) as fh:
        useful = set(fh["useful_columns"][:].tolist())
    results = {}
    for name, extra in SETTINGS.items():
        rows = []
        for seed in range(3):
            cfg = load_config(None, [*data, *AUTOENCODER, *extra, f"train.epochs={args.synthetic_epochs}",
                                     f"seed={seed}"])
            folder = work / f"synth_{name}_{seed}"
            state = run(cfg, folder)
            rows.append({"seed": seed, **recall(folder / "checkpoint.h5", useful),
                         "test_loss": state.history[-1]["test_loss"]})
            shutil.rmtree(folder)
        results[name] = {"overrides": [*AUTOENCODER, *extra, f"train.epochs={args.synthetic_epochs}"], "runs": rows}
        print(f"synthetic 2000 columns, 10 useful, {name}: useful in top 10/20/50 per seed "
              + ", ".join(f"{r['top10']}/{r['top20']}/{r['top50']}" for r in rows)
              + " (chance 0.05/0.1/0.25)", flush=True)
    return {"file": "2000 samples x 2000 features, 5 informative + 5 redundant (Madelon generator, seed 0)",
            "useful": sorted(useful), **results}


def large_file() -> Path:
    """The 65536-column file of configs/scale_1m.yaml in this user's cache ($SPARSENET_DATA, ~/.cache/sparsenet)."""
    return default_path(load_config(None, LARGE_DATA).data, 0)


def large(args, work: Path) -> dict:
    path = large_file()
    data = [*LARGE_DATA, f"data.path={path}"]
    with h5py.File(path) as fh:
        useful = set(fh["useful_columns"][:].tolist())
    overrides = [*AUTOENCODER, *SETTINGS["recipe"], "model.hidden=[1000]", f"train.epochs={args.large_epochs}",
                 f"train.lr={args.large_lr}"]  # lr 0.01 diverges in epoch 1 here (65536 outputs, measured)
    cfg = load_config(None, [*data, *overrides, "seed=0"])
    t0 = time.perf_counter()
    state = run(cfg, work / "large")
    row = {**recall(work / "large" / "checkpoint.h5", useful, (20, 100, 1000)), "seconds_under_load":
           round(time.perf_counter() - t0, 1), "test_loss": [r["test_loss"] for r in state.history],
           "peak_rss_mb": state.history[-1]["peak_rss_mb"], "nnz": state.history[-1]["nnz"]}
    print(f"synthetic 65536 columns, 20 useful, recipe, 65536-1000-65536, {args.large_epochs} epochs: useful in "
          f"top 20/100/1000 {row['top20']}/{row['top100']}/{row['top1000']} (chance 0.006/0.03/0.3); "
          f"peak RSS {row['peak_rss_mb']:.0f} MiB", flush=True)
    return {"file": str(path), "epochs": args.large_epochs, "overrides": overrides, **row}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10, help="FashionMNIST autoencoder epochs (QS_10)")
    parser.add_argument("--checkpoint", help="use this trained FashionMNIST autoencoder instead of training one "
                        "(`sparsenet train configs/quickselection_fashion_mnist.yaml`); the data are its stored config's")
    parser.add_argument("--name", default="fashion_mnist", help="key of the FashionMNIST figures in the results")
    parser.add_argument("--classifier-train", type=int, default=10000,
                        help="training samples of the classifiers on the selected pixels (of 60000)")
    parser.add_argument("--k", type=int, default=50, help="pixels to select")
    parser.add_argument("--draws", type=int, default=5, help="random pixel sets to average")
    parser.add_argument("--all-pixels", action="store_true", help="also score the classifiers on all 784 pixels")
    parser.add_argument("--synthetic-epochs", type=int, default=30)
    parser.add_argument("--large", action="store_true", help="also the 65536-column file (2.6 GB)")
    parser.add_argument("--large-epochs", type=int, default=3)
    parser.add_argument("--large-lr", type=float, default=0.001)
    parser.add_argument("--skip-fmnist", action="store_true")
    parser.add_argument("--skip-synthetic", action="store_true")
    parser.add_argument("--results", type=Path, default=RESULTS,
                        help="JSON file the figures are merged into (default scripts/results/quickselection.json)")
    args = parser.parse_args(argv)
    if args.skip_fmnist and args.skip_synthetic and not args.large:
        parser.error("--skip-fmnist and --skip-synthetic without --large leave nothing to run")
    if args.checkpoint and not Path(args.checkpoint).is_file():
        parser.error(f"--checkpoint {args.checkpoint} is not a file")
    if args.large and not large_file().is_file():
        parser.error(f"--large needs {large_file()}; write it first with: "
                     f"{synth_command(load_config(None, LARGE_DATA).data, 0)}")
    command = shlex.join(["python", "scripts/quickselection.py", *sys.argv[1:]])
    print(command, flush=True)
    results = {}
    with tempfile.TemporaryDirectory(prefix="quickselection-") as tmp:
        work = Path(tmp)
        if not args.skip_fmnist:
            results[args.name] = {"command": command, **fashion_mnist(args, work)}
        if not args.skip_synthetic:
            results["synthetic_2000"] = {"command": command, **synthetic(args, work)}
        if args.large:
            results["synthetic_65536"] = {"command": command, **large(args, work)}
    results["machine"] = "2-core Xeon shared with other jobs: seconds measured under load"
    earlier = json.loads(args.results.read_text()) if args.results.exists() else {}  # sections not redone stay
    write_text(args.results, json.dumps({**earlier, **results}, indent=1) + "\n", "results file")
    print(f"wrote {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
