"""The errors of loading weights: one family, so every command reports them the same way.

A weights file and its ``meta.json`` are input like any dataset: they may be truncated, hand
edited, from another model, or a pickle built to run code. Each failure is a ``WeightsError``
whose message names the file, says what is wrong and how to fix it, on one line (the CLI prints
it as ``ferlab: error: <message>``, exit code 2)::

    WeightsError (ValueError)
      WeightsNotFoundError (also FileNotFoundError)  no file at the given path
      UnsafeWeightsError                             a pickle the safe unpickler refuses (unrun)
      CorruptWeightsError                            truncated, empty, another format, no tensors
      WeightsMetadataError                           meta.json missing, not JSON, invalid
      WeightsMismatchError                           weights that do not fit the model (or meta)
"""

from __future__ import annotations


class WeightsError(ValueError):
    """Weights (or their metadata) that cannot be loaded; the message names the file."""


class WeightsNotFoundError(WeightsError, FileNotFoundError):
    """No weights file at the given path."""


class UnsafeWeightsError(WeightsError):
    """A weights file that is not plain tensors (a pickle that would construct objects)."""


class CorruptWeightsError(WeightsError):
    """A weights file that cannot be read as tensors: truncated, empty, or another format."""


class WeightsMetadataError(WeightsError):
    """A run's ``meta.json`` (or the metadata in the weights header) missing or invalid."""


class WeightsMismatchError(WeightsError):
    """Weights that do not fit the model they are loaded into (beyond first conv and head)."""


def one_line(error: BaseException | str, limit: int = 300) -> str:
    """``error``'s text on one line, cut to ``limit`` characters (library messages can span
    dozens of lines; ours quote them inside one)."""
    text = " ".join(str(error).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def unreadable_safetensors(path: object, error: BaseException) -> CorruptWeightsError:
    """The error for a ``.safetensors`` file the library cannot parse (one wording for all)."""
    return CorruptWeightsError(
        f"{path} is not a readable safetensors file ({one_line(error)}); it may be truncated "
        "or corrupt: copy it again, or save it again with safetensors.torch.save_file "
        "(ferlab.models.save_model)."
    )
