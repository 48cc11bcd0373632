"""Learning curves from metrics.jsonl files as a PNG (matplotlib, an optional dependency)."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import SparsenetError
from .metrics import read_metrics


SHORT_RUN_EPOCHS = 30  # runs up to this long get a marker on every epoch
LAYER_STYLES = ("-", "--", ":", "-.")


def plot_learning_curves(metrics_paths: list[str], out: str, labels: list[str] | None = None) -> Path:
    """Per epoch of one or more runs: accuracy (test, validation, the selected epoch), loss, seconds,
    nnz per layer and neurons per hidden layer, on integer epoch ticks."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        raise SparsenetError("plotting needs matplotlib: pip install 'sparsenet[plot]'") from None
    # a run folder stands for its metrics.jsonl
    metrics_paths = [Path(p) / "metrics.jsonl" if Path(p).is_dir() else p for p in metrics_paths]
    labels = labels or [Path(p).parent.name or str(p) for p in metrics_paths]
    if len(labels) != len(metrics_paths):
        raise SparsenetError(f"got {len(labels)} labels for {len(metrics_paths)} metrics files")
    runs = []
    for path in metrics_paths:
        try:
            rows = read_metrics(path)
        except OSError as exc:
            raise SparsenetError(f"cannot read metrics file {path}: {exc.strerror or exc}") from None
        except ValueError as exc:
            raise SparsenetError(f"cannot read metrics file {path}: {exc}") from None
        except RecursionError:
            raise SparsenetError(f"cannot read metrics file {path}: its JSON nests too deeply") from None
        if not rows:
            raise SparsenetError(f"metrics file {path} holds no epochs")
        _check_rows(rows, path)
        runs.append(rows)
    fig, axes = plt.subplots(2, 3, figsize=(16, 8.5))
    ax_acc, ax_loss, ax_sec, ax_nnz, ax_neurons, ax_note = axes.ravel()
    notes = []
    for rows, label in zip(runs, labels):
        epochs = [r["epoch"] for r in rows]
        style = {"marker": "o", "markersize": 3} if len(rows) <= SHORT_RUN_EPOCHS else {}
        classifier = "test_accuracy" in rows[0]  # an autoencoder's rows have none: its losses are the reconstruction's
        if classifier:
            acc = [100 * r["test_accuracy"] for r in rows]
            line, = ax_acc.plot(epochs, acc, label=f"{label} test (last {acc[-1]:.2f}%)", **style)
        else:
            line, = ax_acc.plot([], [])  # keeps one colour per run across the panels
        color = line.get_color()
        if "validation_accuracy" in rows[-1]:
            ax_acc.plot(epochs, [100 * r.get("validation_accuracy", float("nan")) for r in rows], "--",
                        color=color, label=f"{label} validation", **style)
        chosen = next((r for r in rows if r["epoch"] == rows[-1].get("best_epoch")), None)
        if chosen is not None and classifier:  # the epoch checkpoint_best.h5 holds, chosen without the test set
            ax_acc.plot([chosen["epoch"]], [100 * chosen["test_accuracy"]], "*", color=color, markersize=12,
                        label=f"{label} selected: epoch {chosen['epoch']} on {rows[-1]['selection_metric']}, "
                              f"test {100 * chosen['test_accuracy']:.2f}%")
        ax_loss.plot(epochs, [r["test_loss"] for r in rows], color=color, label=f"{label} test", **style)
        ax_loss.plot(epochs, [r["train_loss"] for r in rows], "--", color=color, label=f"{label} train", **style)
        if "validation_loss" in rows[-1]:
            ax_loss.plot(epochs, [r.get("validation_loss", float("nan")) for r in rows], ":", color=color,
                         label=f"{label} validation", **style)
        for key, dash in (("train_seconds", "-"), ("evolution_seconds", "--"), ("eval_seconds", ":")):
            if key in rows[0]:
                ax_sec.plot(epochs, [r.get(key, float("nan")) for r in rows], dash, color=color,
                            label=f"{label} {key.split('_')[0]}", **style)
        for l in range(len(rows[0].get("nnz", []))):
            ax_nnz.plot(epochs, [r["nnz"][l] if len(r["nnz"]) > l else float("nan") for r in rows],
                        LAYER_STYLES[l % len(LAYER_STYLES)], color=color, label=f"{label} layer {l}", **style)
        for h in range(1, len(rows[0].get("neurons", [])) - 1):
            ax_neurons.plot(epochs, [r["neurons"][h] for r in rows], LAYER_STYLES[(h - 1) % len(LAYER_STYLES)],
                            color=color, label=f"{label} hidden {h}", **style)
        if classifier:
            best = max(rows, key=lambda r: r["test_accuracy"])
            notes.append(f"{label}: {len(rows)} epochs; best test accuracy {100 * best['test_accuracy']:.2f}% "
                         f"(epoch {best['epoch']}, for reference only)")
        else:
            notes.append(f"{label}: {len(rows)} epochs; autoencoder, last test loss {rows[-1]['test_loss']:.5g}")
    ax_acc.set(xlabel="epoch", ylabel="accuracy [%]", title="Accuracy")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="Loss (train with dropout)")
    ax_sec.set(xlabel="epoch", ylabel="seconds", title="Seconds per epoch")
    ax_nnz.set(xlabel="epoch", ylabel="connections", title="Connections (nnz) per layer")
    ax_neurons.set(xlabel="epoch", ylabel="neurons", title="Neurons per hidden layer")
    for ax in (ax_acc, ax_loss, ax_sec, ax_nnz, ax_neurons):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:  # older metrics files lack some panels' keys
            ax.legend(fontsize=7, handlelength=4)  # long enough that a marker leaves the dashes visible
    ax_note.axis("off")
    ax_note.text(0, 1, "\n".join(notes), va="top", fontsize=8, wrap=True)
    fig.tight_layout()
    return _save(fig, out)


