"""Training: Lightning loop over in-memory uint8 tensors, batched augmentation, run cache, resume.

``fit`` trains one model on one dataset into a run folder; ``run_key``/``is_complete`` decide
whether a finished run can be reused; ``build_trainer`` is the one Lightning Trainer set-up
(fit and the benchmarks use it); ``class_counts_after_balancing`` feeds the class
distribution plots. Samplers, the module's loss and the device choice (``ferlab.device``)
are importable from their modules.
"""

from ferlab.training.augment import augment_batch, mixup_cutmix
from ferlab.training.data import class_counts_after_balancing
from ferlab.training.fit import FitResult, fit, read_history
from ferlab.training.module import FerModule
from ferlab.training.runcache import clear_run, is_complete, run_key
from ferlab.training.trainer import TrainerSetup, build_trainer

__all__ = [
    "FerModule",
    "FitResult",
    "TrainerSetup",
    "augment_batch",
    "build_trainer",
    "class_counts_after_balancing",
    "clear_run",
    "fit",
    "is_complete",
    "mixup_cutmix",
    "read_history",
    "run_key",
]
