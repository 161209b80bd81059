"""Pretrained weights: hub downloads that fail fast offline, and local weight files read safely.

A local file is a state dict: ``.safetensors`` (read with ``safetensors.torch.load_file``) or a
tensor-only ``.pth/.pt/.bin/.ckpt`` (read with ``torch.load(weights_only=True)``). ferlab never
unpickles code: a pickle that would construct arbitrary objects is refused, unrun.

Loading adapts a checkpoint to the model it is loaded into: wrapper prefixes (``module.``,
``model.``) are stripped, a first conv saved for 3 channels is summed into 1 channel (or a
1-channel one repeated into 3), and a classifier head whose class count differs is dropped
(the model keeps its freshly initialised head). Anything else missing is an error.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import socket
import threading
import warnings
import zipfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

log = logging.getLogger("ferlab.models")
T = TypeVar("T")

PATH_HINT = "pretrained: /path/to/weights.safetensors"
TENSOR_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
WEIGHT_SUFFIXES = (".safetensors", *TENSOR_SUFFIXES)
NETWORK_PROBE_TIMEOUT_S = 3.0
_WRAPPER_PREFIXES = ("module.", "model.", "_orig_mod.", "net.")
_NESTED_KEYS = ("state_dict", "model", "model_state_dict", "module", "net", "ema")


class PretrainedUnavailableError(RuntimeError):
    """Hub weights were asked for but cannot be had (offline, or none exist)."""


class UnsafeWeightsError(ValueError):
    """A weights file that is not plain tensors (a pickle that would construct objects)."""


class WeightsMismatchError(ValueError):
    """A weights file that does not fit the model beyond the first conv and the head."""


@dataclass
class LoadReport:
    """What loading a state dict into a model changed and left out."""

    source: str
    adapted_first_conv: str | None = None  # key of the conv whose input channels were adapted
    head_replaced: list[str] = field(default_factory=list)  # checkpoint keys dropped (shape)
    missing: list[str] = field(default_factory=list)  # model keys left at their init
    unexpected: list[str] = field(default_factory=list)  # checkpoint keys the model lacks


# ---------------------------------------------------------------- the pretrained option


def parse_pretrained(pretrained: bool | str | Path | None) -> tuple[bool, Path | None]:
    """``pretrained`` -> (use hub weights, local weights path). Strings 'true'/'false' are bools."""
    if pretrained is None or pretrained is False:
        return False, None
    if pretrained is True:
        return True, None
    text = str(pretrained).strip()
    if text.lower() in ("", "false", "no", "none", "0"):
        return False, None
    if text.lower() in ("true", "yes", "1", "hub"):
        return True, None
    path = Path(text).expanduser()
    if path.is_dir() and (path / "weights.safetensors").is_file():  # a ferlab run folder
        path = path / "weights.safetensors"
    if not path.is_file():
        raise FileNotFoundError(
            f"pretrained weights file {str(path)!r} does not exist. Give the path of a "
            f"{'/'.join(WEIGHT_SUFFIXES)} state dict ({PATH_HINT}), true for hub weights, or false."
        )
    return False, path


def as_weights_path(pretrained: bool | str | Path | None) -> Path | None:
    """The local weights path named by ``pretrained``, or None."""
    return parse_pretrained(pretrained)[1]


# ---------------------------------------------------------------- hub weights, fast offline


def _env_offline() -> bool:
    return any(
        os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
        for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "FERLAB_OFFLINE")
    )


_PROBED: dict[str, bool] = {}


def _reachable(host: str, port: int = 443, timeout: float = NETWORK_PROBE_TIMEOUT_S) -> bool:
    """Can a TCP connection to ``host`` open within ``timeout``? (DNS included: run in a thread.)"""
    if host in _PROBED:
        return _PROBED[host]
    result: list[bool] = [False]

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result[0] = True
        except OSError:
            pass

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout)
    _PROBED[host] = result[0]
    return result[0]


def _hub_host(what: str) -> str:
    if what.startswith("tv:"):
        return "download.pytorch.org"
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    return endpoint.split("://", 1)[-1].split("/", 1)[0].split(":", 1)[0]


@contextlib.contextmanager
def _no_downloads() -> Iterator[None]:
    """Make every hub download fail at once (cached files are still used)."""

    def refuse(url: str, *args: Any, **kwargs: Any) -> None:
        raise OSError(f"offline: not downloading {url}")

    patches: list[tuple[Any, str, Any]] = []
    import torch.hub

    patches.append((torch.hub, "download_url_to_file", refuse))
    with contextlib.suppress(ImportError):
        import timm.models._hub as timm_hub

        patches.append((timm_hub, "download_url_to_file", refuse))
    with contextlib.suppress(ImportError):
        import huggingface_hub.constants as hf_constants

        patches.append((hf_constants, "HF_HUB_OFFLINE", True))
    saved = [(obj, name, getattr(obj, name)) for obj, name, _ in patches]
    try:
        for obj, name, value in patches:
            setattr(obj, name, value)
        yield
    finally:
        for obj, name, value in saved:
            setattr(obj, name, value)


def from_hub(what: str, load: Callable[[], T]) -> T:
    """Run ``load`` (which fetches hub weights); offline it may only use cached files.

    Offline (``HF_HUB_OFFLINE=1``, or the hub host unreachable within a few seconds) and not
    cached, or any other download failure, raises ``PretrainedUnavailableError`` naming the
    local-file option instead of hanging.
    """
    reason = ""
    if _env_offline():
        reason = "offline mode (HF_HUB_OFFLINE/TRANSFORMERS_OFFLINE/FERLAB_OFFLINE is set)"
    elif not _reachable(_hub_host(what)):
        reason = f"no network: {_hub_host(what)} is not reachable"
    guard = _no_downloads() if reason else contextlib.nullcontext()
    try:
        with guard:
            return load()
    except Exception as e:
        why = reason or "the download failed"
        raise PretrainedUnavailableError(
            f"pretrained: true for {what!r}: hub weights are not available ({why}; "
            f"{type(e).__name__}: {str(e)[:300]}). Download the weights where there is network "
            f"and point to the file instead: {PATH_HINT} (or a tensor-only .pth), "
            f"or use pretrained: false."
        ) from e


# ---------------------------------------------------------------- reading weight files


def read_state_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict of tensors from a weights file without running any code from it."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as e:
            raise ValueError(f"{path} is not a readable safetensors file: {e}") from e
    if suffix not in TENSOR_SUFFIXES:
        raise ValueError(
            f"{path}: unknown weights format {suffix!r}; expected one of {', '.join(WEIGHT_SUFFIXES)} "
            f"({PATH_HINT})."
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, AttributeError, ModuleNotFoundError, TypeError) as e:
        raise UnsafeWeightsError(
            f"{path} is not a plain tensor file; ferlab never unpickles code. Save a state dict "
            f"with safetensors (safetensors.torch.save_file(model.state_dict(), "
            f"'weights.safetensors')) or torch.save(model.state_dict(), ...). ({str(e)[:200]})"
        ) from e
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as e:
        raise ValueError(f"{path} is not a readable PyTorch weights file: {e}") from e
    return _tensor_dict(obj, path)


def _tensor_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """The state dict inside a loaded object: itself, or its ``state_dict``/``model`` entry."""
    if isinstance(obj, Mapping):
        for key in _NESTED_KEYS:
            inner = obj.get(key)
            if isinstance(inner, Mapping) and any(
                isinstance(v, torch.Tensor) for v in inner.values()
            ):
                return _tensor_dict(inner, path)
        tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors:
            return tensors
        what = f"a dict with keys {sorted(map(str, obj))[:8]}"
    else:
        what = f"a {type(obj).__name__}"
    raise ValueError(
        f"{path} holds {what}, not a state dict of tensors (nor one under 'state_dict' or "
        f"'model'). Save model.state_dict()."
    )


# ---------------------------------------------------------------- fitting a state dict


def _strip_prefixes(
    state: dict[str, torch.Tensor], model_keys: set[str]
) -> dict[str, torch.Tensor]:
    """Remove wrapper prefixes (DataParallel, Lightning, torch.compile) while that helps matching."""
    for _ in range(4):
        best, best_hits = state, len(model_keys & state.keys())
        for p in _WRAPPER_PREFIXES:
            cand = {k[len(p) :] if k.startswith(p) else k: v for k, v in state.items()}
            hits = len(model_keys & cand.keys())
            if hits > best_hits:
                best, best_hits = cand, hits
        if best is state:
            return state
        state = best
    return state


def _cfg_names(model: nn.Module, key: str) -> list[str]:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    value = cfg.get(key) if isinstance(cfg, Mapping) else None
    if isinstance(value, str):
        return [value]
    if isinstance(value, list | tuple):
        return [str(v) for v in value]
    return []


def first_conv_key(model: nn.Module) -> str | None:
    """The state-dict key of the input conv's weight (config name, else the first 4-D weight)."""
    sd = model.state_dict()
    for name in _cfg_names(model, "first_conv"):
        if f"{name}.weight" in sd:
            return f"{name}.weight"
    for k, v in sd.items():
        if v.ndim == 4:
            return k
    return None


