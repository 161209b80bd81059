"""Pretrained weights: hub downloads that fail fast offline, and local weight files read safely.

A local file is a state dict: ``.safetensors`` (read with ``safetensors.torch.load_file``) or a
tensor-only ``.pth/.pt/.bin/.ckpt`` (read with ``torch.load(weights_only=True)``). ferlab never
unpickles code: a pickle that would construct arbitrary objects is refused, unrun.

Loading adapts a checkpoint to the model it is loaded into: wrapper prefixes (``module.``,
``model.``) are stripped, a first conv saved for 3 channels is summed into 1 channel (or a
1-channel one repeated into 3), and a classifier head that would mean other classes is dropped
(the model keeps its freshly initialised head): a ferlab run's head is kept only when its
labels are the model's, in order; a plain state dict's head when the class count matches.
Anything else missing is an error. Every failure is a ``WeightsError`` naming the file
(``ferlab.models.errors``); ``check_pretrained`` runs the cheap checks before any training.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import socket
import threading
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import torch
from torch import nn

from ferlab.layout import WEIGHTS
from ferlab.models.errors import (
    CorruptWeightsError,
    UnsafeWeightsError,
    WeightsError,
    WeightsMismatchError,
    WeightsNotFoundError,
    one_line,
    unreadable_safetensors,
)
from ferlab.models.meta import ModelMeta, find_meta

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


@dataclass
class LoadReport:
    """What loading a state dict into a model changed and left out."""

    source: str
    adapted_first_conv: str | None = None  # key of the conv whose input channels were adapted
    head_replaced: list[str] = field(default_factory=list)  # checkpoint head keys dropped
    missing: list[str] = field(default_factory=list)  # model keys left at their init
    unexpected: list[str] = field(default_factory=list)  # checkpoint keys the model lacks
    head_kept: bool = False  # the model's classifier head holds the file's weights
    head_decision: str = ""  # "kept: ..." or "replaced: ...", and why


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
    return False, weights_file(Path(text).expanduser())


def weights_file(path: Path) -> Path:
    """The weights file a ``pretrained`` path names: the file, or a ferlab run folder's weights."""
    if path.is_dir() and (path / WEIGHTS).is_file():  # a ferlab run folder
        path = path / WEIGHTS
    if not path.is_file():
        raise WeightsNotFoundError(
            f"pretrained weights file {str(path)!r} does not exist. Give the path of a "
            f"{'/'.join(WEIGHT_SUFFIXES)} state dict ({PATH_HINT}) or of a ferlab run folder, "
            "true for hub weights, or false."
        )
    return path


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
    """Read a state dict of tensors from a weights file without running any code from it.

    Raises ``UnsafeWeightsError`` for a pickle the safe unpickler refuses (its code never
    runs) and ``CorruptWeightsError`` for a file that is truncated, empty, of another format
    or holds no tensors; each names the file.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as e:
            raise unreadable_safetensors(path, e) from e
    if suffix not in TENSOR_SUFFIXES:
        raise CorruptWeightsError(
            f"{path}: unknown weights format {suffix!r}; expected one of {', '.join(WEIGHT_SUFFIXES)} "
            f"({PATH_HINT})."
        )
    try:
        with warnings.catch_warnings():  # torch's note on legacy pickles; the error says more
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise UnsafeWeightsError(
            f"{path} is not a plain tensor file ferlab can read safely (the safe unpickler "
            f"refused it: {_unpickler_reason(e)}); ferlab never unpickles code. Where the file "
            "was made, save the state dict with safetensors (safetensors.torch.save_file("
            "model.state_dict(), 'weights.safetensors')) or torch.save(model.state_dict(), ...)."
        ) from e
    except Exception as e:  # a parser fed a truncated or foreign file fails in many ways
        raise CorruptWeightsError(
            f"{path} is not a readable PyTorch weights file ({type(e).__name__}: "
            f"{one_line(e) or 'unexpected end of file'}); it may be truncated or corrupt: copy "
            "it again, or save the state dict again with torch.save(model.state_dict(), ...)."
        ) from e
    return _tensor_dict(obj, path)


def _unpickler_reason(error: BaseException) -> str:
    """The refusal in torch's weights-only message, without its advice to allow the globals."""
    text = one_line(error, limit=10_000)
    marker = "WeightsUnpickler error:"
    if marker in text:
        text = text.split(marker, 1)[1]
    for cut in (" Please use", " Check the documentation"):
        text = text.split(cut, 1)[0]
    return one_line(text.strip(), limit=200)


