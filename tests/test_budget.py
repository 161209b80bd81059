"""``train.time_budget_min`` (ferlab.training.budget), the resizable schedules, and weight EMA."""

from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from ferlab.config import AugmentConfig, TrainConfig
from ferlab.data.base import LoadedDataset
from ferlab.layout import FIT_JSON
from ferlab.models import load_model
from ferlab.training import budget as budget_mod
from ferlab.training.budget import ResizableOneCycleLR, WarmupCosine, resize_schedule
from ferlab.training.fit import FitResult
from ferlab.training.module import WeightEMA
from training_fakes import quiet_fit, tcfg, toy_dataset


def lrs(sched: torch.optim.lr_scheduler.LRScheduler, steps: int) -> list[float]:
    opt = sched.optimizer
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def one_param_opt() -> torch.optim.Optimizer:
    return torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)


def test_resized_one_cycle_matches_one_built_with_that_length() -> None:
    warm, total, new_total = 20, 400, 120
    built = ResizableOneCycleLR(one_param_opt(), 0.01, new_total, warm / new_total)
    resized = ResizableOneCycleLR(one_param_opt(), 0.01, total, warm / total)
    first = lrs(resized, 10)  # inside the warm-up: the length is not used yet
    resized.resize(new_total)
    got = first + lrs(resized, new_total - 10)
    want = lrs(built, new_total)
    assert got == pytest.approx(want, rel=1e-9, abs=1e-12)
    assert got[-1] == pytest.approx(0.01 / 25 / 1e4)  # annealed to the end (OneCycleLR's min)


def test_resize_survives_the_scheduler_state_dict() -> None:
    a = ResizableOneCycleLR(one_param_opt(), 0.01, 500, 0.1)
    lrs(a, 5)
    a.resize(90)
    b = ResizableOneCycleLR(one_param_opt(), 0.01, 500, 0.1)
    b.optimizer.load_state_dict(a.optimizer.state_dict())  # as a resume restores both
    b.load_state_dict(a.state_dict())
    assert b.total_steps == 90 and lrs(b, 20) == lrs(a, 20)

    opt = one_param_opt()
    cos = torch.optim.lr_scheduler.LambdaLR(opt, WarmupCosine(1000, 10))
    resize_schedule(cos, 50)
    again = torch.optim.lr_scheduler.LambdaLR(one_param_opt(), WarmupCosine(1000, 10))
    again.load_state_dict(cos.state_dict())
    assert again.lr_lambdas[0].total_steps == 50  # type: ignore[attr-defined]
    assert lrs(again, 50)[-1] == pytest.approx(0.0, abs=2e-3)


def test_resize_never_goes_behind_the_steps_taken() -> None:
    s = ResizableOneCycleLR(one_param_opt(), 0.01, 100, 0.1)
    lrs(s, 40)
    s.resize(10)
    assert s.total_steps == 41  # the next step is still inside the schedule
    with pytest.raises(TypeError, match="cannot resize"):
        resize_schedule(torch.optim.lr_scheduler.StepLR(one_param_opt(), 5), 10)


class FakeClock(pl.Callback):
    """The budget's clock: ``dt`` fake seconds pass with every training step and nothing else,
    so the plans do not depend on this machine's speed or load. Pass it to fit as a callback."""

    def __init__(self, dt: float) -> None:
        self.t, self.dt = 0.0, dt

    def __call__(self) -> float:
        return self.t

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # type: ignore[no-untyped-def]
        self.t += self.dt


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    c = FakeClock(0.25)
    monkeypatch.setattr(budget_mod, "_now", c)
    return c


def budget_of(run_dir: Path) -> dict:
    return json.loads((run_dir / FIT_JSON).read_text())["time_budget"]


