"""Evaluate a model on a split: label-set intersection, one TTA pass, metrics and their files.

A model trained on one label set and tested on a dataset with another is scored on the
*shared* classes only: the model is restricted to its outputs for the shared classes (softmax
over their logits, per TTA view, which is the renormalised restriction of its probabilities),
and test images whose true class the model cannot predict are
excluded and counted (``n_dropped_images``). ``dropped_labels`` names every class left out,
from either side, so a report can say so.

Calibration: the model's temperature (``ModelMeta.temperature``, fitted on the validation
split after training) gives the calibrated probabilities ``softmax(logits / T)`` of the same
forward pass. ``metrics["plain"]``/``["tta"]`` score the uncalibrated probabilities (T = 1;
accuracy and every count are the same either way: T does not change the argmax);
``metrics["calibration"]`` holds the temperature and, for plain and TTA predictions, the
expected calibration error (15 equal-width confidence bins, ``ferlab.calibration``) and the
log loss before (``ece``, ``log_loss``) and after (``ece_calibrated``, ``log_loss_calibrated``)
with the reliability-diagram bins of both.

The files of an evaluation (``metrics.json``, ``predictions.csv``, ``probs.npz``; names in
``ferlab.layout``) are written atomically; ensembles and reports read them back.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ferlab.calibration import ECE_BINS, calibration_block
from ferlab.config import TTAConfig
from ferlab.data.base import ArraySplit
from ferlab.evaluation.metrics import compute_metrics
from ferlab.evaluation.tta import MetaLike, n_views, predict_all
from ferlab.labels import CANONICAL, INDEX
from ferlab.layout import METRICS, PREDICTIONS, PROBS, atomic_write, read_json

# ----------------------------------------------------------------------------- label alignment


@dataclass(frozen=True)
class Alignment:
    """How a model's outputs line up with a dataset's classes."""

    shared: list[str]  # classes both know, canonical order
    dropped_from_model: list[str]  # model outputs the dataset has no images for
    dropped_from_data: list[str]  # dataset classes the model cannot predict (images excluded)
    model_idx: np.ndarray  # (S,) model output column of each shared class
    data_idx: np.ndarray  # (S,) canonical index of each shared class

    @property
    def dropped(self) -> list[str]:
        """Every class left out, from either side, in canonical order."""
        gone = set(self.dropped_from_model) | set(self.dropped_from_data)
        return [n for n in CANONICAL if n in gone]

    def keep_mask(self, labels_canonical: np.ndarray) -> np.ndarray:
        """``(N,)`` bool: images whose true class is shared."""
        return np.isin(np.asarray(labels_canonical), self.data_idx)

    def to_shared(self, labels_canonical: np.ndarray) -> np.ndarray:
        """Canonical indices of shared classes -> indices into ``shared``."""
        lut = np.full(len(CANONICAL), -1, dtype=np.int64)
        lut[self.data_idx] = np.arange(len(self.shared))
        out = lut[np.asarray(labels_canonical, dtype=np.int64)]
        if (out < 0).any():
            raise ValueError(
                "to_shared() got labels outside the shared classes; apply keep_mask first."
            )
        return out

    def restrict(self, probs: np.ndarray) -> np.ndarray:
        """Model probabilities ``(N, K_model)`` -> shared-class probabilities ``(N, S)``, rows summing to 1."""
        sub = probs[:, self.model_idx].astype(np.float64)
        total = sub.sum(axis=1, keepdims=True)
        return (sub / np.clip(total, 1e-30, None)).astype(np.float32)


def _check_canonical(names: Sequence[str], what: str) -> None:
    bad = [n for n in names if n not in INDEX]
    if bad:
        raise ValueError(
            f"{what} {list(names)} contain non-canonical names {bad}; expected names among "
            f"{list(CANONICAL)} (see ferlab.labels.canonical_name)."
        )


def align_labels(model_labels: Sequence[str], data_labels: Sequence[str]) -> Alignment:
    """Match a model's output labels with a dataset's labels (both canonical names)."""
    _check_canonical(model_labels, "Model labels")
    _check_canonical(data_labels, "Dataset labels")
    shared = [n for n in CANONICAL if n in model_labels and n in data_labels]
    position = {name: i for i, name in enumerate(model_labels)}
    return Alignment(
        shared=shared,
        dropped_from_model=[n for n in CANONICAL if n in model_labels and n not in data_labels],
        dropped_from_data=[n for n in CANONICAL if n in data_labels and n not in model_labels],
        model_idx=np.array([position[n] for n in shared], dtype=np.int64),
        data_idx=np.array([INDEX[n] for n in shared], dtype=np.int64),
    )


# ----------------------------------------------------------------------------- evaluation


@dataclass
class EvalResult:
    """Metrics plus the per-image arrays behind them (kept images only, in split order)."""

    metrics: dict[str, Any]
    probs_plain: np.ndarray  # (M, S) shared-class probabilities, identity view
    probs_tta: np.ndarray | None  # (M, S) averaged over the TTA views, or None
    y_true: np.ndarray  # (M,) indices into metrics["labels"]
    kept_mask: np.ndarray  # (N,) bool over the split: the M images that were scored
    # softmax(logits / T) of the same pass (None where not computed, e.g. an old probs.npz)
    calibrated_plain: np.ndarray | None = None
    calibrated_tta: np.ndarray | None = None

    @property
    def labels(self) -> list[str]:
        return list(self.metrics["labels"])

    def write_predictions(self, path: str | Path, keys: Sequence[str]) -> None:
        """Write predictions.csv for this result; ``keys`` are the whole split's keys."""
        if len(keys) != self.kept_mask.shape[0]:
            raise ValueError(
                f"Got {len(keys)} keys for a split of {self.kept_mask.shape[0]} images; pass the "
                "keys of the split that was evaluated (ArraySplit.keys)."
            )
        kept = [k for k, keep in zip(keys, self.kept_mask.tolist(), strict=True) if keep]
        main = self.probs_tta if self.probs_tta is not None else self.probs_plain
        plain = self.probs_plain if self.probs_tta is not None else None
        write_predictions_csv(path, kept, self.y_true, main, self.labels, probs_plain=plain)