def _tensor_dict(obj: Any, path: Path, depth: int = 0) -> dict[str, torch.Tensor]:
    """The state dict inside a loaded object: itself, or its ``state_dict``/``model`` entry."""
    if isinstance(obj, Mapping):
        for key in _NESTED_KEYS if depth < 4 else ():
            inner = obj.get(key)
            if isinstance(inner, Mapping) and any(
                isinstance(v, torch.Tensor) for v in inner.values()
            ):
                return _tensor_dict(inner, path, depth + 1)
        tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors:
            return tensors
        what = f"a dict with keys {_show(sorted(map(str, obj))[:8])}"
    else:
        what = f"a {type(obj).__name__}"
    raise CorruptWeightsError(
        f"{path} holds {what}, not a state dict of tensors (nor one under 'state_dict' or "
        f"'model'). Save model.state_dict()."
    )


def _show(keys: Sequence[str], n: int = 8) -> str:
    """A few state-dict keys for a message (keys come from the file: kept short, one line)."""
    return ", ".join(one_line(k, limit=80) for k in list(keys)[:n])


def tensor_names(path: str | Path) -> list[str]:
    """The tensor names in a weights file, read safely: a safetensors file's header only,
    any other format loaded with ``read_state_file``."""
    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        return list(read_state_file(path))
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            return list(fh.keys())
    except (SafetensorError, OSError, ValueError) as e:
        raise unreadable_safetensors(path, e) from e


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


def fit_problems(
    model_sd: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor]
) -> list[str]:
    """Why ``state`` does not load strictly into a model whose state dict is ``model_sd``: one
    phrase per kind (other shapes, weights the file lacks, weights the model lacks); [] if it fits."""
    shapes = [
        f"{one_line(k, 80)}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in model_sd.items()
        if k in state and state[k].shape != v.shape
    ]
    missing = [k for k in model_sd if k not in state]
    unexpected = [k for k in state if k not in model_sd]
    out: list[str] = []
    if shapes:
        out.append(f"{len(shapes)} weights have other shapes (first: {'; '.join(shapes[:3])})")
    if missing:
        out.append(
            f"{len(missing)} of the model's {len(model_sd)} weights are not in the file "
            f"(first: {_show(missing, 5)})"
        )
    if unexpected:
        out.append(
            f"{len(unexpected)} weights in the file are not in the model "
            f"(first: {_show(unexpected, 5)})"
        )
    return out


def _replaced_why(
    head: list[str], dropped: Mapping[str, torch.Tensor], model_sd: Mapping[str, torch.Tensor]
) -> str:
    for p in head:
        w, want = dropped.get(f"{p}.weight"), model_sd.get(f"{p}.weight")
        if w is not None and want is not None and w.ndim >= 1 and want.ndim >= 1:
            return f"replaced: the file's head has {w.shape[0]} classes, the model {want.shape[0]}"
    return f"replaced: the file holds no weights for the classifier head ({', '.join(head)})"


