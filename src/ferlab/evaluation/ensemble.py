"""Soft-voting ensembles of models evaluated on the same split.

Members may have different label sets; the ensemble votes over the *intersection* of their
labels (a class some member cannot predict would get a vote diluted by that member's silence,
so it is left out rather than guessed). Each member's probabilities are restricted to the
intersection and renormalised before the (optionally weighted) average of probabilities.

Calibration: the ensemble's prediction (its ``plain``/``tta`` metrics) averages the members'
uncalibrated probabilities, as before temperatures existed. The *calibrated* ensemble averages
the members' calibrated probabilities (each member's ``softmax(logits / T_member)``: every
member's confidences then mean the same thing before they are mixed); ``metrics["calibration"]``
gives the ECE of both (``ece`` / ``ece_calibrated``), the members' temperatures
(``temperature`` is None: an ensemble has no single one) and, since averaging differently
scaled probabilities can change the argmax, the calibrated ensemble's ``accuracy_calibrated``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ferlab.evaluation.evaluate import (
    EvalResult,
    calibration_metrics,
    load_result,
    write_predictions,
)
from ferlab.evaluation.metrics import compute_metrics
from ferlab.labels import CANONICAL
from ferlab.layout import METRICS, write_json


def _intersection(label_lists: Sequence[Sequence[str]]) -> list[str]:
    common = set(label_lists[0]).intersection(*map(set, label_lists[1:]))
    order = [n for n in CANONICAL if n in common]
    # Names outside the canonical space keep the first member's order.
    return order + [n for n in label_lists[0] if n in common and n not in CANONICAL]


def _weights(weights: Sequence[float] | None, m: int) -> np.ndarray:
    if weights is None:
        return np.full(m, 1.0 / m)
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (m,) or (w < 0).any() or not w.sum() > 0:
        raise ValueError(
            f"Ensemble weights {list(weights)} must be {m} non-negative numbers with a positive sum."
        )
    return w / w.sum()


def soft_vote(
    prob_list: Sequence[np.ndarray],
    label_lists: Sequence[Sequence[str]],
    weights: Sequence[float] | None = None,
) -> tuple[np.ndarray, list[str]]:
    """Average members' probabilities over their shared labels: ``((N, S) float32, labels)``.

    ``prob_list[i]`` is ``(N, len(label_lists[i]))`` for the same N images in the same order.
    """
    if not prob_list or len(prob_list) != len(label_lists):
        raise ValueError(
            f"soft_vote needs one label list per probability array; got {len(prob_list)} arrays "
            f"and {len(label_lists)} label lists."
        )
    n = prob_list[0].shape[0]
    for i, (p, labels) in enumerate(zip(prob_list, label_lists, strict=True)):
        if p.ndim != 2 or p.shape != (n, len(labels)):
            raise ValueError(
                f"Ensemble member {i}: probabilities of shape {p.shape}; expected ({n}, "
                f"{len(labels)}) for labels {list(labels)} and the first member's {n} images."
            )
    shared = _intersection(label_lists)
    if not shared:
        raise ValueError(f"Ensemble members share no label: {[list(x) for x in label_lists]}.")
    w = _weights(weights, len(prob_list))
    total = np.zeros((n, len(shared)), dtype=np.float64)
    for p, labels, wi in zip(prob_list, label_lists, w, strict=True):
        cols = [list(labels).index(name) for name in shared]
        sub = p[:, cols].astype(np.float64)
        total += wi * sub / np.clip(sub.sum(axis=1, keepdims=True), 1e-30, None)
    return total.astype(np.float32), shared


def ensemble_results(
    results: Sequence[EvalResult],
    *,
    weights: Sequence[float] | None = None,
    bootstrap: int = 1000,
    seed: int = 0,
) -> EvalResult:
    """Soft-vote ensemble of several models' results on the *same* split.

    The plain ensemble averages the members' plain probabilities; when every member has TTA
    probabilities, the TTA ensemble averages those. Scores the images every member kept whose
    true class is among the shared labels; ``metrics`` has the shape of ``evaluate_split``'s.
    """
    if not results:
        raise ValueError("ensemble_results needs at least one EvalResult.")
    n_split = results[0].kept_mask.shape[0]
    if any(r.kept_mask.shape[0] != n_split for r in results):
        raise ValueError("Ensemble members were evaluated on splits of different sizes.")
    label_lists = [r.labels for r in results]
    shared = _intersection(label_lists)
    if not shared:
        raise ValueError(f"Ensemble members share no label: {label_lists}.")
    # Index into `shared` of each split image's true class; -1 where dropped by anyone.
    first = results[0]
    lut = np.array([shared.index(n) if n in shared else -1 for n in first.labels], dtype=np.int64)
    truth = np.full(n_split, -1, dtype=np.int64)
    truth[first.kept_mask] = lut[first.y_true]
    keep = np.logical_and.reduce([r.kept_mask for r in results]) & (truth >= 0)
    rows = [np.flatnonzero(keep[r.kept_mask]) for r in results]  # member rows the ensemble keeps
    y_true = truth[keep]
    plain, labels = soft_vote(
        [r.probs_plain[i] for r, i in zip(results, rows, strict=True)], label_lists, weights
    )
    tta: np.ndarray | None = None
    if all(r.probs_tta is not None for r in results):
        tta, _ = soft_vote(
            [r.probs_tta[i] for r, i in zip(results, rows, strict=True) if r.probs_tta is not None],
            label_lists,
            weights,
        )
    temperatures = [_temperature(r) for r in results]
    all_t1 = all(t == 1.0 for t in temperatures)  # nothing rescaled: the same votes
    plain_cal, tta_cal = plain, tta
    if not all_t1:
        plain_cal, _ = soft_vote(
            [_calibrated(r, "plain")[i] for r, i in zip(results, rows, strict=True)],
            label_lists,
            weights,
        )
        if tta is not None:
            tta_cal, _ = soft_vote(
                [_calibrated(r, "tta")[i] for r, i in zip(results, rows, strict=True)],
                label_lists,
                weights,
            )
    dropped = {d for r in results for d in r.metrics.get("dropped_labels", [])}
    dropped |= {n for names in label_lists for n in names if n not in labels}
    metrics: dict[str, Any] = {
        "plain": compute_metrics(y_true, plain, labels, bootstrap=bootstrap, seed=seed),
        "tta": (
            compute_metrics(y_true, tta, labels, bootstrap=bootstrap, seed=seed)
            if tta is not None
            else None
        ),
        "labels": labels,
        "dropped_labels": [n for n in CANONICAL if n in dropped]
        + sorted(d for d in dropped if d not in CANONICAL),
        "n_total": int(n_split),
        "n_dropped_images": int(n_split - keep.sum()),
        "n_members": len(results),
        "weights": _weights(weights, len(results)).tolist(),
        "calibration": calibration_metrics(
            y_true, plain, tta, plain_cal, tta_cal, None, member_temperatures=temperatures
        ),
    }
    return EvalResult(metrics, plain, tta, y_true, keep, plain_cal, tta_cal)


def _temperature(result: EvalResult) -> float:
    """A member's temperature as its metrics recorded it (1 for results from before)."""
    value = (result.metrics.get("calibration") or {}).get("temperature")
    return 1.0 if value is None else float(value)


