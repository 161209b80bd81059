"""Training: samplers, loss weighting, metrics, schedules, run cache, and short real fits."""

from __future__ import annotations

import csv
import importlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ferlab.config import AugmentConfig, ModelConfig, TrainConfig
from ferlab.data.base import ArraySplit
from ferlab.device import (
    channels_first,
    channels_last_for_training,
    cpu_threads,
    pick_device,
    resolve_precision,
)
from ferlab.labels import CANONICAL
from ferlab.layout import FIT_JSON, META, TRAIN_LOGS
from ferlab.training import (
    class_counts_after_balancing,
    clear_run,
    is_complete,
    read_history,
    run_key,
)
from ferlab.training import module as module_mod
from ferlab.training import trainer as trainer_mod
from ferlab.training.budget import WarmupCosine
from ferlab.training.data import (
    EvalBatches,
    TrainBatches,
    class_weights,
    epoch_indices,
    oversample_indices,
    remap_targets,
)
from ferlab.training.module import (
    HISTORY_COLUMNS,
    FerModule,
    build_optimizer,
    metrics_from_confusion,
    param_groups,
    soft_cross_entropy,
)
from training_fakes import CPU, LABELS, quiet_fit, recorded_steps, tcfg, toy_dataset, toy_split


# -- sampling ----------------------------------------------------------------------------------
def test_oversampling_equalises_classes_each_epoch() -> None:
    labels = np.array([0] * 50 + [3] * 10 + [4] * 3 + [6] * 1)
    idx = oversample_indices(labels, epoch=0, seed=1)
    counts = np.bincount(labels[idx], minlength=8)
    assert set(counts[[0, 3, 4, 6]]) == {50}
    assert counts.sum() == 200 and counts[[1, 2, 5, 7]].sum() == 0
    assert set(range(len(labels))) <= set(idx.tolist())  # every original sample is drawn
    assert np.array_equal(idx, oversample_indices(labels, epoch=0, seed=1))
    assert not np.array_equal(idx, oversample_indices(labels, epoch=1, seed=1))
    assert not np.array_equal(idx, oversample_indices(labels, epoch=0, seed=2))


def test_epoch_indices_plain_shuffle_and_bad_mode() -> None:
    labels = np.array([0, 0, 0, 3])
    for mode in ("none", "weighted"):
        idx = epoch_indices(labels, mode, 0, 0)
        assert sorted(idx.tolist()) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="balance"):
        epoch_indices(labels, "smote", 0, 0)


def test_class_counts_after_balancing_by_name() -> None:
    labels = np.array([3] * 7 + [0] * 2)
    assert class_counts_after_balancing(labels, "oversample", 0) == {"angry": 7, "happy": 7}
    assert class_counts_after_balancing(labels, "none", 0) == {"angry": 2, "happy": 7}
    assert class_counts_after_balancing(labels, "weighted", 0) == {"angry": 2, "happy": 7}


def test_class_weights_inverse_frequency_mean_one() -> None:
    targets = np.array([0] * 6 + [1] * 3 + [2] * 1)
    w = class_weights(targets, 4)
    assert w[3] == 0  # absent class
    assert torch.allclose(w[:3] * torch.tensor([6.0, 3.0, 1.0]), torch.full((3,), 10 / 3))
    assert float(w[torch.from_numpy(targets)].mean()) == pytest.approx(1.0)


def test_weighted_soft_cross_entropy_matches_torch() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(12, 4, generator=g)
    y = torch.randint(0, 4, (12,), generator=g)
    w = torch.tensor([0.5, 1.0, 2.0, 4.0])
    onehot = F.one_hot(y, 4).float()
    assert torch.allclose(
        soft_cross_entropy(logits, onehot, w), F.cross_entropy(logits, y, weight=w)
    )
    assert torch.allclose(soft_cross_entropy(logits, onehot), F.cross_entropy(logits, y))
    smooth = onehot * 0.9 + 0.1 / 4
    assert torch.allclose(
        soft_cross_entropy(logits, smooth), F.cross_entropy(logits, y, label_smoothing=0.1)
    )


