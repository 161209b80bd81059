"""Probabilities you can read as confidences: temperature scaling and calibration error.

A classifier trained with cross entropy is usually over-confident (or, after few epochs,
under-confident): of the images it calls "happy, 0.9", far fewer (or more) than 90% are happy.
Temperature scaling (Guo et al., 2017, "On Calibration of Modern Neural Networks") fixes that
with one scalar: the calibrated probabilities are ``softmax(logits / T)``. ``T`` is fitted after
training on the *validation* split by minimising the negative log-likelihood (NLL); the test
split is never read. Dividing every logit by the same positive ``T`` keeps their order, so the
predicted class, and with it accuracy and every confusion matrix, is unchanged.

The fit is a deterministic bounded 1-D search: golden-section search over ``log T`` in
``[log T_MIN, log T_MAX]``. The NLL is convex in ``1 / T`` (a log-sum-exp of linear functions
minus a linear one), hence unimodal in ``log T``, so the search finds the minimum to the
tolerance without a learning rate or a random start; the optimiser works in float64 numpy.

Expected calibration error (ECE) with ``ECE_BINS`` = 15 equal-width confidence bins, where
the confidence of an image is its largest probability: bin ``b`` (0-based) holds confidences in
``(b / 15, (b + 1) / 15]`` (the first bin also holds 0), and
``ECE = sum_b (n_b / N) * |accuracy_b - mean confidence_b|`` over the non-empty bins.
``reliability`` gives the per-bin numbers behind a reliability diagram (empty bins: count 0,
accuracy and confidence ``None``), so a report can draw it from metrics.json alone.

Everything here is numpy; the logits come from ``ferlab.evaluation.tta.predict_logits``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ferlab.evaluation.metrics import log_loss

ECE_BINS = 15
T_MIN, T_MAX = 0.05, 20.0  # the search range of the temperature
_TOL = 1e-7  # width of the final bracket, in log T
_GOLDEN = (math.sqrt(5) - 1) / 2


# ----------------------------------------------------------------------------- NLL and the fit


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def nll(logits: np.ndarray, targets: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of ``targets`` under ``softmax(logits / temperature)``."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    y = np.asarray(targets, dtype=np.int64)
    if z.shape[0] == 0:
        return float("nan")
    return float(-_log_softmax(z)[np.arange(y.shape[0]), y].mean())


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """``softmax(logits / temperature)`` over the last axis, float32."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    return np.exp(_log_softmax(z.reshape(-1, z.shape[-1]))).reshape(z.shape).astype(np.float32)


@dataclass(frozen=True)
class TemperatureFit:
    """The outcome of fitting a temperature, as recorded in a run's ``fit.json``."""

    temperature: float
    n: int  # images it was fitted on
    nll_before: float | None  # at T = 1
    nll_after: float | None  # at the fitted T
    split: str | None  # the split it was fitted on ("val"), or None when there was none
    method: str  # "golden-section search over log T" or "none"
    at_bound: bool  # the optimum lies at the edge of [T_MIN, T_MAX]
    note: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def unfitted(reason: str) -> TemperatureFit:
    """T = 1 with the reason (no validation split, no images, ...), for the fit record."""
    return TemperatureFit(1.0, 0, None, None, None, "none", False, reason)


def fit_temperature(
    logits: np.ndarray, targets: np.ndarray | Sequence[int], *, split: str = "val"
) -> TemperatureFit:
    """The temperature minimising the NLL of ``softmax(logits / T)`` for ``targets``.

    ``logits``: ``(N, K)``; ``targets``: ``(N,)`` class indices. Deterministic. With no images,
    or logits that are not finite, the result is T = 1 with a note saying why.
    """
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(targets, dtype=np.int64)
    if z.ndim != 2 or y.shape != (z.shape[0],):
        raise ValueError(
            f"fit_temperature needs logits (N, K) and targets (N,); got {z.shape} and {y.shape}."
        )
    if z.shape[0] == 0:
        return unfitted(f"the {split} split has no images: temperature left at 1")
    if y.min() < 0 or y.max() >= z.shape[1]:
        raise ValueError(f"targets hold indices outside [0, {z.shape[1]}).")
    if not np.isfinite(z).all():
        return unfitted(f"the model gave non-finite logits on the {split} split: T left at 1")

    def f(log_t: float) -> float:
        return nll(z, y, math.exp(log_t))

    lo, hi = math.log(T_MIN), math.log(T_MAX)
    a, b = lo + (1 - _GOLDEN) * (hi - lo), lo + _GOLDEN * (hi - lo)
    fa, fb = f(a), f(b)
    while hi - lo > _TOL:
        if fa <= fb:  # the minimum lies in [lo, b]
            hi, b, fb = b, a, fa
            a = lo + (1 - _GOLDEN) * (hi - lo)
            fa = f(a)
        else:  # in [a, hi]
            lo, a, fa = a, b, fb
            b = lo + _GOLDEN * (hi - lo)
            fb = f(b)
    log_t = (lo + hi) / 2
    before, after = f(0.0), f(log_t)
    if not after <= before:  # T = 1 is (within rounding) as good: keep the model as it is
        log_t, after = 0.0, before
    t = math.exp(log_t)
    at_bound = min(abs(log_t - math.log(T_MIN)), abs(log_t - math.log(T_MAX))) < 1e-4
    note = (
        f"fitted on {z.shape[0]} {split} images: NLL {before:.4f} at T=1 -> {after:.4f} at "
        f"T={t:.4g}"
    )
    if at_bound:
        note += f" (at the edge of the search range [{T_MIN}, {T_MAX}])"
    return TemperatureFit(
        temperature=t,
        n=int(z.shape[0]),
        nll_before=before,
        nll_after=after,
        split=split,
        method="golden-section search over log T",
        at_bound=at_bound,
        note=note,
    )


