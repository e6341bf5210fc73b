"""Weights files into a given architecture: state dicts in common training-script layouts (``torch.save`` or
safetensors files), and TorchScript files.

Checkpoints are read with ``torch.load(weights_only=True)`` unless the caller opts out explicitly: unpickling
arbitrary objects can execute code, so a checkpoint that needs it must come from a trusted source. Safetensors
files hold tensors only and are always safe to read.
"""

from __future__ import annotations

import os
import pickle
import warnings
import zipfile
from collections.abc import Mapping
from itertools import chain
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "CheckpointError",
    "CheckpointNotFoundError",
    "MissingDependencyError",
    "extract_state_dict",
    "is_safetensors",
    "is_torchscript",
    "load_checkpoint",
    "load_model",
]

# Keys under which training scripts commonly store the model weights, in the order they are tried.
_LAYOUT_KEYS = ("state_dict", "model_state_dict", "model", "net")
# Prefixes added by DistributedDataParallel / DataParallel and by torch.compile.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_MAX_LISTED = 10


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or whose weights do not fit the model."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """A checkpoint path that does not exist (also a ``FileNotFoundError``)."""


class MissingDependencyError(CheckpointError, ImportError):
    """A checkpoint format whose optional reader package is not installed (also an ``ImportError``)."""


def _is_state_dict(obj: object) -> bool:
    # Modules with get_extra_state() store arbitrary objects under "<prefix>_extra_state".
    return isinstance(obj, Mapping) and all(
        isinstance(k, str) and (isinstance(v, Tensor) or k.endswith("_extra_state")) for k, v in obj.items()
    )


def _find_state_dict(obj: object, depth: int) -> Mapping[str, Any] | None:
    if isinstance(obj, nn.Module):
        return obj.state_dict()
    if _is_state_dict(obj):
        return obj  # type: ignore[return-value]
    if depth == 0 or not isinstance(obj, Mapping):
        return None
    for key in _LAYOUT_KEYS:
        if key in obj:
            found = _find_state_dict(obj[key], depth - 1)
            if found is not None:
                return found
    return None


def _strip_prefixes(state: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(state)
    stripped = True
    while stripped and out:
        stripped = False
        for prefix in _WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in out):
                out = {k[len(prefix) :]: v for k, v in out.items()}
                stripped = True
    return out


def _describe_keys(obj: object) -> str:
    if isinstance(obj, Mapping):
        keys = [repr(k) for k in list(obj)[:20]]
        more = f", ... ({len(obj)} in all)" if len(obj) > 20 else ""
        return f"a {type(obj).__name__} with top-level keys [{', '.join(keys)}{more}]"
    return f"an object of type {type(obj).__name__}"


def extract_state_dict(obj: object, *, strip_prefixes: bool = True) -> dict[str, Tensor]:
    """The model state dict inside a loaded checkpoint.

    Accepts a plain state dict, an ``nn.Module``, or a dict holding the state dict under ``"state_dict"``,
    ``"model_state_dict"``, ``"model"`` or ``"net"`` (tried in that order, nested up to two levels, e.g.
    ``{"model": {"state_dict": ...}}``). ``module.`` prefixes (DistributedDataParallel, DataParallel) and
    ``_orig_mod.`` prefixes (``torch.compile``) shared by every key are removed.

    Parameters
    ----------
    obj:
        The object returned by ``torch.load``.
    strip_prefixes:
        Remove the wrapper prefixes.

    Raises
    ------
    CheckpointError
        If no state dict is found; the message lists the top-level keys that were seen.
    """
    state = _find_state_dict(obj, depth=2)
    if state is None:
        raise CheckpointError(
            f"no model state dict found in the checkpoint: got {_describe_keys(obj)}; expected a mapping of "
            f"parameter names to tensors, or one stored under one of {list(_LAYOUT_KEYS)}"
        )
    return _strip_prefixes(state) if strip_prefixes else dict(state)


def is_torchscript(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a TorchScript archive (``torch.jit.save``) rather than a ``torch.save`` checkpoint.

    Both are zip files; only TorchScript archives hold serialized code and ``constants.pkl``.
    """
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("/constants.pkl") for name in archive.namelist())


