"""Which device trains, at which precision, with how many CPU threads.

CUDA first, then Apple's MPS, else the CPU with all its cores. Mixed precision only on a GPU:
on a CPU it is slower and changes results, and determinism on CPU is what resume relies on.
"""

from __future__ import annotations

import os
import platform

import torch

_ACCELERATORS = ("auto", "cpu", "cuda", "gpu", "mps")


def mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def pick_accelerator(requested: str = "auto") -> str:
    """Resolve ``auto``/``gpu`` to ``cuda``, ``mps`` or ``cpu``; refuse a device that is absent."""
    req = requested.lower()
    if req not in _ACCELERATORS:
        raise ValueError(
            f"Unknown accelerator {requested!r}; expected one of {', '.join(_ACCELERATORS)} "
            "(train.accelerator)."
        )
    if req == "auto":
        if torch.cuda.is_available():
            return "cuda"
        return "mps" if mps_available() else "cpu"
    if req == "gpu":
        if torch.cuda.is_available():
            return "cuda"
        if mps_available():
            return "mps"
        raise ValueError(
            "train.accelerator is 'gpu' but no CUDA or MPS device is visible; use 'auto'."
        )
    if req == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            "train.accelerator is 'cuda' but torch sees no CUDA device; use 'auto' or 'cpu'."
        )
    if req == "mps" and not mps_available():
        raise ValueError(
            "train.accelerator is 'mps' but MPS is not available; use 'auto' or 'cpu'."
        )
    return req


def resolve_precision(precision: str, accelerator: str) -> str:
    """``auto``: bf16-mixed on CUDA GPUs that support it, else 16-mixed; full 32-bit on CPU/MPS."""
    if precision != "auto":
        if accelerator == "cpu" and precision == "16-mixed":
            raise ValueError(
                "train.precision '16-mixed' needs a GPU; on CPU use '32' (or 'auto') "
                "or 'bf16-mixed' if you accept slower, non-reproducible CPU training."
            )
        return precision
    if accelerator == "cuda":
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32"


def cpu_threads(requested: int | None, processes: int = 1) -> int:
    """Threads per process: the request, else all cores shared among the local processes."""
    if requested is not None:
        if requested < 1:
            raise ValueError(f"train.threads must be >= 1 or null (all cores); got {requested}.")
        return requested
    cores = os.cpu_count() or 1
    return max(1, cores // max(1, processes))


def describe_device() -> str:
    """A one-line description of what ``auto`` would train on (for environment.json and logs)."""
    if torch.cuda.is_available():
        n = torch.cuda.device_count()
        name = torch.cuda.get_device_name(0)
        return f"cuda: {n} x {name}"
    if mps_available():
        return f"mps: {platform.machine()}"
    proc = platform.processor() or platform.machine()
    return f"cpu: {os.cpu_count()} cores ({proc}), torch threads {torch.get_num_threads()}"
