"""Report figures: confusion matrices, learning curves, the cross-dataset heatmap and
reliability diagrams.

Every function takes plain data (lists, dicts, arrays read back from the experiment files),
writes one PNG and closes its figure, so a report can be rebuilt without a model in memory.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on servers; must precede the pyplot import

import matplotlib.pyplot as plt
import numpy as np

from ferlab.layout import RELIABILITY

DPI = 120
_TRAIN_COLOUR = "#1f77b4"
_VAL_COLOUR = "#d62728"
_EXTRA_COLOUR = "#2ca02c"
_BEST_COLOUR = "#555555"


def plain_text(text: str) -> str:
    """Text safe for matplotlib: a ``$`` would otherwise start mathtext and break the title."""
    return str(text).replace("$", r"\$")


def save_figure(fig: Any, path: Path) -> Path:
    """Save ``fig`` as a PNG at ``path`` (folders made) and close it; every figure of ferlab
    goes through here, so they share one resolution and background."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fig.savefig(path, dpi=DPI, bbox_inches="tight", facecolor="white")
    finally:
        plt.close(fig)
    return path


def data_uri(path: Path) -> str | None:
    """A PNG file as a ``data:`` URI, or None when the file does not exist."""
    path = Path(path)
    if not path.is_file():
        return None
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def row_normalise(cm: np.ndarray) -> np.ndarray:
    """Each row divided by its sum (recall per true class); rows with no samples stay 0."""
    cm = np.asarray(cm, dtype=float)
    sums = cm.sum(axis=1, keepdims=True)
    return np.divide(cm, sums, out=np.zeros_like(cm), where=sums > 0)


def plot_confusion_matrix(
    cm: Sequence[Sequence[float]] | np.ndarray,
    labels: Sequence[str],
    path: Path,
    title: str,
    normalize: bool = True,
) -> Path:
    """Annotated confusion matrix (rows: true class, columns: predicted class).

    With ``normalize`` the colour is the row-normalised value (per-class recall, so rare and
    frequent classes are comparable) and each cell shows the percentage and, when ``cm`` holds
    counts, the count. Without it the colour and the annotation are the raw values.
    """
    counts = np.asarray(cm, dtype=float)
    k = len(labels)
    if counts.shape != (k, k):
        raise ValueError(
            f"confusion matrix for {title!r} has shape {counts.shape}, expected ({k}, {k}) "
            f"for labels {list(labels)}; check that metrics.json 'labels' matches the matrix"
        )
    is_counts = bool(np.all(np.equal(np.mod(counts, 1), 0)))
    colour = row_normalise(counts) if normalize else counts
    vmax = 1.0 if normalize else max(float(colour.max()), 1.0)

    side = max(4.0, 0.6 * k + 1.6)
    fig, ax = plt.subplots(figsize=(side + 0.9, side))
    im = ax.imshow(colour, cmap="Blues", vmin=0.0, vmax=vmax)
    cbar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    if normalize:
        cbar.set_label("share of true class")
        cbar.ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    else:
        cbar.set_label("images")

    font = 9 if k <= 8 else 7
    for i in range(k):
        for j in range(k):
            value = colour[i, j]
            if normalize:
                text = f"{100 * value:.0f}%"
                if is_counts:
                    text += f"\n({int(counts[i, j])})"
            else:
                text = f"{int(value)}" if is_counts else f"{value:.2f}"
            dark = value > 0.55 * vmax
            ax.text(
                j,
                i,
                text,
                ha="center",
                va="center",
                fontsize=font,
                color="white" if dark else "#222222",
            )

    names = [plain_text(n) for n in labels]
    ax.set_xticks(range(k), names, rotation=45, ha="right")
    ax.set_yticks(range(k), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(plain_text(title), fontsize=10)
    return save_figure(fig, path)


def _column(rows: Sequence[Mapping[str, Any]], key: str) -> np.ndarray:
    """One history column as floats; missing or empty cells become NaN (not plotted)."""
    out = []
    for row in rows:
        value = row.get(key)
        try:
            out.append(float(value) if value not in (None, "") else math.nan)
        except (TypeError, ValueError):
            out.append(math.nan)
    return np.asarray(out, dtype=float)


def _best_epoch(epochs: np.ndarray, val_acc: np.ndarray) -> float | None:
    if val_acc.size == 0 or np.all(np.isnan(val_acc)):
        return None
    return float(epochs[int(np.nanargmax(val_acc))])


def plot_learning_curves(
    history_rows: Sequence[Mapping[str, Any]],
    path: Path,
    title: str,
    best_epoch: int | None = None,
) -> Path:
    """Loss and accuracy per epoch, train against validation, best epoch marked.

    ``history_rows`` are the rows of ``history.csv`` (strings or numbers). ``best_epoch``
    comes from ``fit.json``; when absent the epoch with the highest validation accuracy is marked.
    """
    if not history_rows:
        raise ValueError(f"no history rows for {title!r}: history.csv is empty")
    epochs = _column(history_rows, "epoch")
    if np.all(np.isnan(epochs)):
        epochs = np.arange(len(history_rows), dtype=float)
    val_acc = _column(history_rows, "val_accuracy")
    best = float(best_epoch) if best_epoch is not None else _best_epoch(epochs, val_acc)

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4.2))
    marker = "o" if len(history_rows) <= 30 else None
    _line(ax_loss, epochs, _column(history_rows, "train_loss"), "train", _TRAIN_COLOUR, marker)
    _line(ax_loss, epochs, _column(history_rows, "val_loss"), "validation", _VAL_COLOUR, marker)
    ax_loss.set_title("loss")
    ax_loss.set_ylabel("cross-entropy")

    _line(ax_acc, epochs, 100 * _column(history_rows, "train_acc"), "train", _TRAIN_COLOUR, marker)
    _line(ax_acc, epochs, 100 * val_acc, "validation", _VAL_COLOUR, marker)
    _line(
        ax_acc,
        epochs,
        100 * _column(history_rows, "val_balanced_accuracy"),
        "validation (balanced)",
        _EXTRA_COLOUR,
        None,
        style="--",
    )
    ax_acc.set_title("accuracy")
    ax_acc.set_ylabel("%")

    finite = epochs[~np.isnan(epochs)]
    for ax in (ax_loss, ax_acc):
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        if finite.size and finite.min() == finite.max():  # one epoch: centre the lone point
            ax.set_xlim(finite[0] - 1, finite[0] + 1)
        if best is not None:
            ax.axvline(
                best,
                color=_BEST_COLOUR,
                linestyle=":",
                linewidth=1.2,
                label=f"best epoch ({best:g})",
            )
        ax.set_xlabel("epoch")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    fig.suptitle(plain_text(title), fontsize=12)
    fig.tight_layout()
    return save_figure(fig, path)