@pytest.mark.slow
def test_budget_run_equals_the_fixed_run_of_its_planned_epochs(
    tmp_path: Path, clock: FakeClock
) -> None:
    data = toy_dataset(n_train=512)
    cfg = tcfg(epochs=40, time_budget_min=1.0, scheduler="onecycle", warmup_epochs=2)
    budget = quiet_fit(data, cfg, tmp_path / "budget", callbacks=[clock])
    tb = budget_of(tmp_path / "budget")
    planned = json.loads((tmp_path / "budget" / FIT_JSON).read_text())["planned_epochs"]
    assert [p["reason"] for p in tb["plans"]] == ["epoch 1", "epochs 1-2"]  # 16 steps: no probe
    assert planned == tb["plans"][-1]["epochs"] == budget.epochs_run
    assert 4 <= planned < 40 and not tb["shortened"]
    assert tb["seconds_used"] <= 60
    assert budget.history[-1]["lr"] < 1e-3 * cfg.lr  # the schedule ran to its end
    # The record reproduces it: the same recipe with train.epochs = planned and no budget.
    fixed_cfg = cfg.model_copy(update={"epochs": planned, "time_budget_min": None})
    fixed = quiet_fit(data, fixed_cfg, tmp_path / "fixed")
    for a, b in zip(
        budget.model.state_dict().values(), fixed.model.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_the_probe_plans_inside_the_first_epoch(tmp_path: Path, clock: FakeClock) -> None:
    data = toy_dataset(n_train=1024)  # 32 steps: the probe fits in epoch 1
    cfg = tcfg(epochs=40, time_budget_min=1.5, limit_val_batches=1)
    quiet_fit(data, cfg.model_copy(update={"epochs": 3}), tmp_path / "run", callbacks=[clock])
    tb = budget_of(tmp_path / "run")
    assert [p["reason"] for p in tb["plans"]][:2] == ["probe", "epoch 1"]
    assert tb["plans"][0]["after_epoch"] == 0


class SlowDown(pl.Callback):
    """From epoch ``start`` (0-based) on, the fake clock runs ``factor`` times faster."""

    def __init__(self, clock: FakeClock, start: int, factor: float) -> None:
        self.clock, self.start, self.factor = clock, start, factor

    def on_train_epoch_start(self, trainer, pl_module) -> None:  # type: ignore[no-untyped-def]
        if trainer.current_epoch == self.start:
            self.clock.dt *= self.factor


@pytest.mark.slow
def test_a_slower_machine_shortens_the_plan_and_still_ends_in_budget(
    tmp_path: Path, clock: FakeClock
) -> None:
    data = toy_dataset(n_train=512)
    cfg = tcfg(epochs=400, time_budget_min=1.0, scheduler="cosine", warmup_epochs=1)
    r = quiet_fit(
        data, cfg, tmp_path / "run", callbacks=[clock, SlowDown(clock, start=3, factor=2)]
    )
    tb = budget_of(tmp_path / "run")
    assert tb["shortened"], tb["plans"]
    fixed = next(p["epochs"] for p in tb["plans"] if p["reason"] == "epochs 1-2")
    assert r.epochs_run == tb["planned_epochs"] < fixed
    assert tb["seconds_used"] <= 60
    assert r.history[-1]["lr"] < 0.05 * cfg.lr  # the shortened schedule still annealed


class StopAt(pl.Callback):
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module) -> None:  # type: ignore[no-untyped-def]
        if trainer.current_epoch == self.epoch:
            raise RuntimeError("simulated crash")


def resumes_exactly(data: LoadedDataset, cfg: TrainConfig, tmp_path: Path) -> FitResult:
    """Trains ``cfg`` straight into ``tmp_path/straight``, and again into ``tmp_path/killed``
    with a crash at epoch 3's start and a rerun; asserts the rerun resumed to the same weights
    and returns the straight run."""
    straight = quiet_fit(data, cfg, tmp_path / "straight")
    with pytest.raises(RuntimeError, match="simulated crash"):
        quiet_fit(data, cfg, tmp_path / "killed", callbacks=[StopAt(2)])
    resumed = quiet_fit(data, cfg, tmp_path / "killed")
    assert resumed.resumed
    for a, b in zip(
        straight.model.state_dict().values(), resumed.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b)
    return straight


@pytest.mark.slow
def test_ema_run_resumes_to_the_same_weights_and_saves_the_average(tmp_path: Path) -> None:
    data = toy_dataset(n_train=256)
    cfg = tcfg(epochs=4, ema_decay=0.9)
    straight = resumes_exactly(data, cfg, tmp_path)
    # What is saved is the average, not the last live weights.
    model, _ = load_model(tmp_path / "straight")
    plain = quiet_fit(data, cfg.model_copy(update={"ema_decay": None}), tmp_path / "plain")
    saved = dict(model.state_dict())
    assert all(torch.equal(saved[k], v) for k, v in straight.model.state_dict().items())
    assert any(not torch.equal(saved[k], v) for k, v in plain.model.state_dict().items())


def test_weight_ema_follows_the_rule_and_copies_integer_buffers() -> None:
    torch.manual_seed(0)
    live = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    ema = WeightEMA(live, decay=0.5)
    before = [t.clone() for t in ema.module.state_dict().values()]
    with torch.no_grad():
        for p in live.parameters():
            p.add_(1.0)
    live.train()(torch.randn(4, 3))  # BN statistics and num_batches_tracked move
    ema.update(live, step=100)  # warm-up factor (101/110) > 0.5: the decay is 0.5
    for (name, e), b, v in zip(
        ema.module.state_dict().items(), before, live.state_dict().values(), strict=True
    ):
        if e.is_floating_point():
            torch.testing.assert_close(e, 0.5 * b + 0.5 * v, msg=name)
        else:
            assert torch.equal(e, v), name
    assert not any(p.requires_grad for p in ema.module.parameters())


