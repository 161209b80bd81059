"""Training: Lightning loop over in-memory uint8 tensors, batched augmentation, run cache, resume.

``fit`` trains one model on one dataset into a run folder; ``run_key``/``is_complete`` decide
whether a finished run can be reused; ``class_counts_after_balancing`` feeds the class
distribution plots.
"""

from ferlab.training.augment import augment_batch, mixup_cutmix
from ferlab.training.data import (
    class_counts_after_balancing,
    class_weights,
    derive_seed,
    epoch_indices,
    oversample_indices,
)
from ferlab.training.device import describe_device, pick_accelerator, resolve_precision
from ferlab.training.fit import FitResult, fit, read_history
from ferlab.training.module import FerModule, soft_cross_entropy
from ferlab.training.runcache import (
    clear_run,
    find_completed_run,
    is_complete,
    run_dir_name,
    run_key,
)

__all__ = [
    "FerModule",
    "FitResult",
    "augment_batch",
    "class_counts_after_balancing",
    "class_weights",
    "clear_run",
    "derive_seed",
    "describe_device",
    "epoch_indices",
    "find_completed_run",
    "fit",
    "is_complete",
    "mixup_cutmix",
    "oversample_indices",
    "pick_accelerator",
    "read_history",
    "resolve_precision",
    "run_dir_name",
    "run_key",
    "soft_cross_entropy",
]