def evaluate_split(
    model: nn.Module,
    meta: MetaLike,
    images: np.ndarray,
    labels_canonical: np.ndarray,
    data_labels: Sequence[str],
    *,
    tta: TTAConfig | None = None,
    batch_size: int = 256,
    bootstrap: int = 1000,
    seed: int = 0,
    device: str | torch.device | None = None,
    temperature: float | None = None,
) -> EvalResult:
    """Score a model on one split, on the classes it shares with the dataset.

    One forward pass over all TTA views gives both the plain metrics (view 0, identity) and the
    TTA metrics (``metrics["tta"]`` is None when ``tta`` is off). Only images whose true class is
    shared are predicted; the others are counted in ``n_dropped_images``. ``temperature``
    (default: ``meta.temperature``, 1 when the metadata has none) gives the calibrated
    probabilities and ``metrics["calibration"]`` (see the module docstring).
    """
    if temperature is None:
        temperature = float(getattr(meta, "temperature", 1.0))
    labels_canonical = np.asarray(labels_canonical, dtype=np.int64)
    if labels_canonical.shape[0] != images.shape[0]:
        raise ValueError(
            f"Got {images.shape[0]} images but {labels_canonical.shape[0]} labels; they must match."
        )
    align = align_labels(list(meta.labels), list(data_labels))
    if not align.shared:
        raise ValueError(
            f"The model's labels {list(meta.labels)} and the dataset's labels {list(data_labels)} "
            "share no class, so there is nothing to score."
        )
    kept = align.keep_mask(labels_canonical)
    pred = predict_all(
        model,
        images,
        meta,
        tta,
        batch_size,
        device,
        columns=align.model_idx.tolist(),
        rows=None if kept.all() else np.flatnonzero(kept),
        temperature=temperature,
    )
    probs_plain, probs_tta, ips = pred.plain, pred.tta, pred.ips
    y_true = align.to_shared(labels_canonical[kept])
    use_tta = tta is not None and tta.enabled
    metrics: dict[str, Any] = {
        "plain": compute_metrics(y_true, probs_plain, align.shared, bootstrap=bootstrap, seed=seed),
        "tta": (
            compute_metrics(y_true, probs_tta, align.shared, bootstrap=bootstrap, seed=seed)
            if probs_tta is not None
            else None
        ),
        "labels": align.shared,
        "dropped_labels": align.dropped,
        "dropped_from_model": align.dropped_from_model,
        "dropped_from_data": align.dropped_from_data,
        "n_total": int(images.shape[0]),
        "n_dropped_images": int((~kept).sum()),
        "throughput_ips": float(ips),
        "tta_views": n_views(tta),
        "tta_config": tta.model_dump(mode="json") if use_tta and tta is not None else None,
        "calibration": calibration_metrics(
            y_true, pred.plain, pred.tta, pred.plain_calibrated, pred.tta_calibrated, temperature
        ),
    }
    return EvalResult(
        metrics, probs_plain, probs_tta, y_true, kept, pred.plain_calibrated, pred.tta_calibrated
    )