@pytest.mark.slow
def test_budget_resume_keeps_the_plan_of_the_checkpoint(tmp_path: Path, clock: FakeClock) -> None:
    data = toy_dataset(n_train=1024)
    cfg = tcfg(epochs=40, time_budget_min=2.0, scheduler="onecycle", warmup_epochs=2)
    with pytest.raises(RuntimeError, match="simulated crash"):
        quiet_fit(data, cfg, tmp_path / "run", callbacks=[clock, StopAt(3)])
    resumed = quiet_fit(data, cfg, tmp_path / "run", callbacks=[clock])
    tb = budget_of(tmp_path / "run")
    assert resumed.resumed
    assert [p["reason"] for p in tb["plans"][-3:]] == ["probe", "epoch 1", "epochs 1-2"]
    assert resumed.epochs_run == tb["planned_epochs"]
    first = next(p["elapsed_s"] for p in tb["plans"] if p["reason"] == "epochs 1-2")
    assert tb["seconds_used"] > first + 2  # the second session counts on from the first
    assert resumed.history[-1]["lr"] < 1e-3 * cfg.lr


@pytest.mark.slow
def test_a_faster_machine_lengthens_the_plan_only_in_its_first_half(
    tmp_path: Path, clock: FakeClock
) -> None:
    data = toy_dataset(n_train=512)
    cfg = tcfg(epochs=400, time_budget_min=1.0, scheduler="onecycle", warmup_epochs=2)
    r = quiet_fit(data, cfg, tmp_path / "run", callbacks=[clock, SlowDown(clock, 3, 0.5)])
    tb = budget_of(tmp_path / "run")
    fixed = next(p for p in tb["plans"] if p["reason"] == "epochs 1-2")
    grown = [p for p in tb["plans"] if p["reason"] == "lengthened"]
    assert grown and not tb["shortened"], tb["plans"]
    plans = tb["plans"]
    for i, p in enumerate(plans):  # only while half of the plan in force is still to come
        if p["reason"] == "lengthened":
            assert 2 * p["after_epoch"] <= plans[i - 1]["epochs"], plans
    assert r.epochs_run == tb["planned_epochs"] > fixed["epochs"]
    assert tb["seconds_used"] <= 60
    assert r.history[-1]["lr"] < 1e-3 * cfg.lr


# -- budgets that cannot hand back a half-trained model -----------------------------------------
def plan_reasons(run_dir: Path) -> list[str]:
    return [p["reason"] for p in budget_of(run_dir)["plans"]]


@pytest.mark.parametrize("n_train", [512, 1024])  # first plan at epoch 1's end / from the probe
def test_a_budget_below_one_annealed_epoch_is_refused_with_the_minimum(
    tmp_path: Path, clock: FakeClock, n_train: int
) -> None:
    cfg = tcfg(epochs=40, time_budget_min=0.1, scheduler="onecycle", warmup_epochs=1)
    with pytest.raises(budget_mod.TimeBudgetTooSmall) as err:
        quiet_fit(toy_dataset(n_train=n_train), cfg, tmp_path / "run", callbacks=[clock])
    text = str(err.value)
    assert "train.time_budget_min = 0.1 is too small" in text
    minimum = float(text.split("allows is about ")[1].split(" min")[0])
    assert minimum > 0.1
    # The named minimum is accepted, and its run ends annealed.
    clock.t = 0.0
    ok = quiet_fit(
        toy_dataset(n_train=n_train),
        cfg.model_copy(update={"time_budget_min": minimum}),
        tmp_path / "enough",
        callbacks=[clock],
    )
    # annealed: the last step's rate is near the floor (a short schedule's last cosine step)
    assert ok.epochs_run >= 1 and ok.history[-1]["lr"] < 0.05 * cfg.lr