def classifier_prefixes(model: nn.Module) -> list[str]:
    """Module names of the classifier head (config name, else the last Linear/Conv2d)."""
    names = _cfg_names(model, "classifier")
    if names:
        return names
    last: str | None = None
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear | nn.Conv2d):
            last = name
    return [last] if last else []


def _under(key: str, prefixes: list[str]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def adapt_conv_weight(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """Fit a conv weight (out, c, kh, kw) to ``in_chans`` inputs, keeping the response to grey.

    3 -> 1: sum over RGB (a grey image fed as R=G=B gives the same activation).
    1 -> n: repeat and divide by n. c -> n otherwise: tile, cut and rescale by c/n (as timm).
    """
    c = weight.shape[1]
    if c == in_chans:
        return weight
    if in_chans == 1:
        return weight.sum(dim=1, keepdim=True)
    if c == 1:
        return weight.repeat(1, in_chans, 1, 1) / in_chans
    reps = -(-in_chans // c)
    return weight.repeat(1, reps, 1, 1)[:, :in_chans] * (c / in_chans)


def load_state_dict_adapted(
    model: nn.Module, state: Mapping[str, torch.Tensor], *, source: str
) -> LoadReport:
    """Load ``state`` into ``model``: strip prefixes, adapt the first conv, drop a mismatched head.

    Raises ``WeightsMismatchError`` when weights other than the head are missing from
    ``state`` or have other shapes; unexpected keys are logged and reported.
    """
    model_sd = model.state_dict()
    fitted = _strip_prefixes(dict(state), set(model_sd))
    report = LoadReport(source=source)
    conv_key = first_conv_key(model)
    if conv_key is not None and conv_key in fitted:
        w, want = fitted[conv_key], model_sd[conv_key]
        if w.ndim == 4 and w.shape[1] != want.shape[1] and w.shape[0] == want.shape[0]:
            fitted[conv_key] = adapt_conv_weight(w, want.shape[1])
            report.adapted_first_conv = conv_key
    head = classifier_prefixes(model)
    wrong_shape: list[str] = []
    for k in list(fitted):
        if k in model_sd and fitted[k].shape != model_sd[k].shape:
            if _under(k, head):
                report.head_replaced.append(k)
            else:
                wrong_shape.append(
                    f"{k}: file {tuple(fitted[k].shape)} vs model {tuple(model_sd[k].shape)}"
                )
            del fitted[k]
    if wrong_shape:
        raise WeightsMismatchError(
            f"{source}: {len(wrong_shape)} weights have other shapes than {type(model).__name__}'s "
            f"(first: {'; '.join(wrong_shape[:5])}). The file was saved from another architecture "
            "or width; build the same model (name and kwargs) it was trained as."
        )
    result = model.load_state_dict(fitted, strict=False)
    report.missing, report.unexpected = list(result.missing_keys), list(result.unexpected_keys)
    bad = [
        k for k in report.missing if not _under(k, head) and not k.endswith("num_batches_tracked")
    ]
    if bad:
        raise WeightsMismatchError(
            f"{source}: {len(bad)} of {len(model_sd)} weights of {type(model).__name__} are not in "
            f"the file (first: {', '.join(bad[:8])}); only the classifier head may be missing. "
            "Check that the file was saved from this architecture."
        )
    if report.unexpected:
        msg = (
            f"{source}: {len(report.unexpected)} keys in the file are not used by "
            f"{type(model).__name__} (first: {', '.join(report.unexpected[:8])})"
        )
        log.warning(msg)
        warnings.warn(msg, stacklevel=3)
    if report.head_replaced or [k for k in report.missing if _under(k, head)]:
        log.info("%s: classifier head reinitialised (%s)", source, ", ".join(head))
    return report


def load_pretrained_path(model: nn.Module, path: str | Path) -> LoadReport:
    """Load a local weights file into ``model`` (see ``load_state_dict_adapted``)."""
    path = Path(path)
    return load_state_dict_adapted(model, read_state_file(path), source=str(path))
