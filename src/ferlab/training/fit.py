"""``fit``: train one model on one dataset with Lightning, resumable, writing the run folder.

Run folder (written by global rank 0 only; file names from ``ferlab.layout``)::

    checkpoints/last.ckpt   full state after every epoch (atomic: temp file + os.replace)
    checkpoints/best.ckpt   weights of the best epoch on the monitored validation metric
    history.csv             one row per finished epoch, rewritten atomically each epoch
    logs/                   Lightning's CSV (and TensorBoard) logs (``ferlab.training.trainer``)
    weights.safetensors, meta.json   the best weights and their metadata (ferlab.models),
                            with the temperature fitted on the validation split
    fit.json                summary of the fit (``calibration``: how the temperature was fitted)
    DONE                    written last; without it the run is resumed, never reused

After training, one temperature T is fitted on the validation split for the best weights
(``ferlab.training.calibrate``: minimum NLL of ``softmax(logits / T)``) and stored in the
metadata, so ``evaluate``, ``predict`` and ``export`` give calibrated probabilities; the test
split is never read.

The recipe (``TrainConfig``) decides what is learned; where and how fast it runs (device,
precision, processes, threads, progress bar) is the ``RuntimeConfig``, and the ``Trainer`` is
built from it by ``ferlab.training.trainer.build_trainer``.

A kill at any point leaves at worst a stale ``*.tmp`` file and no ``DONE``; the same call then
resumes from ``last.ckpt`` (optimizer, scheduler, early-stopping and best-checkpoint state
included) and, on CPU, ends with exactly the weights of an uninterrupted run.
"""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Checkpoint, EarlyStopping, ModelCheckpoint
from torch import nn

from ferlab import __version__, layout
from ferlab.config import DataConfig, ModelConfig, RuntimeConfig, TrainConfig
from ferlab.data.base import ArraySplit, LoadedDataset
from ferlab.device import (
    channels_first,
    channels_last_for_training,
    cpu_threads,
    pick_device,
)
from ferlab.labels import INDEX
from ferlab.layout import BEST_CKPT, CHECKPOINTS, DONE, FIT_JSON, HISTORY, LAST_CKPT
from ferlab.models import ModelMeta, create_model, default_norm, save_model
from ferlab.probe import (
    BF16_MIN_SPEEDUP,
    BF16_PROB_TOLERANCE,
    INFERENCE_PRECISION,
    CpuKernels,
    onednn_enabled,
    probe_cpu_kernels,
)
from ferlab.training.augment import progressive_pixel_share
from ferlab.training.budget import TimeBudget
from ferlab.training.calibrate import bf16_agreement, fit_on_split
from ferlab.training.data import EvalBatches, TrainBatches, class_weights, remap_targets
from ferlab.training.module import HISTORY_COLUMNS, FerModule
from ferlab.training.sam import SAM_EPOCH_COST, sam_active
from ferlab.training.trainer import PROGRESS_REFRESH_STEPS, TrainerSetup, build_trainer

# ModelMeta.extra keys fit writes itself; ``extra_meta`` may not replace them.
FIT_META_KEYS = (
    "train_dataset", "dataset_fingerprint", "best_epoch", "monitor", "seed", INFERENCE_PRECISION
)  # fmt: skip


@dataclass
class FitResult:
    model: nn.Module  # best weights, eval mode, on the CPU
    meta: ModelMeta
    history: list[dict[str, float]]
    best_epoch: int
    epochs_run: int
    train_seconds: float
    stopped_early: bool
    resumed: bool
    extra: dict[str, Any] = field(default_factory=dict)


