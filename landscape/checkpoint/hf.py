"""Hugging Face models from a local ``save_pretrained`` directory (config and weights), never the network."""

from __future__ import annotations

import inspect
import json
import os
import pickle
import warnings
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from landscape.checkpoint.files import (
    _MAX_LISTED,
    CheckpointError,
    CheckpointNotFoundError,
    MissingDependencyError,
    _listing,
)

__all__ = ["HFLoadInfo", "load_hf"]

# Weight files of a save_pretrained directory, in the order transformers prefers them.
_HF_WEIGHTS = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
_HF_DTYPES = {torch.float32: "float32", torch.float64: "float64"}
_HF_EXTRA = "install the optional extra: pip install -e '.[hf]' (or pip install transformers safetensors)"


@dataclass(frozen=True)
class HFLoadInfo:
    """How :func:`load_hf` built a model; attached to the model as ``model.landscape_load_info``.

    Attributes
    ----------
    path:
        The ``save_pretrained`` directory.
    model_class:
        The transformers class that was instantiated (from the config's ``architectures``, or the Auto class
        used when it names none).
    weights:
        The weight file read (one of ``model.safetensors``, ``model.safetensors.index.json`` for sharded
        weights, ``pytorch_model.bin``, ``pytorch_model.bin.index.json``).
    saved_dtype:
        The dtype the weights were stored in (of most floating-point parameter entries, should they differ).
    dtype:
        The dtype of the floating-point parameters as returned: ``saved_dtype`` unless ``dtype=`` cast them.
    attn_implementation:
        The attention implementation of the loaded model (``config._attn_implementation``), e.g. ``"sdpa"``.
    """

    path: str
    model_class: str
    weights: str
    saved_dtype: torch.dtype
    dtype: torch.dtype
    attn_implementation: str | None


def _hf_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    if dtype is None:
        return None
    for allowed, name in _HF_DTYPES.items():
        if dtype in (allowed, name, f"torch.{name}"):
            return allowed
    raise ValueError(f"dtype must be None (keep the saved dtype), torch.float32 or torch.float64; got {dtype!r}")


def _hf_config(path: Path) -> dict[str, Any]:
    layout = "expected config.json and model.safetensors/pytorch_model.bin, as written by model.save_pretrained(dir)"
    if not path.exists():
        raise CheckpointNotFoundError(f"Hugging Face model directory not found: {path} ({layout})")
    if not path.is_dir():
        raise CheckpointError(
            f"{path} is a file, not a directory: load_hf takes the directory written by model.save_pretrained(dir). "
            f"For a single weights file (.safetensors, .pt) use load_model(path, model=...) (CLI: --checkpoint)."
        )
    config_file = path / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"{path} is not a save_pretrained directory: {layout}")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{config_file} is not a readable JSON config: {err}") from err
    if not isinstance(config, dict):
        raise CheckpointError(f"{config_file} holds a JSON {type(config).__name__}, not a model config object")
    return config


def _hf_weights(path: Path) -> str:
    for name in _HF_WEIGHTS:
        if (path / name).is_file():
            return name
    present = sorted(p.name for p in path.iterdir())
    shown = ", ".join(present[:_MAX_LISTED]) + (", ..." if len(present) > _MAX_LISTED else "")
    raise CheckpointError(
        f"{path} has a config.json but no weights: expected one of {list(_HF_WEIGHTS)}, found [{shown}]. "
        f"Save the model itself, model.save_pretrained(dir), not only its config (TensorFlow/Flax weights must "
        f"first be converted to PyTorch)."
    )


def _import_transformers() -> Any:
    try:
        import transformers
    except ImportError as err:
        raise MissingDependencyError(f"load_hf needs the transformers package: {_HF_EXTRA}") from err
    return transformers


def _transformers_attr(transformers: Any, name: str) -> Any:
    try:
        return getattr(transformers, name, None)
    except (ImportError, RuntimeError):  # a lazily imported class whose own dependencies are missing
        return None


def _hf_model_class(transformers: Any, config: Mapping[str, Any], path: Path, trust_remote_code: bool) -> Any:
    """The class to instantiate: the saved architecture, its remote-code Auto class, or ``AutoModel``."""
    architectures = [a for a in config.get("architectures") or [] if isinstance(a, str)]
    auto_map = config.get("auto_map")
    auto_map = auto_map if isinstance(auto_map, Mapping) else {}
    if auto_map and trust_remote_code:
        for auto_name, ref in auto_map.items():
            target = ref if isinstance(ref, str) else ""
            if auto_name.startswith("AutoModel") and target.rsplit(".", 1)[-1] in architectures:
                return getattr(transformers, auto_name)
        if "AutoModel" in auto_map:
            return transformers.AutoModel
    for name in architectures:
        cls = _transformers_attr(transformers, name)
        if isinstance(cls, type) and issubclass(cls, nn.Module):
            return cls
    if auto_map:
        raise CheckpointError(
            f"{path} ships its own model code (auto_map: {auto_map}), which runs when the model is built: "
            f"pass trust_remote_code=True, and only if you trust the code in that directory"
        )
    if architectures:
        raise CheckpointError(
            f"{path}: the saved architecture {architectures} is not in transformers {transformers.__version__}: "
            f"upgrade transformers (pip install -U transformers), or save the model with a version that has it"
        )
    # No architecture recorded (a config saved on its own, or edited): the base model of its model_type.
    return transformers.AutoModel