def test_train_batches_shard_over_ranks_and_follow_epochs() -> None:
    split = toy_split(101, 0)
    targets = remap_targets(split.labels, LABELS)
    shards = [
        TrainBatches(split, targets, batch_size=16, balance="none", seed=0, rank=r, world_size=2)
        for r in range(2)
    ]
    assert len(shards[0]) == len(shards[1]) == 4  # 101 -> 51 per rank -> 4 batches
    seen = []
    for s in shards:
        s.set_epoch(3)
        for x, y, soft in s:
            assert x.dtype == torch.uint8 and x.shape[1:] == (16, 16, 1)
            assert y.dtype == torch.int64 and soft.numel() == 0
            seen.append(y)
    assert sum(len(y) for y in seen) == 102  # padded by one to split evenly
    assert sorted(
        set(np.concatenate([shards[0].rank_indices(3), shards[1].rank_indices(3)]))
    ) == list(range(101))
    assert not np.array_equal(shards[0].rank_indices(3), shards[0].rank_indices(4))

    ev = [EvalBatches(split, targets, batch_size=40, rank=r, world_size=2) for r in range(2)]
    assert sum(len(y) for e in ev for _, y, _ in e) == 101  # validation: no padding


def test_remap_targets_to_output_positions() -> None:
    assert remap_targets(np.array([6, 0, 4]), LABELS).tolist() == [3, 0, 2]
    with pytest.raises(ValueError, match="surprise"):
        remap_targets(np.array([5]), LABELS)


# -- metrics, optimiser, schedule, device --------------------------------------------------------
def test_metrics_from_confusion() -> None:
    cm = torch.tensor([[8, 2, 0], [1, 1, 0], [0, 0, 0]])  # class 2 never occurs nor is predicted
    m = metrics_from_confusion(cm)
    assert m["accuracy"] == pytest.approx(9 / 12)
    assert m["balanced_accuracy"] == pytest.approx((0.8 + 0.5) / 2)
    f1_0 = 2 * 8 / (10 + 9)
    f1_1 = 2 * 1 / (2 + 3)
    assert m["macro_f1"] == pytest.approx((f1_0 + f1_1) / 2)


def test_param_groups_exclude_norm_and_bias_from_decay() -> None:
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Linear(4, 2)
    )
    decay, no_decay = param_groups(model, 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert {p.ndim for p in decay["params"]} == {2, 4}
    assert len(no_decay["params"]) == 4  # conv bias, bn weight + bias, linear bias


def test_build_optimizer_fuses_adamw_on_cpu_and_keeps_groups() -> None:
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4))
    opt = build_optimizer(model, TrainConfig(optimizer="adamw", lr=0.01, weight_decay=0.1))
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["fused"] is True
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]
    sgd = build_optimizer(model, TrainConfig(optimizer="sgd", lr=0.01, momentum=0.9))
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["nesterov"] is True
    # Fused and per-tensor AdamW take the same step.
    ref = torch.optim.AdamW(param_groups(model, 0.1), lr=0.01, fused=False)
    twin = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4))
    twin.load_state_dict(model.state_dict())
    opt2 = build_optimizer(twin, TrainConfig(optimizer="adamw", lr=0.01, weight_decay=0.1))
    x = torch.randn(2, 1, 6, 6)
    for m, o in ((model, ref), (twin, opt2)):
        m(x).square().mean().backward()
        o.step()
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def test_module_input_helpers_agree() -> None:
    module = FerModule(
        torch.nn.Identity(), TrainConfig(), num_classes=3, channels=1, mean=(0.5,), std=(0.25,),
        seed=0,
    )  # fmt: skip
    x = torch.randint(0, 256, (4, 6, 6, 1), dtype=torch.uint8)
    unit = module.to_float(x)
    assert unit.shape == (4, 1, 6, 6) and float(unit.max()) <= 1.0
    want = (x.permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.25
    assert torch.allclose(module.normalise(unit), want, atol=1e-5)
    assert torch.allclose(module.model_input(x), want, atol=1e-5)


def test_warmup_cosine_schedule() -> None:
    f = WarmupCosine(total_steps=100, warmup_steps=10)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0)
    assert f(55) == pytest.approx(0.5)
    assert f(100) == pytest.approx(0.0, abs=1e-9)
    assert all(f(i) >= f(i + 1) for i in range(10, 100))