class LastCheckpoint(Checkpoint):
    """Saves ``last.ckpt`` at every epoch end, after early stopping and the best-checkpoint
    callback have updated their state (Lightning runs ``Checkpoint`` callbacks last, in order)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        trainer.save_checkpoint(str(self.path), weights_only=False)


# -- history -----------------------------------------------------------------------------------
def history_csv(history: list[dict[str, float]]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(HISTORY_COLUMNS), lineterminator="\n")
    w.writeheader()
    for row in history:
        w.writerow({k: (int(row[k]) if k == "epoch" else row[k]) for k in HISTORY_COLUMNS})
    return buf.getvalue()


def read_history(path: Path) -> list[dict[str, float]]:
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def best_epoch_of(history: list[dict[str, float]], monitor: str) -> int:
    """The (1-based) epoch ModelCheckpoint keeps: first strict best of ``val_<monitor>``; 0 if none."""
    key = f"val_{monitor}"
    best, best_ep = None, 0
    for row in history:
        v = row[key]
        if v != v:  # NaN
            continue
        if best is None or (v < best if monitor == "loss" else v > best):
            best, best_ep = v, int(row["epoch"])
    return best_ep


# -- model and data ----------------------------------------------------------------------------
def _norm_for(model: nn.Module, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The model's own input normalisation (ferlab.models.default_norm), per channel."""
    mean, std = default_norm(channels, model)
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def _soft_targets(split: ArraySplit, labels: list[str]) -> np.ndarray | None:
    """Vote shares restricted to the model's classes, renormalised (rows with no votes there
    fall back to the hard label)."""
    if split.soft is None:
        return None
    cols = [INDEX[n] for n in labels]
    soft = np.asarray(split.soft, dtype=np.float32)[:, cols]
    total = soft.sum(axis=1, keepdims=True)
    hard = np.eye(len(labels), dtype=np.float32)[remap_targets(split.labels, labels)]
    return np.where(total > 0, soft / np.maximum(total, 1e-12), hard)


def _check_dataset(dataset: LoadedDataset) -> None:
    for name in ("train", "val"):
        if name not in dataset.splits or len(dataset.splits[name]) == 0:
            raise ValueError(
                f"dataset {dataset.name!r} has no (or an empty) {name!r} split; fit needs train "
                "and val (val drives early stopping). Give the dataset a val split or set "
                "data.val_fraction so one is carved from train."
            )


class FerDataModule(pl.LightningDataModule):
    """Training and validation batches built per rank once Lightning knows the rank."""

    def __init__(
        self,
        train: ArraySplit,
        val: ArraySplit,
        labels: list[str],
        train_cfg: TrainConfig,
        seed: int,
        soft: np.ndarray | None,
    ) -> None:
        super().__init__()
        self.train_split, self.val_split = train, val
        self.train_targets = remap_targets(train.labels, labels, where="train split")
        self.val_targets = remap_targets(val.labels, labels, where="val split")
        self.cfg = train_cfg
        self.seed = seed
        self.soft = soft

    def _rank(self) -> tuple[int, int]:
        t = self.trainer
        return (t.global_rank, t.world_size) if t is not None else (0, 1)

    def train_dataloader(self) -> TrainBatches:
        rank, world = self._rank()
        return TrainBatches(
            self.train_split,
            self.train_targets,
            batch_size=self.cfg.batch_size,
            balance=self.cfg.balance,
            seed=self.seed,
            soft=self.soft,
            rank=rank,
            world_size=world,
        )

    def val_dataloader(self) -> EvalBatches:
        rank, world = self._rank()
        return EvalBatches(
            self.val_split,
            self.val_targets,
            batch_size=max(self.cfg.batch_size, 256),
            rank=rank,
            world_size=world,
            subset_seed=self.seed if self.cfg.limit_val_batches is not None else None,
        )


# -- resume ------------------------------------------------------------------------------------
def _read_ckpt_state(path: Path) -> dict[str, Any] | None:
    """The ferlab section of a checkpoint, or None when the file does not load (torn); under
    ``"budget"`` the saved state of its ``TimeBudget`` callback (None without one)."""
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        return None
    state = ck.get("ferlab") if isinstance(ck, dict) else None
    if not isinstance(state, dict):
        return None
    budgets = [
        v
        for k, v in (ck.get("callbacks") or {}).items()
        if str(k).split("{")[0] == TimeBudget.__qualname__ and isinstance(v, dict)
    ]
    return {**state, "budget": budgets[0] if budgets else None}