def test_a_short_accepted_budget_shrinks_the_warmup_and_anneals(
    tmp_path: Path, clock: FakeClock
) -> None:
    # 16 steps of 0.25 s an epoch: 0.18 min plans 2 epochs, less than warm-up (2) + 1 epoch.
    for scheduler in ("onecycle", "cosine"):
        cfg = tcfg(epochs=40, time_budget_min=0.18, scheduler=scheduler, warmup_epochs=2)
        clock.t = 0.0
        r = quiet_fit(toy_dataset(n_train=512), cfg, tmp_path / scheduler, callbacks=[clock])
        assert r.epochs_run == budget_of(tmp_path / scheduler)["planned_epochs"] == 2
        assert r.history[-1]["lr"] < 0.05 * cfg.lr, (scheduler, r.history)
        stop = json.loads((tmp_path / scheduler / FIT_JSON).read_text())["stop"]
        assert stop["completed"] is True


@pytest.mark.slow
def test_no_warmup_epochs_warms_up_over_a_quarter_of_the_plan_not_of_the_cap(
    tmp_path: Path, clock: FakeClock
) -> None:
    cfg = tcfg(epochs=300, time_budget_min=1.0, scheduler="onecycle", warmup_epochs=0)
    r = quiet_fit(toy_dataset(n_train=512), cfg, tmp_path / "run", callbacks=[clock])
    planned = budget_of(tmp_path / "run")["planned_epochs"]
    assert 8 <= planned < 40 and r.epochs_run == planned
    lrs_ = [row["lr"] for row in r.history]
    peak = lrs_.index(max(lrs_)) + 1  # 1-based epoch of the highest learning rate
    assert peak <= planned // 4 + 1, lrs_
    assert max(lrs_) > 0.5 * cfg.lr and lrs_[-1] < 1e-3 * cfg.lr


class Burst(pl.Callback):
    """The fake clock runs ``factor`` times faster during epochs ``start`` .. ``stop - 1``."""

    def __init__(self, clock: FakeClock, start: int, stop: int, factor: float) -> None:
        self.clock, self.start, self.stop, self.factor = clock, start, stop, factor
        self.base = clock.dt

    def on_train_epoch_start(self, trainer, pl_module) -> None:  # type: ignore[no-untyped-def]
        fast = self.start <= trainer.current_epoch < self.stop
        self.clock.dt = self.base * (self.factor if fast else 1.0)


@pytest.mark.slow
def test_a_transient_speed_up_does_not_lengthen_the_plan(tmp_path: Path, clock: FakeClock) -> None:
    cfg = tcfg(epochs=400, time_budget_min=1.0, scheduler="onecycle", warmup_epochs=2)
    r = quiet_fit(
        toy_dataset(n_train=512), cfg, tmp_path / "run", callbacks=[clock, Burst(clock, 3, 5, 0.5)]
    )
    reasons = plan_reasons(tmp_path / "run")
    assert "lengthened" not in reasons and "shortened" not in reasons, reasons
    assert r.epochs_run == budget_of(tmp_path / "run")["planned_epochs"]


def test_a_run_stopped_before_its_plan_is_recorded_as_stopped(tmp_path: Path) -> None:
    # min_delta 1.0: no epoch counts as an improvement, so patience 1 stops after epoch 2.
    cfg = tcfg(epochs=6, patience=1, min_delta=1.0)
    said: list[str] = []
    r = quiet_fit(toy_dataset(), cfg, tmp_path / "run", log=said.append)
    fit_json = json.loads((tmp_path / "run" / FIT_JSON).read_text())
    assert r.epochs_run < 6 and fit_json["stopped_early"]
    assert fit_json["stop"]["completed"] is False
    assert "did not improve for 1 epochs" in fit_json["stop"]["reason"]
    assert fit_json["stop"]["reason"] in fit_json["notes"]
    assert any(fit_json["stop"]["reason"] in s for s in said)


def test_the_record_names_the_machine_dependent_epoch_count_and_its_reproduction(
    tmp_path: Path, clock: FakeClock
) -> None:
    cfg = tcfg(epochs=40, time_budget_min=0.5, scheduler="onecycle", warmup_epochs=1)
    r = quiet_fit(toy_dataset(n_train=512), cfg, tmp_path / "run", callbacks=[clock])
    fit_json = json.loads((tmp_path / "run" / FIT_JSON).read_text())
    note = fit_json["time_budget"]["note"]
    assert "depends on the machine" in note
    assert f"--set train.time_budget_min=null --set train.epochs={r.epochs_run}" in note
    assert note in fit_json["notes"]


