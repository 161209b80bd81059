"""Which device runs a model, at which precision, with how many CPU threads: one choice each.

Training (``ferlab.training.trainer``), loading (``ferlab.models.load_model``) and prediction
(``ferlab.evaluation``) all call ``pick_device``: CUDA first, then Apple's MPS, else the CPU.
``resolve_precision("auto", "cpu")`` is fp32; on a CPU, ``fit`` asks the kernel probe
(``ferlab.probe``) instead, which picks bf16-mixed only where measured faster on CPUs with
native bf16. ``cpu_threads`` is the one rule for torch's thread count.

This module sits at the package top (not in ``ferlab.training``) so that models and evaluation
can use it without importing Lightning.
"""

from __future__ import annotations

import contextlib
import os
import platform
from collections.abc import Iterator

import torch

DEVICE_TYPES = ("auto", "cpu", "cuda", "gpu", "mps")


def mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def pick_device(
    requested: str | torch.device = "auto", *, setting: str = "runtime.accelerator"
) -> torch.device:
    """Resolve ``auto``/``gpu`` to CUDA, MPS or the CPU; refuse a device that is absent.

    ``requested`` is one of ``DEVICE_TYPES``, a device with an index (``cuda:1``) or a
    ``torch.device``. ``setting`` names where the value came from, for the error message.
    The Lightning accelerator is ``pick_device(...).type``.
    """
    text = str(requested).strip().lower()
    if text == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if mps_available() else torch.device("cpu")
    if text == "gpu":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if mps_available():
            return torch.device("mps")
        raise ValueError(f"{setting} is 'gpu' but no CUDA or MPS device is visible; use 'auto'.")
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        device = None
    if device is None or device.type not in DEVICE_TYPES:
        raise ValueError(
            f"Unknown device {requested!r} for {setting}; expected one of "
            f"{', '.join(DEVICE_TYPES)} (or cuda:<index>)."
        )
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"{setting} is {text!r} but torch sees no CUDA device; use 'auto' or 'cpu'."
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(
                f"{setting} is {text!r} but torch sees only {torch.cuda.device_count()} CUDA "
                f"device(s) (cuda:0 to cuda:{torch.cuda.device_count() - 1})."
            )
    if device.type == "mps" and not mps_available():
        raise ValueError(f"{setting} is {text!r} but MPS is not available; use 'auto' or 'cpu'.")
    return device


def channels_last_for_training(model: torch.nn.Module, device: torch.device) -> bool:
    """On CUDA, put ``model``'s 4-D weights in channels-last memory layout for training (cuDNN's
    NHWC kernels); return True when it changed a weight, else False (other devices, or a model
    already channels-last, as ferlab's compact nets are everywhere).

    ``bench/gpu.py`` on an H200 (bf16, 224x224, 2026-12-04, bench/RESULTS.md "GPU path"): the
    same training step ran 1.20x (densenet121), 1.86x (resnet50) and 1.88x (efficientnet_b0)
    faster channels-last, and ferlab's path trained timm's models in the contiguous layout they
    are built in. ``fit`` undoes the change after training (``channels_first``), so the scores it
    computes in the process run the layout ``load_model`` gives in a fresh one. Not on the CPU,
    where oneDNN's channels-last backward is where native crashes were seen (``ferlab.probe``).
    """
    if device.type != "cuda" or is_channels_last(model):
        return False
    model.to(memory_format=torch.channels_last)
    return True


def is_channels_last(model: torch.nn.Module) -> bool:
    """Whether the model has 4-D (conv) weights and all of them are channels-last."""
    convs = [p for p in model.parameters() if p.dim() == 4]
    return bool(convs) and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)


def channels_first(model: torch.nn.Module) -> None:
    """Undo ``channels_last_for_training``: every 4-D weight contiguous (NCHW) again."""
    model.to(memory_format=torch.contiguous_format)


@contextlib.contextmanager
def repeatable_inference(device: torch.device) -> Iterator[None]:
    """On CUDA, cuDNN's fixed deterministic convolution algorithms inside the block (autotuner
    off), the previous settings after; elsewhere nothing changes.

    ``build_trainer`` turns cuDNN's autotuner on for training on CUDA, and Lightning leaves it on
    for the rest of the process, so without this block a model scored after training in the same
    process (``ferlab run``'s evaluations, the benchmarks) takes the algorithms the autotuner
    timed fastest there, and ``ferlab evaluate`` in a fresh process the default ones. Seen on an
    H200 (2026-12-04, bench/RESULTS.md "GPU path"): the shipped model's PrivateTest with TTA read
    71.02% in processes that had trained and 70.99% from ``ferlab evaluate`` (one image of
    3,589); the autotuner was the setting that differed. Checked on an H200 since
    (``bench/gpu_repeatable.py``): 2,548 right fresh and after training, 2,549 without it. Every
    inference pass (``tta.predict_all``, calibration's logits) runs inside this block, through
    ``inference``.
    """
    if device.type != "cuda":
        yield
        return
    cudnn = torch.backends.cudnn
    previous = (cudnn.benchmark, cudnn.deterministic)
    cudnn.benchmark, cudnn.deterministic = False, True
    try:
        yield
    finally:
        cudnn.benchmark, cudnn.deterministic = previous


@contextlib.contextmanager
def inference(device: torch.device, bf16: bool) -> Iterator[None]:
    """How ferlab runs a model for scores (``tta.predict_all``, calibration's logits): one
    block for both, ``repeatable_inference``, inference mode, and bf16 autocast where ``bf16``."""
    with (
        repeatable_inference(device),
        torch.inference_mode(),
        torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16),
    ):
        yield


def resolve_precision(precision: str, accelerator: str) -> str:
    """``auto``: bf16-mixed on CUDA GPUs that support it, else 16-mixed; full 32-bit on CPU/MPS."""
    if precision != "auto":
        if accelerator == "cpu" and precision == "16-mixed":
            raise ValueError(
                "runtime.precision '16-mixed' needs a GPU; on CPU use '32', 'bf16-mixed' "
                "or 'auto' (bf16-mixed where this CPU measures it faster)."
            )
        return precision
    if accelerator == "cuda":
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32"


def cpu_threads(requested: int | None, processes: int = 1) -> int:
    """Threads per process: the request, else all cores shared among the local processes."""
    if requested is not None:
        if requested < 1:
            raise ValueError(f"runtime.threads must be >= 1 or null (all cores); got {requested}.")
        return requested
    cores = os.cpu_count() or 1
    return max(1, cores // max(1, processes))


def describe_device() -> str:
    """A one-line description of what ``auto`` would use (for environment.json and logs)."""
    if torch.cuda.is_available():
        n = torch.cuda.device_count()
        name = torch.cuda.get_device_name(0)
        return f"cuda: {n} x {name}"
    if mps_available():
        return f"mps: {platform.machine()}"
    proc = platform.processor() or platform.machine()
    return f"cpu: {os.cpu_count()} cores ({proc}), torch threads {torch.get_num_threads()}"