def _load_best_weights(module: FerModule, best: Path, last: Path) -> None:
    """Copy the best epoch's weights into the wrapped model (last epoch's if no best file)."""
    path = best if best.is_file() else last
    ck = torch.load(path, map_location="cpu", weights_only=True)
    module.load_state_dict(ck["state_dict"])


def _silent(message: str) -> None:
    """The log of non-zero DDP ranks."""


# -- fit ---------------------------------------------------------------------------------------
def fit(
    dataset: LoadedDataset,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    run_dir: Path,
    *,
    seed: int,
    image_size: int,
    channels: int,
    runtime: RuntimeConfig | None = None,
    log: Callable[[str], None] = print,
    extra_meta: Mapping[str, Any] | None = None,
    callbacks: Sequence[pl.Callback] = (),
    cache_dir: str | Path | None = None,
) -> FitResult:
    """Train ``model_cfg`` on ``dataset`` (early stopping on ``val``) into ``run_dir``.

    Resumes from ``run_dir/checkpoints/last.ckpt`` when a previous call was interrupted. The
    model's output units are ``dataset.labels`` in canonical order. ``runtime`` says where it
    runs (default ``RuntimeConfig()``: the best device, all cores, progress bars).
    ``extra_meta`` (JSON-able: the dataset spec, split settings, code provenance...) is merged
    into ``ModelMeta.extra`` in ``meta.json`` and written to ``fit.json`` under ``"extra"``.
    ``callbacks`` are added to the Trainer's (``ferlab tune``'s pruning callback); they see
    the validation metrics ``val_<name>`` after every validation.

    On a CPU, the kernel probe (``ferlab.probe``, cached under ``cache_dir``, default ferlab's
    cache folder ``~/.cache/ferlab``: one machine, one answer) runs first: it decides oneDNN on or off and, with
    ``runtime.precision: auto``, fp32 or bf16-mixed; ``fit.json`` records it (``cpu_kernels``).
    """
    runtime = runtime if runtime is not None else RuntimeConfig()
    extra = _check_extra_meta(extra_meta)
    _check_dataset(dataset)
    kernels = cpu_kernels_for(
        model_cfg, train_cfg, runtime, dataset, image_size, channels, cache_dir, log
    )
    chosen = runtime  # the runtime as set (fit.json's "runtime"), with the probe's precision
    if kernels is not None and runtime.precision == "auto":
        chosen = runtime.model_copy(update={"precision": kernels.precision})
    run_dir = Path(run_dir)
    ckpt_dir = run_dir / CHECKPOINTS
    last_path, best_path = ckpt_dir / LAST_CKPT, ckpt_dir / BEST_CKPT
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / DONE).unlink(missing_ok=True)  # this folder is being (re)trained

    labels = list(dataset.labels)
    train, val = dataset.splits["train"], dataset.splits["val"]

    pl.seed_everything(seed, workers=True, verbose=False)
    model = create_model(
        model_cfg.name,
        num_classes=len(labels),
        channels=channels,
        pretrained=model_cfg.pretrained,
        image_size=image_size,
        labels=labels,  # a fine-tuned run's head is kept only for the same labels
        **model_cfg.kwargs,
    )
    mean, std = _norm_for(model, channels)
    # Before FerModule (its EMA copy) and the optimizer: their tensors take this layout too.
    relaid = channels_last_for_training(model, pick_device(runtime.accelerator))
    soft = _soft_targets(train, labels) if train_cfg.soft_labels else None
    weights = None
    if train_cfg.balance == "weighted":
        weights = class_weights(remap_targets(train.labels, labels), len(labels))

    def write_history(history: list[dict[str, float]]) -> None:
        layout.atomic_write(run_dir / HISTORY, history_csv(history))
        r = history[-1]
        log(
            f"epoch {int(r['epoch'])}/{planned_epochs()}: train_loss {r['train_loss']:.4f} "
            f"train_acc {r['train_acc']:.4f} val_loss {r['val_loss']:.4f} "
            f"val_acc {r['val_accuracy']:.4f} val_bal_acc {r['val_balanced_accuracy']:.4f} "
            f"val_f1 {r['val_macro_f1']:.4f} lr {r['lr']:.3g} ({r['epoch_seconds']:.1f}s)"
        )

    module = FerModule(
        model,
        train_cfg,
        num_classes=len(labels),
        channels=channels,
        mean=mean,
        std=std,
        seed=seed,
        class_weights=weights,
        on_epoch_end=write_history,
        log_every=PROGRESS_REFRESH_STEPS if runtime.show_progress else 0,
    )
    datamodule = FerDataModule(train, val, labels, train_cfg, seed, soft)

    def planned_epochs() -> int:
        return module.planned_epochs or train_cfg.epochs

    budget: TimeBudget | None = None
    if train_cfg.time_budget_min is not None:

        def on_plan(epochs: int) -> None:
            module.planned_epochs = epochs

        n_val = len(val)
        if isinstance(train_cfg.limit_val_batches, int):
            n_val = min(n_val, train_cfg.limit_val_batches * max(train_cfg.batch_size, 256))
        aug, side = train_cfg.augment, int(train.images.shape[1])  # the side the module sees

        def epoch_cost(epoch: int, epochs: int) -> float:
            sam = SAM_EPOCH_COST if sam_active(train_cfg, epoch, epochs) else 1.0
            return progressive_pixel_share(side, aug, epoch, epochs) * sam

        uneven = aug.progressive_scale < 1 or train_cfg.sam_rho > 0
        budget = TimeBudget(
            train_cfg.time_budget_min * 60,
            train_cfg.epochs,
            val_images=n_val,
            log=log,
            on_plan=on_plan,
            epoch_cost=epoch_cost if uneven else None,
        )

    monitor = f"val_{train_cfg.monitor}"
    mode = "min" if train_cfg.monitor == "loss" else "max"
    early = EarlyStopping(
        monitor=monitor,
        mode=mode,
        patience=train_cfg.patience,
        min_delta=train_cfg.min_delta,
        check_on_train_epoch_end=True,
    )
    best_cb = ModelCheckpoint(
        dirpath=str(ckpt_dir),
        filename=Path(BEST_CKPT).stem,
        monitor=monitor,
        mode=mode,
        save_top_k=1,
        save_weights_only=True,
        save_on_train_epoch_end=True,
        enable_version_counter=False,
    )
    setup = build_trainer(
        chosen,
        run_dir,
        max_epochs=train_cfg.epochs,
        callbacks=[
            *callbacks,
            *([budget] if budget else []),
            early,
            best_cb,
            LastCheckpoint(last_path),
        ],
        gradient_clip_val=train_cfg.grad_clip,
        limit_train_batches=train_cfg.limit_train_batches,
        limit_val_batches=train_cfg.limit_val_batches,
    )
    trainer = setup.trainer
    if trainer.global_rank != 0:  # one log, from rank 0 (DDP ranks started by Lightning/torchrun)
        log = _silent
    else:
        for stale in ckpt_dir.glob(".*.tmp"):  # left by a kill during a write; never read
            stale.unlink(missing_ok=True)

    resume_state = _read_ckpt_state(last_path) if last_path.is_file() else None
    if last_path.is_file() and resume_state is None:
        # Never a torn file (writes are atomic) but perhaps one from another ferlab or torch.
        log(f"{last_path} does not load as a ferlab checkpoint; starting this run from scratch")
    finished = resume_state is not None and (
        bool(resume_state["should_stop"])
        or int(resume_state["epoch"]) + 1
        >= (resume_state.get("planned_epochs") or train_cfg.epochs)
    )
    if finished and not best_path.is_file():
        # A finished run whose outputs were damaged after DONE: the best weights are gone
        # with best.ckpt, so only retraining gives the right result.
        log(f"{last_path} holds a finished run but {best_path.name} is gone; retraining")
        resume_state, finished = None, False
    resumed = resume_state is not None
    n_params = sum(p.numel() for p in model.parameters())
    log(
        f"training {model_cfg.display} ({n_params / 1e6:.2f}M params) on {dataset.name}: "
        f"{len(train)} train / {len(val)} val images, {len(labels)} classes, "
        f"{setup.accelerator} x{trainer.num_devices}, precision {setup.precision}, "
        f"{setup.threads} threads, balance {train_cfg.balance}, monitor {monitor}"
        + (f"; resuming after epoch {int(resume_state['epoch']) + 1}" if resume_state else "")
    )
    if kernels is not None:
        for note in kernels.notes():
            log(f"CPU kernels ({kernels.cpu}): {note}")
    onednn = kernels.onednn if kernels is not None else bool(torch._C._get_mkldnn_enabled())

    t0 = time.perf_counter()
    if finished:
        assert resume_state is not None
        module.history = list(resume_state["history"])
        module.planned_epochs = resume_state.get("planned_epochs")
        if budget is not None:
            budget.load_state_dict(resume_state.get("budget") or {})
        log("the checkpoint already holds the finished training; writing its outputs")
    else:
        with onednn_enabled(onednn):
            setup.fit(module, datamodule, ckpt_path=last_path if resumed else None)
        if trainer.interrupted:
            raise KeyboardInterrupt(
                f"training of {model_cfg.display} interrupted; rerun to resume from {last_path}"
            )
    wall_seconds = time.perf_counter() - t0

    history = list(module.history)
    # Summed over sessions, so a resumed run reports its whole training time.
    train_seconds = float(sum(r["epoch_seconds"] for r in history))
    best_ep = best_epoch_of(history, train_cfg.monitor)
    stopped_early = len(history) < planned_epochs()
    stop = stop_record(len(history), planned_epochs(), early, budget, train_cfg)
    notes = [*(kernels.notes() if kernels is not None else [])]
    if budget is not None:
        notes.append(budget.note())
    if not stop["completed"]:
        notes.append(stop["reason"])
        log(f"{model_cfg.display}: {stop['reason']}")
    _load_best_weights(module, best_path, last_path)
    if relaid:  # scored below in the layout a fresh load_model gives (ferlab evaluate's)
        channels_first(module)
    # The temperature of the best weights, on the device they were trained on.
    with onednn_enabled(onednn):
        calibration = fit_on_split(
            module.eval_model,
            dataset.splits.get("val"),
            labels,
            mean,
            std,
            device=trainer.strategy.root_device,
            batch_size=max(train_cfg.batch_size, 256),
        )
    log(f"calibration: {calibration.note}")
    inference = _inference_precision(
        module.eval_model, dataset.splits["val"], labels, mean, std, kernels,
        calibration.temperature, trainer.strategy.root_device,
    )  # fmt: skip
    if inference is not None:
        log(f"inference precision: {inference['note']}")
    model = module.eval_model.cpu().eval()
    meta = ModelMeta(
        architecture=model_cfg.name,
        labels=labels,
        image_size=image_size,
        channels=channels,
        mean=mean,
        std=std,
        kwargs=dict(model_cfg.kwargs),
        temperature=calibration.temperature,
        ferlab_version=__version__,
        extra={
            **extra,
            "train_dataset": dataset.name,
            "dataset_fingerprint": dataset.fingerprint,
            "best_epoch": best_ep,
            "monitor": monitor,
            "seed": seed,
            INFERENCE_PRECISION: (inference or {}).get("precision", "32"),
        },
    )
    result = FitResult(
        model=model,
        meta=meta,
        history=history,
        best_epoch=best_ep,
        epochs_run=len(history),
        train_seconds=train_seconds,
        stopped_early=stopped_early,
        resumed=resumed,
        extra={
            "wall_seconds_this_call": wall_seconds,
            "calibration": calibration.to_dict(),
            "planned_epochs": planned_epochs(),
            "time_budget": budget.summary() if budget is not None else None,
            "cpu_kernels": kernels.to_dict() if kernels is not None else None,
            "stop": stop,
            "notes": notes,
            "inference": inference,
        },
    )
    if trainer.is_global_zero:
        _write_outputs(run_dir, result, model_cfg, train_cfg, setup, runtime, extra)
        log(
            f"done: best epoch {best_ep} of {len(history)} "
            f"({monitor} {history[best_ep - 1][monitor] if 1 <= best_ep <= len(history) else float('nan'):.4f}), "
            f"{train_seconds / 60:.1f} min; weights in {run_dir}"
        )
    return result


