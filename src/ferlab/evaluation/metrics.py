"""Classification metrics with percentile-bootstrap confidence intervals, in numpy only.

Definitions (what each number averages over matters when a class is rare or missing):
- ``accuracy``: correct / n.
- ``balanced_accuracy``: mean recall over the classes *present in y_true* (a class with no
  test images has no recall to average).
- ``macro_f1``: mean F1 over the classes present in y_true *or* predicted (sklearn's default
  set of labels). A class predicted but absent from the truth counts with F1 = 0, because those
  predictions are all wrong; a class neither present nor predicted is left out.
- per-class precision / recall / F1 are 0 where their denominator is 0.
- ``log_loss``: mean negative log-probability of the true class (rows renormalised,
  probabilities clipped to 1e-15 like sklearn).
- ``ci``: 95% percentile bootstrap over images for accuracy, balanced accuracy and macro-F1,
  with the same definitions applied to each resample; ``None`` when ``bootstrap == 0`` or n == 0.

The bootstrap is vectorised: resampled indices ``(R, N)`` become confusion matrices ``(R, K, K)``
with one ``bincount`` per chunk of resamples.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

CI_METRICS: tuple[str, ...] = ("accuracy", "balanced_accuracy", "macro_f1")
_EPS = 1e-15
_MAX_CHUNK_ELEMENTS = 4_000_000  # resampled indices per bootstrap chunk (~32 MB of int64)


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, k: int) -> np.ndarray:
    """Counts ``(K, K)``: rows true class, columns predicted class."""
    return np.bincount(y_true * k + y_pred, minlength=k * k).reshape(k, k)


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out = np.zeros(np.broadcast(num, den).shape, dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


def _per_class(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Per-class statistics of confusion matrices ``(..., K, K)``; each result is ``(..., K)``."""
    tp = np.diagonal(cm, axis1=-2, axis2=-1).astype(np.float64)
    support = cm.sum(axis=-1)
    predicted = cm.sum(axis=-2)
    precision = _safe_div(tp, predicted)
    recall = _safe_div(tp, support)
    f1 = _safe_div(2 * precision * recall, precision + recall)
    return {
        "tp": tp,
        "support": support,
        "predicted": predicted,
        "precision": precision,
        "recall": recall,
        "f1": f1,
    }


def _summary(cm: np.ndarray) -> dict[str, np.ndarray]:
    """accuracy, balanced accuracy and macro-F1 of confusion matrices ``(..., K, K)``."""
    pc = _per_class(cm)
    n = pc["support"].sum(axis=-1)
    present = pc["support"] > 0
    active = present | (pc["predicted"] > 0)
    return {
        "accuracy": _safe_div(pc["tp"].sum(axis=-1), n),
        "balanced_accuracy": _safe_div((pc["recall"] * present).sum(axis=-1), present.sum(axis=-1)),
        "macro_f1": _safe_div((pc["f1"] * active).sum(axis=-1), active.sum(axis=-1)),
    }