def load_state_dict_adapted(
    model: nn.Module,
    state: Mapping[str, torch.Tensor],
    *,
    source: str,
    replace_head: bool = False,
    head_reason: str = "",
) -> LoadReport:
    """Load ``state`` into ``model``: strip prefixes, adapt the first conv, drop a mismatched head.

    The file's classifier head is dropped when its shape differs from the model's, or always
    with ``replace_head`` (the caller knows it means other classes). ``head_reason`` is the
    caller's words for its decision, used when the outcome is the one it asked for; the
    decision is in ``LoadReport.head_decision`` and the log. Raises ``WeightsMismatchError``
    when weights other than the head are missing from ``state`` or have other shapes;
    unexpected keys are logged and reported.
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
    dropped: dict[str, torch.Tensor] = {}
    wrong_shape: list[str] = []
    for k in list(fitted):
        if k not in model_sd:
            continue
        other_shape = fitted[k].shape != model_sd[k].shape
        if _under(k, head) and (replace_head or other_shape):
            report.head_replaced.append(k)
            dropped[k] = fitted.pop(k)
        elif other_shape:
            wrong_shape.append(
                f"{one_line(k, 80)}: file {tuple(fitted[k].shape)} vs model "
                f"{tuple(model_sd[k].shape)}"
            )
            del fitted[k]
    if wrong_shape:
        raise WeightsMismatchError(
            f"{source}: {len(wrong_shape)} weights have other shapes than {type(model).__name__}'s "
            f"(first: {'; '.join(wrong_shape[:5])}). The file was saved from another architecture "
            "or width; build the same model (name and kwargs) it was trained as."
        )
    try:
        result = model.load_state_dict(fitted, strict=False)
    except RuntimeError as e:  # e.g. a dtype that cannot be copied
        raise WeightsMismatchError(
            f"{source}: cannot load into {type(model).__name__}: {one_line(e)}"
        ) from e
    report.missing, report.unexpected = list(result.missing_keys), list(result.unexpected_keys)
    bad = [
        k for k in report.missing if not _under(k, head) and not k.endswith("num_batches_tracked")
    ]
    if bad:
        raise WeightsMismatchError(
            f"{source}: {len(bad)} of {len(model_sd)} weights of {type(model).__name__} are not in "
            f"the file (first: {_show(bad)}); only the classifier head may be missing. "
            "Check that the file was saved from this architecture."
        )
    if report.unexpected:
        msg = (
            f"{source}: {len(report.unexpected)} keys in the file are not used by "
            f"{type(model).__name__} (first: {_show(report.unexpected)})"
        )
        log.warning(msg)
        warnings.warn(msg, stacklevel=3)
    new_head = bool(report.head_replaced) or any(_under(k, head) for k in report.missing)
    report.head_kept = not new_head
    if head_reason and new_head == replace_head:
        report.head_decision = head_reason
    elif not new_head:
        report.head_decision = "kept: the file's head has the model's shape"
    elif replace_head:
        report.head_decision = "replaced: as the caller asked (replace_head=True)"
    else:
        report.head_decision = _replaced_why(head, dropped, model_sd)
    log.debug("%s: classifier head (%s) %s", source, ", ".join(head), report.head_decision)
    return report


def _head_rule(
    weights: Path, meta: ModelMeta | None, labels: Sequence[str] | None
) -> tuple[bool, str]:
    """(replace the file's head, why): a head is kept only when it means the model's classes."""
    if meta is None:
        return False, (
            f"kept on class count alone: {weights.name} has no meta.json naming its classes, "
            "so they are assumed to be the model's"
        )
    if labels is None:
        return False, (
            "kept on class count alone: the model's labels were not given "
            f"(the run's are {', '.join(meta.labels)})"
        )
    if list(labels) == meta.labels:
        return False, f"kept: the run's labels are the model's ({', '.join(meta.labels)})"
    return True, (
        f"replaced: the run's labels ({', '.join(meta.labels)}) are not the model's "
        f"({', '.join(labels)})"
    )


def load_pretrained_path(
    model: nn.Module, path: str | Path, *, labels: Sequence[str] | None = None
) -> LoadReport:
    """Load a local weights file or ferlab run folder into ``model`` (``load_state_dict_adapted``).

    The classifier head is kept only when it means the model's classes: for a ferlab run (its
    metadata lists its labels), when ``labels`` (the model's output classes, in order) are
    the run's, in the same order; any other labels get a new head even at the same class
    count. A plain state dict (no metadata) keeps its head when the class count matches, and
    ``head_decision`` says it was kept on class count alone.
    """
    weights = weights_file(Path(path).expanduser())
    state = read_state_file(weights)
    meta = find_meta(weights)
    replace, why = _head_rule(weights, meta, labels)
    try:
        return load_state_dict_adapted(
            model, state, source=str(weights), replace_head=replace, head_reason=why
        )
    except WeightsMismatchError as e:
        if meta is None:
            raise
        raise WeightsMismatchError(
            f"{e} (The run in {weights.parent} was trained as {meta.architecture} with kwargs "
            f"{one_line(repr(meta.kwargs), 120)}.)"
        ) from e


class PretrainedOption(Protocol):
    """What ``check_pretrained`` reads of a model entry (``ferlab.config.ModelConfig``)."""

    @property
    def name(self) -> str: ...

    @property
    def pretrained(self) -> bool | str: ...


def check_pretrained(model_cfg: PretrainedOption) -> None:
    """Check a model entry's ``pretrained: PATH`` before any training, cheaply: the file exists,
    reads safely as a dict of tensors (a safetensors file by its header), and its metadata, if
    any, is valid. Does nothing for ``pretrained: false/true``.

    Raises the ``WeightsError`` that loading would raise, its message prefixed with the model.
    Whether the weights fit the architecture is only known once the model is built (in ``fit``).
    """
    try:
        path = as_weights_path(model_cfg.pretrained)
        if path is None:
            return
        if not tensor_names(path):
            raise CorruptWeightsError(
                f"{path} holds no tensors; give the weights file of a trained model ({PATH_HINT})."
            )
        find_meta(path)
    except WeightsError as e:
        raise type(e)(f"models entry {model_cfg.name!r}, pretrained: {e}") from e
