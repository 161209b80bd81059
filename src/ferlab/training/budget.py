"""Training to a time budget (``train.time_budget_min``) and the schedules it resizes.

A hard wall-clock stop would cut the schedule's annealing phase, where most of the accuracy is
won; so the budget sets the schedule's *length* instead. ``TimeBudget`` (a Lightning callback)
plans how many epochs fit from the rate measured on the real training path, three times:

1. during epoch 1, after ``warmup_steps`` steps (first kernels, caches), from the next
   ``probe_steps`` steps; validation is estimated at a third of a training step per image;
2. at the end of epoch 1, from that epoch's steady steps and its measured validation;
3. at the end of epoch 2, from that epoch end to end (checkpoint writes included): the plan is
   now fixed.

Planned epochs = epochs done + floor((budget - elapsed - reserve) / seconds per epoch), capped
at ``train.epochs``; the reserve (2% of the budget, at least 10 s or a tenth of a short budget,
plus one validation pass for the temperature fit) keeps the end inside the budget.

Later epochs guard the plan. When the median of the last three epochs projects an end past the
budget minus half the reserve (the machine got slower), the plan is shortened to fit, and the
schedule, resized, still anneals to its end. Until half of the plan is done, a machine that got
faster (a load that went away, for three epochs running) lengthens it, by at least two epochs
and a tenth; after that it only shortens.

Epochs may differ in cost: with progressive resizing (``train.augment.progressive_scale``) the
early epochs train on smaller images. ``epoch_cost(epoch, epochs)`` gives each epoch's
training cost relative to one at the full input side (its share of the pixels), and the
budget counts every epoch at its own cost: a measured epoch is scaled to the full side
(validation, always at the full side, is not), and a plan of N epochs costs the sum of its
epochs' costs under that plan's own schedule (a longer plan moves the ramp). Scaling the
training time by the pixel share assumes no per-step cost that does not shrink with the side;
where there is one, the larger sides are overestimated, so the plan errs short and the guard
below lengthens it (in the first half) once larger epochs are measured. Late SAM
(``train.sam_from``) makes the last epochs dearer the same way: each costs
``ferlab.training.sam.SAM_EPOCH_COST`` plain ones.

Every plan is decided on rank 0 and broadcast (``_decide``), so DDP ranks, each timing its
own clock, train one plan. The first plan must leave at least one epoch after those done (a
budget that cannot is refused, ``TimeBudgetTooSmall``, naming the smallest one this rate
allows), and the schedules cap their warm-up at ``MAX_WARMUP_FRACTION`` of the plan, so every
accepted budget ends annealed. Lengthening trusts the slowest of the last three epochs.

With ``warmup_epochs >= 2`` the plan of epoch 2 is made before the warm-up ends, and the
schedule depends on the plan only through its total length, so a run whose plan did not
change after epoch 2 is the run ``train.epochs = <planned>`` without a budget (``fit.json``
records the plans). The plan is part of the checkpoint: a resumed run keeps it, and counts the
time of earlier sessions.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback


def _now() -> float:
    """The budget's clock (a module function, so tests can drive it)."""
    return time.perf_counter()


# The warm-up never takes more than this share of the schedule, whatever train.warmup_epochs
# says: a plan shortened by a time budget shortens its warm-up too, so that every accepted
# budget ends with the learning rate annealed to its floor (one-cycle caps at 0.5 as well).
MAX_WARMUP_FRACTION = 0.5


