"""Pictures: every figure featbank draws, with matplotlib's file-only backend.

``pyplot()`` is the one place that picks the backend (Agg: no display needed,
safe in worker processes); stages call the plotting functions here.
"""
from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np

from featbank.core.fileio import atomic_path


def pyplot():
    """matplotlib.pyplot on the Agg backend (imported on first use: it is slow to import)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path, *, dpi: int) -> None:
    """Write the figure as PNG, whole or not at all (a temporary file renamed), and close it."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    pyplot().close(fig)


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
    _save(fig, path, dpi=100)


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
    _save(fig, path, dpi=100)


def plot_similarity(matrix: np.ndarray, names: list[str], title: str, path: Path) -> None:
    """A symmetric similarity matrix in [0, 1] (CKA), each cell annotated."""
    plt = pyplot()
    side = 2.5 + 0.9 * len(names)
    fig, ax = plt.subplots(figsize=(side + 1.5, side))
    image = ax.imshow(matrix, vmin=0, vmax=1, cmap="viridis")
    ax.set_xticks(range(len(names)), names, rotation=40, ha="right", fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=8,
                    color="black" if matrix[i, j] > 0.6 else "white")
    fig.colorbar(image, ax=ax, fraction=0.046)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    _save(fig, path, dpi=120)


def plot_map(xy: np.ndarray, labels: np.ndarray, title: str, path: Path, *,
             max_legend: int = 20) -> None:
    """A 2-D map (n, 2), one colour per label; past ``max_legend`` labels the rarest are grey."""
    plt = pyplot()
    names, counts = np.unique(labels.astype(str), return_counts=True)
    shown = list(names[np.argsort(-counts, kind="stable")][:max_legend])
    colors = plt.get_cmap("tab20" if len(shown) > 10 else "tab10")
    fig, ax = plt.subplots(figsize=(9, 7))
    rest = ~np.isin(labels.astype(str), shown)
    if rest.any():
        ax.scatter(*xy[rest].T, s=6, c="lightgrey", label=f"other ({rest.sum()})")
    for k, name in enumerate(sorted(shown)):
        where = labels.astype(str) == name
        ax.scatter(*xy[where].T, s=8, color=colors(k % colors.N), label=name)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, markerscale=2, loc="center left", bbox_to_anchor=(1, 0.5))
    fig.tight_layout()
    _save(fig, path, dpi=110)


def plot_layers(stages: list[dict], path: Path, *, title: str) -> Path:
    """Relative weight distance and CKA per stage (``stages``: layers' rows), input to output."""
    plt = pyplot()
    x = np.arange(len(stages))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(6, 0.5 * len(stages) + 3), 6),
                                      sharex=True)
    top.plot(x, [s["weight_distance"] for s in stages], marker="o", color="tab:red")
    top.set_ylabel("||θ₂ − θ|| / ||θ||")
    top.set_ylim(bottom=0)
    cka = [np.nan if s["cka"] is None else s["cka"] for s in stages]
    bottom.plot(x, cka, marker="o", color="tab:blue")
    bottom.set_ylabel("linear CKA")
    bottom.set_ylim(0, 1.05)
    bottom.set_xticks(x, [s["name"] for s in stages], rotation=60, ha="right", fontsize=7)
    bottom.set_xlabel("stage (input → output)")
    width = max(40, int(fig.get_figwidth() * 11))  # characters that fit at 10 pt
    top.set_title("\n".join(textwrap.wrap(title, width)), fontsize=10)
    fig.tight_layout()
    _save(fig, path, dpi=110)
    return path


