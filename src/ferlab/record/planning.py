"""The plan of a run: which (dataset, model) pairs are trained under which run keys, which
(pair, test set) evaluations are made under which evaluation keys, and which ensembles.

The code that decides *what is evaluated* lives here, in the ``eval`` scope of
``ferlab.provenance``: an edit to it changes every evaluation key, so no result planned by
other code is reused. The plan's types and files are ``ferlab.record``'s; the orchestrator
(``ferlab.pipeline``) and ``ferlab tune`` build plans and run keys through this module.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from ferlab import __version__
from ferlab.config import DatasetConfig, ExperimentConfig, ModelConfig, config_hash
from ferlab.data.base import LoadedDataset
from ferlab.layout import ENSEMBLE, MEGA, METRICS, Layout
from ferlab.provenance import code_digest
from ferlab.record import Plan, PlannedDataset, PlannedEval, PlannedPair, planned_metrics

if TYPE_CHECKING:
    from ferlab.service.store import DataStore

EVAL_FORMAT = 3  # bump when metrics.json changes meaning, so cached evaluations are redone
# 3: metrics.json gains "calibration" (temperature, ECE before/after, reliability bins)


def model_geometry(cfg: ExperimentConfig, m: ModelConfig) -> tuple[int, int]:
    """The (size, channels) a model's data are decoded at: the model entry's, its one home."""
    return m.image_size, m.channels


def pair_run_key(
    data: LoadedDataset, m: ModelConfig, cfg: ExperimentConfig, *, seed: int | None = None
) -> str:
    """The run key of model ``m`` trained on ``data`` under ``cfg`` with training seed ``seed``
    (default ``cfg.seed``; ``ferlab.training.run_key``).

    ``runtime:`` is in no run key, precision included: bf16-mixed and fp32 runs of one recipe
    differ by less than two fp32 seeds do (FER2013, quick recipe, 12 epochs: -0.73 and -0.09
    points against a seed spread of 0.64; ``bench/RESULTS.md``), so they reuse each other.
    """
    from ferlab.training import run_key  # torch and Lightning: not at import (ferlab report)

    size, ch = model_geometry(cfg, m)
    return run_key(
        data.fingerprint,
        m,
        cfg.train_for(m),
        {"image_size": size, "channels": ch},
        cfg.seed if seed is None else seed,
    )


# -- the plan ----------------------------------------------------------------------------------
@dataclass
class Entry:
    """A training dataset of the plan: a dataset entry, or the mega dataset (``ds is None``)."""

    name: str
    ds: DatasetConfig | None

    def data(self, store: DataStore, size: int, ch: int) -> LoadedDataset:
        return store.mega(size, ch) if self.ds is None else store.get(self.ds, size, ch)


def test_entries(cfg: ExperimentConfig, store: DataStore) -> list[Entry]:
    """Every dataset that can be tested on (all datasets, then mega)."""
    size, ch = model_geometry(cfg, cfg.models[0])
    out = [Entry(ds.display, ds) for ds in cfg.datasets]
    if cfg.mega.enabled and any(store.get(ds, size, ch).trainable for ds in cfg.datasets):
        out.append(Entry(MEGA, None))
    return out


def train_entries(cfg: ExperimentConfig, store: DataStore) -> list[Entry]:
    """The datasets that are trained on: those with a train split, then mega."""
    size, ch = model_geometry(cfg, cfg.models[0])
    return [
        e for e in test_entries(cfg, store) if e.ds is None or store.get(e.ds, size, ch).trainable
    ]


def eval_key(run_key: str, test: LoadedDataset, cfg: ExperimentConfig) -> str:
    """What an evaluation depends on: the weights, the test images, the evaluation settings
    and seed, and the code that measures (version and digest)."""
    return config_hash(
        {
            "run": run_key,
            "test": test.fingerprint,
            "eval": cfg.eval.model_dump(mode="json"),
            "seed": cfg.seed,
            "format": EVAL_FORMAT,
            "ferlab": __version__,
            "code": code_digest("eval"),
        }
    )


def make_plan(cfg: ExperimentConfig, store: DataStore, layout: Layout) -> Plan:
    """Every pair, evaluation and ensemble this run will produce, with their keys.

    Each (dataset, model) pair is planned once per training seed (``cfg.seed_list``): only the
    training seed changes between them (the data, its split and the evaluation's bootstrap
    seed are the experiment's), so their run keys, and so their evaluation keys, differ by it.
    With several seeds every seed's evaluations get a folder level of their own and each seed
    has its ensemble of that seed's models; with one seed the plan is that of a run without
    ``seeds:``.
    """
    tests = test_entries(cfg, store)
    size0, ch0 = model_geometry(cfg, cfg.models[0])
    datasets = []
    for ds in cfg.datasets:
        d = store.get(ds, size0, ch0)
        datasets.append(
            PlannedDataset(
                name=d.name,
                adapter=ds.name,
                path=ds.path,
                use="train" if d.trainable else "test",
                fingerprint=d.fingerprint,
                splits={s: len(a) for s, a in d.splits.items()},
            )
        )
    seeds = cfg.seed_list
    several = len(seeds) > 1
    pairs: list[PlannedPair] = []
    for entry in train_entries(cfg, store):
        for seed in seeds:
            # The pair's seed is recorded unless it is the one seed ``seed`` (the plan, and so
            # every file, of a run without ``seeds:``, of which ``--seeds 1`` is one).
            recorded = seed if several or seed != cfg.seed else None
            level = seed if several else None  # the seed's own evaluation folders
            members: list[PlannedPair] = []
            for m in cfg.models:
                size, ch = model_geometry(cfg, m)
                data = entry.data(store, size, ch)
                key = pair_run_key(data, m, cfg, seed=seed)
                pair = PlannedPair(
                    dataset=entry.name,
                    model=m.display,
                    run_key=key,
                    run_dir=layout.relative(layout.run_dir(entry.name, m.display, key)),
                    seed=recorded,
                )
                for t in tests:
                    own = t.name == entry.name
                    external = t.ds is not None and not store.get(t.ds, size, ch).trainable
                    if not (own or external or cfg.eval.cross_dataset):
                        continue
                    test = t.data(store, size, ch)
                    if "test" not in test.splits:
                        continue
                    pair.evals.append(
                        PlannedEval(
                            test=t.name,
                            key=eval_key(key, test, cfg),
                            dir=layout.relative(
                                layout.eval_dir(entry.name, m.display, t.name, level)
                            ),
                        )
                    )
                members.append(pair)
            pairs += members
            if cfg.eval.ensembles and len(members) > 1:
                ens = PlannedPair(
                    dataset=entry.name,
                    model=ENSEMBLE,
                    kind="ensemble",
                    members=[p.model for p in members],
                    seed=recorded,
                )
                for t in tests:
                    keys = [p.eval_on(t.name) for p in members]
                    if all(k is not None for k in keys):
                        ens.evals.append(
                            PlannedEval(
                                test=t.name,
                                key=config_hash(
                                    {"members": [k.key for k in keys if k], "format": EVAL_FORMAT}
                                ),
                                dir=layout.relative(
                                    layout.eval_dir(entry.name, ENSEMBLE, t.name, level)
                                ),
                            )
                        )
                pairs.append(ens)
    return Plan(
        name=cfg.name,
        datasets=datasets,
        pairs=pairs,
        provenance={
            "ferlab_version": __version__,
            "code_digest_train": code_digest("train"),
            "code_digest_eval": code_digest("eval"),
            "created": datetime.now().isoformat(timespec="seconds"),
        },
    )


def drop_stale_evaluations(layout: Layout, plan: Plan) -> int:
    """Delete planned evaluation folders whose files were produced under another key.

    Such a file (an earlier plan's, or a pair that failed since) can never be reused, and left
    in place it would look current to someone browsing ``eval/``. Returns how many were removed.
    """
    removed = 0
    for pair in plan.pairs:
        for e in pair.evals:
            folder = layout.resolve(e.dir)
            if (folder / METRICS).is_file() and planned_metrics(layout, e) is None:
                shutil.rmtree(folder)
                removed += 1
    return removed
