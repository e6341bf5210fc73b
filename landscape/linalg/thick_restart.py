"""Extreme eigenpairs by thick-restart Lanczos: a Krylov basis bounded by ``max_basis`` vectors, however many steps.

Plain Lanczos keeps every vector of its basis; on a model with ``n = 10^8`` parameters each one is 400 MB in float32,
so a budget of 100 steps cannot even be allocated. Thick restart (Wu & Simon, "Thick-restart Lanczos method for
large symmetric eigenvalue problems", SIAM J. Matrix Anal. Appl. 22, 2000; equivalent to Stewart's Krylov-Schur
for symmetric matrices) runs Lanczos until the basis holds ``m`` vectors, then keeps only the ``l < m`` most wanted
Ritz vectors ``Q Y_l`` and the residual vector ``q_{m+1}``,

    A (Q Y_l) = (Q Y_l) diag(theta_l) + q_{m+1} s^T,        s_i = beta_m Y[m, i],

and continues Lanczos from ``q_{m+1}``: the projected matrix becomes an arrowhead (``diag(theta_l)`` bordered by
``s``) followed by a tridiagonal. The kept Ritz vectors carry everything learnt about the wanted end of the
spectrum, so convergence stays close to unrestarted Lanczos while memory is ``(m + 1) n`` numbers. Every new vector
is orthogonalised against the whole (bounded) basis by classical Gram-Schmidt twice, and the projected matrix is
assembled from those coefficients, so the Rayleigh-Ritz step is exact up to rounding. The Ritz residual of pair
``i`` is ``beta_j |Y[j, i]|`` at every step, as in plain Lanczos.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from landscape.linalg._common import COLUMN_CHUNK, draw
from landscape.memory import kept_after_restart
from landscape.operators.base import CurvatureOperator
from landscape.progress import progress as progress_bar


class ThickRestartState:
    """A bounded Lanczos basis ``Q`` (``(m + 1, n)`` rows), its projected matrix and residual coupling."""

    def __init__(self, op: CurvatureOperator, v0: Tensor, m: int, generator: torch.Generator):
        n = op.shape[0]
        self.op, self.n, self.m, self.gen = op, n, m, generator
        self.space = op.space  # sharded: Q holds this rank's rows, inner products summed over ranks
        self.global_n = self.space.size(n)
        self.Q = torch.zeros(m + 1, n, dtype=op.dtype, device=op.device)
        self.Q[0] = v0 / self.space.norm(v0)
        self.M = np.zeros((m, m))  # projected matrix Q^T A Q of the current basis
        self.size = 0  # vectors of Q whose product has been taken (the basis of M)
        self.beta = 0.0  # coupling of the last basis vector to Q[size]
        self.anorm = 0.0
        self.breakdowns = 0
        self.restarts = 0
        self.eps = torch.finfo(op.dtype).eps

    @property
    def nbytes(self) -> int:
        return self.Q.numel() * self.Q.element_size()

    def step(self) -> None:
        """One product ``A q_j`` for ``j = size``, orthogonalised against ``Q[:j+1]`` (CGS2).

        The work is done in the basis row ``Q[j+1]`` that the new vector ends in: the product is added into it
        (``add_product_``: in place where the operator can), the projections are taken off by ``addmv_`` and it is
        normalised in place, so a step allocates no vector of length ``n`` (three did: the product's output, the
        projection ``c^T Q`` and the quotient; 1.4 GB on GPT-2 small, at the moment the product's freed transients
        were still resident)."""
        j = self.size
        w = self.Q[j + 1]
        w.zero_()
        self.op.add_product_(self.Q[j], w)
        basis = self.Q[: j + 1]
        total = torch.zeros(j + 1, dtype=w.dtype, device=w.device)
        for _ in range(2):
            c = self.space.inner(basis.T, w[:, None])[:, 0]
            w.addmv_(basis.T, c, alpha=-1.0)
            total = total + c
        coeffs = total.double().cpu().numpy()
        # The computed column is the projection in exact arithmetic; symmetrise with the row already there.
        self.M[: j + 1, j] = coeffs
        self.M[j, : j + 1] = coeffs
        beta = self.space.norm(w)
        self.anorm = max(self.anorm, float(np.abs(coeffs).max()), beta)
        self.size = j + 1
        if beta <= 10.0 * math.sqrt(self.global_n) * self.eps * max(self.anorm, 1e-300):
            # An invariant subspace: continue from a random direction orthogonal to it (coupling 0).
            self.beta = 0.0
            self.breakdowns += 1
            z = draw(self.op, 1, "gaussian", self.gen)[:, 0]
            for _ in range(2):
                z = z - self.space.inner(basis.T, z[:, None])[:, 0] @ basis
            norm = self.space.norm(z)
            w.copy_(z / norm if norm > 0 else z)
        else:
            self.beta = beta
            w.div_(beta)

    def ritz(self) -> tuple[np.ndarray, np.ndarray]:
        """Ritz values (ascending) and vectors (in basis coordinates) of the current basis."""
        s = self.size
        return np.linalg.eigh(self.M[:s, :s])

    def restart(self, theta: np.ndarray, Y: np.ndarray, keep: np.ndarray) -> None:
        """Keep the Ritz vectors ``keep`` and the residual vector: ``Q <- [Q Y_keep, q_{m+1}]``, arrowhead ``M``."""
        s, ell = self.size, keep.size
        Yk = torch.as_tensor(Y[:, keep], dtype=self.Q.dtype, device=self.Q.device)  # (s, l)
        # Q[:l] <- Y_keep^T Q[:s] in place, a slice of columns at a time: each slice reads only its own columns, so
        # the temporary is l x COLUMN_CHUNK numbers instead of l whole vectors.
        for c in range(0, self.n, COLUMN_CHUNK):
            cols = slice(c, min(c + COLUMN_CHUNK, self.n))
            self.Q[:ell, cols] = Yk.T @ self.Q[:s, cols]
        self.Q[ell] = self.Q[s]
        self.Q[ell + 1 :] = 0
        arrow = self.beta * Y[s - 1, keep]
        self.M[:] = 0
        self.M[:ell, :ell] = np.diag(theta[keep])
        self.M[:ell, ell] = arrow
        self.M[ell, :ell] = arrow
        self.size = ell
        self.restarts += 1


def thick_restart_top(
    op: CurvatureOperator,
    k: int,
    select,
    tol: float,
    budget: int,
    v0: Tensor,
    m: int,
    generator: torch.Generator,
    progress: bool = False,
) -> tuple[ThickRestartState, np.ndarray, np.ndarray, np.ndarray, np.ndarray, float, int]:
    """Run thick-restart Lanczos until the ``k`` wanted Ritz pairs (``select(theta, k)``) have relative residuals
    ``<= tol`` or ``budget`` products are spent.

    Returns the state, the Ritz values and vectors of the final basis, the wanted indices, their residuals, the
    scale ``max |theta|`` and the number of products.
    """
    state = ThickRestartState(op, v0, m, generator)
    products = 0
    bar = progress_bar(budget, "top eigenvalues", progress, unit="step")
    while True:
        state.step()
        products += 1
        bar.update(1)
        theta, Y = state.ritz()
        wanted = select(theta, k)
        residuals = np.abs(state.beta * Y[state.size - 1, wanted])
        scale = float(np.max(np.abs(theta))) if theta.size else 0.0
        enough = wanted.size == k
        # After a breakdown the residuals of the old block vanish; one more cycle through the complement (a restart)
        # must confirm that nothing more extreme lives there before they count.
        confirmed = state.breakdowns == 0 or state.restarts > 0
        if enough and confirmed and bool(np.all(residuals <= tol * scale)):
            break
        if products >= budget:
            break
        if state.size == m:
            keep = select(theta, kept_after_restart(k, m))
            state.restart(theta, Y, keep)
    bar.close()
    return state, theta, Y, wanted, residuals, scale, products
