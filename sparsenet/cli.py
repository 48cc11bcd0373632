"""Command line: sparsenet train | plan | evaluate | predict | export | info | prune | features | data synth | plot. Bad input exits 2 with a one-line error."""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path

from .errors import SparsenetError
from .signals import EXIT_RESUMABLE, install_stop_handlers, restore_handlers

EXIT_BAD_INPUT = 2


def _cmd_train(args: argparse.Namespace) -> int:
    previous = install_stop_handlers()  # first: a stop during start-up (imports, MPI, data) is acted on, not lost
    try:
        return _train(args)
    finally:
        restore_handlers(previous)


def _train(args: argparse.Namespace) -> int:
    from .config import load_config
    from .launch import launched_world_size
    from .train import run

    cfg = load_config(args.config, args.set)
    out = _output_folder(args, launched_world_size() > 1)
    fresh = not (args.resume or args.overwrite)  # checked again once the run holds the folder (loop.run_folder)
    if launched_world_size() > 1:
        import importlib.util

        if cfg.model.task == "autoencoder":
            raise SparsenetError("model.task autoencoder trains sequentially only; run sparsenet train without "
                              "mpiexec/srun (WASAP/WASSP train classifiers)")

        if importlib.util.find_spec("mpi4py") is None:  # look, do not import: transport.py owns mpi4py
            raise SparsenetError(f"launched on {launched_world_size()} MPI ranks, but mpi4py is not installed: "
                                 f"pip install 'sparsenet[mpi]' (sequential training needs no MPI)")
        from .parallel.run import run_parallel  # rank 0 checks the memory plan for every rank

        state = run_parallel(cfg, out, resume=args.resume, overwrite=args.overwrite, fresh=fresh)
        if isinstance(state, int):  # a worker's exit code: rank 0 reports
            return state
    else:
        from .memory import check_memory
        from .metrics import log

        check_memory(cfg, 1, say=log)
        state = run(cfg, out, resume=args.resume, overwrite=args.overwrite, fresh=fresh)
    last = state.history[-1] if state.history else {}
    scores = {"test_loss": last.get("test_loss")}  # an autoencoder's: the reconstruction loss, no accuracy
    if cfg.model.task != "autoencoder":
        scores = {"test_accuracy": last.get("test_accuracy"), **scores}
    print(json.dumps({"out": str(out), "epoch": state.epoch, **scores, "stopped_by": state.stopped_by,
                      "best_epoch": last.get("best_epoch"), "selection_metric": last.get("selection_metric"),
                      "early_stopped": state.early_stopped}))
    return EXIT_RESUMABLE if state.stopped_by else 0


def _output_folder(args: argparse.Namespace, parallel: bool) -> Path:
    """--out, checked before data and memory are looked at: an existing non-empty folder only with
    --resume or --overwrite (the run removes the old run's files once it holds the folder: loop.run_folder);
    without --out a new runs/<config>-<n>."""
    from .fileio import check_folder, check_unused, fresh_folder

    if args.out is None:
        if args.resume or args.overwrite:
            raise SparsenetError(f"--{'resume' if args.resume else 'overwrite'} needs --out FOLDER, the run to "
                                 f"{'continue' if args.resume else 'replace'}")
        stem = Path(args.config[-1]).stem
        if parallel:  # every rank would claim its own numbered folder
            raise SparsenetError(f"a parallel run needs --out FOLDER (e.g. --out runs/{stem}); one name for every rank")
        return fresh_folder("runs", stem)
    out = Path(args.out)
    if not os.path.lexists(out):
        return out
    check_folder(out)
    if args.resume:
        return out
    if not args.overwrite:
        check_unused(out)
    return out


def _cmd_plan(args: argparse.Namespace) -> int:
    from .config import load_config
    from .memory import format_plan, plan_json, plan_memory, refusal

    cfg = load_config(args.config, args.set)
    plan = plan_memory(cfg, args.ranks)
    if args.json:
        print(plan_json(plan))
    else:
        print(format_plan(plan))
        if not plan.fits:
            print(refusal(plan))
    return 0 if plan.fits else 1


