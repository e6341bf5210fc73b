"""Ritz pairs into results: the eigen-decomposition of a Lanczos tridiagonal, which Ritz values are wanted, their
error bounds, the convergence warning and the :class:`EigenResult` every eigen-solver returns; and the thick-restart
Lanczos run packaged as one (:mod:`landscape.linalg.thick_restart`)."""

from __future__ import annotations

import warnings
from typing import Any, Literal

import numpy as np
import scipy.linalg
import torch
from torch import Tensor

from landscape.linalg._common import Meter
from landscape.linalg.results import ConvergenceWarning, EigenResult
from landscape.linalg.thick_restart import thick_restart_top
from landscape.memory import kept_after_restart, release_free_memory
from landscape.operators.base import CurvatureOperator

Which = Literal["LA", "SA", "LM"]
WHICH: tuple[str, ...] = ("LA", "SA", "LM")


def tridiagonal_eigh(alphas: np.ndarray, betas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigen-decomposition ``T = Y diag(theta) Y^T`` of the symmetric tridiagonal with diagonal ``alphas`` and
    off-diagonal ``betas`` (length ``len(alphas) - 1``), in float64; ``theta`` ascending."""
    d = np.asarray(alphas, dtype=np.float64)
    if d.size == 1:
        return d.copy(), np.ones((1, 1))
    return scipy.linalg.eigh_tridiagonal(d, np.asarray(betas, dtype=np.float64))


def select_wanted(theta: np.ndarray, k: int, which: str) -> np.ndarray:
    """Indices of the ``k`` wanted values of ``theta``, most extreme first."""
    if which == "LA":
        order = np.argsort(-theta, kind="stable")
    elif which == "SA":
        order = np.argsort(theta, kind="stable")
    else:
        order = np.argsort(-np.abs(theta), kind="stable")
    return order[:k]


def error_bounds(theta: np.ndarray, wanted: np.ndarray, residuals: np.ndarray) -> np.ndarray:
    """``min(r, r^2 / gap)`` with ``gap`` the distance of each wanted Ritz value to the nearest other one."""
    bounds = residuals.copy()
    if theta.size > 1:
        for out, i in enumerate(wanted):
            gap = np.min(np.abs(np.delete(theta, i) - theta[i]))
            if gap > 0:
                bounds[out] = min(residuals[out], residuals[out] ** 2 / gap)
    return bounds


def check_top_eigen_args(op: CurvatureOperator, k: int, which: str, tol: float, max_matvecs: int | None) -> None:
    n = op.space.size(op.shape[0])
    if which not in WHICH:
        raise ValueError(f"which must be one of {WHICH}, got {which!r}")
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, n={n}], got {k}")
    if not tol > 0:
        raise ValueError(f"tol must be > 0, got {tol}")
    if max_matvecs is not None and max_matvecs < 1:
        raise ValueError(f"max_matvecs must be >= 1, got {max_matvecs}")


def warn_not_converged(
    method: str, k: int, which: str, num_matvecs: int, tol: float, worst: float, stacklevel: int
) -> None:
    """Emit the :class:`ConvergenceWarning` of ``top_eigen``; ``stacklevel`` counts from this function."""
    warnings.warn(
        f"top_eigen(method={method!r}, k={k}, which={which!r}) did not converge within max_matvecs={num_matvecs}: "
        f"worst relative Ritz residual {worst:.2e} > tol={tol:.1e}. Raise max_matvecs or loosen tol; the returned "
        "values are the best estimates so far (see .residuals, .error_bounds and .converged).",
        ConvergenceWarning,
        stacklevel=stacklevel,
    )


def eigen_result(
    prov: Meter,
    *,
    method: str,
    k: int,
    which: str,
    tol: float,
    values: np.ndarray,
    vectors: Tensor,
    residuals: np.ndarray,
    converged: np.ndarray,
    error_bounds: np.ndarray,
    scale: float,
    num_steps: int | None,
    settings: dict[str, Any],
    stacklevel: int,
) -> EigenResult:
    """Warn if any wanted pair did not converge (relative to ``scale``), then build the :class:`EigenResult`.

    ``num_steps=None`` counts the matvecs as steps; ``stacklevel`` is that of a ``warnings.warn`` in this function
    (2: its caller).
    """
    num_matvecs = prov.num_matvecs
    if not converged.all():
        worst = float(np.max(residuals) / scale) if scale > 0 else float("inf")
        warn_not_converged(method, k, which, num_matvecs, tol, worst, stacklevel=stacklevel + 1)
    fields = prov.fields()
    return EigenResult(
        values=values,
        vectors=vectors,
        residuals=residuals,
        converged=converged,
        error_bounds=error_bounds,
        num_matvecs=fields["num_matvecs"],
        num_steps=num_matvecs if num_steps is None else num_steps,
        seed=fields["seed"],
        method=method,
        which=which,
        tol=float(tol),
        wall_time=fields["wall_time"],
        settings=settings,
    )


def thick_restart_result(
    prov: Meter,
    op: CurvatureOperator,
    k: int,
    which: str,
    tol: float,
    budget: int,
    v0: Tensor,
    m: int,
    gen: torch.Generator,
    warm: Tensor | None,
    progress: bool,
) -> EigenResult:
    def select(theta: np.ndarray, count: int) -> np.ndarray:
        return select_wanted(theta, count, which)

    state, theta, Y, wanted, residuals, scale, products = thick_restart_top(
        op, k, select, tol, budget, v0, m, gen, progress
    )
    return lanczos_result(
        prov,
        k=k,
        which=which,
        tol=tol,
        ritz=(theta, Y, wanted, residuals, residuals <= tol * scale, scale),
        basis=state.Q[: state.size].T,
        num_steps=products,
        settings={
            "max_matvecs": budget,
            "warm_start": warm is not None,
            "reorthogonalisation": "full (CGS2) within the basis",
            "restart": f"thick (Wu & Simon 2000), {state.restarts} restarts, keeping {kept_after_restart(k, m)}",
            "basis_vectors": m + 1,
            "basis_bytes": state.nbytes,
        },
        stacklevel=6,
    )


def lanczos_result(
    prov: Meter,
    *,
    k: int,
    which: str,
    tol: float,
    ritz: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, float],
    basis: Tensor,
    num_steps: int,
    settings: dict[str, Any],
    stacklevel: int,
) -> EigenResult:
    """The :class:`EigenResult` of a Lanczos run from its Ritz decomposition ``(theta, Y, wanted, residuals,
    converged, scale)`` and its basis ``(n, m)``: the wanted Ritz vectors are ``basis @ Y[:, wanted]``."""
    theta, Y, wanted, residuals, converged, scale = ritz
    Yw = torch.as_tensor(Y[:, wanted], dtype=basis.dtype, device=basis.device)
    # The Ritz vectors are the run's last allocation next to the whole basis: the last product's freed transients
    # (kept resident between products, for the next one) are handed back first (GPT-2 small, top-5: 0.8 GB).
    release_free_memory(basis.shape[0] * basis.element_size(), basis.device)
    return eigen_result(
        prov,
        method="lanczos",
        k=k,
        which=which,
        tol=tol,
        values=theta[wanted].astype(np.float64),
        vectors=basis @ Yw,
        residuals=residuals,
        converged=converged,
        error_bounds=error_bounds(theta, wanted, residuals),
        scale=scale,
        num_steps=num_steps,
        settings=settings,
        stacklevel=stacklevel,
    )