def _version(text: str) -> tuple[int, ...]:
    parts = []
    for part in text.split(".")[:2]:
        digits = "".join(ch for ch in part if ch.isdigit()) or "0"
        parts.append(int(digits))
    return tuple(parts)


def _main_dtype(model: nn.Module) -> torch.dtype:
    sizes: Counter[torch.dtype] = Counter()
    for param in model.parameters():
        if param.is_floating_point():
            sizes[param.dtype] += param.numel()
    return sizes.most_common(1)[0][0] if sizes else torch.get_default_dtype()


def load_hf(
    path: str | os.PathLike[str],
    *,
    dtype: torch.dtype | str | None = None,
    trust_remote_code: bool = False,
) -> nn.Module:
    """Load a Hugging Face model from a local ``save_pretrained`` directory, never the network.

    The class is the one named in the config's ``architectures`` (``getattr(transformers, name)``), so a
    ``GPT2LMHeadModel`` comes back with its language-model head; a config naming none gives ``AutoModel``.
    Weights are read with ``from_pretrained(path, local_files_only=True)`` in the dtype they were saved in:
    safetensors preferred, pickled ``pytorch_model.bin`` only with ``torch.load(weights_only=True)``. The
    attention implementation is transformers' choice for the saved config (an ``attn_implementation`` key in
    ``config.json`` is honoured; none is forced). Tied weights (GPT-2's ``lm_head.weight`` and
    ``transformer.wte.weight``) stay one parameter, counted once by ``named_parameters()``. Every weight of the
    model must be in the checkpoint: none is left randomly initialised.

    How the model was loaded is recorded, without touching its parameters or state dict, as the attribute
    ``model.landscape_load_info``, an :class:`HFLoadInfo` (class, weight file, saved and returned dtype,
    attention implementation).

    Parameters
    ----------
    path:
        The directory written by ``model.save_pretrained(path)``: ``config.json`` plus ``model.safetensors``
        (or sharded safetensors, or ``pytorch_model.bin``).
    dtype:
        ``None`` keeps the saved dtype; ``torch.float32`` or ``torch.float64`` (or their names) casts the
        floating-point parameters and buffers after loading, e.g. to analyse bf16/fp16 weights in float64.
    trust_remote_code:
        Allow a model whose code ships in the directory (``auto_map`` in the config). That code runs on load:
        only for directories you trust.

    Returns
    -------
    nn.Module
        The model, in eval mode, with ``landscape_load_info`` set.

    Raises
    ------
    CheckpointNotFoundError
        If ``path`` does not exist.
    MissingDependencyError
        If ``transformers`` is not installed (install the optional extra: ``pip install -e '.[hf]'``).
    CheckpointError
        If ``path`` is a file, lacks ``config.json`` or weights, needs ``trust_remote_code=True``, names an
        architecture the installed transformers lacks, holds pickled objects beyond tensors, or its weights do
        not fit the config (missing or mis-shaped).
    ValueError
        If ``dtype`` is not one of the allowed values.
    """
    path = Path(path)
    chosen = _hf_dtype(dtype)
    config = _hf_config(path)
    weights = _hf_weights(path)
    transformers = _import_transformers()
    model_class = _hf_model_class(transformers, config, path, trust_remote_code)
    kwargs: dict[str, Any] = {
        "local_files_only": True,
        "trust_remote_code": trust_remote_code,
        "output_loading_info": True,
        # transformers renamed torch_dtype to dtype in 4.56; "auto" keeps the dtype the weights were saved in.
        "dtype" if _version(transformers.__version__) >= (4, 56) else "torch_dtype": "auto",
    }
    if "weights_only" in inspect.signature(model_class.from_pretrained).parameters:
        kwargs["weights_only"] = True
    try:
        model, loading = model_class.from_pretrained(path, **kwargs)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{path / weights} contains objects other than tensors and plain containers, which "
            f"torch.load(weights_only=True) refuses: unpickling them can execute arbitrary code. If you trust the "
            f"file, load it once with transformers (weights_only=False) and re-save it with save_pretrained, "
            f"which writes safetensors."
        ) from err
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as err:
        raise CheckpointError(
            f"{path} could not be loaded as {getattr(model_class, '__name__', model_class)}: "
            f"{type(err).__name__}: {err}"
        ) from err
    missing = sorted(loading.get("missing_keys") or ())
    if missing:
        raise CheckpointError(
            f"{path / weights} lacks weights of {type(model).__name__} {_listing(missing)}, which transformers "
            f"would initialise randomly: the weights were saved from a different architecture than config.json "
            f"names. Re-save the model with save_pretrained."
        )
    unexpected = sorted(loading.get("unexpected_keys") or ())
    if unexpected:
        warnings.warn(
            f"{path / weights} holds weights that {type(model).__name__} does not use, ignored: {_listing(unexpected)}",
            stacklevel=2,
        )
    saved = _main_dtype(model)
    if chosen is not None:
        model.to(dtype=chosen)
    model.eval()
    model.landscape_load_info = HFLoadInfo(
        path=str(path),
        model_class=type(model).__name__,
        weights=weights,
        saved_dtype=saved,
        dtype=_main_dtype(model),
        attn_implementation=getattr(model.config, "_attn_implementation", None),
    )
    return model