def _load_model_and_config(path: str, overrides: list[str]):
    from .checkpoint import load_checkpoint
    from .config import config_from_yaml, override_config
    from .train import model_from_checkpoint

    data = load_checkpoint(path)
    cfg = override_config(config_from_yaml(data.config_yaml, f"the config stored in {path}"), overrides)
    return data, model_from_checkpoint(data), cfg


def _cmd_evaluate(args: argparse.Namespace) -> int:
    import numpy as np

    from .data import load_dataset
    from .errors import DataError
    from .memory import check_evaluation_memory
    from .model import training_workspace_bytes
    from .state import check_model_fits_data, n_outputs, set_task
    from .train import set_threads

    data, model, cfg = _load_model_and_config(args.checkpoint, args.set)
    set_threads(cfg.threads)
    check_evaluation_memory(cfg, model.sizes, model.nnz, say=lambda text: None)
    dataset = load_dataset(cfg.data, cfg.seed)
    check_model_fits_data(model.sizes, dataset.n_features, n_outputs(cfg, dataset.n_features, dataset.n_classes),
                          f"the model in {args.checkpoint}", exact=False,
                          data=f"the data '{_shown(str(cfg.data.path or cfg.data.name))}'",
                          hint=f"; evaluate reads the data its stored config names: score another test set with "
                               f"--set data.name=... --set data.path=FILE, or rows of a file with `sparsenet predict "
                               f"{args.checkpoint} --data FILE`")
    set_task(model, cfg)
    from .checkpoint import RAW_STATISTICS_SINCE

    # the statistics this data would store (format 2 stored an image set's for pixels / 255)
    mean, std = dataset.raw_statistics() if data.format_version >= RAW_STATISTICS_SINCE else (dataset.mean, dataset.std)
    if data.mean is not None and (mean is None or not (np.array_equal(data.mean, mean)
                                                       and np.array_equal(data.std, std))):
        raise DataError(f"evaluate standardises the data '{cfg.data.path or cfg.data.name}' with its own training "
                        f"part's statistics, which are not those the model in {args.checkpoint} was trained with; "
                        f"score other data with `sparsenet predict {args.checkpoint} --data FILE` (a label column "
                        f"gives its accuracy), which applies the stored ones")
    y_test = dataset.y_test
    if model.task != "autoencoder":  # the data's class indices -> the model's outputs, by label
        from .inputs import Preprocessing, label_indices

        known = Preprocessing(classes=data.classes).classes_or_range(model.sizes[-1])
        labels = dataset.classes if dataset.classes is not None else np.arange(dataset.n_classes)
        try:
            y_test = label_indices(labels, known)[y_test]
        except DataError:
            unknown = [str(c) for c in labels if not np.any(known == c)]
            raise DataError(f"the data '{cfg.data.path or cfg.data.name}' has labels the model in {args.checkpoint} "
                            f"does not know: {', '.join(unknown[:10])}; its outputs stand for "
                            f"{', '.join(map(str, known[:20]))}") from None
    loss, accuracy = model.evaluate(dataset.x_test, y_test, cfg.train.eval_batch_size,
                                    max_bytes=training_workspace_bytes(model.sizes, cfg.train.batch_size))
    scores = {"test_loss": loss} if model.task == "autoencoder" else {"test_accuracy": accuracy, "test_loss": loss}
    stopped = {"stopped_in_epoch": data.epoch + 1} if _stopped_in(data) else {}
    print(_json_line({"checkpoint": str(args.checkpoint), "epoch": data.epoch, **stopped, **scores,
                      "test_samples": int(dataset.x_test.shape[0])}))
    return 0


def _stopped_in(data) -> str | None:
    """Where a checkpoint written by a stop part-way through epoch `epoch + 1` stood when its weights are from
    there, not from the end of `epoch`, e.g. 'after batch 12 of 35'; else None."""
    if data.partial_epoch is not None:
        return f"after batch {data.partial_epoch['step']} of {data.partial_epoch['n_steps']}"
    partial = data.parallel_partial_epoch
    if partial is not None and data.phase == 1:
        return "in phase 1 of a parallel run"
    removed = sum(partial["neurons_removed"]) if partial is not None else 0
    if removed:  # phase 2: the last average (or phase 1's model), less the neurons pruned before the stopped epoch
        return f"in phase 2 of a parallel run, after pruning {removed} neurons of epoch {data.epoch}'s model"
    return None


