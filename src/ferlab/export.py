"""``ferlab export``: trained weights to ONNX, with their metadata beside them.

The exported graph is the whole classifier a deployment needs, and nothing of ferlab::

    input   pixels  float32 (N, C, H, W), values in [0, 1], H = W = image_size, C = channels
            (N is 1, or any batch size with --dynamic-batch)
    inside  (pixels - mean) / std  ->  the network  ->  logits
    outputs logits  float32 (N, K)         the raw scores, unit i is labels[i]
            probs   float32 (N, K)         softmax(logits / temperature): calibrated probabilities

Beside ``model.onnx`` goes ``model.json`` (same stem), the sidecar a client reads first::

    format "ferlab-onnx/1", labels, image_size, channels, mean, std, temperature, architecture,
    kwargs, ferlab_version, opset, dynamic_batch, input, outputs, sha256 (of the .onnx file)

The same fields (all but ``sha256``, which cannot be inside the file it hashes) are in the
ONNX model's ``metadata_props``, each value JSON-encoded, so a lone .onnx file still says what
it is. Both files are written atomically (``ferlab.layout.atomic_write``); the .onnx first, so
a sidecar always describes a complete model.

The exporter is ``torch.onnx.export(..., dynamo=True)`` (torch.export + onnxscript), the one
torch maintains; its graph is checked with ``onnx.checker`` before anything is written. It
exports ferlab's compact nets, torchvision's and timm's CNNs and ViTs (the tests check parity
on real FER2013 images for ferlab_vgg, resnet18 and a ConvNeXt).

Kept light at import time (the CLI imports it to build its parser): torch and onnx are
imported inside the functions that use them.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
from pathlib import Path
from typing import Any

from ferlab import __version__, layout
from ferlab.config import ConfigError

ONNX_FORMAT = "ferlab-onnx/1"
ONNX_NAME = "model.onnx"  # the default file name, in the run folder
INPUT_NAME = "pixels"
OUTPUT_NAMES = ("logits", "probs")
MIN_OPSET = 18  # the dynamo exporter's own operator sets start here
INSTALL_HINT = "pip install 'ferlab[onnx]'"


class ExportError(ConfigError):
    """An export that cannot be done as asked; the message says why and what to change."""


def sidecar_path(onnx_path: str | Path) -> Path:
    """The metadata file beside an exported model: same stem, ``.json``."""
    return Path(onnx_path).with_suffix(".json")


def default_out(weights: str | Path) -> Path:
    """``<run folder>/model.onnx`` for a run folder, a weights file or a meta.json;
    ``default.onnx`` in the working directory for the shipped model (never inside the package)."""
    from ferlab.models.meta import DEFAULT, resolve_weights  # lazy: ferlab.models imports torch

    if weights == DEFAULT:
        return Path(f"{DEFAULT}.onnx")
    p = resolve_weights(weights)
    return (p if p.is_dir() else p.parent) / ONNX_NAME


def _require_onnx() -> Any:
    try:
        import onnx
        import onnxscript  # noqa: F401  (the dynamo exporter needs it)
    except ImportError as e:
        raise ConfigError(
            f"ferlab export needs onnx and onnxscript ({e.name or e} is not installed): "
            f"{INSTALL_HINT}"
        ) from e
    return onnx


def _out_path(weights: str | Path, out: str | Path | None) -> Path:
    path = Path(out).expanduser() if out is not None else default_out(weights)
    if path.suffix.lower() != ".onnx":
        raise ExportError(
            f"--out {str(path)!r} must name a .onnx file (its metadata goes beside it as "
            f"{sidecar_path(path).name}); e.g. --out {path.with_suffix('.onnx')}"
        )
    if path.is_dir():
        raise ExportError(f"--out {path} is a folder; name the file, e.g. {path / ONNX_NAME}")
    return path


def export_onnx(
    weights: str | Path,
    out: str | Path | None = None,
    opset: int | None = None,
    dynamic_batch: bool = False,
) -> Path:
    """Export a run's model (run folder, or weights.safetensors with its meta.json) to ONNX.

    Returns the path of the .onnx file (default ``<run folder>/model.onnx``); the metadata is
    written beside it (``sidecar_path``). See the module docstring for the graph's contract.
    Bad weights raise the ``WeightsError`` of ``ferlab.models.load_model``; a model the
    exporter cannot handle, a bad ``opset`` or ``out`` raise ``ExportError``.

    >>> import tempfile, ferlab.export, ferlab.models                       # doctest: +SKIP
    >>> path = ferlab.export.export_onnx("runs/fer2013/ferlab_vgg-1a2b3c4d")  # doctest: +SKIP
    """
    onnx = _require_onnx()
    if opset is not None and (isinstance(opset, bool) or not isinstance(opset, int)):
        raise ExportError(f"--opset must be an integer, got {opset!r}")
    if opset is not None and opset < MIN_OPSET:
        raise ExportError(
            f"--opset {opset} is too old for torch's ONNX exporter; use {MIN_OPSET} or newer "
            "(or leave it out for the exporter's default)"
        )
    path = _out_path(weights, out)

    import torch

    from ferlab.models import load_model  # lazy: torch

    model, meta = load_model(weights, device="cpu")
    graph = _deployable(model, meta.mean, meta.std, meta.temperature)
    c, s = meta.channels, meta.image_size
    # torch.export specialises a dimension of size 1, so a dynamic batch is traced at 2.
    example = torch.rand(2 if dynamic_batch else 1, c, s, s)
    kwargs: dict[str, Any] = {}
    if dynamic_batch:
        kwargs["dynamic_shapes"] = ({0: torch.export.Dim("batch")},)
    if opset is not None:
        kwargs["opset_version"] = opset
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed), torch.no_grad():
            program = torch.onnx.export(
                graph,
                (example,),
                None,
                input_names=[INPUT_NAME],
                output_names=list(OUTPUT_NAMES),
                dynamo=True,
                verbose=False,
                **kwargs,
            )
        if program is None:  # only when a file name is given, which we do not
            raise RuntimeError("torch.onnx.export returned no program")
        proto = program.model_proto
        onnx.checker.check_model(proto, full_check=True)
    except Exception as e:  # the exporter's errors are many and version-specific
        from ferlab.models.errors import one_line  # lazy: torch

        tail = one_line(printed.getvalue(), 300)
        raise ExportError(
            f"torch.onnx.export could not export {meta.architecture} from {weights} "
            f"({type(e).__name__}: {one_line(e)}){'; exporter log: ' + tail if tail else ''}. "
            + (
                "Try another --opset, or export without --dynamic-batch."
                if opset is not None or dynamic_batch
                else "This architecture may use an operator the exporter does not support."
            )
        ) from e

    used_opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), opset)
    batch: int | str = "batch" if dynamic_batch else 1
    info: dict[str, Any] = {
        "format": ONNX_FORMAT,
        "labels": list(meta.labels),
        "image_size": meta.image_size,
        "channels": meta.channels,
        "mean": list(meta.mean),
        "std": list(meta.std),
        "temperature": meta.temperature,
        "architecture": meta.architecture,
        "kwargs": dict(meta.kwargs),
        # how it was trained (framing, colour, the evaluation's TTA): predict frames faces and
        # runs TTA as the run did (``ferlab.predict``)
        "trained": {
            "data": dict((meta.extra or {}).get("data") or {}),
            "tta": (meta.extra or {}).get("tta"),
        },
        "ferlab_version": __version__,
        "opset": int(used_opset) if used_opset is not None else None,
        "dynamic_batch": bool(dynamic_batch),
        "input": {
            "name": INPUT_NAME,
            "dtype": "float32",
            "shape": [batch, c, s, s],
            "layout": "NCHW",
            "range": [0.0, 1.0],
        },
        "outputs": [
            {"name": "logits", "dtype": "float32", "shape": [batch, len(meta.labels)]},
            {
                "name": "probs",
                "dtype": "float32",
                "shape": [batch, len(meta.labels)],
                "is": "softmax(logits / temperature)",
            },
        ],
    }
    del proto.metadata_props[:]
    for key, value in info.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value)
    blob = proto.SerializeToString()
    layout.atomic_write(path, blob)
    sidecar = {**info, "sha256": hashlib.sha256(blob).hexdigest()}
    layout.atomic_write(sidecar_path(path), json.dumps(sidecar, indent=2) + "\n")
    return path


def _deployable(model: Any, mean: Any, std: Any, temperature: float) -> Any:
    """pixels in [0, 1] -> (logits, softmax(logits / T)): the normalisation and the calibrated
    softmax inside the graph, so a client needs no preprocessing constants but the size.
    (Built here so that importing this module does not import torch.)"""
    import torch

    class Deployable(torch.nn.Module):
        mean: torch.Tensor
        std: torch.Tensor

        def __init__(self) -> None:
            super().__init__()
            self.model = model
            c = len(mean)
            self.register_buffer("mean", torch.tensor(list(mean)).float().view(1, c, 1, 1))
            self.register_buffer("std", torch.tensor(list(std)).float().view(1, c, 1, 1))
            self.temperature = float(temperature)

        def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            logits = self.model((pixels - self.mean) / self.std)  # (N, K)
            return logits, (logits / self.temperature).softmax(dim=1)

    return Deployable().eval()