def is_safetensors(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a safetensors file: an 8-byte little-endian header length, then a JSON header."""
    path = Path(path)
    if not path.is_file():
        return False
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9:
        return False
    return head[8:9] == b"{" and 8 + int.from_bytes(head[:8], "little") <= path.stat().st_size


def _load_safetensors(path: Path, map_location: Any) -> dict[str, Tensor]:
    try:
        from safetensors import SafetensorError
        from safetensors.torch import load_file
    except ImportError as err:
        raise MissingDependencyError(
            f"{path} is a safetensors file, and reading it needs the safetensors package: pip install safetensors "
            f"(or the optional extra: pip install -e '.[hf]')"
        ) from err
    # A dict or callable map_location (torch.load's remapping forms) has no safetensors equivalent: read to CPU,
    # load_state_dict then copies onto the model's device anyway.
    device = str(map_location) if isinstance(map_location, (str, torch.device)) else "cpu"
    try:
        return load_file(path, device=device)
    except (SafetensorError, OSError, RuntimeError, ValueError) as err:
        raise CheckpointError(f"{path} is not a readable safetensors file: {type(err).__name__}: {err}") from err


def _load_file(path: Path, *, weights_only: bool, map_location: Any) -> Any:
    if not path.exists():
        raise CheckpointNotFoundError(f"checkpoint file not found: {path}")
    if not path.is_file():
        hint = ""
        if (path / "config.json").is_file():
            hint = (
                "; it looks like a Hugging Face save_pretrained directory: load it with load_hf(path) (CLI: --hf DIR)"
            )
        raise CheckpointError(f"checkpoint path is not a file: {path}{hint}")
    if path.suffix == ".safetensors" or is_safetensors(path):
        return _load_safetensors(path, map_location)
    with open(path, "rb") as f:
        head = f.read(4)
    # torch.save writes a zip archive (PK), or a protocol-2+ pickle (0x80) in the legacy format.
    if not (zipfile.is_zipfile(path) or head[:1] == b"\x80"):
        raise CheckpointError(
            f"{path} is not a PyTorch checkpoint (neither torch.save output, safetensors nor TorchScript)"
        )
    try:
        return torch.load(path, map_location=map_location, weights_only=weights_only)
    except pickle.UnpicklingError as err:
        if weights_only:
            reason = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
            raise CheckpointError(
                f"{path} contains objects other than tensors and plain containers, which torch.load "
                f"refuses with weights_only=True ({reason}). Unpickling them can execute arbitrary code: "
                f"only if you trust the file, load it with weights_only=False. Better, re-save just the "
                f"weights: torch.save(model.state_dict(), path)."
            ) from err
        raise CheckpointError(f"{path} could not be unpickled: {err}") from err
    except (RuntimeError, EOFError, KeyError, zipfile.BadZipFile) as err:
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint: {type(err).__name__}: {err}") from err


def _load_scripted(path: Path, map_location: Any) -> torch.jit.ScriptModule:
    try:
        # TorchScript is deprecated upstream but remains a supported input format here.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return torch.jit.load(str(path), map_location=map_location)
    except RuntimeError as err:
        raise CheckpointError(f"{path} looks like TorchScript but could not be loaded: {err}") from err


def _listing(keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_LISTED])
    return f"{len(keys)}: [{shown}{', ...' if len(keys) > _MAX_LISTED else ''}]"


def _tied_groups(model: nn.Module) -> list[list[str]]:
    """State-dict names that refer to one tensor (tied weights, e.g. a language model's embedding and head)."""
    names: dict[int, list[str]] = {}
    tensors = chain(model.named_parameters(remove_duplicate=False), model.named_buffers(remove_duplicate=False))
    for name, tensor in tensors:
        names.setdefault(id(tensor), []).append(name)
    return [group for group in names.values() if len(group) > 1]


def _fill_tied(model: nn.Module, state: dict[str, Any]) -> dict[str, Any]:
    """``state`` with every tied name the checkpoint left out (``save_pretrained`` and ``safetensors`` store
    a tied tensor once) filled from a tied name it has; tied names stored with different values are an error."""
    out = dict(state)
    for group in _tied_groups(model):
        present = [name for name in group if name in state]
        if not present:
            continue
        first = state[present[0]]
        differing = [
            name
            for name in present[1:]
            if isinstance(first, Tensor)
            and isinstance(state[name], Tensor)
            and (state[name].shape != first.shape or not torch.equal(state[name].to(first.dtype), first))
        ]
        if differing:
            raise CheckpointError(
                f"the model ties {group} into one tensor, but the checkpoint holds different values for "
                f"{[present[0], *differing]}: it was trained untied. Build the model untied (for Hugging Face "
                f"models: tie_word_embeddings=False in the config) to load it."
            )
        for name in group:
            out.setdefault(name, first)
    return out


def _check_fit(model: nn.Module, state: Mapping[str, Any], strict: bool) -> None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
        for k, v in state.items()
        if k in expected and isinstance(v, Tensor) and isinstance(expected[k], Tensor) and v.shape != expected[k].shape
    ]
    if not mismatched and not (strict and (missing or unexpected)):
        return
    lines = [f"checkpoint does not fit {type(model).__name__}:"]
    if missing and strict:
        lines.append(f"  missing keys (in the model, not in the checkpoint) {_listing(missing)}")
    if unexpected and strict:
        lines.append(f"  unexpected keys (in the checkpoint, not in the model) {_listing(unexpected)}")
    if mismatched:
        lines.append(f"  shape mismatches {_listing(mismatched)}")
    lines.append(
        "The model architecture probably differs from the one that was trained: check the model factory "
        "(--model pkg.module:factory) and its arguments (widths, number of classes)."
    )
    if not mismatched:
        lines.append("To load only the matching keys, pass strict=False (Python) or --non-strict (command line).")
    raise CheckpointError("\n".join(lines))


def load_checkpoint(
    model: nn.Module,
    path_or_obj: str | os.PathLike[str] | Mapping[str, Any] | nn.Module,
    *,
    weights_only: bool = True,
    strict: bool = True,
    map_location: Any = "cpu",
) -> nn.Module:
    """Load checkpoint weights into ``model`` in place and return it.

    The keys and shapes are checked before anything is copied, so on error the model is unchanged.

    Parameters
    ----------
    model:
        The architecture to fill, e.g. built by the same factory as in training.
    path_or_obj:
        A checkpoint file (``torch.save``, safetensors or TorchScript), or an already loaded checkpoint (any
        layout :func:`extract_state_dict` accepts). Safetensors files (``.safetensors``, or any file with a
        safetensors header) are read with ``safetensors.torch.load_file``.
    weights_only:
        Passed to ``torch.load``. ``True`` (default) refuses pickled objects other than tensors and
        containers; set ``False`` explicitly, and only for trusted files, to load checkpoints holding them.
        Safetensors files hold tensors only and need no opt-out.
    strict:
        Require the checkpoint keys to equal the model's. A name the model ties to another (one tensor under
        two names, like GPT-2's ``lm_head.weight`` and ``transformer.wte.weight``) counts as present when any of
        its tied names is: ``save_pretrained`` and safetensors store a tied tensor once. With ``False`` missing
        and unexpected keys are ignored; shapes must still match.
    map_location:
        Passed to ``torch.load``; for safetensors files, a device string or ``torch.device`` (other forms read
        to CPU).

    Raises
    ------
    CheckpointNotFoundError
        If the file does not exist (also a ``FileNotFoundError``).
    MissingDependencyError
        If the file is a safetensors file and the ``safetensors`` package is not installed.
    CheckpointError
        If the file is not a checkpoint, is refused by ``weights_only=True``, holds no state dict, holds
        different values for weights the model ties, or does not fit the model (the message lists missing and
        unexpected keys and shape mismatches).
    """
    if isinstance(path_or_obj, (str, os.PathLike)):
        path = Path(path_or_obj)
        if path.is_file() and is_torchscript(path):
            obj: Any = _load_scripted(path, map_location)
        else:
            obj = _load_file(path, weights_only=weights_only, map_location=map_location)
    else:
        obj = path_or_obj
    raw = extract_state_dict(obj, strip_prefixes=False)
    state = _strip_prefixes(raw)
    # A model that is itself wrapped (DDP, torch.compile) expects the prefixed keys. Subset, not equality: a
    # checkpoint may leave out the tied copies of a weight.
    if raw.keys() <= model.state_dict().keys():
        state = raw
    state = _fill_tied(model, state)
    _check_fit(model, state, strict)
    model.load_state_dict(state, strict=strict)
    return model


def load_model(
    path: str | os.PathLike[str],
    *,
    model: nn.Module | None = None,
    weights_only: bool = True,
    strict: bool = True,
    map_location: Any = "cpu",
) -> nn.Module:
    """Load a model from a TorchScript file, or a checkpoint into ``model``.

    - TorchScript (``torch.jit.save``): without ``model`` the scripted module is returned; with ``model`` its
      weights are loaded into ``model`` (strict key check) and ``model`` is returned.
    - A ``torch.save`` or safetensors checkpoint: ``model`` supplies the architecture and
      :func:`load_checkpoint` fills it. With ``weights_only=False`` a pickled whole ``nn.Module`` is also
      accepted without ``model``.

    A Hugging Face ``save_pretrained`` directory (config and weights) is loaded by :func:`load_hf` instead.

    Raises
    ------
    CheckpointNotFoundError
        If ``path`` does not exist (also a ``FileNotFoundError``).
    MissingDependencyError
        If ``path`` is a safetensors file and the ``safetensors`` package is not installed.
    CheckpointError
        If the file is not a checkpoint, ``model`` is needed but missing, or the weights do not fit.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointNotFoundError(f"model file not found: {path}")
    if path.is_file() and is_torchscript(path):
        scripted = _load_scripted(path, map_location)
        if model is None:
            return scripted
        return load_checkpoint(model, scripted, strict=strict)
    obj = _load_file(path, weights_only=weights_only, map_location=map_location)
    if model is None:
        if isinstance(obj, nn.Module):
            return obj
        hint = ""
        if (path.parent / "config.json").is_file():
            hint = f"; its directory looks like a Hugging Face save_pretrained directory: load_hf({str(path.parent)!r})"
        raise CheckpointError(
            f"{path} holds weights only, not an architecture: pass model= (CLI: --model pkg.module:factory) "
            f"building the network it was trained with, or save a TorchScript file with torch.jit.save{hint}"
        )
    return load_checkpoint(model, obj, strict=strict)
