"""Models: one factory over ferlab's compact nets, timm and torchvision, plus safe weight I/O.

``create_model("ferlab_vgg", num_classes=7)`` builds a net; ``list_models("convnext*")`` lists
names; ``save_model``/``load_model`` write and read ``weights.safetensors`` + ``meta.json``.
Every failure to load weights is a ``WeightsError`` (``ferlab.models.errors``) naming the file.
``DEFAULT_CPU_MODEL`` is the architecture with the best accuracy per CPU-minute we measured
(see ``bench/arch_probe.py``).
"""

from ferlab.models import compact as compact  # registers the ferlab_* nets
from ferlab.models.errors import (
    CorruptWeightsError,
    UnsafeWeightsError,
    WeightsError,
    WeightsMetadataError,
    WeightsMismatchError,
    WeightsNotFoundError,
)
from ferlab.models.io import (
    ModelMeta,
    load_model,
    plain_state_dict,
    read_meta,
    save_model,
)
from ferlab.models.pretrained import (
    LoadReport,
    PretrainedUnavailableError,
    check_pretrained,
    load_pretrained_path,
    load_state_dict_adapted,
    read_state_file,
)
from ferlab.models.registry import (
    UnknownModelError,
    create_model,
    default_data_config,
    default_norm,
    ferlab_models,
    list_models,
    register_model,
)

DEFAULT_CPU_MODEL = "ferlab_vgg"

__all__ = [
    "DEFAULT_CPU_MODEL",
    "CorruptWeightsError",
    "LoadReport",
    "ModelMeta",
    "PretrainedUnavailableError",
    "UnknownModelError",
    "UnsafeWeightsError",
    "WeightsError",
    "WeightsMetadataError",
    "WeightsMismatchError",
    "WeightsNotFoundError",
    "check_pretrained",
    "create_model",
    "default_data_config",
    "default_norm",
    "ferlab_models",
    "list_models",
    "load_model",
    "load_pretrained_path",
    "load_state_dict_adapted",
    "plain_state_dict",
    "read_meta",
    "read_state_file",
    "register_model",
    "save_model",
]