def _cmd_predict(args: argparse.Namespace) -> int:
    import csv
    import io

    import numpy as np

    from .api import load, probabilities
    from .data.features import read_features
    from .data.prepare import label_array
    from .fileio import prepare_file, write_text
    from .inputs import label_indices
    from .train import set_threads

    model = load(args.checkpoint)
    if model.config.model.task == "autoencoder":
        raise SparsenetError(f"{args.checkpoint} holds an autoencoder (model.task autoencoder), which has no classes "
                             f"to predict; rank its inputs with sparsenet features {args.checkpoint}")
    set_threads(model.config.threads)
    x, labels = read_features(args.data, model.n_features_in_, model.config.data.label_column)
    z = model.logits(x)  # checked against the model and standardised as at training time
    classes = model.classes_
    pred = classes[np.argmax(z, axis=1)]
    proba = probabilities(model.output, z) if args.proba else None
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")  # quotes labels holding commas or quotes
    writer.writerow(["prediction", *([f"p_{c}" for c in classes] if args.proba else [])])
    for i in range(z.shape[0]):
        writer.writerow([pred[i], *([f"{p:.9g}" for p in proba[i]] if args.proba else [])])
    text = buffer.getvalue()
    summary = {"checkpoint": str(args.checkpoint), "data": str(args.data), "rows": int(z.shape[0])}
    if labels is not None:
        truth = label_indices(label_array(labels, "labels", f"'{args.data}'"), classes, where=f"labels in {args.data}")
        if truth.shape[0] != z.shape[0]:
            raise SparsenetError(f"'{args.data}' has {truth.shape[0]} labels for {z.shape[0]} samples")
        summary["accuracy"] = float(np.mean(np.argmax(z, axis=1) == truth))
    if args.out is None:
        sys.stdout.write(text)
        return 0
    write_text(prepare_file(args.out, "predictions file"), text, "predictions file")
    print(json.dumps({**summary, "out": str(args.out)}))
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from .api import load
    from .export import export_npz, export_torch

    model = load(args.checkpoint)
    out = args.out or str(Path(args.checkpoint).with_suffix(".npz" if args.format == "npz" else ".pt"))
    if Path(out).resolve() == Path(args.checkpoint).resolve():
        raise SparsenetError(f"export would overwrite the checkpoint '{args.checkpoint}' itself; give --out")
    (export_npz if args.format == "npz" else export_torch)(model, out)
    print(json.dumps({"checkpoint": str(args.checkpoint), "format": args.format, "out": out,
                      "layers": len(model.network.layers), "nnz": model.network.nnz}))
    return 0


def _json_line(obj: dict) -> str:
    """obj as strict JSON: a NaN or infinite top-level number becomes null and a warning on stderr says so."""
    import math

    bad = [k for k, v in obj.items() if isinstance(v, float) and not math.isfinite(v)]
    for key in bad:
        print(f"sparsenet: warning: {key} is {obj[key]}, which JSON cannot hold; printed as null", file=sys.stderr)
        obj[key] = None
    return json.dumps(obj, allow_nan=False)


def _cmd_info(args: argparse.Namespace) -> int:
    from .checkpoint import load_checkpoint
    from .train import model_from_checkpoint

    data = load_checkpoint(args.checkpoint)
    model = model_from_checkpoint(data)
    stopped = _stopped_in(data)
    info = {"checkpoint": str(args.checkpoint), "epoch": data.epoch,
            "stopped_in_epoch": None if stopped is None else data.epoch + 1, "layers": len(model.layers),
            "neurons": model.sizes, "nnz": model.nnz, "density": [round(l.density, 6) for l in model.layers],
            "parameters": model.n_parameters, "hidden_slopes": model.slopes, "output": model.output}
    if args.json:
        print(json.dumps(info))
        return 0
    print(f"checkpoint  {info['checkpoint']}")
    print(f"epoch       {data.epoch}" + ("" if stopped is None else f", then stopped in epoch {data.epoch + 1} "
                                         f"{stopped} (these weights; --resume finishes the epoch)"))
    print(f"neurons     {'-'.join(map(str, model.sizes))} ({sum(model.sizes)} in all)")
    print(f"parameters  {model.n_parameters} (weights {sum(model.nnz)} + biases {sum(model.sizes[1:])})")
    print(f"{'layer':>5} {'n_in':>10} {'n_out':>10} {'nnz':>12} {'density':>10} {'slope':>7}")
    for l, layer in enumerate(model.layers):
        slope = f"{model.slopes[l]:+.3g}" if l < len(model.slopes) else model.output
        print(f"{l:>5} {layer.n_in:>10} {layer.n_out:>10} {layer.nnz:>12} {layer.density:>10.5f} {slope:>7}")
    return 0


