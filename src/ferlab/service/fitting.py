"""The one way a (dataset, model) pair is trained, or its completed run reused: for
``ferlab run``, ``ferlab tune`` and the Python API."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ferlab.config import ExperimentConfig, ModelConfig
from ferlab.data.base import LoadedDataset
from ferlab.layout import SPLITS, write_json
from ferlab.provenance import stamp
from ferlab.record import produced_by_text, run_lock
from ferlab.record.planning import model_geometry

log = logging.getLogger("ferlab")


@dataclass
class Trained:
    """A trained (or reused) pair: its model, metadata, folder and who produced it."""

    model: Any
    meta: Any
    run_dir: Path
    reused: bool
    produced: dict[str, Any]


def fit_or_reuse(
    data: LoadedDataset,
    m: ModelConfig,
    run_dir: Path,
    run_key: str,
    cfg: ExperimentConfig,
    *,
    seed: int | None = None,
    force: bool = False,
    callbacks: Sequence[Any] = (),
    name: str = "",
    where: str = "",
) -> Trained:
    """Train ``m`` on ``data`` into ``run_dir`` with training seed ``seed`` (default
    ``cfg.seed``; it must be the seed of ``run_key``), or load its completed run (the run cache).

    The one way a pair is trained, for ``ferlab run`` and ``ferlab tune`` (whose pruning
    callback comes in ``callbacks``). One trainer per run folder (``record.run_lock``): a
    tuning worker, or a ``ferlab run`` beside the workers, that wants a run another process is
    training waits for it, then reuses it."""
    from ferlab.models import load_model  # lazy: torch
    from ferlab.training import clear_run, fit, is_complete  # lazy: torch, Lightning

    seed = cfg.seed if seed is None else seed
    size, ch = model_geometry(cfg, m)
    name = name or f"{data.name} / {m.display}"
    where = where or str(run_dir)
    with run_lock(run_dir):
        if force and run_dir.exists():
            clear_run(run_dir)
        if is_complete(run_dir):
            model, meta = load_model(run_dir)
            produced = dict((meta.extra or {}).get("provenance") or {})
            log.info(
                "[%s] reusing the completed run in %s (trained by %s)",
                name,
                where,
                produced_by_text(produced) or "an unrecorded version",
            )
            return Trained(model, meta, run_dir, True, produced)
        log.info("[%s] training into %s", name, where)
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json(run_dir / SPLITS, data.split_keys())
        produced = stamp("train")
        result = fit(
            data,
            m,
            cfg.train_for(m),
            run_dir,
            runtime=cfg.runtime,
            seed=seed,
            image_size=size,
            channels=ch,
            log=log.info,
            # the evaluation's TTA views: what `predict --tta` and `evaluate --tta` run by default
            extra_meta={
                "run_key": run_key,
                "data": data.spec,
                "provenance": produced,
                "tta": cfg.eval.tta.model_dump(mode="json"),
            },
            callbacks=callbacks,
        )
        return Trained(result.model, result.meta, run_dir, False, produced)
