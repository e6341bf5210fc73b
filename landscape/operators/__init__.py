"""Curvature operators: Hessian, generalised Gauss-Newton and empirical Fisher of a problem's loss."""

from __future__ import annotations

from torch import Tensor

from landscape.operators.base import CurvatureOperator, MatrixOperator
from landscape.operators.dense import hessian_dense, to_dense
from landscape.operators.exact import (
    ExactDiagonal,
    ExactDiagonalUnavailable,
    ExactSupport,
    exact_diagonal,
    exact_support,
)
from landscape.operators.finite_difference import FiniteDifferenceHessian
from landscape.operators.fisher import EmpiricalFisherOperator
from landscape.operators.ggn import GGNOperator
from landscape.operators.hessian import HessianOperator
from landscape.problem import Problem


def hessian(
    problem: Problem, *, at: Tensor | None = None, engine: str = "auto", block: str = "auto", **kwargs
) -> HessianOperator | FiniteDifferenceHessian:
    """The Hessian of ``problem``'s full-data loss at its current parameters (or at ``at``).

    ``engine="finite_difference"`` (FSDP2-sharded models only): central differences of the sharded model's own
    gradients (:class:`FiniteDifferenceHessian`, ``step=`` among ``kwargs``), with an error bound in its settings.
    """
    if engine == "finite_difference":
        if at is not None:
            raise ValueError("engine='finite_difference' multiplies at the model's own (sharded) weights: drop at=")
        return FiniteDifferenceHessian(problem, **kwargs)
    return HessianOperator(problem, at=at, engine=engine, block=block, **kwargs)


def ggn(problem: Problem, *, at: Tensor | None = None, engine: str = "auto", block: str = "auto") -> GGNOperator:
    """The generalised Gauss-Newton matrix (Fisher of the predictive distribution for cross-entropy)."""
    return GGNOperator(problem, at=at, engine=engine, block=block)


def empirical_fisher(
    problem: Problem, *, at: Tensor | None = None, engine: str = "auto", block: str = "auto"
) -> EmpiricalFisherOperator:
    """The empirical Fisher ``(1/N) sum_i g_i g_i^T`` with the observed labels."""
    return EmpiricalFisherOperator(problem, at=at, engine=engine, block=block)


__all__ = [
    "CurvatureOperator",
    "EmpiricalFisherOperator",
    "ExactDiagonal",
    "ExactDiagonalUnavailable",
    "ExactSupport",
    "FiniteDifferenceHessian",
    "GGNOperator",
    "HessianOperator",
    "MatrixOperator",
    "empirical_fisher",
    "exact_diagonal",
    "exact_support",
    "ggn",
    "hessian",
    "hessian_dense",
    "to_dense",
]