def _cmd_prune(args: argparse.Namespace) -> int:
    from .checkpoint import load_checkpoint, save_checkpoint
    from .config import config_from_yaml
    from .fileio import prepare_file
    from .memory import PRUNE_PEAK_BYTES_PER_CONNECTION
    from .pruning import select_by_importance, select_npset
    from .train import apply_neuron_removal, state_from_checkpoint, state_to_checkpoint

    if Path(args.out).resolve() == Path(args.checkpoint).resolve():
        raise SparsenetError(f"--out {args.out} would overwrite the checkpoint being pruned; choose another file")
    data = load_checkpoint(args.checkpoint, extra_bytes=lambda sizes, nnz: max(nnz) * PRUNE_PEAK_BYTES_PER_CONNECTION)
    cfg = config_from_yaml(data.config_yaml, f"the config stored in {args.checkpoint}")
    state = state_from_checkpoint(data, cfg)
    model = state.model
    before = {"neurons": model.sizes, "weights": sum(model.nnz), "parameters": model.n_parameters}
    if args.fraction is not None:
        keep = select_npset(model, args.fraction)
    else:
        keep = select_by_importance(model, args.percentile)
    removal = apply_neuron_removal(state, keep)
    pruned = state_to_checkpoint(state, cfg)
    pruned.version = data.version  # phase-2 replicas keep the old shapes: a pruned parallel run restarts phase 2
    save_checkpoint(prepare_file(args.out, "checkpoint"), pruned)
    print(json.dumps({"checkpoint": str(args.out), "epoch": data.epoch, "removed": removal.removed,
                      "neurons_before": before["neurons"], "neurons": model.sizes,
                      "weights_before": before["weights"], "weights": sum(model.nnz),
                      "parameters_before": before["parameters"], "parameters": model.n_parameters}))
    return 0


def _cmd_features(args: argparse.Namespace) -> int:
    import numpy as np

    from .checkpoint import load_checkpoint
    from .pruning import input_strength
    from .train import model_from_checkpoint

    model = model_from_checkpoint(load_checkpoint(args.checkpoint))
    first = model.layers[0]
    strength = input_strength(first)
    degree = np.bincount(first.rows, minlength=first.n_in)
    order = np.lexsort((np.arange(first.n_in), -strength))  # strongest first, ties by index
    top = order[:args.top] if args.top else order
    if args.out:
        from .fileio import prepare_file, write_text

        rows = "".join(f"{rank},{i},{strength[i]:.9g},{degree[i]}\n" for rank, i in enumerate(order, start=1))
        write_text(prepare_file(args.out, "feature file"), "rank,feature,strength,connections\n" + rows, "feature file")
    if args.image:
        from .plot import plot_feature_strength

        plot_feature_strength(strength, _image_shape(args.image, first.n_in), args.image_out)
    if args.json:
        print(json.dumps({"checkpoint": str(args.checkpoint), "features": first.n_in,
                          "top": [{"feature": int(i), "strength": float(strength[i]), "connections": int(degree[i])}
                                  for i in top]}))
        return 0
    print(f"{first.n_in} input features, {int((degree > 0).sum())} connected; strength = sum of |outgoing weights|")
    print(f"{'rank':>6} {'feature':>8} {'strength':>12} {'connections':>11}")
    for rank, i in enumerate(top, start=1):
        print(f"{rank:>6} {i:>8} {strength[i]:>12.5f} {degree[i]:>11}")
    if args.out:
        print(f"wrote all {first.n_in} features, ranked, to {args.out}")
    if args.image:
        print(f"wrote {args.image_out}")
    return 0