def _calibrated(result: EvalResult, which: str) -> np.ndarray:
    """A member's calibrated probabilities (its plain ones when it has none: T = 1)."""
    if which == "plain":
        return (
            result.calibrated_plain if result.calibrated_plain is not None else result.probs_plain
        )
    arr = result.calibrated_tta if result.calibrated_tta is not None else result.probs_tta
    assert arr is not None
    return arr


def ensemble_from_dirs(
    members: Mapping[str, Path],
    out_dir: Path,
    *,
    ids: Mapping[str, Any] | None = None,
    bootstrap: int = 1000,
    seed: int = 0,
    weights: Sequence[float] | None = None,
) -> EvalResult:
    """Soft-vote the saved evaluations in ``members`` (model name -> evaluation folder).

    Each folder holds ``probs.npz`` (and ``metrics.json``) as ``write_predictions`` wrote them,
    for the same test images. Writes ``metrics.json`` (``ids`` first, then ``members``, the
    ensemble's metrics, throughput and TTA views), ``predictions.csv`` and ``probs.npz`` into
    ``out_dir`` and returns the result. The caller names the members: nothing is globbed, so
    only the evaluations it planned take part. Members scored on different images are an error.
    """
    if len(members) < 2:
        raise ValueError(f"An ensemble needs at least two members; got {list(members)}.")
    names = list(members)
    loaded = [load_result(members[m]) for m in names]
    keys = loaded[0][1]
    for name, (_, other) in zip(names[1:], loaded[1:], strict=True):
        if other != keys:
            raise ValueError(
                f"Cannot ensemble {members[name]} with {members[names[0]]}: they were evaluated "
                "on different images; rerun `ferlab run` to refresh the evaluations."
            )
    results = [r for r, _ in loaded]
    ens = ensemble_results(results, weights=weights, bootstrap=bootstrap, seed=seed)
    ips = [float(r.metrics.get("throughput_ips") or 0.0) for r in results]
    views = {r.metrics.get("tta_views") for r in results}
    write_predictions(out_dir, keys, ens)
    metrics = {
        **dict(ids or {}),
        "members": names,
        **ens.metrics,
        # The members run one after another: their times per image add up.
        "throughput_ips": 1.0 / sum(1.0 / v for v in ips) if all(v > 0 for v in ips) else None,
        "tta_views": views.pop() if len(views) == 1 else None,
    }
    write_json(Path(out_dir) / METRICS, metrics)
    ens.metrics = metrics
    return ens