def test_device_choices_on_this_machine() -> None:
    assert pick_device("cpu") == pick_device(torch.device("cpu")) == torch.device("cpu")
    assert resolve_precision("auto", "cpu") == "32"
    assert resolve_precision("auto", "mps") == "32"
    assert resolve_precision("bf16-mixed", "cpu") == "bf16-mixed"  # an explicit choice is kept
    assert resolve_precision("32", "cuda") == "32"
    with pytest.raises(ValueError, match=r"runtime\.precision '16-mixed' needs a GPU"):
        resolve_precision("16-mixed", "cpu")
    with pytest.raises(ValueError, match=r"Unknown device 'tpu' for runtime\.accelerator"):
        pick_device("tpu")
    with pytest.raises(ValueError, match=r"for load_model\(device=\.\.\.\)"):
        pick_device("tpu", setting="load_model(device=...)")
    assert cpu_threads(3) == 3 and cpu_threads(None, processes=10**6) == 1
    with pytest.raises(ValueError, match=r"runtime\.threads must be >= 1"):
        cpu_threads(0)


def _conv_layouts(model: torch.nn.Module) -> set[bool]:
    """For each 4-D weight whose two layouts differ (not a 1x1 kernel): is it channels-last?"""
    cl = torch.channels_last
    return {
        p.is_contiguous(memory_format=cl)
        for p in model.parameters()
        if p.dim() == 4 and p.is_contiguous(memory_format=cl) != p.is_contiguous()
    }


def test_channels_last_for_training_only_on_cuda_and_undone_by_channels_first() -> None:
    from ferlab.models import create_model

    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Conv2d(4, 8, 3))
    assert not channels_last_for_training(net, torch.device("cpu"))
    assert _conv_layouts(net) == {False}
    # The layout change needs no GPU, so the CUDA branch runs here on the CPU tensors.
    assert channels_last_for_training(net, torch.device("cuda"))
    assert _conv_layouts(net) == {True}
    assert not channels_last_for_training(net, torch.device("cuda", 0))  # already channels-last
    channels_first(net)
    assert _conv_layouts(net) == {False}
    compact = create_model("ferlab_vgg", num_classes=4, channels=1)  # channels-last everywhere
    assert _conv_layouts(compact) == {True}
    assert not channels_last_for_training(compact, torch.device("cuda"))


