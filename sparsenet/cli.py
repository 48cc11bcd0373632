"""Command line: sparsenet train | evaluate | info | plot. Bad input exits 2 with a one-line error."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import SparsenetError
from .signals import EXIT_RESUMABLE

EXIT_BAD_INPUT = 2


def _cmd_train(args: argparse.Namespace) -> int:
    from .config import load_config
    from .train import run

    from .parallel.run import launched_world_size

    cfg = load_config(args.config, args.set)
    out = Path(args.out) if args.out else Path("runs") / Path(args.config).stem
    if launched_world_size() > 1:
        from .parallel.run import run_parallel

        state = run_parallel(cfg, out, resume=args.resume)
        if state is None:  # a worker: rank 0 reports
            return 0
    else:
        state = run(cfg, out, resume=args.resume)
    last = state.history[-1] if state.history else {}
    print(json.dumps({"out": str(out), "epoch": state.epoch, "test_accuracy": last.get("test_accuracy"),
                      "test_loss": last.get("test_loss"), "stopped_by": state.stopped_by}))
    return EXIT_RESUMABLE if state.stopped_by else 0


def _load_model_and_config(path: str, overrides: list[str]):
    from .checkpoint import load_checkpoint
    from .config import config_from_yaml, override_config
    from .train import model_from_checkpoint

    data = load_checkpoint(path)
    cfg = override_config(config_from_yaml(data.config_yaml, f"the config stored in {path}"), overrides)
    return data, model_from_checkpoint(data), cfg


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from .data import load_dataset
    from .train import set_threads

    data, model, cfg = _load_model_and_config(args.checkpoint, args.set)
    set_threads(cfg.threads)
    dataset = load_dataset(cfg.data, cfg.seed)
    if dataset.n_features != model.sizes[0] or dataset.n_classes > model.sizes[-1]:
        raise SparsenetError(f"data {dataset.name} has {dataset.n_features} features and {dataset.n_classes} classes, "
                             f"but the model expects {model.sizes[0]} inputs and {model.sizes[-1]} outputs")
    loss, accuracy = model.evaluate(dataset.x_test, dataset.y_test, cfg.train.eval_batch_size)
    print(json.dumps({"checkpoint": str(args.checkpoint), "epoch": data.epoch, "test_accuracy": accuracy,
                      "test_loss": loss, "test_samples": int(dataset.x_test.shape[0])}))
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from .checkpoint import load_checkpoint
    from .train import model_from_checkpoint

    data = load_checkpoint(args.checkpoint)
    model = model_from_checkpoint(data)
    info = {"checkpoint": str(args.checkpoint), "epoch": data.epoch, "layers": len(model.layers),
            "neurons": model.sizes, "nnz": model.nnz, "density": [round(l.density, 6) for l in model.layers],
            "parameters": model.n_parameters, "hidden_slopes": model.slopes, "output": model.output}
    if args.json:
        print(json.dumps(info))
        return 0
    print(f"checkpoint  {info['checkpoint']}")
    print(f"epoch       {data.epoch}")
    print(f"neurons     {'-'.join(map(str, model.sizes))} ({sum(model.sizes)} in all)")
    print(f"parameters  {model.n_parameters} (weights {sum(model.nnz)} + biases {sum(model.sizes[1:])})")
    print(f"{'layer':>5} {'n_in':>10} {'n_out':>10} {'nnz':>12} {'density':>10} {'slope':>7}")
    for l, layer in enumerate(model.layers):
        slope = f"{model.slopes[l]:+.3g}" if l < len(model.slopes) else model.output
        print(f"{l:>5} {layer.n_in:>10} {layer.n_out:>10} {layer.nnz:>12} {layer.density:>10.5f} {slope:>7}")
    return 0


def _cmd_plot(args: argparse.Namespace) -> int:
    from .plot import plot_learning_curves

    path = plot_learning_curves(args.metrics, args.out, args.label or None)
    print(f"wrote {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sparsenet", description="Truly sparse MLPs trained with SET on CPUs.")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train a model from a YAML config")
    train.add_argument("config", help="YAML config file")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config key; VALUE is parsed as YAML (repeatable)")
    train.add_argument("--out", help="output folder (default runs/<config name>)")
    train.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.h5 if it exists")
    train.set_defaults(func=_cmd_train)
    evaluate = sub.add_parser("evaluate", help="test accuracy and loss of a checkpoint, as one JSON line")
    evaluate.add_argument("checkpoint")
    evaluate.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                          help="override the checkpoint's config, e.g. data.path=...")
    evaluate.set_defaults(func=_cmd_evaluate)
    info = sub.add_parser("info", help="layers, neurons, nnz and epoch of a checkpoint")
    info.add_argument("checkpoint")
    info.add_argument("--json", action="store_true", help="print one JSON line")
    info.set_defaults(func=_cmd_info)
    plot = sub.add_parser("plot", help="plot learning curves of one or more metrics.jsonl files")
    plot.add_argument("metrics", nargs="+", help="metrics.jsonl files")
    plot.add_argument("--out", default="learning_curve.png", help="PNG file to write")
    plot.add_argument("--label", action="append", default=[], help="legend label per file (repeatable)")
    plot.set_defaults(func=_cmd_plot)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except SparsenetError as exc:
        print(f"sparsenet: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("sparsenet: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
