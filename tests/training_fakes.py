"""A toy training set and a quiet short fit, shared by the training, budget and probe tests."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from ferlab.config import ModelConfig, RuntimeConfig, TrainConfig
from ferlab.data.base import ArraySplit, LoadedDataset
from ferlab.labels import CANONICAL
from ferlab.training import fit
from ferlab.training import module as module_mod

LABELS = ["angry", "happy", "sad", "neutral"]
CANON = np.array([0, 3, 4, 6])  # canonical indices of LABELS


def toy_split(n: int, seed: int, size: int = 16, probs: list[float] | None = None) -> ArraySplit:
    """Class k = a bright horizontal band at height k over dark noise: learnable in a few
    epochs, and unchanged by horizontal flips."""
    rng = np.random.default_rng(seed)
    k = rng.choice(4, size=n, p=probs)
    imgs = (rng.random((n, size, size, 1)) * 80).astype(np.uint8)
    band = size // 4
    for i, c in enumerate(k):
        imgs[i, int(c) * band + 1 : (int(c) + 1) * band - 1, 1:-1, 0] = 220
    return ArraySplit(imgs, CANON[k], [f"{seed}/{i}" for i in range(n)])


def toy_dataset(
    n_train: int = 256, probs: list[float] | None = None, soft: bool = False
) -> LoadedDataset:
    train, val = toy_split(n_train, 0, probs=probs), toy_split(96, 1)
    if soft:
        s = np.zeros((len(train), len(CANONICAL)), dtype=np.float32)
        s[np.arange(len(train)), train.labels] = 0.8
        s[:, CANONICAL.index("neutral")] += 0.2
        train.soft = s
    return LoadedDataset("toy", LABELS, {"train": train, "val": val}, "toy", "fp-toy")


TINY = ModelConfig(name="ferlab_vgg", kwargs={"widths": [8, 16, 16, 24], "depths": [1, 1, 1, 1]})


CPU = RuntimeConfig(accelerator="cpu", threads=1, progress=False)


def tcfg(**kw: Any) -> TrainConfig:
    base = dict(epochs=5, batch_size=32, lr=3e-3, patience=50)
    return TrainConfig(**{**base, **kw})


def quiet_fit(
    data: LoadedDataset,
    cfg: TrainConfig,
    run_dir: Path,
    model: ModelConfig = TINY,
    seed: int = 0,
    **kw: Any,
) -> Any:
    return fit(
        data,
        model,
        cfg,
        run_dir,
        seed=seed,
        image_size=16,
        channels=1,
        runtime=kw.pop("runtime", CPU),
        log=kw.pop("log", lambda s: None),
        **kw,
    )


@contextlib.contextmanager
def recorded_steps(
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[tuple[list[str], list[torch.Tensor]]]:
    """Records, in order, every mixing call ("mix") and every training forward of a first
    convolution (one input channel: "step"), with that forward's input."""
    seen: list[str] = []
    inputs: list[torch.Tensor] = []
    real = module_mod.mixup_cutmix

    def mix(*args: Any) -> Any:
        seen.append("mix")
        return real(*args)

    def record(module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        if isinstance(module, torch.nn.Conv2d) and module.in_channels == 1 and module.training:
            seen.append("step")
            inputs.append(args[0].detach().clone())

    monkeypatch.setattr(module_mod, "mixup_cutmix", mix)
    hook = torch.nn.modules.module.register_module_forward_pre_hook(record)
    try:
        yield seen, inputs
    finally:
        hook.remove()