def test_fit_relays_on_the_training_device_and_undoes_it_before_scoring(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fit_mod = importlib.import_module("ferlab.training.fit")  # the package's fit is the function
    calls: list[tuple[str, object]] = []

    def relay(model: torch.nn.Module, device: torch.device) -> bool:
        calls.append(("relay", device))
        return True  # as on CUDA for a model built channels-first

    def undo(module: torch.nn.Module) -> None:
        calls.append(("undo", len(getattr(module, "history", []))))

    monkeypatch.setattr(fit_mod, "channels_last_for_training", relay)
    monkeypatch.setattr(fit_mod, "channels_first", undo)
    quiet_fit(toy_dataset(64), tcfg(epochs=2), tmp_path / "relaid")
    # asked with the training device before training; undone once, after both epochs
    assert calls == [("relay", torch.device("cpu")), ("undo", 2)]
    calls.clear()
    monkeypatch.setattr(fit_mod, "channels_last_for_training", lambda m, d: False)
    quiet_fit(toy_dataset(64), tcfg(epochs=1), tmp_path / "kept")
    assert calls == []  # nothing changed, nothing undone


@pytest.mark.parametrize(
    ("cuda", "mps", "want"), [(True, True, "cuda"), (False, True, "mps"), (False, False, "cpu")]
)
def test_auto_device_prefers_cuda_then_mps_then_cpu(
    monkeypatch: pytest.MonkeyPatch, cuda: bool, mps: bool, want: str
) -> None:
    import ferlab.device as device_mod

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(device_mod, "mps_available", lambda: mps)
    assert pick_device("auto") == torch.device(want)
    if want == "cpu":
        with pytest.raises(ValueError, match=r"runtime\.accelerator is 'gpu' but no CUDA or MPS"):
            pick_device("gpu")
    else:
        assert pick_device("gpu") == torch.device(want)


@pytest.mark.parametrize(("bf16", "want"), [(True, "bf16-mixed"), (False, "16-mixed")])
def test_auto_precision_on_cuda_is_bf16_where_supported(
    monkeypatch: pytest.MonkeyPatch, bf16: bool, want: str
) -> None:
    # Checked on any machine: the answer depends only on what torch reports for the GPU.
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    assert resolve_precision("auto", "cuda") == want


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without a CUDA device")
def test_absent_cuda_is_refused_with_the_setting_named() -> None:
    with pytest.raises(ValueError, match=r"runtime\.accelerator is 'cuda' but torch sees no CUDA"):
        pick_device("cuda")
    with pytest.raises(ValueError, match=r"device is 'cuda:1' but torch sees no CUDA"):
        pick_device("cuda:1", setting="device")


# -- the trainer -------------------------------------------------------------------------------
def test_build_trainer_from_the_runtime(tmp_path: Path) -> None:
    from lightning.pytorch.callbacks import Checkpoint, TQDMProgressBar
    from lightning.pytorch.loggers import CSVLogger

    setup = trainer_mod.build_trainer(CPU, tmp_path / "run", max_epochs=3, max_steps=7)
    t = setup.trainer
    assert (setup.accelerator, setup.precision, setup.threads) == ("cpu", "32", 1)
    assert torch.get_num_threads() == 1  # the runtime's thread count is applied
    assert t.max_epochs == 3 and t.max_steps == 7 and t.num_devices == 1
    assert isinstance(t.strategy.checkpoint_io, trainer_mod.AtomicCheckpointIO)
    # No checkpoint callback given: Lightning adds none of its own; no progress bar either.
    assert not [cb for cb in t.callbacks if isinstance(cb, Checkpoint | TQDMProgressBar)]
    csv_logger = next(lg for lg in t.loggers if isinstance(lg, CSVLogger))
    assert Path(csv_logger.log_dir).parent.parent == tmp_path / "run" / TRAIN_LOGS
    assert t.precision == "32-true"

    shown = trainer_mod.build_trainer(
        CPU.model_copy(update={"progress": True, "threads": 2}), tmp_path / "b", max_epochs=1
    )
    bars = [cb for cb in shown.trainer.callbacks if isinstance(cb, TQDMProgressBar)]
    assert len(bars) == 1 and bars[0].refresh_rate == trainer_mod.PROGRESS_REFRESH_STEPS
    assert shown.threads == 2 == torch.get_num_threads()
    with pytest.raises(ValueError, match=r"runtime\.precision"):
        trainer_mod.build_trainer(
            CPU.model_copy(update={"precision": "16-mixed"}), tmp_path / "c", max_epochs=1
        )


# -- run cache ---------------------------------------------------------------------------------
def test_run_key_tracks_what_shapes_the_run() -> None:
    m, t = ModelConfig(name="ferlab_vgg"), TrainConfig()
    data = {"image_size": 48, "channels": 1}
    base = run_key("fp", m, t, data, 0)
    assert base == run_key("fp", m, t, data, 0)
    assert base != run_key("fp2", m, t, data, 0)
    assert base != run_key("fp", m, t, data, 1)
    assert base != run_key("fp", ModelConfig(name="ferlab_resnet"), t, data, 0)
    assert base != run_key("fp", m, TrainConfig(lr=0.01), data, 0)
    assert base != run_key("fp", m, TrainConfig(augment=AugmentConfig(mixup=0.2)), data, 0)
    assert base != run_key("fp", m, t, {"image_size": 64, "channels": 1}, 0)
    assert base != run_key(
        "fp", ModelConfig(name="ferlab_vgg", kwargs={"drop_rate": 0.1}), t, data, 0
    )
    # The display name does not change what is learned (hardware settings are not in
    # TrainConfig but in RuntimeConfig, which run_key does not take).
    assert base == run_key("fp", ModelConfig(name="ferlab_vgg", label="VGG"), t, data, 0)


def test_run_key_follows_pretrained_file_content(tmp_path: Path) -> None:
    f = tmp_path / "w.safetensors"
    f.write_bytes(b"one")
    t, data = TrainConfig(), {"image_size": 48, "channels": 1}
    k1 = run_key("fp", ModelConfig(name="resnet18", pretrained=str(f)), t, data, 0)
    f.write_bytes(b"two")
    assert k1 != run_key("fp", ModelConfig(name="resnet18", pretrained=str(f)), t, data, 0)


def test_is_complete_needs_done_and_loadable_files(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert not is_complete(run)
    run.mkdir()
    (run / "weights.safetensors").write_bytes(b"garbage")
    (run / "meta.json").write_text("{}")
    assert not is_complete(run)  # no DONE
    (run / "DONE").write_text("x")
    assert not is_complete(run)  # DONE but the weights do not load
    clear_run(run)
    assert not run.exists()


# -- real fits on tiny data ---------------------------------------------------------------------
@pytest.mark.slow
def test_fit_learns_and_writes_the_run_folder(tmp_path: Path) -> None:
    run = tmp_path / "run"
    cfg = tcfg(epochs=4, augment=AugmentConfig(rotate=5, translate=0.05, crop_scale=(0.9, 1.0)))
    res = quiet_fit(toy_dataset(), cfg, run)
    best = res.history[res.best_epoch - 1]
    assert best["val_balanced_accuracy"] > 0.9  # chance is 0.25
    assert res.epochs_run == 4 and not res.stopped_early and not res.resumed
    assert is_complete(run)
    assert not (run / "checkpoints" / "best.ckpt").exists()
    assert (run / "checkpoints" / "last.ckpt").exists()
    with open(run / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == HISTORY_COLUMNS and [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    summary = json.loads((run / "fit.json").read_text())
    assert summary["best_epoch"] == res.best_epoch and summary["epochs_run"] == 4
    meta = json.loads((run / "meta.json").read_text())
    assert meta["labels"] == LABELS and meta["channels"] == 1 and meta["image_size"] == 16

    from ferlab.models import load_model

    model, m2 = load_model(run)
    x = torch.zeros(2, 1, 16, 16)
    assert torch.allclose(model(x), res.model(x), atol=1e-6)
    assert m2.labels == LABELS


@pytest.mark.slow
def test_early_stopping_counts_only_improvements_above_min_delta(tmp_path: Path) -> None:
    # A small learning rate: the validation loss falls every epoch, each time by less than 0.02.
    cfg = tcfg(
        epochs=6,
        patience=2,
        monitor="loss",
        lr=1e-3,
        weight_decay=0.0,
        scheduler="none",
        limit_train_batches=1,
        augment=AugmentConfig(enabled=False),
    )
    data = toy_dataset(n_train=64)
    full = quiet_fit(data, cfg, tmp_path / "plain")
    losses = [r["val_loss"] for r in full.history]
    steps = -np.diff(losses)
    assert (steps > 0).all() and (steps < 0.02).all(), losses  # the premise of this test
    assert not full.stopped_early and full.epochs_run == 6 and full.best_epoch == 6

    strict = quiet_fit(data, cfg.model_copy(update={"min_delta": 0.02}), tmp_path / "strict")
    assert losses[0] - losses[cfg.patience] < 0.02  # no epoch counts as an improvement
    assert strict.stopped_early
    assert strict.epochs_run == 1 + cfg.patience  # epoch 1 is the best, then `patience` more
    assert strict.best_epoch == 3  # min_delta decides when to stop, not which weights to keep
    assert len(read_history(tmp_path / "strict" / "history.csv")) == 3
    # The same run until it stopped: early stopping changed when it ended, not what it learned.
    got = [r["val_loss"] for r in strict.history]
    assert got == pytest.approx(losses[:3], rel=1e-6)


def spy_on_the_loss(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, torch.Tensor | None]]:
    """Record every training step's batch and the arguments and value of its loss."""

    calls: list[dict[str, torch.Tensor | None]] = []
    real_loss, real_step = module_mod.soft_cross_entropy, FerModule.training_step

    def loss(logits, target, weight=None):
        value = real_loss(logits, target, weight)
        calls[-1].update(
            logits=logits.detach().clone(),
            target=target.detach().clone(),
            weight=None if weight is None else weight.detach().clone(),
            loss=value.detach().clone(),
        )
        return value

    def training_step(self, batch, batch_idx):
        calls.append({"y": batch[1].clone(), "soft": batch[2].clone()})
        return real_step(self, batch, batch_idx)

    monkeypatch.setattr(module_mod, "soft_cross_entropy", loss)
    monkeypatch.setattr(FerModule, "training_step", training_step)
    return calls


@pytest.mark.slow
def test_weighted_balance_passes_balanced_class_weights_to_the_loss(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = spy_on_the_loss(monkeypatch)
    data = toy_dataset(n_train=128, probs=[0.7, 0.1, 0.1, 0.1])
    cfg = tcfg(epochs=1, balance="weighted", label_smoothing=0.0, limit_train_batches=2)
    quiet_fit(data, cfg, tmp_path / "weighted")
    # scikit-learn's "balanced": n_samples / (n_classes * count of the class), in output order.
    targets = remap_targets(data.splits["train"].labels, LABELS)
    counts = np.bincount(targets, minlength=len(LABELS))
    assert counts.min() > 0 and counts.max() > 3 * counts.min()  # imbalanced enough to matter
    want = torch.tensor(len(targets) / (len(LABELS) * counts), dtype=torch.float32)
    assert len(calls) == 2
    for call in calls:
        assert call["weight"] is not None and torch.allclose(call["weight"], want)
        logits, y = call["logits"], call["y"]
        weighted = F.cross_entropy(logits, y, weight=want)
        assert torch.allclose(call["loss"], weighted, atol=1e-6)
        per_sample = F.cross_entropy(logits, y, reduction="none")
        assert torch.allclose(weighted, (want[y] * per_sample).sum() / want[y].sum(), atol=1e-6)
        assert abs(float(call["loss"] - F.cross_entropy(logits, y))) > 1e-4  # the weights show

    calls.clear()
    quiet_fit(data, cfg.model_copy(update={"balance": "none"}), tmp_path / "none")
    assert len(calls) == 2
    for call in calls:
        assert call["weight"] is None
        assert torch.allclose(call["loss"], F.cross_entropy(call["logits"], call["y"]), atol=1e-6)


@pytest.mark.slow
def test_soft_labels_are_the_training_targets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = toy_dataset(n_train=96)
    train = data.splits["train"]
    # Random vote shares over all 8 classes, the hard label's share the largest; surprise and
    # contempt are not among the model's classes, so their votes are dropped and rows renormalised.
    rng = np.random.default_rng(3)
    shares = rng.uniform(0.0, 1.0, size=(len(train), len(CANONICAL))).astype(np.float32)
    shares[np.arange(len(train)), train.labels] += 2.0
    train.soft = shares / shares.sum(axis=1, keepdims=True)
    cols = [CANONICAL.index(n) for n in LABELS]
    want_all = train.soft[:, cols] / train.soft[:, cols].sum(axis=1, keepdims=True)

    calls = spy_on_the_loss(monkeypatch)
    cfg = tcfg(
        epochs=1,
        batch_size=32,
        soft_labels=True,
        balance="none",
        label_smoothing=0.0,
        limit_train_batches=2,
    )
    quiet_fit(data, cfg, tmp_path / "soft")
    targets = remap_targets(train.labels, LABELS)
    order = TrainBatches(train, targets, batch_size=32, balance="none", seed=0).rank_indices(0)
    assert len(calls) == 2
    for b, call in enumerate(calls):
        idx = order[b * 32 : (b + 1) * 32]
        assert torch.equal(call["y"], torch.from_numpy(targets[idx]))  # the batch we think
        want = torch.from_numpy(want_all[idx])
        assert torch.allclose(call["soft"], want, atol=1e-6)  # the batch carries the shares ...
        assert torch.allclose(call["target"], want, atol=1e-6)  # ... and the loss takes them
        logits = call["logits"]
        soft_ce = -(want * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
        assert torch.allclose(call["loss"], soft_ce, atol=1e-6)
        hard = F.one_hot(call["y"], len(LABELS)).float()
        assert (call["target"] - hard).abs().max() > 0.2  # not the hard labels
        # Logits near zero at the start put both losses near log(4), but not within 1e-5.
        assert abs(float(call["loss"] - F.cross_entropy(logits, call["y"]))) > 1e-5

    # Without the setting the same split trains on its hard labels.
    calls.clear()
    quiet_fit(data, cfg.model_copy(update={"soft_labels": False}), tmp_path / "hard")
    assert len(calls) == 2
    for call in calls:
        assert call["soft"] is not None and call["soft"].numel() == 0
        assert torch.equal(call["target"], F.one_hot(call["y"], len(LABELS)).float())


@pytest.mark.slow
def test_soft_labels_and_mixup_monitor_loss(tmp_path: Path) -> None:
    cfg = tcfg(
        epochs=2,
        soft_labels=True,
        monitor="loss",
        optimizer="sgd",
        scheduler="onecycle",
        limit_train_batches=3,
        augment=AugmentConfig(mixup=0.5, cutmix=0.5),
    )
    res = quiet_fit(toy_dataset(soft=True), cfg, tmp_path / "run")
    losses = [r["val_loss"] for r in res.history]
    assert res.best_epoch == int(np.argmin(losses)) + 1
    assert all(np.isfinite(r["train_loss"]) for r in res.history)


def test_fit_refuses_a_dataset_without_val(tmp_path: Path) -> None:
    data = toy_dataset()
    del data.splits["val"]
    with pytest.raises(ValueError, match="val"):
        quiet_fit(data, tcfg(epochs=1), tmp_path / "run")


# -- standard training logs and extra metadata -------------------------------------------------
EXTRA = {"data": {"spec": "toy:lab", "options": {"a": 1}}, "provenance": {"code": "abc123"}}
LOGGED_CFG = dict(epochs=2, limit_train_batches=3)


@pytest.fixture(scope="module")
def logged_fit(tmp_path_factory: pytest.TempPathFactory):
    """One tiny fit with the standard loggers and ``extra_meta`` (numpy and Path values)."""
    run = tmp_path_factory.mktemp("logged") / "run"
    extra = {**EXTRA, "split_seed": np.int64(7), "root": Path("/data/toy")}
    return run, quiet_fit(toy_dataset(), tcfg(**LOGGED_CFG), run, extra_meta=extra)


@pytest.mark.slow
def test_fit_logs_one_csv_row_per_epoch_with_the_val_metrics(logged_fit) -> None:
    run, res = logged_fit
    (path,) = (run / TRAIN_LOGS).glob("**/metrics.csv")
    with open(path) as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [0, 1]  # Lightning's 0-based epoch counter
    for row, hist in zip(rows, res.history, strict=True):
        for col in HISTORY_COLUMNS:
            if col in ("epoch", "epoch_seconds"):
                continue
            assert float(row[col]) == pytest.approx(hist[col], rel=1e-6), col


@pytest.mark.slow
def test_fit_writes_tensorboard_events_when_installed(logged_fit) -> None:
    if not trainer_mod.tensorboard_available():
        pytest.skip("tensorboard is not installed (pip install 'ferlab[tensorboard]')")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run, res = logged_fit
    (events,) = (run / TRAIN_LOGS / "tensorboard").glob("version_0/events.out.tfevents.*")
    acc = EventAccumulator(str(events))
    acc.Reload()
    got = [e.value for e in acc.Scalars("val_balanced_accuracy")]
    assert got == pytest.approx([r["val_balanced_accuracy"] for r in res.history], rel=1e-6)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:You called `self.log.*but have no logger configured")
def test_logging_does_not_change_what_is_learned(logged_fit, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(trainer_mod, "train_loggers", lambda run_dir: [])
    run = tmp_path / "unlogged"
    plain = quiet_fit(toy_dataset(), tcfg(**LOGGED_CFG), run)
    assert not (run / TRAIN_LOGS).exists()  # the patch took: this run had no loggers
    _, logged = logged_fit
    for k, v in logged.model.state_dict().items():
        assert torch.equal(v, plain.model.state_dict()[k]), k
    for a, b in zip(logged.history, plain.history, strict=True):
        assert {k: v for k, v in a.items() if k != "epoch_seconds"} == {
            k: v for k, v in b.items() if k != "epoch_seconds"
        }


@pytest.mark.slow
def test_extra_meta_goes_into_meta_json_and_fit_json(logged_fit) -> None:
    run, res = logged_fit
    want = {**EXTRA, "split_seed": 7, "root": "/data/toy"}
    meta = json.loads((run / META).read_text())
    assert {k: meta["extra"][k] for k in want} == want
    assert meta["extra"]["train_dataset"] == "toy" and meta["extra"]["seed"] == 0
    assert {k: res.meta.extra[k] for k in want} == want
    summary = json.loads((run / FIT_JSON).read_text())
    assert summary["extra"] == want
    assert summary["runtime"] == CPU.model_dump(mode="json")


def test_bad_extra_meta_is_refused_before_training(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with pytest.raises(ValueError, match=r"may not set \['seed'\]"):
        quiet_fit(toy_dataset(), tcfg(epochs=1), run, extra_meta={"seed": 5})
    with pytest.raises(ValueError, match="must be JSON-able"):
        quiet_fit(toy_dataset(), tcfg(epochs=1), run, extra_meta={"f": object()})
    assert not (run / "checkpoints").exists()


def test_val_subset_under_limit_val_batches_covers_every_class() -> None:
    labels = np.repeat(np.arange(4), 50)  # a class-sorted split
    split = ArraySplit(
        images=np.zeros((200, 4, 4, 1), dtype=np.uint8),
        labels=labels,
        keys=[str(i) for i in range(200)],
    )
    first = next(iter(EvalBatches(split, labels, batch_size=32)))[1]
    assert set(first.tolist()) == {0}  # in order, the first batch is one class
    batches = [b[1] for b in EvalBatches(split, labels, batch_size=32, subset_seed=0)]
    assert len(set(batches[0].tolist())) == 4  # a seeded subset: every class
    again = [b[1] for b in EvalBatches(split, labels, batch_size=32, subset_seed=0)]
    assert all(torch.equal(a, b) for a, b in zip(batches, again, strict=True))  # each epoch
    assert sorted(torch.cat(batches).tolist()) == sorted(labels.tolist())  # all, once


def test_balanced_counts_follow_the_samplers_cells() -> None:
    labels = np.array([0] * 6 + [1] * 2 + [0] * 2 + [1] * 2)
    groups = np.array([0] * 8 + [1] * 4) * 8 + labels  # two sources
    by_class = class_counts_after_balancing(labels, "oversample", 0)
    by_cell = class_counts_after_balancing(labels, "oversample", 0, groups=groups)
    assert by_class == {"angry": 8, "disgust": 8}
    assert by_cell == {"angry": 12, "disgust": 12}  # four cells of six
    idx = epoch_indices(labels, "oversample", 0, 0, groups=groups)
    assert by_cell == {n: int((labels[idx] == i).sum()) for i, n in enumerate(["angry", "disgust"])}


def test_mixup_stops_for_the_last_epochs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Each training forward of the first convolution is recorded, and each mixing call before it.
    aug = AugmentConfig(mixup=1.0, mix_until=0.5)
    with recorded_steps(monkeypatch) as (seen, _):
        cfg = tcfg(epochs=4, augment=aug, balance="none")
        quiet_fit(toy_dataset(n_train=64), cfg, tmp_path / "run")
    # 4 epochs of 2 batches: the first two epochs' batches mixed, the last two's whole.
    assert seen == ["mix", "step"] * 4 + ["step"] * 4


def test_progressive_resizing_trains_small_then_full_and_validates_full(tmp_path: Path) -> None:
    # Every call of a first convolution (one input channel) is recorded with its mode and side.
    seen: list[tuple[bool, int]] = []

    def record(module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        if isinstance(module, torch.nn.Conv2d) and module.in_channels == 1:
            seen.append((module.training, int(args[0].shape[-1])))

    aug = AugmentConfig(progressive_scale=0.5, progressive_ramp=(0.0, 0.5))
    hook = torch.nn.modules.module.register_module_forward_pre_hook(record)
    try:
        quiet_fit(toy_dataset(n_train=64), tcfg(epochs=4, augment=aug), tmp_path / "run")
    finally:
        hook.remove()
    train_sides = [side for training, side in seen if training]
    # 4 epochs of 2 batches: epoch 1 at half of 16 px, from half the epochs on the full side.
    assert train_sides[:2] == [8, 8] and set(train_sides[-4:]) == {16}
    assert train_sides == sorted(train_sides)
    assert {side for training, side in seen if not training} == {16}
    assert (tmp_path / "run" / META).is_file()
