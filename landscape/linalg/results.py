"""Result types of the estimators: frozen dataclasses that carry their own diagnostics.

A number without its error bar is half an answer: every result records the standard error or residuals, the seed,
the matrix-vector products it cost, the wall time, the method and the settings that produced it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import Tensor


class ConvergenceWarning(UserWarning):
    """An iterative estimator stopped at its matvec budget before meeting its tolerance."""


@dataclass(frozen=True, kw_only=True)
class Diagnostics:
    """What every result carries besides its numbers: the seed, the wall time and the settings that produced it.

    The base of the result types of the estimators and the analyses. Its fields are keyword-only, so a result's own
    fields keep their places in its ``__init__`` and these three follow them (as in
    :func:`landscape._json.field_dict`); ``dataclasses.fields`` and the ``repr`` list them first.

    Attributes
    ----------
    seed
        The int seed the random numbers were drawn from, or ``None`` when a caller-owned ``torch.Generator`` was passed
        or nothing was random.
    wall_time
        Seconds spent.
    settings
        The remaining options that produced the result (what they are: each result's own docstring).
    """

    seed: int | None
    wall_time: float
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Estimate(Diagnostics):
    """A stochastic estimate with its standard error.

    Attributes
    ----------
    value
        The estimate: a float (trace, norm), a numpy array (moments) or a torch tensor in parameter space
        (diagonal).
    stderr
        Estimated standard error of ``value``, same type and shape; ``nan`` when it cannot be estimated (one sample).
    num_matvecs
        Operator applications used (columns multiplied).
    method
        Name of the estimator that ran (``"exact"`` for an exact value, with ``stderr`` 0, and ``seed`` ``None``).
    samples
        The per-sample values whose spread gives ``stderr`` (Hutchinson quadratic forms, XTrace leave-one-out
        estimates, ...), or ``None``.
    seed, wall_time
        From :class:`Diagnostics`.
    settings
        The remaining options that produced the estimate (distribution, block size, stopping rule, ...); for
        :func:`~landscape.linalg.trace` and :func:`~landscape.linalg.diagonal` also ``"requested"`` (the method asked
        for) and ``"note"`` (which method ran and why, e.g. the layer that made ``"auto"`` fall back).
    """

    value: Any
    stderr: Any
    num_matvecs: int
    method: str
    samples: np.ndarray | Tensor | None = None

    def __float__(self) -> float:
        return float(self.value)


@dataclass(frozen=True, kw_only=True)
class FrobeniusEstimate(Estimate):
    """A Frobenius-norm estimate; ``value``/``stderr`` are the norm, ``squared``/``squared_stderr`` its square."""

    squared: float
    squared_stderr: float


@dataclass(frozen=True)
class EigenResult(Diagnostics):
    """Extreme eigenpairs of a symmetric operator.

    Attributes
    ----------
    values
        ``(k,)`` float64 eigenvalue estimates, most extreme first: descending for ``which="LA"``, ascending for
        ``"SA"``, descending in magnitude for ``"LM"``.
    vectors
        ``(n, k)`` torch tensor of unit eigenvector estimates (operator dtype and device), column ``i`` for
        ``values[i]``.
    residuals
        ``(k,)`` Ritz residual norms ``||H v_i - lambda_i v_i||``.
    converged
        ``(k,)`` bool: ``residuals[i] <= tol * ||H||_est``.
    error_bounds
        ``(k,)`` estimated bound on ``|lambda_i - lambda_true|``: ``min(r, r^2 / gap)`` with ``gap`` the distance to
        the nearest other Ritz value (Kato-Temple / Saad 2011, Thm 3.8 style).
    num_matvecs, num_steps
        Operator applications and iterations (Lanczos steps or power iterations).
    method, which, tol
        The method that ran, the eigenvalues asked for (``"LA"``, ``"SA"`` or ``"LM"``) and the relative residual
        tolerance.
    seed, wall_time, settings
        From :class:`Diagnostics`.
    """

    values: np.ndarray
    vectors: Tensor
    residuals: np.ndarray
    converged: np.ndarray
    error_bounds: np.ndarray
    num_matvecs: int
    num_steps: int
    method: str
    which: str
    tol: float

    @property
    def all_converged(self) -> bool:
        return bool(np.all(self.converged))