def test_epochs_of_unequal_cost_plan_the_longest_schedule_that_fits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(budget_mod, "_now", lambda: 0.0)
    # The first half of any plan costs a quarter: N epochs of 10 s at the full side cost
    # 2.5 x ceil(N/2) + 10 x floor(N/2). The budget leaves 100 - 10 (reserve) = 90 s:
    # 15 epochs cost exactly 90, 16 cost 100.
    half = budget_mod.TimeBudget(100, 50, epoch_cost=lambda e, n: 0.25 if e < n / 2 else 1.0)
    assert half._fit(10.0, 0.0, 0) == 15
    assert budget_mod.TimeBudget(100, 50)._fit(10.0, 0.0, 0) == 9  # equal costs: floor(90/10)
    assert budget_mod.TimeBudget(100, 12, epoch_cost=lambda e, n: 0.1)._fit(10.0, 0.0, 0) == 12
    # Validation (here 2 s of each 10) does not shrink with the side.
    assert half._seconds(0, 2, 10.0, 2.0) == pytest.approx((2 + 8 * 0.25) + 10)


def test_a_checkpoint_from_before_unequal_epochs_resumes_with_its_seconds() -> None:
    # Older checkpoints saved raw "epoch_seconds" (all epochs cost the same then); a resume reads
    # them as the epochs at the full side, and the state saved again keeps one list.
    old = {"plans": [], "planned_epochs": 12, "epoch_seconds": [10.0, 12.0], "elapsed": 22.0}
    tb = budget_mod.TimeBudget(100, 50)
    tb.load_state_dict(old)
    state = tb.state_dict()
    assert state["epoch_units"] == [10.0, 12.0]
    assert "epoch_seconds" not in state and state["planned_epochs"] == 12
    # a newer checkpoint's scaled epochs win over any raw seconds beside them
    tb.load_state_dict({**old, "epoch_units": [20.0, 24.0]})
    assert tb.state_dict()["epoch_units"] == [20.0, 24.0]


class PixelClock(FakeClock):
    """A fake clock whose training steps cost ``dt`` x the share of the full side's pixels in
    the batch the model really saw (progressive resizing), so the budget's plan can be exact."""

    def __init__(self, dt: float, side: int) -> None:
        super().__init__(dt)
        self.side, self.seen = side, side

    def on_train_start(self, trainer, pl_module) -> None:  # type: ignore[no-untyped-def]
        def see(module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            if module.training:
                self.seen = int(args[0].shape[-1])

        pl_module.model.register_forward_pre_hook(see)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # type: ignore[no-untyped-def]
        self.t += self.dt * (self.seen / self.side) ** 2


def exact_budget_fit(
    data: LoadedDataset,
    cfg: TrainConfig,
    run_dir: Path,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
) -> FitResult:
    """A budgeted fit on ``clock``, for a clock the budget's cost model predicts exactly: the
    plan made after epoch 2 is never changed, and the run ends inside the budget, annealed."""
    monkeypatch.setattr(budget_mod, "_now", clock)
    result = quiet_fit(data, cfg, run_dir, callbacks=[clock])
    tb = budget_of(run_dir)
    assert plan_reasons(run_dir) == ["epoch 1", "epochs 1-2"], tb["plans"]
    assert result.epochs_run == tb["planned_epochs"]
    budget_s = 60 * float(cfg.time_budget_min or 0)
    assert tb["seconds_used"] <= budget_s and clock.t <= budget_s
    assert result.history[-1]["lr"] < 1e-3 * cfg.lr  # annealed to its end
    return result


@pytest.mark.slow
def test_a_budget_with_progressive_resizing_counts_each_epoch_at_its_cost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = toy_dataset(n_train=512)  # 16 steps an epoch, 16 px
    aug = AugmentConfig(progressive_scale=0.5, progressive_ramp=(0.25, 0.75))
    cfg = tcfg(epochs=400, time_budget_min=1.0, scheduler="onecycle", warmup_epochs=2)
    runs = {
        # The pixel share predicts every epoch's cost exactly here: the plan never changes.
        name: exact_budget_fit(data, c, tmp_path / name, PixelClock(0.25, 16), monkeypatch)
        for name, c in (("equal", cfg), ("progressive", cfg.model_copy(update={"augment": aug})))
    }
    equal, prog = runs["equal"].epochs_run, runs["progressive"].epochs_run
    # 4 s an epoch at 16 px, 1 s at 8 px, and the first half of any plan at 8 px here (an
    # average cost of 0.625): 12 equal epochs and 19 progressive ones fit when this was written.
    assert prog >= equal + equal // 2, (equal, prog)
    # The record's reproduction holds: the same recipe by epochs gives the same weights.
    fixed_cfg = cfg.model_copy(update={"augment": aug, "epochs": prog, "time_budget_min": None})
    fixed = quiet_fit(data, fixed_cfg, tmp_path / "fixed")
    for a, b in zip(
        runs["progressive"].model.state_dict().values(),
        fixed.model.state_dict().values(),
        strict=True,
    ):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
