"""landscape: what the loss surface of a trained PyTorch network looks like."""

from landscape.operators import (
    CurvatureOperator,
    MatrixOperator,
    empirical_fisher,
    ggn,
    hessian,
    hessian_dense,
    to_dense,
)
from landscape.problem import DataError, NonDeterministicError, Problem

__version__ = "0.1.0"

__all__ = [
    "CurvatureOperator",
    "DataError",
    "MatrixOperator",
    "NonDeterministicError",
    "Problem",
    "empirical_fisher",
    "ggn",
    "hessian",
    "hessian_dense",
    "to_dense",
]
