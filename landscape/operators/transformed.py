"""A curvature operator shifted and rescaled symmetrically: ``S (A + shift I) S`` with ``S = diag(scale)``.

The stability criteria need two such operators: the Hessian with coupled weight decay, ``H + wd I``, and Adam's
preconditioned Hessian ``P^{-1/2} (H + wd I) P^{-1/2}``, which is symmetric and has the spectrum of ``P^{-1} H``.
"""

from __future__ import annotations

from torch import Tensor

from landscape.operators.base import CurvatureOperator

__all__ = ["Transformed"]


class Transformed(CurvatureOperator):
    """``S (A + shift I) S`` with ``S = diag(scale)`` (identity when ``scale`` is None); counts its own products.

    Parameters
    ----------
    op : CurvatureOperator
        The operator ``A``; its own counter counts the products with ``A``.
    scale : Tensor, optional
        The diagonal of ``S``, flat of length ``n``.
    shift : float
        Added to every eigenvalue of ``A`` before scaling.
    """

    def __init__(self, op: CurvatureOperator, *, scale: Tensor | None = None, shift: float = 0.0):
        super().__init__(op.shape[0], op.dtype, op.device)
        self.op = op
        self.space = op.space
        self.scale = None if scale is None else scale.to(device=op.device, dtype=op.dtype).reshape(-1, 1)
        self.shift = float(shift)

    def _matmat(self, V: Tensor) -> Tensor:
        W = V if self.scale is None else self.scale * V
        out = self.op @ W
        if self.shift:
            out = out + self.shift * W
        return out if self.scale is None else self.scale * out
