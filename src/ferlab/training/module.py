"""The LightningModule: uint8 batch in, augmented normalised floats, loss, per-epoch history.

Batches arrive as uint8 (B, H, W, C) (a quarter of the bytes of float to move to the device);
the step converts, augments and normalises on the device. The augmentation generator is seeded
from (seed, epoch, step, rank) and the global RNG (dropout, stochastic depth) is reseeded from
(seed, epoch, rank) at every epoch start, so a run resumed from an epoch checkpoint repeats the
uninterrupted run exactly on CPU.
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Callable, Iterator
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn

from ferlab.config import TrainConfig
from ferlab.data.tensors import normalise, uint8_normalised, uint8_unit
from ferlab.training.augment import augment_batch, mixing, mixup_cutmix, progressive_side
from ferlab.training.budget import MAX_WARMUP_FRACTION, ResizableOneCycleLR, WarmupCosine
from ferlab.training.data import derive_seed
from ferlab.training.sam import SAM, sam_active

HISTORY_COLUMNS = (
    "epoch",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_accuracy",
    "val_balanced_accuracy",
    "val_macro_f1",
    "lr",
    "epoch_seconds",
)


def soft_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Cross entropy against target probabilities (B, K); with class weights, the weighted mean
    (each sample weighs sum_k target_k * w_k, as ``F.cross_entropy(weight=...)`` does)."""
    loss = -(target * F.log_softmax(logits.float(), dim=1)).sum(dim=1)
    if weight is None:
        return loss.mean()
    w = target @ weight
    return (loss * w).sum() / w.sum().clamp_min(1e-12)


def metrics_from_confusion(cm: torch.Tensor) -> dict[str, float]:
    """Accuracy, balanced accuracy (mean recall over classes present) and macro-F1 (over classes
    present in truth or prediction) from a (K, K) confusion matrix [true, pred]."""
    cm = cm.double()
    total = cm.sum()
    tp = cm.diag()
    support = cm.sum(1)
    predicted = cm.sum(0)
    acc = float(tp.sum() / total) if total > 0 else 0.0
    present = support > 0
    bal = float((tp[present] / support[present]).mean()) if present.any() else 0.0
    used = present | (predicted > 0)
    f1 = 2 * tp / (support + predicted).clamp_min(1e-12)
    macro = float(f1[used].mean()) if used.any() else 0.0
    return {"accuracy": acc, "balanced_accuracy": bal, "macro_f1": macro}


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on weights only: not on biases, norm scales or other 1-d parameters."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for _, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


# Devices with torch's fused AdamW kernel (one pass over all parameters: about half the time of
# the default per-tensor loop for ferlab's compact nets on a CPU).
FUSED_ADAMW_DEVICES = ("cpu", "cuda")


def build_optimizer(
    model: nn.Module, cfg: TrainConfig, *, precision: str = "32"
) -> torch.optim.Optimizer:
    """The optimizer of ``cfg`` over ``model``'s parameters (decay on weights only); AdamW is
    fused where torch has the kernel for the parameters' device and dtype.

    Not fused under mixed precision (``precision`` is Lightning's flag) with gradient clipping:
    Lightning refuses to clip for an optimizer that could unscale gradients itself, as the fused
    kernel can, even under bf16 where nothing is scaled. With ``cfg.sam_rho`` the optimizer is
    wrapped in ``SAM``, which needs a closure: not under fp16 mixed precision (a scaler).
    """
    if cfg.sam_rho and str(precision) in ("16", "16-mixed"):
        raise ValueError(
            f"train.sam_rho={cfg.sam_rho} needs a precision without a gradient scaler, and this "
            f"run resolved runtime.precision to {precision!r} (a GPU without bf16): set "
            "runtime.precision to 32, or train.sam_rho to 0"
        )
    groups = param_groups(model, cfg.weight_decay)
    opt: torch.optim.Optimizer
    if cfg.optimizer == "adamw":
        params = [p for g in groups for p in g["params"]]
        mixed_clipped = "mixed" in str(precision) and bool(cfg.grad_clip)
        fused = (
            not mixed_clipped
            and bool(params)
            and all(p.device.type in FUSED_ADAMW_DEVICES and p.is_floating_point() for p in params)
        )
        opt = torch.optim.AdamW(groups, lr=cfg.lr, fused=fused or None)
    else:
        opt = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)
    return SAM(opt, cfg.sam_rho) if cfg.sam_rho else opt


