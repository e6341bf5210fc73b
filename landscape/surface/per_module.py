"""Grid points written module by module: a point's tensors exist only while the module that owns them runs.

One point at a time, a surface's forward pass needs the point's parameters ``w + a_1 d_1 + ... + a_k d_k`` only
inside the module that uses them. Written whole, the point is one more copy of every selected parameter (45 MB on
ResNet-18, 0.5 GB on GPT-2 small) held through the forward pass, on top of the model and the directions. Written per
module, each module's tensors of the point are computed by a forward pre-hook right before the module runs (the same
``fill_one`` arithmetic, so the values are bit for bit those of the whole point) and dropped by a forward hook after
it: beyond the model, the directions and the activations, a forward pass then holds the tensors of the modules on
the current call stack (the largest convolution of ResNet-18, 9.4 MB).

Between its module's calls a slot holds an :class:`_Absent` placeholder of the right shape, dtype and device (a
broadcast scalar: no memory) whose shape, dtype and device can be read but whose values cannot: a model that uses a
parameter outside the module owning it (a parent computing with a child's weight) raises :class:`OutsideModuleError`
instead of reading a stale value, and :func:`landscape.surface.evaluate._evaluate` then evaluates the run with whole
points, recording why. (A ``meta`` tensor would not do: ``cpu_tensor @ meta_tensor.T`` returns an uninitialised CPU
tensor without a word.) Tied parameters (one tensor registered in two modules) are written in each module that runs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from landscape.problem import ParamDict

Slot = tuple[dict[str, Any], str, str]  # (the module's _parameters or _buffers, the key in it, the point's name)


class OutsideModuleError(RuntimeError):
    """A point's tensor was used outside the module that owns it, so the point cannot be written per module."""


# What may be asked of a placeholder: its metadata (a Hugging Face model's ``dtype`` and ``device`` properties read
# them from its parameters), never its values.
_METADATA = frozenset(
    {
        Tensor.shape.__get__,
        Tensor.dtype.__get__,
        Tensor.device.__get__,
        Tensor.ndim.__get__,
        Tensor.layout.__get__,
        Tensor.requires_grad.__get__,
        Tensor.is_meta.__get__,
        Tensor.size,
        Tensor.dim,
        Tensor.numel,
        Tensor.nelement,
        Tensor.element_size,
        Tensor.is_floating_point,
        Tensor.is_complex,
    }
)


class _Absent(Tensor):
    """What a module's slot holds between its calls: a broadcast NaN of the tensor's shape, dtype and device whose
    metadata can be read and whose values raise :class:`OutsideModuleError` on any use."""

    @classmethod
    def __torch_function__(cls, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if func in _METADATA:
            with torch._C.DisableTorchFunctionSubclass():
                return func(*args, **(kwargs or {}))
        name = getattr(func, "__name__", repr(func))
        raise OutsideModuleError(f"the model uses a parameter outside the module that owns it ({name})")


def placeholders(template: ParamDict) -> ParamDict:
    """An :class:`_Absent` placeholder for each template tensor: what a slot holds between its module's calls."""
    return {
        n: Tensor._make_subclass(_Absent, torch.full((), torch.nan, dtype=t.dtype, device=t.device).expand(t.shape))
        for n, t in template.items()
    }


def _slots(module: nn.Module, held: ParamDict) -> dict[nn.Module, list[Slot]]:
    """Every module's slots that hold one of ``held``'s tensors (identified by identity: ``functional_call`` puts the
    same tensor in tied slots). Raises :class:`OutsideModuleError` when a tensor is in no slot."""
    names = {id(t): n for n, t in held.items()}
    found: set[str] = set()
    slots: dict[nn.Module, list[Slot]] = {}
    for m in module.modules():
        for table in (m._parameters, m._buffers):
            for key, t in table.items():
                if t is not None and id(t) in names:
                    slots.setdefault(m, []).append((table, key, names[id(t)]))
                    found.add(names[id(t)])
    missing = sorted(held.keys() - found)
    if missing:
        raise OutsideModuleError(f"{len(missing)} tensors of a point are in no module's slots (first {missing[0]!r})")
    return slots


@contextlib.contextmanager
def written_per_module(
    module: nn.Module, held: ParamDict, template: ParamDict, fill_one: Callable[[int, str, Tensor], None]
) -> Iterator[list[int]]:
    """Hooks on the modules of ``module`` (re-parametrised with the placeholders ``held``) that write point
    ``index[0]``'s tensors into each module's slots right before it runs (``fill_one(i, name, out)``) and put the
    placeholders back after it. Yields ``index``, the one-element list to set to the point evaluated next."""
    index = [0]
    slots = _slots(module, held)

    def write(m: nn.Module, _args: Any) -> None:
        for table, key, name in slots[m]:
            out = torch.empty_like(template[name])
            fill_one(index[0], name, out)
            table[key] = out

    def drop(m: nn.Module, _args: Any, _output: Any) -> None:
        for table, key, name in slots[m]:
            table[key] = held[name]

    hooks = []
    try:
        for m in slots:
            hooks.append(m.register_forward_pre_hook(write))
            hooks.append(m.register_forward_hook(drop, always_call=True))
        yield index
    finally:
        for h in hooks:
            h.remove()
