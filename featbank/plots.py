"""Pictures: every figure featbank draws, with matplotlib's file-only backend.

``pyplot()`` is the one place that picks the backend (Agg: no display needed,
safe in worker processes); stages call the plotting functions here.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


def pyplot():
    """matplotlib.pyplot on the Agg backend (imported on first use: it is slow to import)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_confusion(matrix: np.ndarray, classes: list[str], path: Path) -> None:
    """Row-normalised confusion matrix (true x predicted counts) as a heatmap."""
    plt = pyplot()
    n = len(classes)
    rates = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    side = min(4 + 0.35 * n, 20)
    fig, ax = plt.subplots(figsize=(side, side))
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    if n <= 40:  # past that, labels are unreadable; the CSV has them
        ax.set_xticks(range(n), classes, rotation=90)
        ax.set_yticks(range(n), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.colorbar(image, ax=ax, fraction=0.046, label="fraction of the true class")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_history(history: list[dict], path: Path) -> None:
    """Loss and accuracy per epoch, train and val (``history``: finetune's rows)."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, what in zip(axes, ("loss", "acc")):
        for part in ("train", "val"):
            points = [(h["epoch"], h[f"{part}_{what}"]) for h in history
                      if h[f"{part}_{what}"] is not None]
            if points:
                ax.plot(*zip(*points), marker="o", label=part)
        ax.set_xlabel("epoch")
        ax.set_ylabel("accuracy" if what == "acc" else "cross-entropy")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
