"""Loading trained weights: state-dict checkpoints (``torch.save`` or safetensors files) in common training-script
layouts, TorchScript files, and local Hugging Face ``save_pretrained`` directories. Nothing here touches the
network.

- :mod:`landscape.checkpoint.files`: a weights file into a given architecture (:func:`load_checkpoint`,
  :func:`load_model`), key and shape checks, tied weights.
- :mod:`landscape.checkpoint.hf`: a ``save_pretrained`` directory into the model its config names (:func:`load_hf`).
"""

from landscape.checkpoint.files import (
    CheckpointError,
    CheckpointNotFoundError,
    MissingDependencyError,
    extract_state_dict,
    is_safetensors,
    is_torchscript,
    load_checkpoint,
    load_model,
)
from landscape.checkpoint.hf import HFLoadInfo, load_hf

__all__ = [
    "CheckpointError",
    "CheckpointNotFoundError",
    "HFLoadInfo",
    "MissingDependencyError",
    "extract_state_dict",
    "is_safetensors",
    "is_torchscript",
    "load_checkpoint",
    "load_hf",
    "load_model",
]
