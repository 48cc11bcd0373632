"""Learning curves from metrics.jsonl files as a PNG (matplotlib, an optional dependency)."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import SparsenetError
from .metrics import read_metrics


def plot_learning_curves(metrics_paths: list[str], out: str, labels: list[str] | None = None) -> Path:
    """Test accuracy and train/test loss per epoch of one or more runs, side by side."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SparsenetError("plotting needs matplotlib: pip install 'sparsenet[plot]'") from None
    labels = labels or [Path(p).parent.name or str(p) for p in metrics_paths]
    if len(labels) != len(metrics_paths):
        raise SparsenetError(f"got {len(labels)} labels for {len(metrics_paths)} metrics files")
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(11, 4))
    for path, label in zip(metrics_paths, labels):
        try:
            rows = read_metrics(path)
        except (OSError, ValueError) as exc:
            raise SparsenetError(f"cannot read metrics file {path}: {exc}") from None
        if not rows:
            raise SparsenetError(f"metrics file {path} holds no epochs")
        epochs = [r["epoch"] for r in rows]
        if "test_accuracy" in rows[0]:  # an autoencoder's rows have none: its losses are the reconstruction's
            acc = [100 * r["test_accuracy"] for r in rows]
            best = max(range(len(acc)), key=acc.__getitem__)
            ax_acc.plot(epochs, acc, label=f"{label} (best {acc[best]:.2f}% at {epochs[best]}, last {acc[-1]:.2f}%)")
        line, = ax_loss.plot(epochs, [r["test_loss"] for r in rows], label=f"{label} test")
        ax_loss.plot(epochs, [r["train_loss"] for r in rows], "--", color=line.get_color(), label=f"{label} train")
    ax_acc.set(xlabel="epoch", ylabel="test accuracy [%]", title="Test accuracy")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="Loss (train with dropout)")
    for ax in (ax_acc, ax_loss):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:  # an autoencoder's accuracy panel stays empty
            ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, out)


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