def _number(value, null: bool = False) -> bool:
    return (value is None and null) or (isinstance(value, (int, float)) and not isinstance(value, bool))


def _check_rows(rows: list, path: str) -> None:
    """What the panels read: one object per epoch with a whole epoch number, numeric losses (and test accuracy
    for a classifier's run), numbers or null for the optional keys, lists of numbers for nnz and neurons."""
    classifier = isinstance(rows[0], dict) and "test_accuracy" in rows[0]
    for i, r in enumerate(rows, start=1):
        if not isinstance(r, dict):
            problem = f"is not an object but a {type(r).__name__}"
        elif not isinstance(r.get("epoch"), int) or isinstance(r.get("epoch"), bool):
            problem = f"has epoch {str(r.get('epoch'))[:40]}, expected a whole number"
        else:
            required = ("train_loss", "test_loss", *(("test_accuracy",) if classifier else ()))
            optional = ("validation_accuracy", "validation_loss", "train_seconds", "evolution_seconds", "eval_seconds")
            bad = [k for k in required if not _number(r.get(k))] + [k for k in optional if not _number(r.get(k), True)]
            bad += [k for k in ("nnz", "neurons") if k in r and not (isinstance(r[k], list) and all(map(_number, r[k])))]
            if not bad:
                continue
            expected = "a list of numbers" if bad[0] in ("nnz", "neurons") else "a number"
            problem = f"has {bad[0]} {str(r.get(bad[0]))[:40]}, expected {expected}"
        raise SparsenetError(f"metrics file {path} line {i} {problem}; is it a sparsenet metrics.jsonl?")


def plot_feature_strength(strength, shape: tuple[int, ...], out: str) -> Path:
    """Input-feature strengths (n_features,) drawn as an image of `shape` (H, W) or (C, H, W), channels summed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SparsenetError("plotting needs matplotlib: pip install 'sparsenet[plot]'") from None
    image = strength.reshape(shape)
    if image.ndim == 3:  # channel planes first, as CIFAR-10 stores them
        image = image.sum(axis=0)
    fig, ax = plt.subplots(figsize=(5, 4.5))
    shown = ax.imshow(image, cmap="viridis")
    fig.colorbar(shown, ax=ax, label="sum of |outgoing weights|")
    ax.set(title="Input-feature strength", xticks=[], yticks=[])
    fig.tight_layout()
    return _save(fig, out)


def _save(fig, out: str) -> Path:
    """fig as an image file at `out` (format from its suffix, PNG without one), written atomically."""
    import matplotlib.pyplot as plt

    from .fileio import prepare_file, replacing

    try:
        path = prepare_file(out, "plot")
        fmt = path.suffix.lstrip(".").lower() or "png"
        formats = sorted(fig.canvas.get_supported_filetypes())
        if fmt not in formats:
            raise SparsenetError(f"cannot write plot '{out}': matplotlib writes {', '.join(formats)}, not {fmt[:20]!r}")
        with replacing(path, "plot") as (_, fd):
            with os.fdopen(os.dup(fd), "wb") as fh:
                fig.savefig(fh, format=fmt, dpi=110)
    finally:
        plt.close(fig)
    return path
