"""Per-dataset files of a run (data JSON, split key lists, class-distribution plots) and the
leakage table (test images the training data already holds)."""

from __future__ import annotations

import logging

import numpy as np

from ferlab.config import ExperimentConfig
from ferlab.data.duplicates import leakage, split_duplicates
from ferlab.labels import CANONICAL
from ferlab.layout import Layout, write_json
from ferlab.record import Plan
from ferlab.record.planning import model_geometry, test_entries
from ferlab.service.store import DataStore

log = logging.getLogger("ferlab")


def write_data_outputs(cfg: ExperimentConfig, store: DataStore, layout: Layout) -> None:
    """Per dataset: data JSON, split key lists, class-distribution plots (balanced: trained only)."""
    from ferlab.reporting.distribution import plot_distribution  # lazy: matplotlib
    from ferlab.training import class_counts_after_balancing  # lazy: torch, Lightning

    size, ch = model_geometry(cfg, cfg.models[0])
    for entry in test_entries(cfg, store):
        data = entry.data(store, size, ch)
        per_class: dict[str, dict[str, int]] = {}
        for split_name, split in data.splits.items():
            counts = np.bincount(split.labels, minlength=len(CANONICAL))
            per_class[split_name] = {n: int(counts[CANONICAL.index(n)]) for n in data.labels}
        splits = {s: {"total": sum(c.values()), "per_class": c} for s, c in per_class.items()}
        write_json(
            layout.data_json(data.name),
            {
                "dataset": data.name,
                "labels": data.labels,
                "use": "train" if data.trainable else "test",
                "protocol": data.protocol,
                "fingerprint": data.fingerprint,
                "spec": data.spec,
                "splits": splits,
                "bad_files": len(data.bad_files),
                "bad_file_examples": [
                    {"path": b.path, "reason": b.reason} for b in data.bad_files[:20]
                ],
                "excluded": data.excluded,
                "ignored": dict(data.ignored),
                "duplicates": split_duplicates(data),
            },
        )
        write_json(layout.splits_json(data.name), data.split_keys())
        plot_distribution(
            per_class, layout.dist_original(data.name), f"{data.name}: class distribution"
        )
        if data.trainable:
            # What training really draws, per balance setting the models use (their own
            # train: overrides included), through the split's cells (mega: source x class).
            train = data.splits["train"]
            balances = list(dict.fromkeys(cfg.train_for(m).balance for m in cfg.models))
            series = {}
            for balance in balances:
                drawn = class_counts_after_balancing(
                    train.labels, balance, cfg.seed, groups=train.groups
                )
                how = "source x class cells" if train.groups is not None else balance
                series[f"train, one epoch ({how})"] = {n: int(drawn.get(n, 0)) for n in data.labels}
            plot_distribution(
                series,
                layout.dist_balanced(data.name),
                f"{data.name}: training classes drawn per epoch",
            )


def write_leakage(cfg: ExperimentConfig, store: DataStore, layout: Layout, plan: Plan) -> None:
    """For every planned (train dataset, test set): how many test images the training data
    already holds (exact and near duplicates, in its train and val splits)."""
    size, ch = model_geometry(cfg, cfg.models[0])
    entries = {e.name: e for e in test_entries(cfg, store)}
    pairs = dict.fromkeys(
        (p.dataset, e.test) for p in plan.pairs if p.kind == "model" for e in p.evals
    )
    rows = []
    for train_name, test_name in pairs:
        train = entries[train_name].data(store, size, ch)
        test = entries[test_name].data(store, size, ch)
        rows.append(
            {"train_dataset": train_name, "test_dataset": test_name, **leakage(train, test)}
        )
    write_json(layout.leakage, {"pairs": rows})
    for r in rows:
        seen = r.get("near_in_either", 0)
        if seen:
            log.warning(
                "%s's test split: %d of %d images are (near-)identical to %s training or "
                "validation images; its scores there are inflated (see the report)",
                r["test_dataset"],
                seen,
                r["n_test"],
                r["train_dataset"],
            )