def _image_shape(text: str, n_features: int) -> tuple[int, ...]:
    try:
        shape = tuple(int(part) for part in text.lower().split("x"))
    except ValueError:
        shape = ()
    if len(shape) not in (2, 3) or any(d < 1 for d in shape):
        raise SparsenetError(f"--image must look like HEIGHTxWIDTH or CHANNELSxHEIGHTxWIDTH, got {_shown(text)!r}")
    size = 1
    for d in shape:
        size *= d
    if size != n_features:
        raise SparsenetError(f"--image {_shown(text)} holds {size} pixels but the model has {n_features} input features")
    return shape


_SYNTH_FLAGS = {"samples": "--samples", "features": "--features", "informative": "--informative",
                "redundant": "--redundant", "classes": "--classes", "test_fraction": "--test-fraction"}


def _cmd_data_synth(args: argparse.Namespace) -> int:
    from .config import config_from_dict
    from .data.synthfile import write_synthetic
    from .errors import ConfigError
    from .metrics import peak_rss_mb

    raw = {"name": "synthetic_hdf5", "path": args.out, "seed": args.seed,
           **{key: getattr(args, key) for key in _SYNTH_FLAGS}}
    try:  # the same rules as the config keys data.samples, ... (validated in one place)
        data = config_from_dict({"data": raw}).data
    except ConfigError as e:
        message = str(e)
        for key, flag in _SYNTH_FLAGS.items():
            message = message.replace(f"config key 'data.{key}'", flag).replace(f"data.{key}", flag)
        raise ConfigError(message.replace("config key 'data.seed'", "--seed")) from None
    info = write_synthetic(data, args.seed)
    print(json.dumps({"path": str(info.path), "x_train": [info.n_train, info.n_features],
                      "x_test": [info.n_test, info.n_features], "seconds": round(info.seconds, 2),
                      "bytes": info.path.stat().st_size, "peak_rss_mb": round(peak_rss_mb(), 1)}))
    return 0


def _cmd_config_show(args: argparse.Namespace) -> int:
    from .config import config_to_dict, describe, load_config

    cfg = load_config(args.config, args.set)
    rows = describe(cfg)
    if args.json:
        print(json.dumps({"config": config_to_dict(cfg),
                          "keys": [{"key": k, "value": v, "default": d, "meaning": m} for k, v, d, m in rows]}))
        return 0
    shown = [(k, _yaml_value(v), _yaml_value(d), m) for k, v, d, m in rows]
    wk, wv = max(len(r[0]) for r in shown), min(max(len(r[1]) for r in shown), 24)
    print(f"{'key':<{wk}}  {'value':<{wv}}  {'default':<{wv}}  meaning")
    for key, value, default, meaning in shown:
        mark = "*" if value != default else " "
        print(f"{key:<{wk}} {mark}{value:<{wv}}  {default:<{wv}}  {meaning}")
    print("* differs from the default")
    return 0


def _yaml_value(value) -> str:
    """A config value as YAML writes it (null, true, [1000, 1000])."""
    import yaml

    return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("\n...").strip()


def _cmd_plot(args: argparse.Namespace) -> int:
    from .plot import plot_learning_curves

    path = plot_learning_curves(args.metrics, args.out, args.label or None)
    print(f"wrote {path}")
    return 0


def _shown(text: str, limit: int = 80) -> str:
    """A command-line value for an error message, cut to `limit` characters."""
    return text if len(text) <= limit else text[:limit] + "..."


def _percentile(text: str) -> float:
    value = _number(text, "percentile")
    if not 0 < value < 100:
        raise argparse.ArgumentTypeError(f"percentile must be in (0, 100), got {_shown(text)}")
    return value


def _fraction(text: str) -> float:
    value = _number(text, "fraction")
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"fraction must be in (0, 1), got {_shown(text)}")
    return value


