"""Data: dataset adapters (one per dataset, in ``adapters/``), decode-once cache, loading.

``load_dataset("fer2013:/data/fer2013")`` indexes, splits, validates and decodes a dataset;
``list_datasets()`` names the adapters; ``register_dataset`` adds one. Errors about bad input
are ``DatasetError`` and name the file and the fix.

Names are imported on first use (as in ``ferlab``), so ``ferlab.config`` can read the adapter
registry (``ferlab.data.base``) without importing the loader, which reads the config.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ferlab._lazy import lazy_getattr

_EXPORTS = {
    "ArraySplit": "ferlab.data.base",
    "DatasetError": "ferlab.data.base",
    "DatasetIndex": "ferlab.data.base",
    "LoadedDataset": "ferlab.data.base",
    "Record": "ferlab.data.base",
    "list_datasets": "ferlab.data.base",
    "parse_spec": "ferlab.data.base",
    "register_dataset": "ferlab.data.base",
    "load_dataset": "ferlab.data.loading",
}

__all__ = [
    "ArraySplit",
    "DatasetError",
    "DatasetIndex",
    "LoadedDataset",
    "Record",
    "list_datasets",
    "load_dataset",
    "parse_spec",
    "register_dataset",
]

if TYPE_CHECKING:
    from ferlab.data.base import (
        ArraySplit,
        DatasetError,
        DatasetIndex,
        LoadedDataset,
        Record,
        list_datasets,
        parse_spec,
        register_dataset,
    )
    from ferlab.data.loading import load_dataset


__getattr__ = lazy_getattr("ferlab.data", globals(), _EXPORTS)
