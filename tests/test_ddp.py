"""Two-process DDP on CPU (gloo): training completes, the ranks agree, outputs are written once.

The test runs this file as a script; Lightning's ``ddp`` strategy then starts the second rank by
re-running the same command with ``LOCAL_RANK=1``, as it does under torchrun or SLURM.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ferlab.layout import FIT_JSON, HISTORY, LAST_CKPT, META, TRAIN_LOGS, WEIGHTS

EPOCHS = 2


def _toy_dataset():
    from ferlab.data.base import ArraySplit, LoadedDataset

    def split(n: int, seed: int) -> ArraySplit:
        rng = np.random.default_rng(seed)
        k = rng.integers(0, 4, n)
        imgs = (rng.random((n, 16, 16, 1)) * 80).astype(np.uint8)
        for i, c in enumerate(k):
            imgs[i, int(c) * 4 + 1 : int(c) * 4 + 3, 1:-1, 0] = 220
        return ArraySplit(imgs, np.array([0, 3, 4, 6])[k], [f"{seed}/{i}" for i in range(n)])

    return LoadedDataset(
        "toy",
        ["angry", "happy", "sad", "neutral"],
        {"train": split(130, 0), "val": split(45, 1)},
        "toy",
        "fp",
    )


def _rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def _script(run_dir: Path, out_dir: Path, mode: str = "") -> None:
    """Both ranks run this: fit with DDP, then report weights hash, history and file writes.

    ``mode == "budget"``: a time budget, with each rank's budget clock running at its own
    speed (rank 1 three times faster), so the ranks would plan differently on their own."""
    import importlib

    import torch

    from ferlab import layout
    from ferlab.config import ModelConfig, RuntimeConfig, TrainConfig
    from ferlab.training import budget as budget_mod

    fit_mod = importlib.import_module("ferlab.training.fit")  # the package's `fit` is the function
    writes: list[str] = []
    real_write, real_outputs = layout.atomic_write, fit_mod._write_outputs

    def spy_write(path: Path, data: bytes | str) -> Path:
        if Path(run_dir).resolve() in Path(path).resolve().parents:  # the run folder's files
            writes.append(Path(path).name)
        return real_write(path, data)

    def spy_outputs(run_dir: Path, *args, **kwargs) -> None:
        writes.append("<outputs>")
        real_outputs(run_dir, *args, **kwargs)

    # Every file of the run folder goes through layout.atomic_write (fit, checkpoints, weights).
    layout.atomic_write, fit_mod._write_outputs = spy_write, spy_outputs
    cfg = TrainConfig(epochs=EPOCHS, batch_size=16, patience=50)
    callbacks: list = []
    if mode == "budget":
        import lightning.pytorch as pl

        class Clock(pl.Callback):
            def __init__(self, dt: float) -> None:
                self.t, self.dt = 0.0, dt

            def __call__(self) -> float:
                return self.t

            def on_train_batch_end(self, *args, **kwargs) -> None:
                self.t += self.dt

        clock = Clock(0.5 if _rank() == 0 else 0.5 / 3)
        budget_mod._now = clock
        callbacks = [clock]
        cfg = TrainConfig(epochs=40, batch_size=16, patience=50, time_budget_min=0.4)
    runtime = RuntimeConfig(accelerator="cpu", devices=2, strategy="ddp", threads=1, progress=False)
    model = ModelConfig(
        name="ferlab_vgg", kwargs={"widths": [8, 16, 16, 24], "depths": [1, 1, 1, 1]}
    )
    res = fit_mod.fit(
        _toy_dataset(),
        model,
        cfg,
        run_dir,
        seed=0,
        image_size=16,
        channels=1,
        runtime=runtime,
        log=lambda s: None,
        callbacks=callbacks,
    )
    h = hashlib.sha256()
    for k, v in sorted(res.model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().contiguous().numpy().tobytes())
    world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    report = {
        "hash": h.hexdigest(),
        "history": res.history,
        "writes": writes,
        "world": world,
        "plans": [
            (p["after_epoch"], p["epochs"])
            for p in (res.extra["time_budget"] or {}).get("plans", [])
        ],
    }
    for row in report["history"]:
        row.pop("epoch_seconds")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"rank{_rank()}.json").write_text(json.dumps(report))


@pytest.mark.slow
def test_two_process_ddp_on_cpu(tmp_path: Path) -> None:
    run_dir, out_dir = tmp_path / "run", tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    for var in ("LOCAL_RANK", "RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "NODE_RANK"):
        env.pop(var, None)
    proc = subprocess.run(
        [sys.executable, __file__, str(run_dir), str(out_dir)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0 = json.loads((out_dir / "rank0.json").read_text())
    r1 = json.loads((out_dir / "rank1.json").read_text())
    assert r0["world"] == r1["world"] == 2
    assert r0["hash"] == r1["hash"]  # DDP kept the replicas identical
    assert r0["history"] == r1["history"] and len(r0["history"]) == EPOCHS
    # Outputs once, by rank 0: history per epoch and the final set; rank 1 writes nothing.
    assert r1["writes"] == []
    assert r0["writes"].count("<outputs>") == 1 and r0["writes"].count("DONE") == 1
    assert r0["writes"].count(HISTORY) == EPOCHS + 1
    assert r0["writes"].count(LAST_CKPT) == EPOCHS
    assert {WEIGHTS, META, FIT_JSON} <= set(r0["writes"])

    from ferlab.training import is_complete, read_history

    assert is_complete(run_dir)
    assert len(read_history(run_dir / HISTORY)) == EPOCHS
    # The training log is written once, by rank 0: one session folder, one row per epoch.
    (metrics,) = (run_dir / TRAIN_LOGS).glob("**/metrics.csv")
    with open(metrics) as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == list(range(EPOCHS))
    for row, hist in zip(rows, r0["history"], strict=True):
        assert float(row["val_accuracy"]) == pytest.approx(hist["val_accuracy"], rel=1e-6)


@pytest.mark.slow
def test_two_ranks_follow_one_time_budget_plan(tmp_path: Path) -> None:
    # Each rank's budget clock runs at its own speed: rank 0 decides every plan, and the
    # ranks train the same number of epochs (a disagreement would hang or split DDP).
    run_dir, out_dir = tmp_path / "run", tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    for var in ("LOCAL_RANK", "RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "NODE_RANK"):
        env.pop(var, None)
    proc = subprocess.run(
        [sys.executable, __file__, str(run_dir), str(out_dir), "budget"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0 = json.loads((out_dir / "rank0.json").read_text())
    r1 = json.loads((out_dir / "rank1.json").read_text())
    assert r0["world"] == r1["world"] == 2
    assert r0["plans"] and r0["plans"] == r1["plans"]
    assert len(r0["history"]) == len(r1["history"]) == r0["plans"][-1][1]
    assert r0["hash"] == r1["hash"]


if __name__ == "__main__":
    _script(Path(sys.argv[1]), Path(sys.argv[2]), *sys.argv[3:4])
