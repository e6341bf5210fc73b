"""Power iteration with deflation for a few extreme eigenpairs.

``v <- P (H + c I) v / ||.||`` with ``P = I - U U^T`` projecting out the eigenvectors ``U`` already found
(Hotelling deflation in its projected form) and ``c`` a shift that makes the wanted end of the spectrum the largest
in magnitude: ``c = 0`` for ``which="LM"``, ``c = +||H||_est`` for ``"LA"`` and ``c = -||H||_est`` for ``"SA"``, where
``||H||_est = |mu|`` comes from a first unshifted pass (whose pair is kept when it already has the wanted sign).
Convergence is geometric with ratio ``|lambda_2 + c| / |lambda_1 + c|`` (Golub & Van Loan 2013, Sec. 7.3), so Lanczos
is the better default; power iteration is kept as a simple, robust cross-check.

Stopping uses the residual of the Rayleigh-quotient pair, ``||H v - theta v|| <= tol * ||H||_est``, the same rule as
Lanczos, never "the eigenvalue changed by less than tol" (which stalls on slow convergence and reports it as done).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from landscape.linalg._common import Meter, as_start_block, draw
from landscape.linalg._ritz import Which, check_top_eigen_args, eigen_result, error_bounds
from landscape.linalg.probes import SeedLike, make_generator
from landscape.linalg.results import EigenResult
from landscape.operators.base import CurvatureOperator
from landscape.sharding import VectorSpace


def _project_out(v: Tensor, U: Tensor | None, space: VectorSpace) -> Tensor:
    if U is None:
        return v
    for _ in range(2):
        v = v - U @ space.inner(U, v[:, None])[:, 0]
    return v


def _one_pass(
    op: CurvatureOperator,
    start: Tensor,
    U: Tensor | None,
    shift: float,
    scale: float,
    tol: float,
    budget: int,
) -> tuple[float, Tensor, float, bool, float]:
    """Power iteration on ``P (H + shift I) P`` from ``start``; returns (theta, v, residual, converged, |theta|max)."""
    space = op.space
    v = _project_out(start, U, space)
    v = v / space.norm(v)
    theta, residual, converged = 0.0, float("inf"), False
    for _ in range(budget):
        w = op @ v
        theta = space.dot(v, w)
        residual = space.norm(w - theta * v)
        scale = max(scale, abs(theta))
        if residual <= tol * scale:
            converged = True
            break
        nxt = _project_out(w + shift * v, U, space)
        norm = space.norm(nxt)
        if norm == 0.0:
            # v spans an eigenvector of the shifted operator with eigenvalue 0; the residual above is then exact.
            converged = residual <= tol * scale
            break
        v = nxt / norm
    return theta, v, residual, converged, scale


def power_iteration(
    op: CurvatureOperator,
    k: int = 1,
    *,
    which: Which = "LA",
    tol: float = 1e-4,
    max_matvecs: int | None = None,
    v0: Tensor | None = None,
    seed: SeedLike = 0,
) -> EigenResult:
    """The ``k`` extreme eigenpairs by power iteration with deflation (see the module docstring).

    Parameters
    ----------
    op
        Symmetric operator.
    k
        Number of eigenpairs, found one after the other.
    which
        ``"LA"``, ``"SA"`` or ``"LM"``.
    tol
        Stop a pass when ``||H v - theta v|| <= tol * ||H||_est``.
    max_matvecs
        Total budget over all passes (default ``100 (k + 1)``); each pass may use the remaining budget divided by
        the passes still to run. A :class:`ConvergenceWarning` is emitted if a pass runs out.
    v0
        Warm start ``(n,)`` or ``(n, j)``; column ``i`` starts the search for pair ``i`` (random for the rest).
    seed
        Seed or generator for the random starts.

    Returns
    -------
    EigenResult
        ``method="power"``; ``num_steps`` counts power iterations.
    """
    prov = Meter(op, seed)
    check_top_eigen_args(op, k, which, tol, max_matvecs)
    n = op.shape[0]
    budget = 100 * (k + 1) if max_matvecs is None else int(max_matvecs)
    gen = make_generator(seed)
    starts = draw(op, k, "gaussian", gen)
    if v0 is not None:
        guesses = as_start_block(v0, n, "j").to(device=op.device, dtype=op.dtype)[:, :k]
        starts[:, : guesses.shape[1]] = guesses

    values: list[float] = []
    vectors: list[Tensor] = []
    residuals: list[float] = []
    converged: list[bool] = []
    scale = 0.0

    def run(start: Tensor, shift: float, passes_left: int) -> None:
        nonlocal scale
        U = torch.stack(vectors, dim=1) if vectors else None
        pass_budget = max(1, (budget - prov.num_matvecs) // passes_left)
        theta, v, r, ok, scale = _one_pass(op, start, U, shift, scale, tol, pass_budget)
        values.append(theta)
        vectors.append(v)
        residuals.append(r)
        converged.append(ok)

    # First pass unshifted: it gives |mu| ~ ||H|| (the shift) and, if mu has the wanted sign, the first pair.
    run(starts[:, 0], 0.0, k + (which != "LM"))
    mu = values[0]
    if which != "LM" and (mu > 0) != (which == "LA"):
        for found in (values, vectors, residuals, converged):
            found.clear()
    shift = {"LM": 0.0, "LA": abs(mu), "SA": -abs(mu)}[which]
    while len(values) < k:
        # Pair i starts from column i of the starts (the warm-start guess for it, when given).
        run(starts[:, len(values)], shift, k - len(values))

    vals = np.asarray(values, dtype=np.float64)
    res = np.asarray(residuals, dtype=np.float64)
    conv = np.asarray(converged, dtype=bool)
    order = {"LA": np.argsort(-vals, kind="stable"), "SA": np.argsort(vals, kind="stable")}.get(
        which, np.argsort(-np.abs(vals), kind="stable")
    )
    vals, res, conv = vals[order], res[order], conv[order]
    return eigen_result(
        prov,
        method="power",
        k=k,
        which=which,
        tol=tol,
        values=vals,
        vectors=torch.stack([vectors[i] for i in order], dim=1),
        residuals=res,
        converged=conv,
        error_bounds=error_bounds(vals, np.arange(k), res),
        scale=scale,
        num_steps=None,
        settings={"max_matvecs": budget, "shift": shift, "warm_start": v0 is not None},
        stacklevel=3,
    )