def calibration_metrics(
    y_true: np.ndarray,
    plain: np.ndarray,
    tta: np.ndarray | None,
    plain_calibrated: np.ndarray,
    tta_calibrated: np.ndarray | None,
    temperature: float | None,
    *,
    member_temperatures: Sequence[float] | None = None,
) -> dict[str, Any]:
    """``metrics["calibration"]``, the one builder of that block: the temperature and, for plain
    and TTA predictions, ECE and log loss before and after calibration with their reliability
    bins. An ensemble has no temperature of its own: it gives ``member_temperatures`` (each
    member's, which calibrated its votes) and each block also has the accuracy of the
    calibrated soft vote (``accuracy_calibrated``)."""
    n = y_true.shape[0]

    def block(p: np.ndarray, pc: np.ndarray) -> dict[str, Any]:
        out = calibration_block(y_true, p, pc)
        if member_temperatures is not None:
            out["accuracy_calibrated"] = float((pc.argmax(axis=1) == y_true).mean()) if n else None
        return out

    metrics: dict[str, Any] = {"temperature": temperature}
    if member_temperatures is not None:
        metrics["member_temperatures"] = list(member_temperatures)
    metrics["bins"] = ECE_BINS
    metrics["plain"] = block(plain, plain_calibrated)
    metrics["tta"] = (
        block(tta, tta_calibrated) if tta is not None and tta_calibrated is not None else None
    )
    return metrics


def evaluate(
    model: nn.Module,
    meta: MetaLike,
    split: ArraySplit,
    data_labels: Sequence[str],
    tta: TTAConfig | None = None,
    *,
    batch_size: int = 256,
    bootstrap: int = 1000,
    seed: int = 0,
    device: str | torch.device | None = None,
    temperature: float | None = None,
) -> EvalResult:
    """``evaluate_split`` on an ``ArraySplit`` (images, canonical labels)."""
    return evaluate_split(
        model,
        meta,
        split.images,
        split.labels,
        data_labels,
        tta=tta,
        batch_size=batch_size,
        bootstrap=bootstrap,
        seed=seed,
        device=device,
        temperature=temperature,
    )


FLAT_KEYS: tuple[str, ...] = (
    "accuracy",
    "balanced_accuracy",
    "macro_f1",
    "n",
    "per_class",
    "confusion_matrix",
    "labels",
    "ci",
)


def flat_metrics(result: EvalResult | Mapping[str, Any], use_tta: bool) -> dict[str, Any]:
    """The ``ferlab evaluate --json`` object: accuracy, balanced_accuracy, macro_f1, n,
    per_class, confusion_matrix, labels, dropped_labels and ci, plus calibration: ``temperature``
    (the model's T), ``ece`` (expected calibration error, 15 bins, of the uncalibrated
    probabilities) and ``ece_calibrated`` (of ``softmax(logits / T)``), for the plain or TTA
    predictions as asked (None in results written before calibration existed).

    ``result`` is an ``EvalResult`` or its ``metrics`` dict (as read back from metrics.json).
    """
    metrics = result.metrics if isinstance(result, EvalResult) else result
    which = "tta" if use_tta else "plain"
    chosen = metrics.get(which)
    if chosen is None:
        raise ValueError(
            f"These results have no {which!r} metrics; evaluate with a TTA config "
            "(e.g. --tta) to get them, or ask for the plain ones."
        )
    flat = {key: chosen[key] for key in FLAT_KEYS}
    flat["dropped_labels"] = list(metrics.get("dropped_labels", []))
    calibration = metrics.get("calibration") or {}
    block = calibration.get(which) or {}
    flat["temperature"] = calibration.get("temperature")
    flat["ece"] = block.get("ece")
    flat["ece_calibrated"] = block.get("ece_calibrated")
    return flat


# ----------------------------------------------------------------------------- files