def bootstrap_ci(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    k: int,
    *,
    bootstrap: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, list[float] | None]:
    """Percentile-bootstrap intervals for accuracy, balanced accuracy and macro-F1.

    Deterministic for a seed. Resamples are processed in chunks so memory stays bounded for
    large test sets.
    """
    n = int(y_true.shape[0])
    if bootstrap <= 0 or n == 0:
        return dict.fromkeys(CI_METRICS)
    rng = np.random.default_rng(seed)
    codes = y_true.astype(np.int64) * k + y_pred.astype(np.int64)  # (N,) cell of each image
    chunk = max(1, _MAX_CHUNK_ELEMENTS // n)
    stats: dict[str, list[np.ndarray]] = {m: [] for m in CI_METRICS}
    for lo in range(0, bootstrap, chunk):
        r = min(chunk, bootstrap - lo)
        idx = rng.integers(0, n, size=(r, n))  # (R, N)
        cells = codes[idx] + (np.arange(r, dtype=np.int64) * k * k)[:, None]
        cms = np.bincount(cells.ravel(), minlength=r * k * k).reshape(r, k, k)
        for m, v in _summary(cms).items():
            stats[m].append(v)
    alpha = (1.0 - level) / 2.0
    out: dict[str, list[float] | None] = {}
    for m in CI_METRICS:
        lo_hi = np.quantile(np.concatenate(stats[m]), [alpha, 1.0 - alpha])
        out[m] = [float(lo_hi[0]), float(lo_hi[1])]
    return out


def _as_indices(y_true: np.ndarray | Sequence[Any], labels: Sequence[str]) -> np.ndarray:
    arr = np.asarray(y_true)
    if arr.dtype.kind in "US" or arr.dtype == object:
        pos = {name: i for i, name in enumerate(labels)}
        unknown = sorted({str(v) for v in arr.tolist()} - set(pos))
        if unknown:
            raise ValueError(f"y_true names {unknown} are not among the labels {list(labels)}.")
        return np.array([pos[str(v)] for v in arr.tolist()], dtype=np.int64)
    if arr.size and arr.dtype.kind not in "iu" and not np.all(np.equal(np.mod(arr, 1), 0)):
        raise ValueError(f"y_true must hold integer class indices; got dtype {arr.dtype}.")
    return arr.astype(np.int64)


def log_loss(y_true: np.ndarray, y_prob: np.ndarray) -> float | None:
    """Mean negative log-probability of the true class (``None`` for no images)."""
    if y_true.shape[0] == 0:
        return None
    p = y_prob.astype(np.float64)
    p = p / np.clip(p.sum(axis=1, keepdims=True), _EPS, None)
    picked = np.clip(p[np.arange(y_true.shape[0]), y_true], _EPS, 1.0)
    return float(-np.log(picked).mean())


def compute_metrics(
    y_true: np.ndarray | Sequence[Any],
    y_prob: np.ndarray,
    labels: Sequence[str],
    *,
    bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """All metrics of one evaluation as a JSON-able dict (see the module docstring).

    ``y_true``: ``(N,)`` indices into ``labels`` (or the label names); ``y_prob``: ``(N, K)``
    probabilities whose column *i* is ``labels[i]``; predictions are the row argmax.
    """
    labels = list(labels)
    k = len(labels)
    y_prob = np.asarray(y_prob)
    yt = _as_indices(y_true, labels)
    if y_prob.ndim != 2 or y_prob.shape[1] != k or y_prob.shape[0] != yt.shape[0]:
        raise ValueError(
            f"y_prob must have shape (N, K) = ({yt.shape[0]}, {k}) for {yt.shape[0]} labels in "
            f"y_true and labels {labels}; got {y_prob.shape}."
        )
    if yt.size and (yt.min() < 0 or yt.max() >= k):
        raise ValueError(f"y_true holds indices outside [0, {k}) for labels {labels}.")
    n = int(yt.shape[0])
    y_pred = y_prob.argmax(axis=1).astype(np.int64) if n else np.zeros(0, dtype=np.int64)
    cm = confusion_matrix(yt, y_pred, k)
    pc = _per_class(cm)
    summary = _summary(cm)
    row = cm.sum(axis=1, keepdims=True)
    per_class = {
        name: {
            "precision": float(pc["precision"][i]),
            "recall": float(pc["recall"][i]),
            "f1": float(pc["f1"][i]),
            "support": int(pc["support"][i]),
        }
        for i, name in enumerate(labels)
    }
    return {
        "n": n,
        "accuracy": float(summary["accuracy"]) if n else None,
        "balanced_accuracy": float(summary["balanced_accuracy"]) if n else None,
        "macro_f1": float(summary["macro_f1"]) if n else None,
        "log_loss": log_loss(yt, y_prob),
        "per_class": per_class,
        "labels": labels,
        "confusion_matrix": cm.astype(int).tolist(),
        "confusion_matrix_normalized": _safe_div(cm, row).tolist(),
        "ci": bootstrap_ci(yt, y_pred, k, bootstrap=bootstrap, seed=seed),
        "bootstrap": int(bootstrap),
    }
