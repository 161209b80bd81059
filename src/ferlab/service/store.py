"""Datasets loaded once per (dataset, size, channels) for a whole run, and every input checked
before any training starts."""

from __future__ import annotations

import logging
import time

from ferlab.config import DatasetConfig, ExperimentConfig
from ferlab.data.base import LoadedDataset
from ferlab.data.loading import load_from_config
from ferlab.data.mega import build_mega
from ferlab.layout import MEGA
from ferlab.record.planning import model_geometry

log = logging.getLogger("ferlab")


class DataStore:
    """Datasets loaded once per (dataset, size, channels) for the whole experiment."""

    def __init__(self, cfg: ExperimentConfig) -> None:
        self.cfg = cfg
        self._cache: dict[tuple[str, int, int], LoadedDataset] = {}

    def get(self, ds: DatasetConfig, size: int, channels: int) -> LoadedDataset:
        key = (ds.display, size, channels)  # display names are unique (config.check_names)
        if key not in self._cache:
            t0 = time.perf_counter()
            loaded = load_from_config(
                ds, self.cfg.data, image_size=size, channels=channels, log=log.info
            )
            sizes = ", ".join(f"{k} {len(v)}" for k, v in loaded.splits.items())
            log.info(
                "Loaded %s at %dx%dx%d in %.1f s: %s",
                ds.display,
                size,
                size,
                channels,
                time.perf_counter() - t0,
                sizes,
            )
            if loaded.bad_files:
                log.warning(
                    "%s: %d bad files skipped (first: %s: %s)",
                    ds.display,
                    len(loaded.bad_files),
                    loaded.bad_files[0].path,
                    loaded.bad_files[0].reason,
                )
            self._cache[key] = loaded
        return self._cache[key]

    def mega(self, size: int, channels: int) -> LoadedDataset:
        """The mega dataset over the trainable datasets (all, or those ``mega.datasets`` names)."""
        key = (MEGA, size, channels)
        if key not in self._cache:
            wanted = set(self.cfg.mega.datasets)
            parts = [
                d
                for d in (self.get(ds, size, channels) for ds in self.cfg.datasets)
                if d.trainable and (not wanted or d.name in wanted)
            ]
            self._cache[key] = build_mega(
                parts, balance_sources=self.cfg.mega.balance_sources, seed=self.cfg.seed
            )
        return self._cache[key]


def check_inputs(cfg: ExperimentConfig, store: DataStore) -> None:
    """Check every pretrained weights file and index and decode every dataset up front: bad
    input fails before any training."""
    from ferlab.models.pretrained import check_pretrained  # lazy: imports torch

    for m in cfg.models:
        check_pretrained(m)
    for m in cfg.models:
        size, ch = model_geometry(cfg, m)
        for ds in cfg.datasets:
            store.get(ds, size, ch)
        if cfg.mega.enabled:
            store.mega(size, ch)
