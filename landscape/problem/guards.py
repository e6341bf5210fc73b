"""Guards on evaluations: non-finite losses, weights changed in place, parameters the loss does not use, and
evaluations that do not repeat."""

from __future__ import annotations

import warnings
from collections.abc import Iterable

import torch
from torch import Tensor

ParamDict = dict[str, Tensor]


class NonDeterministicError(RuntimeError):
    """Two evaluations of the same loss or gradient differ."""


def versions(params: ParamDict) -> dict[str, int]:
    """The in-place version counter of each tensor (``Tensor._version``: bumped by every in-place update)."""
    return {n: t._version for n, t in params.items()}


def changed_in_place(params: ParamDict, before: dict[str, int]) -> list[str]:
    """Names of the tensors updated in place since ``before = versions(params)``."""
    return [n for n, t in params.items() if t._version != before[n]]


def check_finite(value: Tensor, what: str, batch_index: int) -> Tensor:
    """Raise a clear error when a loss (or product) is NaN/inf."""
    if not bool(torch.isfinite(value).all()):
        raise FloatingPointError(
            f"the {what} is not finite (NaN or inf) on batch {batch_index}: check the checkpoint (diverged "
            "training?), the inputs (NaN in the data?) and the loss function"
        )
    return value


def warn_unused(names: Iterable[str]) -> None:
    names = list(names)
    if names:
        warnings.warn(
            f"{len(names)} selected parameter(s) do not affect the loss and get zero curvature: "
            + ", ".join(names[:5]),
            stacklevel=3,
        )