def _inference_precision(
    model: nn.Module,
    val: ArraySplit,
    labels: list[str],
    mean: Sequence[float],
    std: Sequence[float],
    kernels: CpuKernels | None,
    temperature: float,
    device: torch.device,
) -> dict[str, Any] | None:
    """bf16 inference for the trained model, where the probe measured its forward pass faster
    and its validation probabilities stay within ``BF16_PROB_TOLERANCE`` of fp32's."""
    speed = kernels.bf16_infer_speedup if kernels is not None else None
    if speed is None or device.type != "cpu":
        return None
    if speed < BF16_MIN_SPEEDUP:
        note = f"fp32 (bf16 forward measured {speed:.2f}x, below {BF16_MIN_SPEEDUP}x)"
        return {"precision": "32", "bf16_forward_speedup": speed, "note": note}
    agree = bf16_agreement(model, val, labels, mean, std, temperature=temperature, device=device)
    ok = agree["max_abs_prob_diff"] <= BF16_PROB_TOLERANCE
    note = (
        f"{'bf16' if ok else 'fp32'} (bf16 forward {speed:.2f}x faster; on validation its "
        f"probabilities differ from fp32's by at most {agree['max_abs_prob_diff']:.4f}, "
        f"tolerance {BF16_PROB_TOLERANCE}; argmax agreement {agree['argmax_agreement']:.2%})"
    )
    precision = "bf16" if ok else "32"
    return {"precision": precision, "bf16_forward_speedup": speed, **agree, "note": note}


