"""The one place a Lightning ``Trainer`` is built, for ``fit`` and for the benchmarks.

``build_trainer`` turns a ``RuntimeConfig`` (where and how fast) into a ``Trainer``: the device
and precision (``ferlab.device``), devices, nodes and strategy, torch's CPU threads, atomic
checkpoint writes, the progress bar, and the standard training logs::

    <run_dir>/logs/csv/version_<n>/metrics.csv           Lightning's CSVLogger, always
    <run_dir>/logs/tensorboard/version_<n>/events.*      TensorBoardLogger, when the
                                                         ``tensorboard`` package is installed

one ``version_<n>`` per training session (a resumed run adds one; ``history.csv`` holds every
epoch of all sessions). Lightning's loggers write from global rank 0 only. ``TrainerSetup.fit``
runs the loop with Lightning's console chatter hushed and, on a CPU, deterministic algorithms,
which resume relies on to end with exactly the weights of an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Checkpoint, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger

from ferlab import layout
from ferlab.config import RuntimeConfig
from ferlab.device import cpu_threads, pick_device, resolve_precision

# Refreshing the progress bar reads the loss back from the device: not at every step.
PROGRESS_REFRESH_STEPS = 10


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, but atomic on local disks.

    Lightning's own ``_atomic_save`` goes through an fsspec transaction whose temp file lives in
    the system temp folder and is *moved* into place, a copy (not atomic) when /tmp is another
    filesystem. Here the bytes go through ``ferlab.layout.atomic_write`` (temp file beside the
    target, fsync, rename).
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None
    ) -> None:
        buf = io.BytesIO()
        torch.save(checkpoint, buf)
        layout.atomic_write(Path(path), buf.getvalue())


def tensorboard_available() -> bool:
    return importlib.util.find_spec("tensorboard") is not None


def train_loggers(run_dir: Path) -> list[Logger]:
    """CSV always, TensorBoard when installed, both under ``<run_dir>/logs``."""
    logs = Path(run_dir) / layout.TRAIN_LOGS
    loggers: list[Logger] = [CSVLogger(save_dir=str(logs), name="csv")]
    if tensorboard_available():
        loggers.append(
            TensorBoardLogger(save_dir=str(logs), name="tensorboard", default_hp_metric=False)
        )
    return loggers


@contextlib.contextmanager
def quiet_lightning() -> Iterator[None]:
    """Lightning's info lines (GPU available..., tips) go to the console, not our log: hush them."""
    names = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")
    loggers = [logging.getLogger(n) for n in names]
    old = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            # Expected when resuming: the folder holds our own last/best checkpoints.
            warnings.filterwarnings(
                "ignore", message=r"Checkpoint directory .* exists and is not empty"
            )
            warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
            # Only epoch-level values go to the loggers; the step interval does not apply.
            warnings.filterwarnings("ignore", message=r".*smaller than the logging interval.*")
            # FerModule reduces its metrics over ranks itself before logging them.
            warnings.filterwarnings("ignore", message=r".*sync_dist=True.*")
            # Lightning 2.6 on torch >= 2.10: an internal deprecation, nothing for users to do.
            warnings.filterwarnings(
                "ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated"
            )
            yield
    finally:
        for lg, lvl in zip(loggers, old, strict=True):
            lg.setLevel(lvl)


@contextlib.contextmanager
def deterministic(enabled: bool) -> Iterator[None]:
    """torch's deterministic algorithms (warn-only) inside the block, the previous mode after."""
    prev = torch.are_deterministic_algorithms_enabled()
    prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    if enabled:
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev, warn_only=prev_warn)


@dataclass(frozen=True)
class TrainerSetup:
    """A built ``Trainer`` and what was resolved for it."""

    trainer: pl.Trainer
    accelerator: str  # cuda, mps or cpu
    precision: str  # Lightning's precision flag: 32, 16-mixed or bf16-mixed
    threads: int  # torch CPU threads of this process

    def fit(
        self,
        module: pl.LightningModule,
        datamodule: pl.LightningDataModule,
        ckpt_path: str | Path | None = None,
    ) -> None:
        """``trainer.fit`` quietly, deterministic on a CPU; ``ckpt_path`` resumes."""
        with quiet_lightning(), deterministic(self.accelerator == "cpu"):
            self.trainer.fit(
                module,
                datamodule=datamodule,
                ckpt_path=None if ckpt_path is None else str(ckpt_path),
                weights_only=True,
            )


def build_trainer(
    runtime: RuntimeConfig,
    run_dir: Path,
    *,
    max_epochs: int,
    callbacks: Sequence[pl.Callback] = (),
    gradient_clip_val: float | None = None,
    limit_train_batches: int | float | None = None,
    limit_val_batches: int | float | None = None,
    max_steps: int = -1,
) -> TrainerSetup:
    """The ``Trainer`` for ``runtime`` writing under ``run_dir``, and torch's thread count set.

    ``callbacks`` are the caller's (fit's early stopping and checkpoints, a benchmark's timer);
    Lightning's own checkpointing is on only when one of them is a ``Checkpoint``. The limits
    and ``gradient_clip_val`` come from the training recipe (``TrainConfig``), not the runtime.
    """
    accelerator = pick_device(runtime.accelerator).type
    precision = resolve_precision(runtime.precision, accelerator)
    all_callbacks = list(callbacks)
    progress = runtime.show_progress
    if progress:
        all_callbacks.append(TQDMProgressBar(refresh_rate=PROGRESS_REFRESH_STEPS))
    with quiet_lightning():
        trainer = pl.Trainer(
            accelerator=accelerator,
            devices=runtime.devices,
            num_nodes=runtime.num_nodes,
            strategy=runtime.strategy,
            precision=precision,  # type: ignore[arg-type]
            max_epochs=max_epochs,
            max_steps=max_steps,
            gradient_clip_val=gradient_clip_val,
            limit_train_batches=limit_train_batches,
            limit_val_batches=limit_val_batches,
            callbacks=all_callbacks,
            plugins=[AtomicCheckpointIO()],
            logger=train_loggers(run_dir),
            enable_checkpointing=any(isinstance(cb, Checkpoint) for cb in all_callbacks),
            enable_progress_bar=progress,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            use_distributed_sampler=False,
            benchmark=accelerator == "cuda",
            default_root_dir=str(run_dir),
        )
    # CPU DDP: the local processes share the cores.
    threads = cpu_threads(runtime.threads, trainer.num_devices if accelerator == "cpu" else 1)
    torch.set_num_threads(threads)
    return TrainerSetup(trainer, accelerator, precision, threads)
