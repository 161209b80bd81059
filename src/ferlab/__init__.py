"""ferlab: train, evaluate and compare facial-emotion-recognition models across datasets.

>>> import ferlab
>>> "ferlab_vgg" in ferlab.list_models("ferlab_*")
True

``ferlab.run`` runs an experiment file, ``ferlab.train`` one model on one dataset,
``ferlab.evaluate`` scores saved weights on any dataset; ``ferlab.load_dataset``,
``ferlab.create_model``, ``ferlab.list_models`` and ``ferlab.load_model`` are the building
blocks. Names are imported on first use, so ``import ferlab`` stays fast.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

from ferlab._lazy import lazy_getattr

try:
    __version__ = version("ferlab")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0"

_EXPORTS = {
    "run": "ferlab.api",
    "train": "ferlab.api",
    "evaluate": "ferlab.api",
    "load_dataset": "ferlab.data.loading",
    "create_model": "ferlab.models",
    "list_models": "ferlab.models",
    "load_model": "ferlab.models",
    "tune": "ferlab.tuning",
}

__all__ = [
    "__version__",
    "create_model",
    "evaluate",
    "list_models",
    "load_dataset",
    "load_model",
    "run",
    "train",
    "tune",
]

if TYPE_CHECKING:
    from ferlab.api import evaluate, run, train
    from ferlab.data.loading import load_dataset
    from ferlab.models import create_model, list_models, load_model
    from ferlab.tuning import tune


__getattr__ = lazy_getattr("ferlab", globals(), _EXPORTS)
