"""Dense matrices for small problems: references for tests and exact answers for tiny models."""

from __future__ import annotations

import torch
from torch import Tensor

from landscape.operators.base import CurvatureOperator
from landscape.problem import Problem

DEFAULT_MAX_PARAMS = 5000


def _check_size(n: int, max_params: int) -> None:
    if n > max_params:
        raise ValueError(
            f"a dense {n} x {n} matrix is too large (max_params={max_params}): use the matrix-free operators "
            "and estimators (top_eigen, trace, spectral_density), select fewer parameters with params=[...], "
            "or raise max_params if you have the memory"
        )


def hessian_dense(problem: Problem, *, at: Tensor | None = None, max_params: int = DEFAULT_MAX_PARAMS) -> Tensor:
    """The exact Hessian ``(n, n)`` of the full-data loss: one double-backward pass per column.

    Deliberately not ``torch.func.hessian``: its vmapped Hessian of BatchNorm in training mode is wrong in
    torch 2.13 (8% off a finite-difference check), while plain double backward is exact.
    """
    from landscape.operators.hessian import HessianOperator

    _check_size(problem.num_params, max_params)
    op = HessianOperator(problem, at=at, engine="double_backward")
    op.chosen = {k: "double_backward" for k in range(1, 65)}
    return to_dense(op, max_params=max_params)


def to_dense(op: CurvatureOperator, *, max_params: int = DEFAULT_MAX_PARAMS, block: int = 64) -> Tensor:
    """Materialise any operator as ``op @ I`` in blocks of columns."""
    n = op.shape[0]
    _check_size(n, max_params)
    eye = torch.eye(n, dtype=op.dtype, device=op.device)
    return torch.cat([op @ eye[:, j : j + block] for j in range(0, n, block)], dim=1)