def plot_image_grid(rows: list[tuple[str, list[tuple[np.ndarray, str]]]], path: Path, *,
                    title: str, cell: float = 1.6) -> Path:
    """Rows of pictures: each row a (row title, [(H x W x 3 uint8 image, caption)]) pair."""
    plt = pyplot()
    columns = max(len(items) for _, items in rows)
    height = cell * len(rows) + 0.6
    fig, axes = plt.subplots(len(rows), columns, squeeze=False,
                             figsize=(cell * columns + 1.2, height))
    for r, (row_title, items) in enumerate(rows):
        for c in range(columns):
            ax = axes[r][c]
            ax.axis("off")
            if c < len(items):
                image, caption = items[c]
                ax.imshow(image)
                ax.set_title(caption, fontsize=6)
        axes[r][0].text(-0.08, 0.5, row_title, transform=axes[r][0].transAxes, rotation=90,
                        ha="right", va="center", fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.4 / height))
    _save(fig, path, dpi=110)
    return path


def plot_layer_curve(lines: list[dict], path: Path, *, title: str, ylabel: str) -> Path:
    """Score ± interval against depth, a line per network and head (``lines``: each with
    ``label`` and ``points`` of ``x``, ``name``, ``score``, ``spread``). When every
    line has the same layers, the x axis names them; else it is the relative depth."""
    plt = pyplot()
    names = {tuple(p["name"] for p in line["points"]) for line in lines}
    shared = len(names) == 1
    fig, ax = plt.subplots(figsize=(max(6.5, 0.45 * max(len(n) for n in names) + 3), 4.5))
    for line in lines:
        points = line["points"]
        x = [p["x"] if shared else p["depth"] for p in points]
        ax.errorbar(x, [p["score"] for p in points], yerr=[p["spread"] or 0 for p in points],
                    marker="o", markersize=4, capsize=3, label=line["label"])
    if shared:
        points = lines[0]["points"]
        ax.set_xticks([p["x"] for p in points], [p["name"] for p in points], rotation=60,
                      ha="right", fontsize=7)
        ax.set_xlabel("layer (input → output)")
    else:
        ax.set_xlabel("relative depth (layer k of n; 1 = the trunk's output)")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    width = max(40, int(fig.get_figwidth() * 11))
    ax.set_title("\n".join(textwrap.wrap(title, width)), fontsize=10)
    fig.tight_layout()
    _save(fig, path, dpi=110)
    return path


def plot_reliability(bins: dict, path: Path, *, title: str) -> Path:
    """A top-label reliability diagram (``calibration.reliability``): accuracy against
    mean confidence per bin, the diagonal of a calibrated head, each bin's share."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.6, 4.6))
    edges, count = bins["edges"], bins["count"]
    width = edges[1] - edges[0]
    used = count > 0
    ax.bar(edges[:-1][used], bins["accuracy"][used], width=width, align="edge",
           edgecolor="black", alpha=0.7, label="accuracy")
    ax.plot([0, 1], [0, 1], "--", color="gray", label="calibrated")
    ax.scatter(bins["confidence"][used], bins["accuracy"][used], s=12, color="black",
               zorder=3, label="mean confidence")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (top-label probability)")
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=7, loc="upper left")
    ax.set_title("\n".join(textwrap.wrap(title, 50)), fontsize=9)
    fig.tight_layout()
    _save(fig, path, dpi=110)
    return path


def plot_shot_curve(lines: list[dict], path: Path, *, title: str, ylabel: str) -> Path:
    """Score ± spread against the labelled images per class (log axis), a line per
    network and head (``lines``: ``label`` and ``points`` of ``shots``, ``score``,
    ``spread``)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for line in lines:
        points = line["points"]
        ax.errorbar([p["shots"] for p in points], [p["score"] for p in points],
                    yerr=[p["spread"] or 0 for p in points], marker="o", markersize=4,
                    capsize=3, label=line["label"])
    ax.set_xscale("log", base=2)
    shots = sorted({p["shots"] for line in lines for p in line["points"]})
    ax.set_xticks(shots, [str(k) for k in shots])
    ax.set_xlabel("training images per class (k)")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    ax.set_title("\n".join(textwrap.wrap(title, 70)), fontsize=10)
    fig.tight_layout()
    _save(fig, path, dpi=110)
    return path