def stop_record(
    epochs_run: int,
    planned: int,
    early: EarlyStopping,
    budget: TimeBudget | None,
    train_cfg: TrainConfig,
) -> dict[str, Any]:
    """How training ended, for ``fit.json``: ``completed`` only when the planned schedule ran
    to its end (its learning rate annealed)."""
    cut = budget.plans[-1] if budget is not None and budget.plans else None
    if cut is not None and cut["reason"] == "shortened" and cut["epochs"] <= cut["after_epoch"]:
        return {
            "completed": False,
            "reason": (
                f"stopped after epoch {epochs_run}: the time budget ran out and the plan was cut "
                "to the epochs done, before the schedule annealed"
            ),
        }
    if epochs_run >= planned:
        return {"completed": True, "reason": f"completed the {planned} planned epochs"}
    if early.stopped_epoch > 0:
        return {
            "completed": False,
            "reason": (
                f"stopped early after epoch {epochs_run} of {planned}: val_{train_cfg.monitor} "
                f"did not improve for {train_cfg.patience} epochs (train.patience)"
            ),
        }
    return {"completed": False, "reason": f"stopped after epoch {epochs_run} of {planned}"}


def cpu_kernels_for(
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    runtime: RuntimeConfig,
    dataset: LoadedDataset,
    image_size: int,
    channels: int,
    cache_dir: str | Path | None,
    log: Callable[[str], None],
) -> CpuKernels | None:
    """The kernel probe's choice for this model on this CPU (None on a GPU)."""
    if pick_device(runtime.accelerator).type != "cpu":
        return None
    devices = runtime.devices if isinstance(runtime.devices, int) else 1
    n_train = len(dataset.splits["train"])
    return probe_cpu_kernels(
        model_cfg.name,
        kwargs=dict(model_cfg.kwargs),
        num_classes=len(dataset.labels),
        in_chans=channels,
        image_size=image_size,
        batch_size=train_cfg.batch_size,
        last_batch=n_train % train_cfg.batch_size,
        threads=cpu_threads(runtime.threads, devices),
        onednn=runtime.onednn,
        precision=runtime.precision,
        cache_dir=cache_dir if cache_dir is not None else DataConfig().cache_dir,
        log=log,
    )


