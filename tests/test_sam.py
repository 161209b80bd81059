"""Sharpness-aware minimisation: the step's rule, its place in ferlab's training, its refusals."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from ferlab.config import AugmentConfig, TrainConfig
from ferlab.training.module import build_optimizer, frozen_norm_statistics
from ferlab.training.sam import SAM, sam_active
from test_budget import FakeClock, exact_budget_fit, resumes_exactly
from training_fakes import quiet_fit, recorded_steps, tcfg, toy_dataset


def _toy_problem() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Tanh(), torch.nn.Linear(4, 3))
    return model, torch.randn(16, 5), torch.randint(0, 3, (16,))


def test_sam_steps_from_w_with_the_gradient_at_the_ascent_point() -> None:
    model, x, y = _toy_problem()
    rho, lr = 0.3, 0.1
    w = [p.detach().clone() for p in model.parameters()]

    def loss_at(params: list[torch.Tensor]) -> torch.Tensor:
        h = torch.tanh(x @ params[0].T + params[1])
        return torch.nn.functional.cross_entropy(h @ params[2].T + params[3], y)

    # By hand: g at w, e = rho * g / ||g||, then w - lr * grad(w + e).
    leaf = [t.clone().requires_grad_(True) for t in w]
    g = torch.autograd.grad(loss_at(leaf), leaf)
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t) for t in g]))
    moved = [(t + rho * gt / norm).requires_grad_(True) for t, gt in zip(w, g, strict=True)]
    g2 = torch.autograd.grad(loss_at(moved), moved)
    expected = [t - lr * gt for t, gt in zip(w, g2, strict=True)]

    opt = SAM(torch.optim.SGD(model.parameters(), lr=lr), rho=rho)
    calls = []

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        calls.append(float(loss.detach()))
        return loss

    returned = opt.step(closure)
    assert len(calls) == 2 and calls[1] > calls[0]  # the second pass is uphill
    assert float(returned.detach()) == calls[0]  # the loss at w is the step's loss
    for p, e in zip(model.parameters(), expected, strict=True):
        torch.testing.assert_close(p.detach(), e, rtol=1e-5, atol=1e-6)


def test_sam_shares_param_groups_and_state_with_its_base() -> None:
    model, x, y = _toy_problem()
    base = torch.optim.AdamW(model.parameters(), lr=0.01)
    opt = SAM(base, rho=0.05)
    # One-cycle sets the LR and cycles Adam's beta1: it reaches both in the base through SAM.
    torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.01, total_steps=10)
    assert base.param_groups[0]["lr"] == pytest.approx(0.01 / 25)
    assert base.param_groups[0]["betas"][0] == pytest.approx(0.95)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss

    opt.step(closure)
    state = opt.state_dict()
    assert state["state"]  # Adam's moments, kept by the base and saved through SAM
    assert state["param_groups"] == base.state_dict()["param_groups"]
    fresh = SAM(torch.optim.AdamW(model.parameters(), lr=0.01), rho=0.05)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.base.state_dict()["state"][0]["exp_avg"], state["state"][0]["exp_avg"])
    assert fresh.param_groups is fresh.base.param_groups


def test_sam_refuses_a_step_without_a_closure_and_a_bad_rho() -> None:
    model, _, _ = _toy_problem()
    opt = SAM(torch.optim.SGD(model.parameters(), lr=0.1), rho=0.05)
    with pytest.raises(RuntimeError, match="closure"):
        opt.step()
    with pytest.raises(ValueError, match="rho"):
        SAM(torch.optim.SGD(model.parameters(), lr=0.1), rho=0.0)


def test_build_optimizer_wraps_in_sam_and_refuses_a_gradient_scaler() -> None:
    model, _, _ = _toy_problem()
    cfg = TrainConfig(sam_rho=0.1)
    opt = build_optimizer(model, cfg)
    assert isinstance(opt, SAM) and isinstance(opt.base, torch.optim.AdamW)
    assert opt.rho == 0.1
    assert not isinstance(build_optimizer(model, TrainConfig()), SAM)
    with pytest.raises(ValueError, match=r"train\.sam_rho.*'16-mixed'.*runtime\.precision"):
        build_optimizer(model, cfg, precision="16-mixed")


def test_frozen_norm_statistics_leave_running_stats_and_counts() -> None:
    torch.manual_seed(0)
    bn = torch.nn.BatchNorm2d(3).train()
    bn(torch.randn(4, 3, 5, 5))
    before = {k: v.clone() for k, v in bn.state_dict().items()}
    with frozen_norm_statistics(bn):
        out = bn(torch.randn(4, 3, 5, 5) * 3 + 2)
    torch.testing.assert_close(out.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)
    assert all(torch.equal(v, before[k]) for k, v in bn.state_dict().items())
    assert bn.momentum == 0.1
    bn(torch.randn(4, 3, 5, 5))
    assert int(bn.num_batches_tracked) == 2  # counting again after the block


def test_sam_active_from_its_share_of_the_plan() -> None:
    late = TrainConfig(sam_rho=0.05, sam_from=0.8)
    assert [sam_active(late, e, 10) for e in range(10)] == [False] * 8 + [True] * 2
    assert [sam_active(late, e, 5) for e in range(5)] == [False] * 4 + [True]  # a shorter plan
    assert all(sam_active(TrainConfig(sam_rho=0.05), e, 10) for e in range(10))
    assert not any(sam_active(TrainConfig(sam_from=0.5), e, 10) for e in range(10))  # rho 0


class EpochCounts(pl.Callback):
    """At each epoch end: the training model's BatchNorm batch counts (``num_batches_tracked``)
    and the images the epoch's training loss and accuracy counted."""

    def __init__(self) -> None:
        self.counts: list[set[int]] = []
        self.images: list[int] = []

    def on_train_epoch_end(self, trainer, pl_module) -> None:  # type: ignore[no-untyped-def]
        buffers = pl_module.model.named_buffers()
        self.counts.append({int(b) for n, b in buffers if n.endswith("num_batches_tracked")})
        self.images.append(int(pl_module._train_count))


