"""Loading trained weights: state-dict checkpoints in common training-script layouts, and TorchScript files.

Checkpoints are read with ``torch.load(weights_only=True)`` unless the caller opts out explicitly: unpickling
arbitrary objects can execute code, so a checkpoint that needs it must come from a trusted source.
"""

from __future__ import annotations

import os
import pickle
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["CheckpointError", "extract_state_dict", "is_torchscript", "load_checkpoint", "load_model"]

# Keys under which training scripts commonly store the model weights, in the order they are tried.
_LAYOUT_KEYS = ("state_dict", "model_state_dict", "model", "net")
# Prefixes added by DistributedDataParallel / DataParallel and by torch.compile.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_MAX_LISTED = 10


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or whose weights do not fit the model."""


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


def _torch_load(path: Path, *, weights_only: bool, map_location: Any) -> Any:
    if not path.exists():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint path is not a file: {path}")
    with open(path, "rb") as f:
        head = f.read(4)
    # torch.save writes a zip archive (PK), or a protocol-2+ pickle (0x80) in the legacy format.
    if not (zipfile.is_zipfile(path) or head[:1] == b"\x80"):
        raise CheckpointError(
            f"{path} is not a PyTorch checkpoint (neither torch.save output nor TorchScript)"
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
        raise CheckpointError(
            f"{path} is not a readable PyTorch checkpoint: {type(err).__name__}: {err}"
        ) from err


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


def _check_fit(model: nn.Module, state: Mapping[str, Any], strict: bool) -> None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
        for k, v in state.items()
        if k in expected
        and isinstance(v, Tensor)
        and isinstance(expected[k], Tensor)
        and v.shape != expected[k].shape
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
        lines.append("To load only the matching keys, pass strict=False.")
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
        A checkpoint file (``torch.save`` or TorchScript), or an already loaded checkpoint (any layout
        :func:`extract_state_dict` accepts).
    weights_only:
        Passed to ``torch.load``. ``True`` (default) refuses pickled objects other than tensors and
        containers; set ``False`` explicitly, and only for trusted files, to load checkpoints holding them.
    strict:
        Require the checkpoint keys to equal the model's. With ``False`` missing and unexpected keys are
        ignored; shapes must still match.
    map_location:
        Passed to ``torch.load``.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    CheckpointError
        If the file is not a checkpoint, is refused by ``weights_only=True``, holds no state dict, or does not
        fit the model (the message lists missing and unexpected keys and shape mismatches).
    """
    if isinstance(path_or_obj, (str, os.PathLike)):
        path = Path(path_or_obj)
        if path.is_file() and is_torchscript(path):
            obj: Any = _load_scripted(path, map_location)
        else:
            obj = _torch_load(path, weights_only=weights_only, map_location=map_location)
    else:
        obj = path_or_obj
    raw = extract_state_dict(obj, strip_prefixes=False)
    state = _strip_prefixes(raw)
    # A model that is itself wrapped (DDP, torch.compile) expects the prefixed keys.
    if set(raw) == set(model.state_dict()):
        state = raw
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
    - A ``torch.save`` checkpoint: ``model`` supplies the architecture and :func:`load_checkpoint` fills it.
      With ``weights_only=False`` a pickled whole ``nn.Module`` is also accepted without ``model``.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    CheckpointError
        If the file is not a checkpoint, ``model`` is needed but missing, or the weights do not fit.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model file not found: {path}")
    if path.is_file() and is_torchscript(path):
        scripted = _load_scripted(path, map_location)
        if model is None:
            return scripted
        return load_checkpoint(model, scripted, strict=strict)
    obj = _torch_load(path, weights_only=weights_only, map_location=map_location)
    if model is None:
        if isinstance(obj, nn.Module):
            return obj
        raise CheckpointError(
            f"{path} holds weights only, not an architecture: pass model= (CLI: --model pkg.module:factory) "
            f"building the network it was trained with, or save a TorchScript file with torch.jit.save"
        )
    return load_checkpoint(model, obj, strict=strict)