def _check_extra_meta(extra_meta: Mapping[str, Any] | None) -> dict[str, Any]:
    """``extra_meta`` as plain JSON values, checked before any training is spent."""
    if not extra_meta:
        return {}
    taken = sorted(set(extra_meta) & set(FIT_META_KEYS))
    if taken:
        raise ValueError(
            f"fit(extra_meta=...) may not set {taken}: fit writes these keys of meta.json's "
            "`extra` itself. Pass the value under another name."
        )
    extra = layout.jsonable(dict(extra_meta))
    try:
        json.dumps(extra, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ValueError(
            f"fit(extra_meta=...) must be JSON-able (it goes into meta.json and fit.json): {e}"
        ) from e
    return dict(extra)


def _write_outputs(
    run_dir: Path,
    result: FitResult,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    setup: TrainerSetup,
    runtime: RuntimeConfig,
    extra: dict[str, Any],
) -> None:
    """Weights, metadata, history and summary; ``DONE`` last, so only a full set is reused."""
    save_model(result.model, result.meta, run_dir)
    layout.atomic_write(run_dir / HISTORY, history_csv(result.history))
    n = len(result.history)
    best = result.history[result.best_epoch - 1] if 1 <= result.best_epoch <= n else {}
    summary = {
        "dataset": result.meta.extra.get("train_dataset"),
        "model": model_cfg.display,
        "params": sum(p.numel() for p in result.model.parameters()),
        "architecture": model_cfg.name,
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "max_epochs": train_cfg.epochs,
        # The epochs the schedule was planned for: train.epochs, or what the time budget gave.
        "planned_epochs": result.extra.get("planned_epochs", train_cfg.epochs),
        "time_budget": result.extra.get("time_budget"),
        "cpu_kernels": result.extra.get("cpu_kernels"),
        # How training ended: {"completed": bool, "reason": ...}; a run stopped before its
        # plan's end (early stopping, a budget that ran out) is never recorded as a normal run.
        "stop": result.extra.get("stop"),
        "notes": result.extra.get("notes", []),  # for the report: kernels, budget, stop
        "inference": result.extra.get("inference"),  # bf16 or fp32 inference, and why
        "stopped_early": result.stopped_early,
        "resumed": result.resumed,
        "train_seconds": round(result.train_seconds, 3),
        "monitor": f"val_{train_cfg.monitor}",
        "best": best,
        "accelerator": setup.accelerator,
        "precision": setup.precision,
        "threads": setup.threads,
        "world_size": setup.trainer.world_size,
        "ferlab_version": __version__,
        "model_config": model_cfg.model_dump(mode="json"),
        "train_config": train_cfg.model_dump(mode="json"),
        "runtime": runtime.model_dump(mode="json"),
        "extra": extra,
        "temperature": result.meta.temperature,
        "calibration": result.extra.get("calibration"),
    }
    layout.write_json(run_dir / FIT_JSON, summary)
    layout.atomic_write(run_dir / DONE, f"{time.strftime('%Y-%m-%dT%H:%M:%S')}\n")
    # Only now: until DONE exists a resume may still need the best weights.
    (run_dir / CHECKPOINTS / BEST_CKPT).unlink(missing_ok=True)