@contextlib.contextmanager
def frozen_norm_statistics(model: nn.Module) -> Iterator[None]:
    """BatchNorm layers normalise with the batch as usual but leave their running statistics
    and batch counts as they are, for a repeated pass over a batch already counted (SAM's)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.momentum, m.num_batches_tracked) for m in norms]
    for m in norms:
        m.momentum = 0.0  # running = 1 * running + 0 * batch
        if m.num_batches_tracked is not None:
            m.num_batches_tracked = m.num_batches_tracked.clone()
    try:
        yield
    finally:
        for m, (momentum, count) in zip(norms, saved, strict=True):
            m.momentum = momentum
            m.num_batches_tracked = count


class WeightEMA(nn.Module):
    """An exponential moving average of a model's weights and buffers (timm's ModelEmaV2 rule).

    ``update`` after every optimizer step: ``ema = d * ema + (1 - d) * live`` for every float
    parameter and buffer (BatchNorm running statistics included), with the warm-up
    ``d = min(decay, (1 + n) / (10 + n))`` at update ``n``; integer buffers are copied.
    A submodule of the ``FerModule``, so checkpoints hold it and a resume continues it.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        super().__init__()
        self.module = copy.deepcopy(model)
        self.module.requires_grad_(False)
        self.decay = decay

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        ema_f, live_f = [], []
        for e, v in zip(
            self.module.state_dict().values(), model.state_dict().values(), strict=True
        ):
            if e.is_floating_point():
                ema_f.append(e)
                live_f.append(v.detach())
            else:
                e.copy_(v)
        if ema_f:
            torch._foreach_lerp_(ema_f, live_f, 1.0 - d)


