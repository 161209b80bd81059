"""A fake but complete experiment folder, written the way `ferlab run` lays one out.

Every path comes from ``ferlab.layout.Layout`` and the plan and status are written with
``ferlab.record``, as the pipeline does. Used by the reporting tests: the numbers are random
but seeded and internally consistent (accuracy, F1 and the confusion matrix come from the same
fake predictions), and the weights file is garbage on purpose so that any attempt to load a
model while reporting fails.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ferlab.labels import CANONICAL, EMOTIONS
from ferlab.layout import ENSEMBLE, MEGA, Layout, safe_name, write_json
from ferlab.record import (
    EvalStatus,
    PairStatus,
    Plan,
    PlannedDataset,
    PlannedEval,
    PlannedPair,
    write_plan,
    write_status,
)

MODELS: tuple[str, str] = ("ferlab_cnn", "resnet18")
DATASETS: tuple[str, str] = ("fer2013", "rafdb")
FAILED_ERROR = "RuntimeError: CUDA out of memory while allocating <tensor 512x512> & more"
TTA_VIEWS = 2


def dir_name(text: str) -> str:
    """The file-name-safe form the pipeline uses for folder names."""
    return safe_name(text)


def _write_json(path: Path, data: Any) -> None:
    write_json(path, data)


def fake_key(*parts: str) -> str:
    return hashlib.sha256("/".join(parts).encode()).hexdigest()[:16]


def fake_metrics(
    rng: np.random.Generator, labels: Sequence[str], n: int, skill: float
) -> dict[str, Any]:
    """A metrics block computed from fake predictions, so every number agrees with the matrix."""
    k = len(labels)
    weights = rng.uniform(0.3, 1.0, size=k)
    y_true = rng.choice(k, size=n, p=weights / weights.sum())
    correct = rng.random(n) < skill
    y_pred = np.where(correct, y_true, rng.integers(0, k, size=n))
    cm = np.zeros((k, k), dtype=int)
    np.add.at(cm, (y_true, y_pred), 1)
    tp = np.diag(cm).astype(float)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    precision = np.divide(tp, predicted, out=np.zeros(k), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros(k), where=support > 0)
    f1 = np.divide(
        2 * precision * recall, precision + recall, out=np.zeros(k), where=(precision + recall) > 0
    )
    accuracy = float(tp.sum() / n)
    balanced = float(recall[support > 0].mean())
    macro_f1 = float(f1.mean())
    sums = cm.sum(axis=1, keepdims=True)
    normalized = np.divide(cm, sums, out=np.zeros((k, k)), where=sums > 0)

    def ci(v: float) -> list[float]:
        half = float(rng.uniform(0.01, 0.04))
        return [max(0.0, v - half), min(1.0, v + half)]

    return {
        "n": int(n),
        "accuracy": accuracy,
        "balanced_accuracy": balanced,
        "macro_f1": macro_f1,
        "per_class": {
            label: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, label in enumerate(labels)
        },
        "confusion_matrix": cm.tolist(),
        "confusion_matrix_normalized": normalized.tolist(),
        "labels": list(labels),
        "ci": {
            "accuracy": ci(accuracy),
            "macro_f1": ci(macro_f1),
            "balanced_accuracy": ci(balanced),
        },
        "log_loss": float(rng.uniform(0.6, 1.6)),
    }


def _history(rng: np.random.Generator, epochs: int) -> list[dict[str, Any]]:
    rows = []
    for e in range(1, epochs + 1):
        progress = 1 - np.exp(-e / 3)
        train_acc = 0.2 + 0.6 * progress + rng.normal(0, 0.01)
        val_acc = 0.2 + 0.45 * progress + rng.normal(0, 0.015)
        rows.append(
            {
                "epoch": e,
                "train_loss": round(1.9 - 1.2 * progress + rng.normal(0, 0.02), 4),
                "train_acc": round(train_acc, 4),
                "val_loss": round(1.9 - 0.9 * progress + rng.normal(0, 0.03), 4),
                "val_accuracy": round(val_acc, 4),
                "val_balanced_accuracy": round(val_acc - 0.04, 4),
                "val_macro_f1": round(val_acc - 0.06, 4),
                "lr": 1e-3 * 0.5 ** (e // 4),
                "epoch_seconds": round(float(rng.uniform(3, 5)), 2),
            }
        )
    return rows


def _write_run(
    layout: Layout, rng: np.random.Generator, dataset: str, model: str, labels: Sequence[str]
) -> Path:
    run_dir = layout.run_dir(dataset, model, fake_key(dataset, model))
    run_dir.mkdir(parents=True)
    epochs = int(rng.integers(6, 11))
    history = _history(rng, epochs)
    with (run_dir / "history.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)
    best = max(history, key=lambda r: r["val_accuracy"])["epoch"]
    _write_json(
        run_dir / "fit.json",
        {
            "dataset": dataset,
            "model": model,
            "epochs_run": epochs,
            "best_epoch": best,
            "train_seconds": round(float(rng.uniform(20, 400)), 2),
            "stopped_early": epochs < 10,
            "params": int(rng.integers(200_000, 12_000_000)),
            "resumed": False,
        },
    )
    _write_json(
        run_dir / "meta.json",
        {"architecture": model, "labels": list(labels), "image_size": 48, "channels": 1},
    )
    # Not a real safetensors file: the report must never load weights.
    (run_dir / "weights.safetensors").write_bytes(b"not a model")
    (run_dir / "DONE").write_text("", encoding="utf-8")
    return run_dir


def write_eval(
    layout: Layout,
    rng: np.random.Generator,
    train: tuple[str, Sequence[str]],
    model: str,
    test: tuple[str, Sequence[str]],
    *,
    skill: float,
    with_tta: bool,
    key: str,
) -> Path:
    """A planned evaluation's files; ``key`` is the evaluation key its metrics.json carries."""
    (train_name, train_labels), (test_name, test_labels) = train, test
    shared = [c for c in CANONICAL if c in train_labels and c in test_labels]
    dropped = [c for c in CANONICAL if (c in train_labels) != (c in test_labels)]
    n = int(rng.integers(150, 400))
    n_dropped = int(rng.integers(5, 30)) if any(c in test_labels for c in dropped) else 0
    out = layout.eval_dir(train_name, model, test_name)
    out.mkdir(parents=True, exist_ok=True)
    plain = fake_metrics(rng, shared, n, skill)
    tta = fake_metrics(rng, shared, n, min(0.95, skill + 0.03)) if with_tta else None
    _write_json(
        out / "metrics.json",
        {
            "train_dataset": train_name,
            "model": model,
            "test_dataset": test_name,
            "eval_key": key,
            "labels": shared,
            "dropped_labels": dropped,
            "n_dropped_images": n_dropped,
            "tta_views": TTA_VIEWS if with_tta else 1,
            "throughput_ips": round(float(rng.uniform(200, 3000)), 1),
            "plain": plain,
            "tta": tta,
        },
    )
    with (out / "predictions.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["index", "true", "pred"])
        for i in range(5):
            writer.writerow([i, shared[i % len(shared)], shared[(i * 3) % len(shared)]])
    return out


def _distribution_png(path: Path, labels: Sequence[str], counts: Sequence[int], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.bar(range(len(labels)), counts, color="#4c72b0")
    ax.set_xticks(range(len(labels)), list(labels), rotation=30, ha="right")
    ax.set_title(title.replace("$", r"\$"))
    ax.set_ylabel("images")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _write_data(
    layout: Layout, rng: np.random.Generator, dataset: str, labels: Sequence[str]
) -> dict[str, int]:
    stem = dir_name(dataset)
    splits = {}
    for split, size in (("train", 2000), ("val", 250), ("test", 300)):
        w = rng.uniform(0.2, 1.0, size=len(labels))
        per = np.maximum(1, (size * w / w.sum()).astype(int))
        splits[split] = {
            "total": int(per.sum()),
            "per_class": dict(zip(labels, map(int, per), strict=True)),
        }
    _write_json(
        layout.data_json(dataset),
        {
            "dataset": dataset,
            "labels": list(labels),
            "splits": splits,
            "protocol": "official train/test; val: seeded stratified 10% of train (seed 0)",
            "bad_files": 2,
            "bad_file_examples": [
                {
                    "path": f"/data/{stem}/train/angry/broken_0001.jpg",
                    "reason": "truncated image file",
                },
                {"path": f"/data/{stem}/test/sad/empty.png", "reason": "zero-byte file"},
            ],
            "excluded": {"duplicates": int(rng.integers(0, 20)), "cross_split_duplicates": 3},
        },
    )
    train = [splits["train"]["per_class"][c] for c in labels]
    _distribution_png(layout.dist_original(dataset), labels, train, f"{dataset}: train")
    balanced = [max(train)] * len(labels)
    _distribution_png(layout.dist_balanced(dataset), labels, balanced, f"{dataset}: balanced")
    return {s: int(v["total"]) for s, v in splits.items()}


def make_fake_experiment(
    tmp_path: Path,
    *,
    datasets: Sequence[str] = DATASETS,
    models: Sequence[str] = MODELS,
    name: str = "demo",
    seed: int = 0,
) -> Path:
    """Write ``tmp_path/name``: 2 datasets x 2 models, one failed pair, ensembles and mega.

    - ``datasets[0]`` has the 7 basic emotions, ``datasets[1]`` adds contempt, so every
      cross pair between them is scored on 7 shared classes with ``contempt`` dropped;
    - ``(datasets[1], models[1])`` failed with ``FAILED_ERROR``;
    - an ensemble on ``datasets[0]`` (no TTA) and a ``mega`` dataset trained with ``models[0]``;
    - every completed pair is evaluated on every dataset's test split (the ensemble only on its own).
    """
    rng = np.random.default_rng(seed)
    exp = tmp_path / name
    exp.mkdir(parents=True)
    layout = Layout(exp)
    label_sets = {
        datasets[0]: list(EMOTIONS),
        datasets[1]: list(CANONICAL),
        MEGA: list(CANONICAL),
    }
    layout.config.write_text(
        f"name: {name}\noutput_dir: {tmp_path}\nseed: {seed}\n"
        "datasets:\n"
        + "".join(f"  - name: {json.dumps(d)}\n    path: /data/{dir_name(d)}\n" for d in datasets)
        + "models:\n"
        + "".join(f"  - name: {m}\n" for m in models)
        + "mega:\n  enabled: true\n",
        encoding="utf-8",
    )
    _write_json(
        layout.environment,
        {
            "ferlab": "0.1.0",
            "torch": "2.14.1",
            "python": "3.11.2",
            "device": "cpu",
            "git_commit": "0123456789abcdef0123456789abcdef01234567",
            "platform": "Linux-6.1.0-x86_64-with-glibc2.36",
            "started": "2025-01-02T10:00:00",
        },
    )
    layout.logs_dir.mkdir()
    layout.log_file("20250102-100000").write_text(
        "10:00:00 experiment demo\n10:00:01 training ...\n" + f"10:05:00 {FAILED_ERROR}\n",
        encoding="utf-8",
    )
    planned_data = []
    for d, labels in label_sets.items():
        counts = _write_data(layout, rng, d, labels)
        if d != MEGA:
            planned_data.append(PlannedDataset(d, d, f"/data/{d}", "train", fake_key(d), counts))

    trained: list[tuple[str, str]] = [(d, m) for d in datasets for m in models]
    trained.append((MEGA, models[0]))
    failed = (datasets[1], models[1])
    pairs: list[PlannedPair] = []
    status: list[PairStatus] = []
    for d, m in trained:
        key = fake_key(d, m)
        pair = PlannedPair(d, m, run_key=key, run_dir=layout.relative(layout.run_dir(d, m, key)))
        for test in label_sets:
            pair.evals.append(
                PlannedEval(
                    test, fake_key(d, m, test), layout.relative(layout.eval_dir(d, m, test))
                )
            )
        pairs.append(pair)
        if (d, m) == failed:
            status.append(PairStatus(d, m, "failed", FAILED_ERROR, pair.run_dir))
            continue
        _write_run(layout, rng, d, m, label_sets[d])
        st = PairStatus(d, m, "trained", None, pair.run_dir)
        for e in pair.evals:
            skill = float(rng.uniform(0.55, 0.8)) if e.test == d else float(rng.uniform(0.3, 0.5))
            write_eval(
                layout,
                rng,
                (d, label_sets[d]),
                m,
                (e.test, label_sets[e.test]),
                skill=skill,
                with_tta=True,
                key=e.key,
            )
            st.evals.append(EvalStatus(e.test, "computed"))
        status.append(st)
    d0 = datasets[0]
    ens = PlannedPair(d0, ENSEMBLE, kind="ensemble", members=list(models))
    ens.evals.append(
        PlannedEval(d0, fake_key(d0, ENSEMBLE), layout.relative(layout.eval_dir(d0, ENSEMBLE, d0)))
    )
    pairs.append(ens)
    write_eval(
        layout,
        rng,
        (d0, label_sets[d0]),
        ENSEMBLE,
        (d0, label_sets[d0]),
        skill=0.8,
        with_tta=False,
        key=ens.evals[0].key,
    )
    status.append(PairStatus(d0, ENSEMBLE, "computed", evals=[EvalStatus(d0, "computed")]))
    # The plan lists mega last among the training datasets, as the pipeline does.
    order = {d: i for i, d in enumerate([*datasets, MEGA])}
    pairs.sort(key=lambda p: order[p.dataset])
    write_plan(
        layout,
        Plan(name, planned_data, pairs, {"ferlab_version": "0.1.0", "created": "2025-01-02"}),
    )
    write_status(layout, status)
    return exp