class WarmupCosine:
    """LR factor per optimizer step: linear warmup from ~0, then cosine decay to 0.

    A callable object (not a closure) so that ``LambdaLR`` saves its ``total_steps`` with the
    scheduler state, and ``TimeBudget`` can resize it. The warm-up is the ``warmup_steps``
    asked for, at most ``MAX_WARMUP_FRACTION`` of the total.
    """

    def __init__(self, total_steps: int, warmup_steps: int) -> None:
        self.total_steps = int(total_steps)
        self.wanted_warmup = int(warmup_steps)
        self.warmup_steps = min(self.wanted_warmup, int(MAX_WARMUP_FRACTION * self.total_steps))

    def resize(self, total_steps: int, step: int) -> None:
        """A new total; a warm-up not over yet follows it (never behind ``step``)."""
        self.total_steps = max(int(total_steps), 2)
        if step < self.warmup_steps:
            cap = int(MAX_WARMUP_FRACTION * self.total_steps)
            self.warmup_steps = max(min(self.wanted_warmup, cap), step)
        self.total_steps = max(self.total_steps, self.warmup_steps + 1)

    def __call__(self, step: int) -> float:
        if self.warmup_steps > 0 and step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return 0.5 * (1 + math.cos(math.pi * progress))


class ResizableOneCycleLR(torch.optim.lr_scheduler.OneCycleLR):
    """torch's two-phase ``OneCycleLR`` whose total length can change while it runs.

    ``resize`` moves the end of the annealing phase. The warm-up keeps its steps (so the
    learning rates already taken stay as they were) unless they exceed
    ``MAX_WARMUP_FRACTION`` of the new total, or ``warmup_share`` is set (the warm-up is that
    share of whatever the total is: ``train.warmup_epochs: 0``); a warm-up already under way
    then ends no earlier than the current step. All of it lives in the scheduler's state dict.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        max_lr: float,
        total_steps: int,
        pct_start: float,
        warmup_share: float | None = None,
    ) -> None:
        super().__init__(optimizer, max_lr=max_lr, total_steps=total_steps, pct_start=pct_start)
        if len(self._schedule_phases) != 2 or "end_step" not in self._schedule_phases[-1]:
            raise RuntimeError(
                "this torch's OneCycleLR has an unexpected phase layout; ResizableOneCycleLR "
                "needs its two-phase form (three_phase=False)"
            )
        self.warmup_share = warmup_share
        self.wanted_warmup = float(self._schedule_phases[0]["end_step"]) + 1  # steps

    def resize(self, total_steps: int) -> None:
        total = max(int(total_steps), self.last_epoch + 1, 3)
        warm_end = float(self._schedule_phases[0]["end_step"])
        if self.last_epoch <= warm_end:  # still warming up: the warm-up follows the plan
            want = self.wanted_warmup if self.warmup_share is None else self.warmup_share * total
            warm = min(want, MAX_WARMUP_FRACTION * total)
            warm_end = max(warm - 1, float(self.last_epoch))
            self._schedule_phases[0]["end_step"] = warm_end
        total = max(total, math.ceil(warm_end) + 2)
        self.total_steps = total
        self._schedule_phases[-1]["end_step"] = float(total - 1)


def resize_schedule(scheduler: Any, total_steps: int) -> None:
    """Give ``scheduler`` (ferlab's one-cycle or warmup-cosine) a new total length in steps."""
    if isinstance(scheduler, ResizableOneCycleLR):
        scheduler.resize(total_steps)
        return
    if isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
        for fn in scheduler.lr_lambdas:
            if isinstance(fn, WarmupCosine):
                fn.resize(total_steps, scheduler.last_epoch)
        return
    raise TypeError(f"cannot resize a {type(scheduler).__name__} to a time budget")


class TimeBudgetTooSmall(ValueError):
    """``train.time_budget_min`` cannot hold one warmed-up, annealed epoch on this machine."""


class TimeBudget(Callback):
    """Plan (and guard) the number of epochs so that training ends within ``budget_s``.

    ``t_start`` is the ``time.perf_counter()`` the budget counts from (default: now);
    ``val_images`` the images one validation pass scores (for the first estimate).
    ``on_plan(epochs)`` is told every plan (the module uses it for the checkpoint and logs).
    ``epoch_cost(epoch, epochs)``: the training cost of 0-based ``epoch`` in a plan of
    ``epochs``, relative to a plain epoch at the full input side (default: every epoch costs
    1; progressive resizing makes early epochs cheaper, SAM's epochs cost about 2).
    """

    def __init__(
        self,
        budget_s: float,
        max_epochs: int,
        *,
        t_start: float | None = None,
        val_images: int = 0,
        log: Callable[[str], None] = print,
        on_plan: Callable[[int], None] | None = None,
        warmup_steps: int = 5,
        probe_steps: int = 20,
        epoch_cost: Callable[[int, int], float] | None = None,
    ) -> None:
        self.budget_s = float(budget_s)
        self.max_epochs = int(max_epochs)
        self.t_start = _now() if t_start is None else t_start
        self.val_images = val_images
        self.say = log  # not ``self.log``: Lightning sets that to the module's ``log``
        self.on_plan = on_plan
        self.warmup_steps = warmup_steps
        self.probe_steps = probe_steps
        self.epoch_cost = epoch_cost
        # state saved in checkpoints
        self.plans: list[dict[str, Any]] = []
        self.planned_epochs: int | None = None
        # per finished epoch, all sessions: its seconds scaled to an epoch at the full side
        self.epoch_units: list[float] = []
        self.elapsed_before = 0.0  # seconds of earlier sessions (a resumed run)
        # this session
        self._session_t0 = self.t_start
        self._last_end: float | None = None  # when the previous epoch of this session ended
        self._steady_t0: float | None = None
        self._steady_steps = 0
        self._train_end = 0.0
        self._val_t0 = 0.0
        self._val_s: float | None = None
        self._steps_per_epoch = 1

    # -- state -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "plans": list(self.plans),
            "planned_epochs": self.planned_epochs,
            "epoch_units": list(self.epoch_units),
            "elapsed": self.elapsed(),
            "budget_s": self.budget_s,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.plans = list(state_dict.get("plans", []))
        self.planned_epochs = state_dict.get("planned_epochs")
        # checkpoints from before epochs of unequal cost: their epochs all cost the same
        self.epoch_units = list(state_dict.get("epoch_units", state_dict.get("epoch_seconds", [])))
        self.elapsed_before = float(state_dict.get("elapsed", 0.0))

    def elapsed(self) -> float:
        return self.elapsed_before + (_now() - self._session_t0)

    def summary(self) -> dict[str, Any]:
        """For fit.json: the budget, every plan, and the epochs the last one gave."""
        return {
            "minutes": round(self.budget_s / 60, 3),
            "planned_epochs": self.planned_epochs,
            "plans": list(self.plans),
            "shortened": any(p["reason"] == "shortened" for p in self.plans),
            "lengthened": any(p["reason"] == "lengthened" for p in self.plans),
            "seconds_used": round(self.elapsed(), 1),
            "note": self.note(),
        }

    def note(self) -> str:
        """What the record says of a budgeted run's length: it is this machine's."""
        n = self.planned_epochs
        if n is None:
            return f"time budget {self.budget_s / 60:g} min: no plan was made"
        changed = [p["reason"] for p in self.plans if p["reason"] in ("shortened", "lengthened")]
        text = (
            f"time budget {self.budget_s / 60:g} min: {n} epochs planned on this machine (the "
            "count depends on the machine's speed and load). "
        )
        if changed:
            return text + (
                f"The plan was {' then '.join(changed)} during the run, so train.epochs={n} "
                "without a budget gives a schedule of the same length, not the same one."
            )
        return text + (
            f"--set train.time_budget_min=null --set train.epochs={n} reproduces this schedule "
            "without a budget."
        )

    # -- planning ----------------------------------------------------------------------------
    def _reserve(self, val_s: float, budget_s: float | None = None) -> float:
        b = self.budget_s if budget_s is None else budget_s
        return max(0.02 * b, min(10.0, 0.1 * b)) + val_s

    def _apply(
        self, trainer: pl.Trainer, epochs: int, epoch_s: float, reason: str, done: int
    ) -> None:
        epochs = max(done, min(self.max_epochs, epochs))
        self.planned_epochs = epochs
        trainer.fit_loop.max_epochs = max(epochs, 1)
        for cfg in trainer.lr_scheduler_configs:
            resize_schedule(cfg.scheduler, epochs * self._steps_per_epoch)
        if epochs <= done:
            trainer.should_stop = True
        self.plans.append(
            {
                "after_epoch": done,
                "reason": reason,
                "epoch_seconds": round(epoch_s, 2),
                "elapsed_s": round(self.elapsed(), 1),
                "epochs": epochs,
            }
        )
        if self.on_plan is not None:
            self.on_plan(epochs)
        at = "" if self.epoch_cost is None else " for a plain epoch at the full side"
        self.say(
            f"time budget {self.budget_s / 60:.1f} min: {epochs} epochs planned ({reason}; "
            f"{epoch_s:.1f} s per epoch{at}, {self.elapsed() / 60:.1f} min used)"
        )

    def _cost(self, epoch: int, epochs: int) -> float:
        return 1.0 if self.epoch_cost is None else max(float(self.epoch_cost(epoch, epochs)), 1e-6)

    def _seconds(self, done: int, epochs: int, unit_s: float, val_s: float) -> float:
        """Seconds for epochs ``done`` .. ``epochs - 1`` of a plan of ``epochs``, each at its
        own cost: ``unit_s`` is an epoch at the full side, validation (``val_s``) included."""
        if self.epoch_cost is None:
            return max(0, epochs - done) * unit_s
        return sum(val_s + (unit_s - val_s) * self._cost(e, epochs) for e in range(done, epochs))

    def _fit(self, unit_s: float, val_s: float, done: int) -> int:
        """The most epochs whose remaining ones fit in what is left of the budget."""
        left = self.budget_s - self.elapsed() - self._reserve(val_s)
        if self.epoch_cost is None:  # epochs of equal cost: in closed form
            return done + max(0, math.floor(left / max(unit_s, 1e-6)))
        # A plan's cost grows with its length (a longer plan also moves the ramp, which can
        # only cheapen its earlier epochs, by less than the epoch it adds): bisect for the
        # longest plan that fits, never past the cap.
        lo, hi = done, max(done, self.max_epochs)
        if self._seconds(done, hi, unit_s, val_s) <= left:
            return hi
        while hi - lo > 1:  # _seconds(lo) fits, _seconds(hi) does not
            mid = (lo + hi) // 2
            if self._seconds(done, mid, unit_s, val_s) <= left:
                lo = mid
            else:
                hi = mid
        return lo

    def _unit(self, seconds: float, val_s: float, epoch: int) -> float:
        """An epoch's ``seconds`` scaled to one at the full side (validation is always full)."""
        if self.epoch_cost is None:
            return seconds
        plan = self.planned_epochs if self.planned_epochs is not None else self.max_epochs
        return val_s + (seconds - val_s) / self._cost(epoch, plan)

    def _decide(
        self, trainer: pl.Trainer, proposal: tuple[int, float, str] | None, done: int
    ) -> None:
        """Apply rank 0's proposal on every rank (DDP ranks measure their own clocks; one plan).

        Called at the same points on every rank, so the broadcast always pairs up. The first
        plan must leave at least one epoch to train after the ``done`` ones, else the schedule
        could not anneal: the budget is refused, naming the smallest one this rate allows.
        """
        proposal = trainer.strategy.broadcast(proposal, src=0)
        if proposal is None:
            return
        epochs, epoch_s, reason = proposal
        if not self.plans and epochs < done + 1:
            val_s = self._val_s or 0.0
            one = self._seconds(done, done + 1, epoch_s, val_s)  # the next epoch, at its cost
            need = self.elapsed() + one + val_s
            for _ in range(20):  # the reserve grows with the budget: its fixed point
                need = self.elapsed() + one + self._reserve(val_s, need)
            raise TimeBudgetTooSmall(
                f"train.time_budget_min = {self.budget_s / 60:g} is too small on this machine: "
                f"one epoch takes about {one:.1f} s here (measured {reason}), so the "
                f"schedule could not warm up and anneal within the budget. The smallest budget "
                f"this rate allows is about {math.ceil(need / 6) / 10:g} min; raise "
                "train.time_budget_min, or set train.epochs without a budget."
            )
        self._apply(trainer, epochs, epoch_s, reason, done)

    # -- hooks -------------------------------------------------------------------------------
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._session_t0 = _now() if self.plans else self.t_start
        n = trainer.num_training_batches
        self._steps_per_epoch = int(n) if math.isfinite(n) and n > 0 else 1
        if self.planned_epochs is not None:  # resumed: keep the plan of the checkpoint
            trainer.fit_loop.max_epochs = max(self.planned_epochs, 1)
            if self.on_plan is not None:
                self.on_plan(self.planned_epochs)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._steady_t0, self._steady_steps, self._val_s = None, 0, None

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
        batch_idx: int,
    ) -> None:  # fmt: skip
        if batch_idx + 1 == self.warmup_steps:
            self._steady_t0 = _now()
        elif self._steady_t0 is not None:
            self._steady_steps = batch_idx + 1 - self.warmup_steps
        self._train_end = _now()
        if (
            not self.plans
            and self._steady_t0 is not None
            and self._steady_steps == self.probe_steps
        ):
            # a step at the full side; epoch 0 trains at its own cost (progressive resizing)
            step_s = (self._train_end - self._steady_t0) / self._steady_steps
            step_s /= self._cost(0, self.max_epochs)
            bs = max(1, int(batch[0].shape[0]))
            val_s = (
                self.val_images * step_s / bs / 3
            )  # a forward pass costs about a third of a step
            self._val_s = val_s
            epoch_s = step_s * self._steps_per_epoch + val_s
            self._decide(trainer, (self._fit(epoch_s, val_s, 0), epoch_s, "probe"), 0)

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._val_t0 = _now()

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._val_s = _now() - self._val_t0

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        now = _now()
        done = trainer.current_epoch + 1
        val_s = self._val_s if self._val_s is not None else 0.0
        if self._last_end is not None:  # end to end: checkpoint writes and hooks included
            steady = now - self._last_end
        elif self._steady_t0 is not None and self._steady_steps:
            # The first epoch of a session pays the warm-up: scale its steady steps instead.
            train_s = (self._train_end - self._steady_t0) / self._steady_steps
            steady = train_s * self._steps_per_epoch + val_s
        else:
            steady = now - self._session_t0
        self._last_end = now
        unit = self._unit(steady, val_s, done - 1)  # the same epoch at the full side
        self.epoch_units.append(unit)
        proposal: tuple[int, float, str] | None = None
        if done == 1 or self.planned_epochs is None:  # (no probe when an epoch is that short)
            proposal = (self._fit(unit, val_s, done), unit, f"epoch {done}")
        elif done == 2:  # epoch 2, end to end: warm caches, checkpoint writes included
            proposal = (self._fit(unit, val_s, done), unit, "epochs 1-2")
        elif done < self.planned_epochs:
            last = self.epoch_units[-3:]
            recent = sorted(last)[len(last) // 2]
            projected = self.elapsed() + self._seconds(done, self.planned_epochs, recent, val_s)
            if projected > self.budget_s - self._reserve(val_s) / 2:
                proposal = (self._fit(recent, val_s, done), recent, "shortened")
            elif 2 * done <= self.planned_epochs:
                # Early on, a machine that got faster (a load gone) may lengthen the plan; by
                # half way the annealing is under way and the plan only shortens. Only a rate
                # that held: the slowest of the last three epochs, so a speed-up of an epoch
                # or two cannot lengthen the plan and then force it to be cut.
                slowest = max(last)
                more = min(self._fit(slowest, val_s, done), self.max_epochs)
                if more >= self.planned_epochs + max(2, self.planned_epochs // 10):
                    proposal = (more, slowest, "lengthened")
        self._decide(trainer, proposal, done)