def _line(
    ax: Any,
    x: np.ndarray,
    y: np.ndarray,
    label: str,
    colour: str,
    marker: str | None,
    style: str = "-",
) -> None:
    keep = ~np.isnan(y)
    if keep.any():
        ax.plot(x[keep], y[keep], style, color=colour, label=label, marker=marker, markersize=3)


def plot_cross_dataset(
    matrix: Mapping[tuple[str, str], float | None],
    train_names: Sequence[str],
    test_names: Sequence[str],
    path: Path,
    title: str,
    metric_name: str = "accuracy",
) -> Path:
    """Heatmap of a metric: rows are the training runs, columns the test sets.

    Values are fractions in [0, 1] shown as percentages; a pair that was not evaluated
    (missing or NaN) is drawn as a grey, unannotated cell.
    """
    rows, cols = len(train_names), len(test_names)
    if rows == 0 or cols == 0:
        raise ValueError(f"cross-dataset matrix {title!r} is empty: no evaluations found")
    values = np.full((rows, cols), np.nan)
    for i, train in enumerate(train_names):
        for j, test in enumerate(test_names):
            v = matrix.get((train, test))
            if v is not None:
                values[i, j] = float(v)

    width = max(5.0, 1.1 * cols + 3.2)
    height = max(3.0, 0.5 * rows + 1.6)
    fig, ax = plt.subplots(figsize=(width, height))
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="#d9d9d9")
    im = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto")
    cbar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    cbar.set_label(plain_text(metric_name))
    cbar.ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    for i in range(rows):
        for j in range(cols):
            v = values[i, j]
            if np.isnan(v):
                continue
            ax.text(
                j,
                i,
                f"{100 * v:.1f}%",
                ha="center",
                va="center",
                fontsize=10,
                color="black" if v > 0.6 else "white",
            )
    ax.set_xticks(range(cols), [plain_text(n) for n in test_names], rotation=30, ha="right")
    ax.set_yticks(range(rows), [plain_text(n) for n in train_names])
    ax.set_xlabel("tested on")
    ax.set_ylabel("trained on")
    ax.set_title(plain_text(title), fontsize=11)
    return save_figure(fig, path)


RELIABILITY_PNG = RELIABILITY  # in an evaluation folder, beside its metrics.json


def plot_reliability(
    before: Mapping[str, Any],
    after: Mapping[str, Any] | None,
    path: Path,
    title: str,
    temperature: float | None = None,
) -> Path:
    """Reliability diagram: accuracy against mean confidence per confidence bin, before
    (T = 1) and after temperature scaling, with each ECE in the legend, over the number of
    images per bin.

    ``before``/``after`` are ``ferlab.calibration.reliability`` dicts as metrics.json keeps
    them (``edges``, ``count``, ``confidence``, ``accuracy``, ``ece``); empty bins are skipped.
    """
    edges = np.asarray(before.get("edges") or [], dtype=float)
    if edges.size < 2:
        raise ValueError(f"reliability bins for {title!r} have no edges; rerun the evaluation")
    centres = (edges[:-1] + edges[1:]) / 2
    width = float(np.diff(edges).min())
    fig, (ax, ax_n) = plt.subplots(
        2, 1, figsize=(5.6, 6.2), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    ax.plot([0, 1], [0, 1], ":", color=_BEST_COLOUR, linewidth=1, label="perfect calibration")
    series = [("T = 1", before, _VAL_COLOUR, -0.2)]
    if after is not None:
        t = f"T = {temperature:.3g}" if temperature is not None else "calibrated"
        series.append((t, after, _TRAIN_COLOUR, 0.2))
    for name, bins, colour, shift in series:
        conf = np.asarray([np.nan if v is None else v for v in bins["confidence"]], dtype=float)
        acc = np.asarray([np.nan if v is None else v for v in bins["accuracy"]], dtype=float)
        keep = ~np.isnan(conf) & ~np.isnan(acc)
        ece = bins.get("ece")
        label = f"{name}: ECE {100 * ece:.2f}%" if ece is not None else name
        ax.plot(conf[keep], acc[keep], "o-", color=colour, markersize=4, label=label)
        counts = np.asarray(bins["count"], dtype=float)
        ax_n.bar(centres + shift * width, counts, width=0.4 * width, color=colour, alpha=0.8)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.set_title(plain_text(title), fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    ax_n.set_xlabel(f"confidence (largest probability), {len(centres)} bins")
    ax_n.set_ylabel("images")
    ax_n.grid(True, alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)
