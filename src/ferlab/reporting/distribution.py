"""The class-distribution bar plot: how many images each class has, per split.

Used by ``ferlab data inspect`` and by the pipeline (original vs balanced training data).
Drawn with matplotlib's object API on an Agg canvas, so it needs no display and leaves
pyplot's global state alone.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from ferlab.labels import CANONICAL


def plot_distribution(counts: dict[str, dict[str, int]], path: str | Path, title: str) -> Path:
    """Grouped bars, one group per class and one bar per series (split), saved as a PNG.

    ``counts`` is ``{series: {class: n}}``, e.g. ``{"train": {"angry": 3995, ...}, "test": ...}``;
    a single series gives plain bars. Classes are shown in canonical order (unknown names
    after them), each bar labelled with its count. Returns the written path.
    """
    if not counts:
        raise ValueError(f"plot_distribution({str(path)!r}): no series to plot")
    classes = _class_order(counts)
    series = list(counts)
    values = np.array([[counts[s].get(c, 0) for c in classes] for s in series], dtype=float)
    n_series = len(series)
    width = 0.8 / n_series
    x = np.arange(len(classes))

    fig = Figure(figsize=(max(6.0, 1.0 + 0.9 * len(classes) * max(1, n_series) ** 0.5), 4.2))
    ax = fig.add_subplot()
    top = values.max() if values.size else 0.0
    for i, name in enumerate(series):
        offset = (i - (n_series - 1) / 2) * width
        total = int(values[i].sum())
        bars = ax.bar(x + offset, values[i], width, label=f"{_safe(name)} ({total:,})")
        if len(classes) * n_series <= 40:  # counts on the bars while they stay readable
            ax.bar_label(
                bars,
                labels=[f"{int(v):,}" for v in values[i]],
                fontsize=7 if n_series > 1 else 8,
                padding=2,
                rotation=90 if n_series > 2 else 0,
            )
    ax.set_xticks(x, [_safe(c) for c in classes], rotation=30 if len(classes) > 6 else 0)
    ax.set_ylabel("images")
    ax.set_ylim(0, top * (1.22 if n_series > 2 else 1.12) + 1)
    ax.set_title(_safe(title))
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    if n_series > 1 or series[0]:
        ax.legend(frameon=False, fontsize=9)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120, format="png")
    return out


def _class_order(counts: dict[str, dict[str, int]]) -> list[str]:
    names: set[str] = set()
    for per_class in counts.values():
        names.update(per_class)
    known = [c for c in CANONICAL if c in names]
    return known + sorted(names - set(known))


def _safe(text: str) -> str:
    """Text safe for matplotlib: a ``$`` would otherwise start mathtext."""
    return str(text).replace("$", r"\$")
