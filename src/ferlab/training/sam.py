"""Sharpness-aware minimisation (SAM, Foret et al. 2021) around any torch optimizer.

Each step takes two gradients of the same batch: one at the weights ``w``, then one at
``w + e`` with ``e = rho * g / ||g||`` (the steepest ascent within an L2 ball of radius
``rho``); the base optimizer then steps from ``w`` with the second gradient. So a step costs
about two forward and backward passes.

The second gradient comes from calling the step's ``closure`` again, as ``torch.optim.LBFGS``
does; Lightning's closure runs the training step, zeroes the gradients, back-propagates and
clips (``gradient_clip_val``), so both gradients are clipped alike and see the same batch
(ferlab's augmentation, Mixup included, is a function of (seed, epoch, batch), not of a call
count). The ``FerModule`` counts a batch's loss and accuracy once, at ``w``, and keeps the
BatchNorm running statistics of the perturbed pass out of the model.

``sam_from`` starts SAM late: for the epochs from that share of the schedule on (a plan a time
budget may resize: ``sam_active`` is asked at every epoch start); before, ``SAM`` steps the
base optimizer with one gradient. A time budget counts a SAM epoch's training at
``SAM_EPOCH_COST`` plain ones.

Not with a gradient scaler (fp16 mixed precision): Lightning's scaler path steps without a
closure, so ``build_optimizer`` refuses that pairing before training starts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ferlab.config import TrainConfig

# A SAM epoch's training time in plain epochs, for the time budget's plan: two forward and
# backward passes a step (the data preparation and the optimizer step are not doubled, so the
# plan errs a little short; the budget's guard shortens it where it errs long).
SAM_EPOCH_COST = 2.0


def sam_active(cfg: TrainConfig, epoch: int, epochs: int) -> bool:
    """Whether 0-based ``epoch`` of a plan of ``epochs`` trains with SAM."""
    return cfg.sam_rho > 0 and epoch >= cfg.sam_from * epochs


class SAM(torch.optim.Optimizer):
    """Wraps ``base`` (its ``param_groups`` and state are the base's, so LR schedulers and
    checkpoints see the base optimizer); ``rho`` is the radius of the weight perturbation."""

    def __init__(self, base: torch.optim.Optimizer, rho: float) -> None:
        if rho <= 0:
            raise ValueError(f"SAM's rho must be > 0; got {rho}")
        params = [p for g in base.param_groups for p in g["params"]]
        # The base's defaults too: schedulers read them (one-cycle looks for momentum or betas).
        super().__init__(params, {**base.defaults, "rho": rho})
        self.base = base
        self.rho = float(rho)
        self.param_groups = base.param_groups  # one list: a scheduler's LR reaches the base
        self.state = base.state
        self.active = True  # False: plain steps of the base optimizer (before ``sam_from``)

    @torch.no_grad()
    def perturb(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Move every parameter with a gradient by ``rho * g / ||g||`` (the global L2 norm over
        all of them, in fp32); returns (parameter, its value before) pairs to restore."""
        pairs = [(p, p.grad) for g in self.param_groups for p in g["params"] if p.grad is not None]
        if not pairs:
            return []
        norm = torch.linalg.vector_norm(
            torch.stack([torch.linalg.vector_norm(g.float()) for _, g in pairs])
        )
        scale = self.rho / (norm + 1e-12)
        moved = []
        for p, g in pairs:
            moved.append((p, p.detach().clone()))
            p.add_((g.float() * scale).to(p.dtype))
        return moved

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        if closure is None:
            raise RuntimeError(
                "SAM needs a closure that recomputes the loss and its gradients (Lightning's "
                "automatic optimization passes one, except under fp16 mixed precision with a "
                "gradient scaler): set train.sam_rho to 0 or runtime.precision to 32/bf16-mixed"
            )
        with torch.enable_grad():
            loss = closure()  # gradients at w
        if not self.active:
            self.base.step()
            return loss
        moved = self.perturb()
        with torch.enable_grad():
            closure()  # gradients at w + e, the same batch
        with torch.no_grad():
            for p, before in moved:
                p.copy_(before)  # exactly w again (w + e - e is not, in floating point)
        self.base.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return self.base.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.base.load_state_dict(state_dict)
        self.param_groups = self.base.param_groups
        self.state = self.base.state
