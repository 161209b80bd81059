"""Kill-and-resume: a run SIGKILLed mid-training resumes and ends exactly like an uninterrupted one.

The killed run is a subprocess (this file run as a script) that pauses at the start of its third
epoch, after the second epoch's checkpoint is on disk, so the kill lands at a known point.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from ferlab import layout
from ferlab.config import AugmentConfig, ModelConfig, RuntimeConfig, TrainConfig
from ferlab.data.base import ArraySplit, LoadedDataset
from ferlab.layout import CHECKPOINTS, DONE, HISTORY, LAST_CKPT, TRAIN_LOGS, WEIGHTS
from ferlab.training import fit, is_complete, read_history
from ferlab.training.fit import _read_ckpt_state

EPOCHS = 4
KILL_AT_EPOCH = 2  # 0-based: the child stops at the start of the third epoch


def toy_dataset(size: int = 16) -> LoadedDataset:
    """Four classes, each a bright horizontal band at its own height over dark noise."""

    def split(n: int, seed: int) -> ArraySplit:
        rng = np.random.default_rng(seed)
        k = rng.integers(0, 4, n)
        imgs = (rng.random((n, size, size, 1)) * 80).astype(np.uint8)
        band = size // 4
        for i, c in enumerate(k):
            imgs[i, int(c) * band + 1 : (int(c) + 1) * band - 1, 1:-1, 0] = 220
        canon = np.array([0, 3, 4, 6])[k]  # angry, happy, sad, neutral
        return ArraySplit(imgs, canon, [f"{seed}/{i}" for i in range(n)])

    return LoadedDataset(
        "toy",
        ["angry", "happy", "sad", "neutral"],
        {"train": split(192, 0), "val": split(64, 1)},
        "toy",
        "fp-toy",
    )


MODEL = ModelConfig(name="ferlab_vgg", kwargs={"widths": [8, 16, 16, 24], "depths": [1, 1, 1, 1]})
CPU = RuntimeConfig(accelerator="cpu", threads=1, progress=False)


def train_cfg() -> TrainConfig:
    # Mixup/CutMix, erasing and dropout all draw randomness: the resume must reproduce them.
    return TrainConfig(
        epochs=EPOCHS,
        batch_size=32,
        lr=3e-3,
        patience=50,
        augment=AugmentConfig(rotate=8, translate=0.05, mixup=0.3, cutmix=0.3, erasing=0.3),
    )


def run_fit(run_dir: Path):
    return fit(
        toy_dataset(),
        MODEL,
        train_cfg(),
        run_dir,
        seed=3,
        image_size=16,
        channels=1,
        runtime=CPU,
        log=lambda s: None,
    )


def _child(run_dir: str, marker: str) -> None:
    """Subprocess body: train, but stall at the start of epoch KILL_AT_EPOCH for the kill."""
    from ferlab.training.module import FerModule

    original = FerModule.on_train_epoch_start

    def stalling(self: FerModule) -> None:
        if self.current_epoch == KILL_AT_EPOCH:
            Path(marker).write_text("ready")
            time.sleep(120)
        original(self)

    FerModule.on_train_epoch_start = stalling  # type: ignore[method-assign]
    run_fit(Path(run_dir))


@pytest.mark.slow
def test_sigkill_then_rerun_gives_identical_weights(tmp_path: Path) -> None:
    straight = run_fit(tmp_path / "straight")

    run_dir, marker = tmp_path / "killed", tmp_path / "marker"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(
        [sys.executable, __file__, str(run_dir), str(marker)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 90
    while not marker.exists():
        if proc.poll() is not None:
            raise AssertionError(f"child exited early: {proc.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
        assert time.monotonic() < deadline, "child never reached the kill point"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)

    # The kill left a resumable run that nobody may mistake for a finished one.
    assert not is_complete(run_dir)
    state = _read_ckpt_state(run_dir / CHECKPOINTS / LAST_CKPT)
    assert state is not None and state["epoch"] == KILL_AT_EPOCH - 1
    assert len(read_history(run_dir / HISTORY)) == KILL_AT_EPOCH

    resumed = run_fit(run_dir)
    assert resumed.resumed and not straight.resumed
    assert is_complete(run_dir)
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        # Same ops, same order, one thread: bitwise identical, no tolerance needed.
        assert torch.equal(a[k], b[k]), k
    assert resumed.best_epoch == straight.best_epoch
    # History: every epoch exactly once, the same numbers (timings aside).
    h_straight = read_history(tmp_path / "straight" / HISTORY)
    h_resumed = read_history(run_dir / HISTORY)
    assert [r["epoch"] for r in h_resumed] == list(range(1, EPOCHS + 1))
    for r1, r2 in zip(h_straight, h_resumed, strict=True):
        for col in r1:
            if col != "epoch_seconds":
                assert r1[col] == r2[col], (col, r1, r2)
    # The training logs: one CSV per session (killed, resumed), every epoch once across them.
    sessions = sorted((run_dir / TRAIN_LOGS / "csv").glob("version_*/metrics.csv"))
    assert [p.parent.name for p in sessions] == ["version_0", "version_1"]
    rows = []
    for p in sessions:
        with open(p) as f:
            rows += list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == list(range(EPOCHS))
    for row, hist in zip(rows, h_straight, strict=True):
        assert float(row["val_loss"]) == pytest.approx(hist["val_loss"], rel=1e-6)


def test_torn_and_stale_checkpoints_are_not_mistaken(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    ckpts = run_dir / CHECKPOINTS
    ckpts.mkdir(parents=True)
    # What a kill during a write could leave with a non-atomic writer: a truncated last.ckpt,
    # and a stale temp file from the atomic writer.
    (ckpts / LAST_CKPT).write_bytes(b"PK\x03\x04 truncated zip")
    (ckpts / f".{LAST_CKPT}.999.tmp").write_bytes(b"\x00" * 100)
    assert _read_ckpt_state(ckpts / LAST_CKPT) is None
    assert not is_complete(run_dir)

    cfg = train_cfg().model_copy(update={"epochs": 1, "limit_train_batches": 2})
    res = fit(
        toy_dataset(),
        MODEL,
        cfg,
        run_dir,
        seed=0,
        image_size=16,
        channels=1,
        runtime=CPU,
        log=lambda s: None,
    )
    assert not res.resumed
    assert res.epochs_run == 1
    assert is_complete(run_dir)
    assert not list(ckpts.glob("*.tmp")) and not list(ckpts.glob(".*.tmp"))
    state = _read_ckpt_state(ckpts / LAST_CKPT)
    assert state is not None and state["epoch"] == 0


def test_finished_checkpoint_without_done_only_writes_outputs(tmp_path: Path, monkeypatch) -> None:
    """Killed after the last epoch's checkpoint but before DONE: the rerun trains nothing."""
    real_write = layout.atomic_write

    def crash_at_done(path: Path, data: bytes | str) -> Path:
        if Path(path).name == DONE:
            raise KeyboardInterrupt("simulated kill before DONE")
        return real_write(path, data)

    run_dir = tmp_path / "run"
    cfg = train_cfg().model_copy(update={"epochs": 3, "limit_train_batches": 2})
    kw = dict(seed=0, image_size=16, channels=1, runtime=CPU, log=lambda s: None)
    straight = fit(toy_dataset(), MODEL, cfg, tmp_path / "straight", **kw)
    monkeypatch.setattr(layout, "atomic_write", crash_at_done)
    with pytest.raises(KeyboardInterrupt):
        fit(toy_dataset(), MODEL, cfg, run_dir, **kw)
    monkeypatch.setattr(layout, "atomic_write", real_write)
    assert (run_dir / WEIGHTS).exists() and not is_complete(run_dir)

    again = fit(toy_dataset(), MODEL, cfg, run_dir, **kw)
    assert again.resumed and is_complete(run_dir)
    assert again.epochs_run == straight.epochs_run == 3
    assert again.best_epoch == straight.best_epoch
    for k, v in straight.model.state_dict().items():
        assert torch.equal(v, again.model.state_dict()[k]), k


def test_damaged_finished_run_is_retrained_not_half_reused(tmp_path: Path) -> None:
    """DONE present but the weights file damaged later: not complete, and the rerun retrains
    (the best-epoch checkpoint is gone, so resuming could not recover the best weights)."""
    run_dir = tmp_path / "run"
    cfg = train_cfg().model_copy(update={"epochs": 2, "limit_train_batches": 2})
    kw = dict(seed=0, image_size=16, channels=1, runtime=CPU, log=lambda s: None)
    first = fit(toy_dataset(), MODEL, cfg, run_dir, **kw)
    (run_dir / WEIGHTS).write_bytes(b"damaged")
    assert not is_complete(run_dir)
    again = fit(toy_dataset(), MODEL, cfg, run_dir, **kw)
    assert not again.resumed and is_complete(run_dir)
    for k, v in first.model.state_dict().items():
        assert torch.equal(v, again.model.state_dict()[k]), k


if __name__ == "__main__":
    _child(sys.argv[1], sys.argv[2])