class FerModule(pl.LightningModule):
    """Wraps any classifier ``model`` (B, C, H, W) -> (B, K) logits for ferlab's training."""

    mean: torch.Tensor  # (1, C, 1, 1) buffers, not saved: they travel in the model metadata
    std: torch.Tensor
    class_weights: torch.Tensor  # (K,) or empty when the loss is unweighted

    def __init__(
        self,
        model: nn.Module,
        train_cfg: TrainConfig,
        *,
        num_classes: int,
        channels: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        seed: int,
        class_weights: torch.Tensor | None = None,
        on_epoch_end: Callable[[list[dict[str, float]]], None] | None = None,
        log_every: int = 10,
    ) -> None:
        super().__init__()
        self.model = model
        self.cfg = train_cfg
        self.num_classes = num_classes
        self.channels = channels
        self.seed = seed
        self.on_epoch_end = on_epoch_end
        self.log_every = log_every  # progress-bar loss every N steps (0: never)
        self.register_buffer(
            "mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False
        )
        self.register_buffer(
            "std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False
        )
        cw = class_weights if class_weights is not None else torch.zeros(0)
        self.register_buffer("class_weights", cw.float(), persistent=False)
        self.ema = WeightEMA(model, train_cfg.ema_decay) if train_cfg.ema_decay else None
        # Set by the time budget (ferlab.training.budget); saved in checkpoints.
        self.planned_epochs: int | None = None
        self.history: list[dict[str, float]] = []
        self._counted_batch: tuple[int, int] | None = None  # (epoch, batch) last counted
        self._val_metrics: dict[str, float] = {}
        self._reset_train_stats()
        self._reset_val_stats()
        self._epoch_t0 = time.perf_counter()

    # -- batch preparation ------------------------------------------------------------------
    def to_float(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 (B, H, W, C) -> float (B, C, H, W) in [0, 1], NCHW strides (one pass)."""
        return uint8_unit(x)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """(x - mean) / std of a float batch in [0, 1] (one pass)."""
        return normalise(x, self.mean, self.std)

    def model_input(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 (B, H, W, C) -> the normalised float (B, C, H, W) the model takes (one pass)."""
        return uint8_normalised(x, self.mean, self.std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    @property
    def eval_model(self) -> nn.Module:
        """The weights validation scores and ``fit`` keeps: the EMA's when it is on."""
        return self.ema.module if self.ema is not None else self.model

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.ema is not None:  # after the optimizer step of this batch
            self.ema.update(self.model, self.global_step)

    def _step_generator(self, batch_idx: int) -> torch.Generator:
        g = torch.Generator()
        g.manual_seed(
            derive_seed(self.seed, self.current_epoch, batch_idx, self.global_rank, "augment")
        )
        return g

    def _targets(self, y: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
        t = soft.float() if soft.numel() else F.one_hot(y, self.num_classes).float()
        eps = self.cfg.label_smoothing
        return t * (1 - eps) + eps / self.num_classes if eps > 0 else t

    # -- training ----------------------------------------------------------------------------
    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
        x_u8, y, soft = batch
        aug = self.cfg.augment
        target = self._targets(y, soft)
        epochs = self.planned_epochs or self.cfg.epochs
        side = progressive_side(x_u8.shape[1], aug, self.current_epoch, epochs)
        if aug.enabled or side != x_u8.shape[1]:
            g = self._step_generator(batch_idx)
            x = augment_batch(self.to_float(x_u8), aug, g, self.channels, side)
            if mixing(aug, self.current_epoch, epochs):
                x, target = mixup_cutmix(x, target, aug, g)
            x = self.normalise(x)
        else:
            x = self.model_input(x_u8)
        # A second call for the same batch (SAM's pass at perturbed weights) keeps the norm
        # statistics and the epoch's loss and accuracy to the first, at the weights themselves.
        repeat = self._counted_batch == (self.current_epoch, batch_idx)
        with frozen_norm_statistics(self.model) if repeat else contextlib.nullcontext():
            logits = self.model(x)
        weight = self.class_weights if self.class_weights.numel() else None
        loss = soft_cross_entropy(logits, target, weight)
        if repeat:
            return loss
        self._counted_batch = (self.current_epoch, batch_idx)
        n = y.shape[0]
        self._train_loss_sum += loss.detach().float() * n
        self._train_correct += (logits.detach().argmax(1) == y).sum()
        self._train_count += n
        if self.log_every and batch_idx % self.log_every == 0:
            # For the progress bar only; Lightning's logging costs ~0.5% of a step on a CPU.
            self.log(
                "train_loss",
                loss.detach(),
                prog_bar=True,
                on_step=True,
                on_epoch=False,
                logger=False,
            )
        return loss

    def on_train_epoch_start(self) -> None:
        # Dropout and other layers draw from the global RNG: make it a function of the epoch.
        torch.manual_seed(derive_seed(self.seed, self.current_epoch, self.global_rank, "global"))
        opt = getattr(self.optimizers(), "optimizer", None)  # inside Lightning's wrapper
        if isinstance(opt, SAM):  # on from train.sam_from of the current plan
            epochs = self.planned_epochs or self.cfg.epochs
            opt.active = sam_active(self.cfg, self.current_epoch, epochs)
        self._reset_train_stats()
        self._epoch_t0 = time.perf_counter()

    def on_train_epoch_end(self) -> None:
        stats = torch.stack(
            [self._train_loss_sum, self._train_correct.float(), self._train_count.float()]
        )
        stats = self._sum_over_ranks(stats)
        count = max(float(stats[2]), 1.0)
        val = self._val_metrics
        row = {
            "epoch": float(self.current_epoch + 1),  # 1-based, as logged
            "train_loss": float(stats[0]) / count,
            "train_acc": float(stats[1]) / count,
            "val_loss": val.get("loss", float("nan")),
            "val_accuracy": val.get("accuracy", float("nan")),
            "val_balanced_accuracy": val.get("balanced_accuracy", float("nan")),
            "val_macro_f1": val.get("macro_f1", float("nan")),
            "lr": float(self.optimizers().param_groups[0]["lr"]),  # type: ignore[union-attr]
            "epoch_seconds": time.perf_counter() - self._epoch_t0,
        }
        self.history.append(row)
        # The standard training logs (CSV, TensorBoard; ferlab.training.trainer): one row per
        # epoch with history.csv's numbers. Lightning adds its own 0-based ``epoch`` and
        # ``step`` columns. Values are already reduced over ranks; loggers write on rank 0.
        logged = {k: v for k, v in row.items() if k != "epoch"}
        if not val:  # no validation ran this epoch: no NaN for a monitoring callback to see
            logged = {k: v for k, v in logged.items() if not k.startswith("val_")}
        self.log_dict(logged, on_step=False, on_epoch=True, logger=True)
        if self.on_epoch_end is not None and self.trainer.is_global_zero:
            self.on_epoch_end(self.history)

    # -- validation --------------------------------------------------------------------------
    def validation_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> None:
        x_u8, y, _ = batch
        logits = self.eval_model(self.model_input(x_u8))
        self._val_loss_sum += F.cross_entropy(logits.float(), y, reduction="sum")
        pred = logits.argmax(1)
        k = self.num_classes
        self._val_cm += torch.bincount(y * k + pred, minlength=k * k).view(k, k)

    def on_validation_epoch_start(self) -> None:
        self._reset_val_stats()

    def on_validation_epoch_end(self) -> None:
        cm = self._sum_over_ranks(self._val_cm)
        loss_sum = self._sum_over_ranks(self._val_loss_sum.view(1))
        n = float(cm.sum())
        metrics = metrics_from_confusion(cm.cpu())
        metrics["loss"] = float(loss_sum) / max(n, 1.0)
        self._val_metrics = metrics
        # Already reduced over ranks: every rank logs the same numbers, no sync needed.
        for name, value in metrics.items():
            self.log(
                f"val_{name}", value, prog_bar=name in ("loss", "balanced_accuracy"), logger=False
            )

    # -- state -------------------------------------------------------------------------------
    def _reset_train_stats(self) -> None:
        dev = self.mean.device
        self._train_loss_sum = torch.zeros((), device=dev)
        self._train_correct = torch.zeros((), dtype=torch.long, device=dev)
        self._train_count = torch.zeros((), dtype=torch.long, device=dev)

    def _reset_val_stats(self) -> None:
        dev = self.mean.device
        k = self.num_classes
        self._val_cm = torch.zeros(k, k, dtype=torch.long, device=dev)
        self._val_loss_sum = torch.zeros((), device=dev)
        self._val_metrics = {}

    def _sum_over_ranks(self, t: torch.Tensor) -> torch.Tensor:
        if self.trainer.world_size > 1 and torch.distributed.is_initialized():
            t = t.clone()
            torch.distributed.all_reduce(t)
        return t

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Called after EarlyStopping has decided (checkpoint callbacks run last), so a resume
        # knows whether this epoch ended the training.
        checkpoint["ferlab"] = {
            "history": list(self.history),
            "should_stop": bool(self.trainer.should_stop),
            "epoch": int(self.current_epoch),
            "planned_epochs": self.planned_epochs,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("ferlab", {})
        self.history = list(state.get("history", []))
        self.planned_epochs = state.get("planned_epochs")

    # -- optimisation ------------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        cfg = self.cfg
        opt = build_optimizer(self.model, cfg, precision=str(self.trainer.precision))
        if cfg.scheduler == "none":
            return opt
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        steps_per_epoch = max(1, total // max(cfg.epochs, 1))
        warmup = round(cfg.warmup_epochs * steps_per_epoch)
        if cfg.scheduler == "onecycle":
            share = None
            if cfg.time_budget_min is not None and warmup > 0:
                # The budget resizes the schedule: its warm-up is a number of steps, not a
                # share of a total that is not known yet (ferlab.training.budget).
                pct = min(warmup / total, MAX_WARMUP_FRACTION)
            else:
                pct = cfg.warmup_epochs / cfg.epochs if cfg.warmup_epochs > 0 else 0.25
                pct = min(max(pct, 0.01), MAX_WARMUP_FRACTION)
                if cfg.time_budget_min is not None:
                    # warmup_epochs 0: one-cycle's usual quarter, of the plan (not of the cap
                    # train.epochs) once the budget has made one.
                    share = pct
            sched: Any = ResizableOneCycleLR(
                opt, max_lr=cfg.lr, total_steps=total, pct_start=pct, warmup_share=share
            )
        else:
            sched = torch.optim.lr_scheduler.LambdaLR(opt, WarmupCosine(total, warmup))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