def write_predictions_csv(
    path: str | Path,
    keys: Sequence[str],
    y_true: np.ndarray,
    probs: np.ndarray,
    labels: Sequence[str],
    *,
    probs_plain: np.ndarray | None = None,
) -> None:
    """Write one row per image, atomically: ``key, true, pred[, pred_plain], prob_<label>...``.

    ``true``/``pred`` are label names; ``pred`` is the argmax of ``probs`` (the TTA probabilities
    when there are some) and ``pred_plain`` that of ``probs_plain`` when given.
    """
    labels = list(labels)
    n = len(keys)
    if y_true.shape[0] != n or probs.shape != (n, len(labels)):
        raise ValueError(
            f"write_predictions_csv: {n} keys, {y_true.shape[0]} labels and probs of shape "
            f"{probs.shape} for {len(labels)} classes do not match."
        )
    if probs_plain is not None and probs_plain.shape != probs.shape:
        raise ValueError(f"probs_plain has shape {probs_plain.shape}; expected {probs.shape}.")
    pred = probs.argmax(axis=1) if n else np.zeros(0, dtype=np.int64)
    pred_plain = probs_plain.argmax(axis=1) if probs_plain is not None and n else None
    buf = io.StringIO()
    w = csv.writer(buf)
    head = ["key", "true", "pred"] + (["pred_plain"] if probs_plain is not None else [])
    w.writerow(head + [f"prob_{name}" for name in labels])
    for i in range(n):
        row = [keys[i], labels[int(y_true[i])], labels[int(pred[i])]]
        if pred_plain is not None:
            row.append(labels[int(pred_plain[i])])
        w.writerow(row + [f"{p:.6g}" for p in probs[i].tolist()])
    atomic_write(path, buf.getvalue())


def write_predictions(out_dir: str | Path, keys: Sequence[str], result: EvalResult) -> None:
    """Write ``predictions.csv`` (for people) and ``probs.npz`` (for ensembles) into ``out_dir``.

    ``keys`` are the whole evaluated split's keys. ``probs.npz`` holds ``keys`` (N,),
    ``kept_mask`` (N,), ``y_true`` (M,), ``probs_plain`` (M, S), ``probs_tta`` (M, S) when
    there is TTA, ``probs_plain_calibrated`` / ``probs_tta_calibrated`` (softmax(logits / T))
    when T != 1, and ``labels`` (S,), so ``load_result`` can rebuild the ``EvalResult``.
    ``predictions.csv`` shows the uncalibrated probabilities (the predicted class is the same).
    """
    out = Path(out_dir)
    result.write_predictions(out / PREDICTIONS, keys)
    arrays: dict[str, np.ndarray] = {
        "keys": np.asarray(list(keys), dtype=str),
        "kept_mask": result.kept_mask.astype(bool),
        "y_true": result.y_true.astype(np.int64),
        "probs_plain": result.probs_plain.astype(np.float32),
        "labels": np.asarray(result.labels, dtype=str),
    }
    if result.probs_tta is not None:
        arrays["probs_tta"] = result.probs_tta.astype(np.float32)
    # Calibrated arrays only where they differ (T != 1): a missing one reads back as T = 1.
    if result.calibrated_plain is not None and result.calibrated_plain is not result.probs_plain:
        arrays["probs_plain_calibrated"] = result.calibrated_plain.astype(np.float32)
    if result.calibrated_tta is not None and result.calibrated_tta is not result.probs_tta:
        arrays["probs_tta_calibrated"] = result.calibrated_tta.astype(np.float32)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)  # type: ignore[arg-type]
    atomic_write(out / PROBS, buf.getvalue())


def load_result(out_dir: str | Path) -> tuple[EvalResult, list[str]]:
    """Read back ``write_predictions``' ``probs.npz`` (and ``metrics.json`` when present).

    Returns the ``EvalResult`` and the split's keys. Without a metrics file, ``metrics`` holds
    only ``labels``.
    """
    out = Path(out_dir)
    path = out / PROBS
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {name: z[name] for name in z.files}
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(
            f"{path}: cannot read saved probabilities ({e}); delete the folder and rerun the evaluation."
        ) from e
    missing = {"keys", "kept_mask", "y_true", "probs_plain", "labels"} - set(data)
    if missing:
        raise ValueError(f"{path} lacks the arrays {sorted(missing)}; rerun the evaluation.")
    metrics: dict[str, Any] = {}
    if (out / METRICS).exists():
        metrics = read_json(out / METRICS)
    metrics["labels"] = [str(x) for x in data["labels"].tolist()]
    result = EvalResult(
        metrics=metrics,
        probs_plain=data["probs_plain"],
        probs_tta=data.get("probs_tta"),
        y_true=data["y_true"],
        kept_mask=data["kept_mask"].astype(bool),
        # absent: T = 1 (or an evaluation from before calibration, which is uncalibrated)
        calibrated_plain=data.get("probs_plain_calibrated", data["probs_plain"]),
        calibrated_tta=data.get("probs_tta_calibrated", data.get("probs_tta")),
    )
    return result, [str(k) for k in data["keys"].tolist()]
