"""Data: dataset adapters (one per dataset, in ``adapters/``), decode-once cache, loading.

``load_dataset("fer2013", "/data/fer2013")`` indexes, splits, validates and decodes a dataset;
``list_datasets()`` names the adapters; ``register_dataset`` adds one. Errors about bad input
are ``DatasetError`` and name the file and the fix.
"""

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
