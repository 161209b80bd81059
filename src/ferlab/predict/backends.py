"""The classifier behind ``ferlab predict``: trained weights (PyTorch) or an exported ``.onnx``.

Both backends take faces already prepared at the model's input size and channels, uint8
``(N, S, S, C)``, and return calibrated class probabilities ``(N, K)``: the logits are divided
by the temperature fitted after training (``ModelMeta.temperature``, 1.0 when absent) before the
softmax. With TTA the probabilities of the identity and horizontal-flip views are averaged, as
``ferlab.evaluation.tta`` does for ``ferlab evaluate``.

Where the weights come from:

- a run folder (``weights.safetensors`` + ``meta.json``) or the weights file itself: PyTorch,
  rebuilt with ``ferlab.models.load_model``; an experiment folder holding exactly one run is
  that run, one holding several is an error listing them;
- an ``.onnx`` file, or ``backend="onnxruntime"`` with a run folder (then ``<run>/model.onnx``):
  onnxruntime, with the metadata of the sidecar ``<same stem>.json`` written by
  ``ferlab export``. The graph takes ``pixels`` float32 NCHW in [0, 1] and outputs ``logits``
  and ``probs`` (normalisation and temperature inside); a graph exported without a dynamic
  batch runs one face at a time.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ferlab.evaluation.tta import n_views, predict_all, recorded_tta, tta_views
from ferlab.labels import CANONICAL
from ferlab.layout import META, WEIGHTS
from ferlab.models import load_model
from ferlab.models.errors import (
    CorruptWeightsError,
    WeightsError,
    WeightsMetadataError,
    WeightsNotFoundError,
    one_line,
)
from ferlab.models.meta import resolve_weights

BACKENDS = ("torch", "onnxruntime")
ONNX_NAME = "model.onnx"  # what ``ferlab export`` writes into a run folder by default
ONNX_INPUT = "pixels"
ONNX_PROBS = "probs"
# How deep below a folder given as --weights runs are looked for (experiment/runs/<data>/<model>)
RUN_SEARCH_DEPTH = 4
_LISTED_RUNS = 5


class AmbiguousWeightsError(WeightsError):
    """A folder given as weights that holds several runs: which one is meant cannot be told."""


class OnnxToolsMissing(WeightsError):
    """The onnxruntime backend was asked for but onnxruntime is not installed."""


class Classifier(Protocol):
    """What predict needs from a backend."""

    backend: str
    source: Path
    labels: list[str]
    image_size: int
    channels: int
    temperature: float
    # How the model was trained: ``{"data": <the run's data spec: face_crop, face_margin,
    # color...>, "tta": <its evaluation's TTA>}`` ({} when the weights do not record it).
    trained: dict[str, Any]

    def probs(self, faces: np.ndarray) -> np.ndarray:
        """Class probabilities ``(N, K)`` float32 for uint8 faces ``(N, S, S, C)``."""
        ...


def padded_batches(
    run: Callable[[np.ndarray], np.ndarray], x: np.ndarray, batch_size: int
) -> np.ndarray:
    """``run`` over ``x`` in chunks of ``batch_size``, each padded (with zeros, whose outputs
    are dropped) to the next power of two, at most ``batch_size``.

    The number of faces waiting for a batch varies from one batch to the next; with a few
    padded sizes the backend compiles and caches kernels for at most log2(batch_size) + 1
    input shapes instead of one per count, so memory stops growing early over a long video
    (peak RSS with haar at 50, 500, 1500 frames, bench/predict.py's child: 649, 676, 671 MiB;
    unpadded 646, 703, 752 MiB, and 759 at 3000).
    """
    out = []
    for lo in range(0, len(x), batch_size):
        chunk = x[lo : lo + batch_size]
        n = len(chunk)
        size = min(1 << (n - 1).bit_length(), batch_size)
        if size > n:
            pad = np.zeros((size - n, *chunk.shape[1:]), dtype=chunk.dtype)
            chunk = np.concatenate([chunk, pad])
        out.append(run(chunk)[:n])
    return np.concatenate(out, axis=0)


# ------------------------------------------------------------------------------ locating


def find_runs(folder: Path, depth: int = RUN_SEARCH_DEPTH) -> list[Path]:
    """Run folders (holding ``weights.safetensors``) at or below ``folder``, sorted; hidden and
    litter folders are not entered."""
    from ferlab.data.adapters.utils import litter_kind  # lazy: PIL

    found: list[Path] = []
    if (folder / WEIGHTS).is_file():
        return [folder]
    if depth <= 0:
        return found
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError:
        return found
    for entry in entries:
        try:
            is_dir = entry.is_dir()
        except OSError:
            continue
        if is_dir and litter_kind(entry.name, is_dir=True) is None:
            found += find_runs(Path(entry.path), depth - 1)
    return found


def locate_weights(weights: str | os.PathLike[str], backend: str | None = None) -> tuple[str, Path]:
    """``(backend, path)`` for what the user gave as ``--weights``.

    ``backend`` None picks onnxruntime for an ``.onnx`` file and PyTorch otherwise. The path is
    a weights file (or run folder) for PyTorch and an ``.onnx`` file for onnxruntime.
    """
    if backend is not None and backend not in BACKENDS:
        raise WeightsError(f"Unknown backend {backend!r}; use one of {', '.join(BACKENDS)}.")
    path = resolve_weights(weights)
    if not path.exists():
        raise WeightsNotFoundError(
            f"No weights at {path}: pass a run folder (holding {WEIGHTS} and {META}), its "
            f"{WEIGHTS}, or an .onnx file written by ferlab export."
        )
    if path.is_file() and path.suffix.lower() == ".onnx":
        if backend == "torch":
            raise WeightsError(
                f"{path} is an ONNX file, which runs with --backend onnxruntime; for the "
                "PyTorch backend pass the run folder it was exported from."
            )
        return "onnxruntime", path
    if path.is_dir():
        path = _one_run(path)
    if backend == "onnxruntime":
        run = path if path.is_dir() else path.parent
        onnx = run / ONNX_NAME
        if not onnx.is_file():
            raise WeightsNotFoundError(
                f"--backend onnxruntime needs the exported model {onnx}, which does not exist: "
                f"make it with `ferlab export --weights {run} --format onnx`, or pass an .onnx "
                "file as --weights."
            )
        return "onnxruntime", onnx
    return "torch", path


def _one_run(folder: Path) -> Path:
    runs = find_runs(folder)
    if not runs:
        raise WeightsNotFoundError(
            f"{folder} holds no trained model: expected a run folder with {WEIGHTS} and "
            f"{META} (ferlab train writes one under <experiment>/runs/<dataset>/<model>), or an "
            ".onnx file written by ferlab export."
        )
    if len(runs) > 1:
        listed = ", ".join(str(r) for r in runs[:_LISTED_RUNS])
        more = f" and {len(runs) - _LISTED_RUNS} more" if len(runs) > _LISTED_RUNS else ""
        raise AmbiguousWeightsError(
            f"{folder} holds {len(runs)} runs ({listed}{more}); --weights needs one run: pass "
            f"its folder (holding {WEIGHTS} and {META}), e.g. --weights {runs[0]}."
        )
    return runs[0]


# ------------------------------------------------------------------------------ PyTorch


def _temperature(value: Any, where: str) -> float:
    try:
        t = float(value)
    except (TypeError, ValueError):
        t = float("nan")
    if not (math.isfinite(t) and t > 0):
        raise WeightsMetadataError(
            f"{where}: temperature must be a positive number, got {value!r}; fix it there or "
            "fit it again (it divides the logits before the softmax)."
        )
    return t


@dataclass
class TorchClassifier:
    """A ferlab model rebuilt from its weights and metadata, run with PyTorch."""

    model: Any  # torch.nn.Module (lazily imported)
    meta: Any  # ferlab.models.ModelMeta
    source: Path
    tta: bool = False
    batch_size: int = 64
    device: str | None = None
    backend: str = "torch"
    labels: list[str] = field(init=False)
    image_size: int = field(init=False)
    channels: int = field(init=False)
    temperature: float = field(init=False)
    trained: dict[str, Any] = field(init=False)

    def __post_init__(self) -> None:
        extra = getattr(self.meta, "extra", None) or {}
        self.trained = {"data": dict(extra.get("data") or {}), "tta": extra.get("tta")}
        self.labels = list(self.meta.labels)
        self.image_size = int(self.meta.image_size)
        self.channels = int(self.meta.channels)
        self.temperature = _temperature(
            getattr(self.meta, "temperature", 1.0), f"the metadata of {self.source}"
        )

    def probs(self, faces: np.ndarray) -> np.ndarray:
        """Calibrated probabilities, by evaluation's own code (``predict_all``): the temperature
        divides every view's fp32 logits before its softmax and the views' probabilities are
        averaged, as ``ferlab evaluate`` computes its calibrated TTA (the temperature is fitted
        on the plain validation logits)."""
        if len(faces) == 0:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        cfg = recorded_tta(self.trained.get("tta")) if self.tta else None

        def run(chunk: np.ndarray) -> np.ndarray:
            p = predict_all(
                self.model, chunk, self.meta, cfg, len(chunk), self.device,
                temperature=self.temperature,
            )  # fmt: skip
            out = p.tta_calibrated if cfg is not None else p.plain_calibrated
            assert out is not None
            return out

        return padded_batches(run, faces, self.batch_size)


# ------------------------------------------------------------------------------ onnxruntime


def onnx_sidecar(onnx: Path) -> Path:
    """The metadata file ``ferlab export`` writes beside an ``.onnx`` file."""
    return onnx.with_suffix(".json")


def read_onnx_meta(onnx: Path) -> dict[str, Any]:
    """The checked sidecar metadata of an exported model."""
    side = onnx_sidecar(onnx)
    hint = f"it is written by `ferlab export` beside {onnx.name}; export the run again"
    if not side.is_file():
        raise WeightsMetadataError(
            f"No metadata for {onnx}: expected {side} beside it (labels, image_size, channels, "
            f"mean, std, temperature; {hint})."
        )
    try:
        data = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise WeightsMetadataError(f"{side} is not readable JSON ({one_line(e)}); {hint}.") from e
    if not isinstance(data, dict):
        raise WeightsMetadataError(f"{side} must hold a JSON object; {hint}.")
    missing = [k for k in ("labels", "image_size", "channels") if k not in data]
    if missing:
        raise WeightsMetadataError(f"{side} lacks {missing}; {hint}.")
    labels = data["labels"]
    if (
        not isinstance(labels, list)
        or not labels
        or not all(isinstance(n, str) and n in CANONICAL for n in labels)
    ):
        raise WeightsMetadataError(
            f"{side}: labels must be canonical emotion names ({', '.join(CANONICAL)}), got "
            f"{one_line(repr(labels), 120)}; {hint}."
        )
    size, channels = data["image_size"], data["channels"]
    if not (isinstance(size, int) and size > 0 and channels in (1, 3)):
        raise WeightsMetadataError(
            f"{side}: image_size must be a positive integer and channels 1 or 3, got "
            f"{size!r} and {channels!r}; {hint}."
        )
    data["temperature"] = _temperature(data.get("temperature", 1.0), str(side))
    data["dynamic_batch"] = bool(data.get("dynamic_batch", False))
    return data


class OnnxClassifier:
    """An exported model run with onnxruntime (normalisation and temperature in the graph)."""

    backend = "onnxruntime"

    def __init__(self, onnx: Path, *, tta: bool = False, batch_size: int = 64) -> None:
        meta = read_onnx_meta(onnx)
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise OnnxToolsMissing(
                "--backend onnxruntime needs onnxruntime: pip install 'ferlab[onnx]'"
            ) from e
        self.source = onnx
        self.labels = list(meta["labels"])
        self.image_size = int(meta["image_size"])
        self.channels = int(meta["channels"])
        self.temperature = float(meta["temperature"])
        self.trained = dict(meta.get("trained") or {})
        self.tta = tta
        self.batch_size = batch_size
        try:
            self._session = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types for a bad file
            raise CorruptWeightsError(
                f"{onnx} cannot be loaded by onnxruntime ({type(e).__name__}: {one_line(e)}); "
                "it may be truncated or not an ONNX model: export it again with ferlab export."
            ) from e
        inputs = {i.name: i for i in self._session.get_inputs()}
        outputs = [o.name for o in self._session.get_outputs()]
        if ONNX_INPUT not in inputs or ONNX_PROBS not in outputs:
            raise WeightsError(
                f"{onnx} has inputs {sorted(inputs)} and outputs {outputs}; ferlab predict "
                f"expects input {ONNX_INPUT!r} and output {ONNX_PROBS!r} (as written by ferlab "
                "export)."
            )
        first = inputs[ONNX_INPUT].shape[0] if inputs[ONNX_INPUT].shape else None
        fixed = isinstance(first, int)
        # A graph exported for one batch size runs one face at a time.
        self._chunk = 1 if (not meta["dynamic_batch"] or fixed) else max(1, batch_size)

    def _run(self, x: np.ndarray) -> np.ndarray:
        def run(chunk: np.ndarray) -> np.ndarray:
            out = self._session.run([ONNX_PROBS], {ONNX_INPUT: chunk})[0]
            return np.asarray(out, dtype=np.float32)

        return padded_batches(run, x, self._chunk)

    def probs(self, faces: np.ndarray) -> np.ndarray:
        k = len(self.labels)
        if len(faces) == 0:
            return np.zeros((0, k), dtype=np.float32)
        x = np.ascontiguousarray(faces.transpose(0, 3, 1, 2), dtype=np.float32) / 255.0
        if not self.tta:
            return self._run(x)
        import torch

        cfg = recorded_tta(self.trained.get("tta"))
        views = tta_views(torch.from_numpy(x), cfg).numpy()  # (V*B, C, H, W), view-major
        probs = self._run(np.ascontiguousarray(views))
        return probs.reshape(n_views(cfg), len(x), k).mean(axis=0)


# ------------------------------------------------------------------------------ factory


def load_classifier(
    weights: str | os.PathLike[str],
    *,
    backend: str | None = None,
    tta: bool = False,
    batch_size: int = 64,
    device: str | None = None,
) -> Classifier:
    """The classifier for ``weights`` (see the module docstring for what is accepted)."""
    kind, path = locate_weights(weights, backend)
    if kind == "onnxruntime":
        return OnnxClassifier(path, tta=tta, batch_size=batch_size)

    model, meta = load_model(path, device="cpu" if device is None else device)
    return TorchClassifier(model, meta, path, tta=tta, batch_size=batch_size, device=device)


def label_columns(labels: Sequence[str]) -> list[str]:
    """The CSV column of each class probability."""
    return [f"prob_{name}" for name in labels]