# ----------------------------------------------------------------------------- calibration error


def bin_edges(bins: int = ECE_BINS) -> np.ndarray:
    """``bins + 1`` equal-width edges over [0, 1] (``b / bins``, exactly as written)."""
    return np.arange(bins + 1, dtype=np.float64) / bins


def bin_index(confidence: np.ndarray, bins: int = ECE_BINS) -> np.ndarray:
    """Bin of each confidence: ``b`` for ``(b / bins, (b + 1) / bins]``, 0 also for 0."""
    c = np.asarray(confidence, dtype=np.float64)
    return np.clip(np.searchsorted(bin_edges(bins), c, side="left") - 1, 0, bins - 1)


def _confidence_and_hits(probs: np.ndarray, y_true: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(y_true, dtype=np.int64)
    if p.ndim != 2 or y.shape != (p.shape[0],):
        raise ValueError(f"probabilities (N, K) and labels (N,) expected; got {p.shape}, {y.shape}")
    if p.shape[0] == 0:
        return np.zeros(0), np.zeros(0, dtype=bool)
    return p.max(axis=1), p.argmax(axis=1) == y


def reliability(probs: np.ndarray, y_true: np.ndarray, bins: int = ECE_BINS) -> dict[str, Any]:
    """Per confidence bin: ``count``, mean ``confidence`` and ``accuracy`` (None when empty),
    with the ``edges`` and the ``ece`` they add up to; JSON-able (metrics.json keeps it)."""
    conf, hits = _confidence_and_hits(probs, y_true)
    idx = bin_index(conf, bins)
    count = np.bincount(idx, minlength=bins)
    conf_sum = np.bincount(idx, weights=conf, minlength=bins)
    hit_sum = np.bincount(idx, weights=hits.astype(np.float64), minlength=bins)
    n = int(conf.shape[0])
    acc = [float(hit_sum[b] / count[b]) if count[b] else None for b in range(bins)]
    mean_conf = [float(conf_sum[b] / count[b]) if count[b] else None for b in range(bins)]
    ece = (
        float(sum(abs(hit_sum[b] - conf_sum[b]) for b in range(bins) if count[b]) / n)
        if n
        else None
    )
    return {
        "bins": bins,
        "edges": bin_edges(bins).tolist(),
        "count": count.astype(int).tolist(),
        "confidence": mean_conf,
        "accuracy": acc,
        "ece": ece,
    }


def expected_calibration_error(
    probs: np.ndarray, y_true: np.ndarray, bins: int = ECE_BINS
) -> float | None:
    """ECE with ``bins`` equal-width confidence bins (see the module docstring); None for no
    images."""
    ece = reliability(probs, y_true, bins)["ece"]
    return None if ece is None else float(ece)


def calibration_block(
    y_true: np.ndarray,
    probs: np.ndarray,
    probs_calibrated: np.ndarray,
    bins: int = ECE_BINS,
) -> dict[str, Any]:
    """ECE, NLL and reliability bins before (T = 1) and after calibration, for metrics.json."""
    y = np.asarray(y_true, dtype=np.int64)
    before = reliability(probs, y, bins)
    after = reliability(probs_calibrated, y, bins)
    return {
        "ece": before["ece"],
        "ece_calibrated": after["ece"],
        "log_loss": log_loss(y, np.asarray(probs)),
        "log_loss_calibrated": log_loss(y, np.asarray(probs_calibrated)),
        "reliability": before,
        "reliability_calibrated": after,
    }