def _whole_number(minimum: int):
    """argparse type: an int >= minimum, with a message that says what was given."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {minimum}, got {_shown(text)!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {minimum}, got {_shown(text)}")
        return value
    return parse


def _number(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what} must be a number, got {_shown(text)!r}") from None
    if value != value:
        raise argparse.ArgumentTypeError(f"{what} must be a number, got {_shown(text)!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="sparsenet", description="Truly sparse MLPs trained with SET on CPUs.")
    parser.add_argument("--version", action="version", version=f"sparsenet {__version__}")
    talk = argparse.ArgumentParser(add_help=False)  # every command: how much it logs
    talk.add_argument("-q", "--quiet", action="count", default=0,
                      help="log less: -q warnings and errors only (no epoch lines, no progress bar), -qq errors")
    talk.add_argument("-v", "--verbose", action="count", default=0, help="log more (debug lines)")
    sub = _Subparsers(parser.add_subparsers(dest="command", required=True), talk)
    train = sub.add_parser("train", help="train a model from YAML config files")
    train.add_argument("config", nargs="+", help="YAML config file(s), merged left to right (base.yaml overlay.yaml)")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config key; VALUE is parsed as YAML (repeatable)")
    train.add_argument("--out", help="output folder (default: a new runs/<last config name>-<n>)")
    train.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.h5 if it exists")
    train.add_argument("--overwrite", action="store_true", help="train into a non-empty OUT, replacing its run")
    train.set_defaults(func=_cmd_train)
    plan = sub.add_parser("plan", help="peak memory a config needs, against what is available (exit 1: does not fit)")
    plan.add_argument("config", nargs="+", help="YAML config file(s), merged left to right")
    plan.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="override a config key, e.g. memory_limit_gb=16 (repeatable)")
    plan.add_argument("--ranks", type=_whole_number(1), default=1,
                      help="MPI ranks on this node: 1 = sequential, N = 1 server + N-1 workers (default 1)")
    plan.add_argument("--json", action="store_true", help="print one JSON object")
    plan.set_defaults(func=_cmd_plan)
    evaluate = sub.add_parser("evaluate", help="test accuracy and loss of a checkpoint, as one JSON line")
    evaluate.add_argument("checkpoint")
    evaluate.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                          help="override the checkpoint's config, e.g. data.path=...")
    evaluate.set_defaults(func=_cmd_evaluate)
    predict = sub.add_parser("predict", help="score every row of a data file with a checkpoint, preprocessed as "
                                             "at training time (CSV: prediction[, p_<class>...])")
    predict.add_argument("checkpoint")
    predict.add_argument("--data", required=True, help=".npz / .h5 (array x or x_test; labels y or y_test "
                         "optional), scipy save_npz matrix, or .csv (feature columns, optionally the label column)")
    predict.add_argument("--proba", action="store_true", help="add one probability column per class")
    predict.add_argument("--out", help="CSV file to write (default: standard output); prints a JSON summary, "
                         "with the accuracy when the file has labels")
    predict.set_defaults(func=_cmd_predict)
    export = sub.add_parser("export", help="write a checkpoint's model as per-layer CSR arrays (npz, scipy) "
                                           "or a torch state_dict of sparse CSR tensors")
    export.add_argument("checkpoint")
    export.add_argument("--format", choices=("npz", "torch"), required=True,
                        help="npz: numpy + scipy arrays; torch: torch.save of a state_dict (needs PyTorch)")
    export.add_argument("--out", help="file to write (default: the checkpoint's name with .npz / .pt)")
    export.set_defaults(func=_cmd_export)
    info = sub.add_parser("info", help="layers, neurons, nnz and epoch of a checkpoint")
    info.add_argument("checkpoint")
    info.add_argument("--json", action="store_true", help="print one JSON line")
    info.set_defaults(func=_cmd_info)
    prune = sub.add_parser("prune", help="remove unimportant hidden neurons of a trained checkpoint (one shot)")
    prune.add_argument("checkpoint")
    how = prune.add_mutually_exclusive_group(required=True)
    how.add_argument("--percentile", type=_percentile,
                     help="Importance Pruning: remove hidden neurons below this importance percentile of their layer")
    how.add_argument("--fraction", type=_fraction,
                     help="NPSET: remove this fraction of each hidden layer's neurons with the fewest connections")
    prune.add_argument("--out", required=True, help="checkpoint file to write (evaluate and info accept it)")
    prune.set_defaults(func=_cmd_prune)
    features = sub.add_parser("features", help="rank input features by strength (sum of |outgoing weights|)")
    features.add_argument("checkpoint")
    features.add_argument("--top", type=_whole_number(0), default=20, help="how many to print (0 = all; default 20)")
    features.add_argument("--out", help="CSV file for every feature, ranked")
    features.add_argument("--json", action="store_true", help="print one JSON line")
    features.add_argument("--image", metavar="[Cx]HxW", help="also draw the strengths as an image of this shape (28x28, 3x32x32)")
    features.add_argument("--image-out", default="feature_strength.png", help="PNG for --image")
    features.set_defaults(func=_cmd_features)
    data = sub.add_parser("data", help="dataset tools").add_subparsers(dest="data_command", required=True)
    synth = _Subparsers(data, talk).add_parser("synth", help="write the paper's big Madelon-like dataset to HDF5 (float32, row chunks)")
    synth.add_argument("--samples", type=int, default=10000, help="samples in all (default 10000)")
    synth.add_argument("--features", type=int, default=65536, help="features per sample (default 65536)")
    synth.add_argument("--informative", type=int, default=5, help="informative features (default 5)")
    synth.add_argument("--redundant", type=int, default=15, help="linear combinations of them (default 15)")
    synth.add_argument("--classes", type=int, default=2, help="classes (default 2)")
    synth.add_argument("--test-fraction", type=float, default=0.3, help="test share (default 0.3)")
    synth.add_argument("--seed", type=int, default=0, help="generation seed (default 0)")
    synth.add_argument("--out", help="HDF5 file (default: $SPARSENET_DATA/synthetic/madelon_<params>.h5, without "
                       "SPARSENET_DATA ~/.cache/sparsenet/synthetic/..., where training looks)")
    synth.set_defaults(func=_cmd_data_synth)
    config = sub.add_parser("config", help="config tools").add_subparsers(dest="config_command", required=True)
    show = _Subparsers(config, talk).add_parser("show", help="every key of a config: its value, default and meaning")
    show.add_argument("config", nargs="*", help="YAML config file(s), merged left to right (none: the defaults)")
    show.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    show.add_argument("--json", action="store_true", help="print one JSON object")
    show.set_defaults(func=_cmd_config_show)
    plot = sub.add_parser("plot", help="plot learning curves of one or more metrics.jsonl files")
    plot.add_argument("metrics", nargs="+", help="metrics.jsonl files or run folders (their metrics.jsonl)")
    plot.add_argument("--out", default="learning_curve.png", help="image file to write (default learning_curve.png; "
                      "format from the suffix)")
    plot.add_argument("--label", action="append", default=[], help="legend label per file (repeatable)")
    plot.set_defaults(func=_cmd_plot)
    return parser


class _Subparsers:
    """add_parser with the shared -q/-v options (parents) on every command."""

    def __init__(self, action, parent: argparse.ArgumentParser):
        self.action, self.parent = action, parent

    def add_parser(self, name: str, **kwargs) -> argparse.ArgumentParser:
        return self.action.add_parser(name, parents=[self.parent], **kwargs)


def main(argv: list[str] | None = None) -> int:
    import logging

    from .logs import configure, restore

    args = build_parser().parse_args(argv)
    level = logging.INFO + 10 * (getattr(args, "quiet", 0) - getattr(args, "verbose", 0))
    previous = configure(min(max(level, logging.DEBUG), logging.ERROR))
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _warning_line
            return _run(args)
    finally:
        restore(previous)


def _warning_line(message, category, filename, lineno, file=None, line=None) -> None:
    """A Python warning on the command line: one line on stderr, as the CLI's own warnings."""
    print(f"sparsenet: warning: {message}", file=sys.stderr)


def _run(args: argparse.Namespace) -> int:
    try:
        code = args.func(args)
        sys.stdout.flush()  # here, where a closed pipe is caught, not at exit
        return code
    except SparsenetError as exc:
        print(f"sparsenet: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except MemoryError as exc:
        detail = f" ({' '.join(str(exc).split())[:120]})" if str(exc) else ""
        print(f"sparsenet: error: out of memory{detail}; `sparsenet plan` shows what a config needs; "
              f"use smaller data (data.max_train), a smaller model or a machine with more memory", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("sparsenet: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # standard output closed early (sparsenet ... | head): stop quietly, as cat does
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing left to flush at exit
        except (OSError, ValueError):
            pass
        return 141  # 128 + SIGPIPE, what the shell reports for a tool its pipe's reader left


if __name__ == "__main__":
    sys.exit(main())