def test_sam_fit_takes_two_passes_per_batch_on_the_same_mixed_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every training forward of the first convolution is recorded with its input; every
    # mixing call too.
    with recorded_steps(monkeypatch) as (seen, inputs):
        aug = AugmentConfig(mixup=1.0)
        cfg = tcfg(
            epochs=4, sam_rho=0.05, sam_from=0.5, augment=aug, balance="none", scheduler="onecycle"
        )
        counted = EpochCounts()
        result = quiet_fit(toy_dataset(n_train=64), cfg, tmp_path / "run", callbacks=[counted])
    # 4 epochs of 2 batches: the first two epochs' batches passed once, the last two's twice
    # (SAM from half the plan), each pass augmented and mixed alike.
    assert seen == ["mix", "step"] * 4 + ["mix", "step"] * 8
    late = inputs[4:]
    for first, second in zip(late[::2], late[1::2], strict=True):
        assert torch.equal(first, second)
    assert not torch.equal(inputs[0], inputs[1]) and not torch.equal(late[0], late[2])
    # The BatchNorm statistics and the epoch's loss and accuracy counted each batch once, SAM's
    # epochs included (2 batches, 64 images an epoch).
    assert counted.counts == [{2}, {4}, {6}, {8}]
    assert counted.images == [64] * 4
    assert len(result.history) == 4


class ForwardClock(FakeClock):
    """A fake clock charging ``dt`` for every training forward of the model: a SAM step costs
    two plain ones, as ``SAM_EPOCH_COST`` assumes."""

    def on_train_start(self, trainer, pl_module) -> None:  # type: ignore[no-untyped-def]
        def tick(module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            if module.training:
                self.t += self.dt

        pl_module.model.register_forward_pre_hook(tick)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # type: ignore[no-untyped-def]
        pass


@pytest.mark.slow
def test_a_budget_counts_late_sam_epochs_at_their_cost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = toy_dataset(n_train=512)  # 16 steps an epoch: 4 fake s plain, 8 with SAM
    cfg = tcfg(epochs=400, time_budget_min=1.0, scheduler="onecycle", warmup_epochs=2)
    late_cfg = cfg.model_copy(update={"sam_rho": 0.05, "sam_from": 0.5})
    runs = {
        # Two forwards a SAM step, as SAM_EPOCH_COST counts: the plan never changes.
        name: exact_budget_fit(data, c, tmp_path / name, ForwardClock(0.25), monkeypatch)
        for name, c in (("plain", cfg), ("late", late_cfg))
    }
    plain, late = runs["plain"].epochs_run, runs["late"].epochs_run
    # Half the plan at twice the cost: 1.5x a plain epoch on average.
    assert late < plain and late >= (plain * 2) // 3 - 1, (plain, late)


@pytest.mark.slow
def test_sam_run_learns_and_resumes_to_the_same_weights(tmp_path: Path) -> None:
    data = toy_dataset(n_train=256)
    cfg = tcfg(epochs=4, sam_rho=0.05)
    straight = resumes_exactly(data, cfg, tmp_path)
    assert straight.history[-1]["val_accuracy"] > 0.6  # 4 classes: chance is 0.25
    plain = quiet_fit(data, cfg.model_copy(update={"sam_rho": 0.0}), tmp_path / "plain")
    assert any(
        not torch.equal(a, b)
        for a, b in zip(
            straight.model.state_dict().values(), plain.model.state_dict().values(), strict=True
        )
    )
