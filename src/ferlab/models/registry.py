"""The model factory: ferlab's own nets, every timm architecture and torchvision's classifiers.

Names: ``ferlab_*`` (registered with ``@register_model``), ``tv:<name>`` (torchvision) and any
other name is handed to timm. ``pretrained`` is ``False``, ``True`` (hub weights, cached or
downloaded; offline fails fast) or a path to a local weights file (see ``ferlab.models.pretrained``).

timm and torchvision are imported lazily so that ``import ferlab.models`` stays fast.
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from torch import nn

from ferlab.models import pretrained as pre
from ferlab.models.constants import FERLAB_MEAN, FERLAB_STD, IMAGENET_MEAN, IMAGENET_STD

log = logging.getLogger("ferlab.models")

ModelFactory = Callable[..., nn.Module]
F = TypeVar("F", bound=ModelFactory)

_REGISTRY: dict[str, ModelFactory] = {}

TV_PREFIX = "tv:"


class UnknownModelError(ValueError):
    """A model name that neither ferlab, timm nor torchvision knows."""


def register_model(name: str) -> Callable[[F], F]:
    """Register a ferlab net factory ``fn(num_classes, in_chans, **kwargs) -> nn.Module``.

    A factory may also accept ``image_size``; it then receives ``create_model``'s value.
    Names must be unique: registering one twice is an error (it would silently shadow a net).
    """

    def deco(fn: F) -> F:
        if name in _REGISTRY:
            raise ValueError(
                f"Model name {name!r} is already registered (by {_REGISTRY[name].__module__}."
                f"{_REGISTRY[name].__qualname__}); choose another name."
            )
        if name.startswith(TV_PREFIX):
            raise ValueError(
                f"Model name {name!r} may not start with {TV_PREFIX!r} (torchvision's prefix)."
            )
        _REGISTRY[name] = fn
        return fn

    return deco


def ferlab_models() -> list[str]:
    """Names of the registered ferlab nets, sorted.

    ``ferlab/models/__init__.py`` imports ``compact`` (which registers the ``ferlab_*`` nets)
    before anything else, and Python runs it before any ``ferlab.models.*`` submodule is used.
    """
    return sorted(_REGISTRY)


def _timm_names(pattern: str = "*") -> list[str]:
    import timm

    return list(timm.list_models(pattern))


def _tv_names() -> list[str]:
    import torchvision

    return [f"{TV_PREFIX}{n}" for n in torchvision.models.list_models(module=torchvision.models)]


def list_models(pattern: str = "*") -> list[str]:
    """Every model name ``create_model`` accepts that matches a shell-style ``pattern``.

    ferlab nets first, then timm's architectures, then torchvision's as ``tv:<name>``
    (a pattern without the prefix also matches torchvision names: ``resnet1*`` finds ``tv:resnet18``).
    """
    ours = [n for n in ferlab_models() if fnmatch.fnmatch(n, pattern)]
    tv = [
        n
        for n in _tv_names()
        if fnmatch.fnmatch(n, pattern) or fnmatch.fnmatch(n[len(TV_PREFIX) :], pattern)
    ]
    return ours + _timm_names(pattern) + tv


def _unknown(name: str) -> UnknownModelError:
    candidates = ferlab_models() + _timm_names() + _tv_names()
    close = difflib.get_close_matches(name, candidates, n=5, cutoff=0.6)
    hint = f" Close matches: {', '.join(close)}." if close else ""
    return UnknownModelError(
        f"Unknown model {name!r}.{hint} ferlab nets: {', '.join(ferlab_models())}; any timm name "
        f"(ferlab.models.list_models('convnext*')) or a torchvision classifier as "
        f"'{TV_PREFIX}<name>' (e.g. {TV_PREFIX}resnet18)."
    )


def create_model(
    name: str,
    num_classes: int,
    channels: int = 1,
    pretrained: bool | str | Path = False,
    image_size: int = 48,
    *,
    labels: Sequence[str] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build a classifier with ``num_classes`` outputs for ``channels``-channel input
    (ferlab's one name for it, as in ``ModelMeta`` and ``load_dataset``; timm's ``in_chans``).

    ``image_size`` is passed to architectures that need it (ViT, DeiT, Swin... through timm's
    ``img_size``); convolutional nets ignore it. ``kwargs`` go to the architecture
    (``drop_rate``, ferlab's ``width_mult``...). ``pretrained=True`` loads hub weights (offline:
    a fast error naming the path option); a path (a weights file or a ferlab run folder) loads
    a local state dict with the first conv adapted to ``channels``. ``labels`` (the output
    classes in order) decide whether a ferlab run's classifier head is kept: only when they are
    the run's labels; without them, or for a plain state dict, the head is kept when the class
    count matches (see ``ferlab.models.pretrained.load_pretrained_path``).
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if labels is not None and len(labels) != num_classes:
        raise ValueError(f"labels {list(labels)} are not num_classes={num_classes} names")
    if channels < 1:
        raise ValueError(f"channels must be >= 1, got {channels}")
    hub, path = pre.parse_pretrained(pretrained)
    if name in ferlab_models():
        if hub:
            raise ValueError(
                f"ferlab net {name!r} has no hub weights; train it, then pass the file: "
                f"pretrained: /path/to/weights.safetensors"
            )
        model = _create_ferlab(name, num_classes, channels, image_size, kwargs)
    elif name.startswith(TV_PREFIX):
        model = _create_tv(name[len(TV_PREFIX) :], num_classes, channels, image_size, hub, kwargs)
    else:
        model = _create_timm(name, num_classes, channels, image_size, hub, kwargs)
    if path is not None:
        report = pre.load_pretrained_path(model, path, labels=labels)
        log.info(
            "loaded %s (first conv adapted: %s; classifier head %s)",
            path,
            report.adapted_first_conv,
            report.head_decision,
        )
    return model


def _create_ferlab(
    name: str, num_classes: int, in_chans: int, image_size: int, kwargs: dict[str, Any]
) -> nn.Module:
    fn = _REGISTRY[name]
    params = inspect.signature(fn).parameters
    accepts_size = "image_size" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())
    extra = {"image_size": image_size} if accepts_size and "image_size" not in kwargs else {}
    try:
        return fn(num_classes=num_classes, in_chans=in_chans, **extra, **kwargs)
    except TypeError as e:
        raise TypeError(f"Bad keyword arguments for {name!r} {sorted(kwargs)}: {e}") from e


def _create_timm(
    name: str, num_classes: int, in_chans: int, image_size: int, hub: bool, kwargs: dict[str, Any]
) -> nn.Module:
    import timm

    if not timm.is_model(name):
        raise _unknown(name)
    args: dict[str, Any] = {"num_classes": num_classes, "in_chans": in_chans, **kwargs}
    size = None if "img_size" in args else image_size

    def build() -> nn.Module:
        return _timm_build(timm, name, hub, args, size)

    if hub:
        return pre.from_hub(name, build)
    return build()


def _timm_build(
    timm: Any, name: str, pretrained: bool, args: dict[str, Any], img_size: int | None
) -> nn.Module:
    """Transformers (ViT, DeiT, Swin, LeViT...) fix their patch grid from ``img_size``; CNNs
    refuse the keyword with a TypeError and are built again without it."""
    if img_size is not None:
        try:
            model: nn.Module = timm.create_model(
                name, pretrained=pretrained, img_size=img_size, **args
            )
            return model
        except TypeError as e:
            if "img_size" not in str(e):
                raise
    model = timm.create_model(name, pretrained=pretrained, **args)
    return model


def _create_tv(
    name: str, num_classes: int, in_chans: int, image_size: int, hub: bool, kwargs: dict[str, Any]
) -> nn.Module:
    import torchvision

    if name not in torchvision.models.list_models(module=torchvision.models):
        raise _unknown(TV_PREFIX + name)
    args = dict(kwargs)
    if name.startswith("vit_") and "image_size" not in args:
        args["image_size"] = image_size
    model: nn.Module = torchvision.models.get_model(
        name, weights=None, num_classes=num_classes, **args
    )
    adapt_first_conv_module(model, in_chans)
    if hub:
        state = pre.from_hub(
            TV_PREFIX + name,
            lambda: torchvision.models.get_model_weights(name)["DEFAULT"].get_state_dict(
                progress=False
            ),
        )
        pre.load_state_dict_adapted(model, state, source=f"torchvision {name} DEFAULT weights")
    return model


def adapt_first_conv_module(model: nn.Module, in_chans: int) -> None:
    """Replace the first 3-channel ``Conv2d`` by one taking ``in_chans`` (torchvision nets)."""
    if in_chans == 3:
        return
    for parent_name, parent in model.named_modules():
        for child_name, child in parent.named_children():
            if isinstance(child, nn.Conv2d) and child.in_channels == 3:
                new = nn.Conv2d(
                    in_chans,
                    child.out_channels,
                    child.kernel_size,  # type: ignore[arg-type]
                    child.stride,  # type: ignore[arg-type]
                    child.padding,  # type: ignore[arg-type]
                    child.dilation,  # type: ignore[arg-type]
                    child.groups,
                    child.bias is not None,
                    child.padding_mode,
                )
                setattr(parent, child_name, new)
                log.debug("adapted %s.%s to %d input channels", parent_name, child_name, in_chans)
                return
    raise ValueError(
        f"{type(model).__name__}: no 3-channel Conv2d found to adapt to {in_chans} channels"
    )


def default_norm(
    channels: int, model: nn.Module | str | None = None
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Input normalisation (mean, std) per channel for a model, in [0, 1] pixel units.

    ferlab nets (and ``model=None``): dataset-free constants for grey faces (0.5, 0.25).
    timm models: their pretrained config's mean/std; torchvision: ImageNet's. For one channel
    the RGB values are averaged, matching how a 3-channel first conv is summed into one.
    """
    mean: tuple[float, ...] = (FERLAB_MEAN,) * 3
    std: tuple[float, ...] = (FERLAB_STD,) * 3
    cfg: Any = None
    if isinstance(model, nn.Module):
        cfg = getattr(model, "pretrained_cfg", None)
        if cfg is None and type(model).__module__.startswith("torchvision."):
            mean, std = IMAGENET_MEAN, IMAGENET_STD
    elif isinstance(model, str) and model not in ferlab_models():
        if model.startswith(TV_PREFIX):
            mean, std = IMAGENET_MEAN, IMAGENET_STD
        else:
            import timm

            cfg = timm.get_pretrained_cfg(model, allow_unregistered=True)
            cfg = cfg.to_dict() if cfg is not None else {"mean": IMAGENET_MEAN, "std": IMAGENET_STD}
    if cfg is not None:
        mean = tuple(float(v) for v in cfg.get("mean", mean))
        std = tuple(float(v) for v in cfg.get("std", std))
    return _fit_channels(mean, channels), _fit_channels(std, channels)


def _fit_channels(values: tuple[float, ...], channels: int) -> tuple[float, ...]:
    if len(values) == channels:
        return values
    avg = sum(values) / len(values)
    return (avg,) * channels


def default_data_config(
    name: str, channels: int = 1, image_size: int | None = None
) -> dict[str, Any]:
    """Preprocessing hints for a model name: mean, std and input size (48 for ferlab nets)."""
    mean, std = default_norm(channels, name)
    size = image_size
    if size is None:
        size = 48
        if name not in ferlab_models() and not name.startswith(TV_PREFIX):
            import timm

            cfg = timm.get_pretrained_cfg(name, allow_unregistered=True)
            if cfg is not None and getattr(cfg, "fixed_input_size", False):
                size = int(cfg.input_size[-1])
    return {"mean": mean, "std": std, "image_size": size, "channels": channels}
