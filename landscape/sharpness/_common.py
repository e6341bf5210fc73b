"""What the sharpness measures share: the diagonal scaling of adaptive sharpness, the flat-gradient test and
``float(result)``.

Adaptive sharpness (ASAM; Kwon, Kim, Park, Choi 2021) and adaptive average-case sharpness (Andriushchenko, Croce,
Mueller, Hein, Flammarion 2023) measure perturbations in the coordinates of ``T_w = diag(|w|) + eta I``. A gradient
whose first-order gain is at the rounding level of the loss (an exact minimum) carries no direction, so SAM and
Keskar sharpness start from a seeded random point instead.
"""

from __future__ import annotations

import torch
from torch import Tensor

# A first-order gain rho ||T g||_q below FLAT_ULPS units of rounding of L(w) means the gradient carries no direction.
FLAT_ULPS = 64


def perturbation_scale(w: Tensor, adaptive: bool, eta: float) -> Tensor:
    """Diagonal of ``T_w = diag(|w|) + eta I`` (adaptive) or of the identity."""
    return w.abs() + eta if adaptive else torch.ones_like(w)


def gradient_is_zero(gain: float, loss: float, dtype: torch.dtype) -> bool:
    """A first-order gain at the rounding level of the loss carries no direction."""
    return not gain > FLAT_ULPS * torch.finfo(dtype).eps * max(abs(loss), torch.finfo(torch.float64).tiny)


class ScalarResult:
    """Base of the sharpness results (a mixin without fields): ``float(result)`` is ``result.value``."""

    value: float

    def __float__(self) -> float:
        return float(self.value)


__all__ = ["FLAT_ULPS", "ScalarResult", "gradient_is_zero", "perturbation_scale"]
