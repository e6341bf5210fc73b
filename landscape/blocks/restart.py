"""Top eigenpairs of many diagonal blocks at once by thick-restart Lanczos, each block's basis bounded.

The density recurrences of :mod:`landscape.blocks.lanczos` take ``num_steps`` steps per block, enough for a density
but not always for a block's top eigenvalues to reach ``tol``. The blocks whose top-``k`` Ritz pairs have not
converged go on here: one recurrence per block from a random start, every block's vector on its own entries of one
flat vector (as there), advanced together (one data pass per step for all unconverged blocks), and restarted when
its basis holds ``m`` vectors (Wu & Simon 2000, "Thick-restart Lanczos method for large symmetric eigenvalue
problems"; ``landscape.linalg.thick_restart`` for one operator): block ``b`` keeps its ``l`` largest Ritz vectors
``Q_b Y_b`` and the residual vector, and its projected matrix becomes ``diag(theta_l)`` bordered by
``s = beta_b Y_b[m, :l]``. Every new vector is orthogonalised against the whole bounded basis on each block's
entries by classical Gram-Schmidt twice, and the projected matrices are assembled from those coefficients. The
memory is ``(m + 1)`` vectors of all parameters whatever the number of steps; a block stops once its top-``k``
residuals ``beta_b |Y_b[j, i]|`` are ``<= tol * max |theta_b|`` (or it has spanned an invariant subspace, where
they are zero).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor

from landscape.blocks.lanczos import BlockLanczos
from landscape.blocks.partition import BlockPartition
from landscape.linalg._common import COLUMN_CHUNK, draw
from landscape.linalg._ritz import error_bounds
from landscape.memory import MemoryBudgetError, block_lanczos_vectors, estimate, gib, kept_after_restart, min_basis
from landscape.operators.problem_operator import ProblemOperator
from landscape.spectrum import Spectrum


@dataclass(frozen=True)
class BlockRitz:
    """Block ``b``'s top-``k`` Ritz pairs after the restarted recurrence: ``values`` (descending), ``residuals``
    ``||H_bb y - theta y||``, ``bounds`` ``min(r, r^2 / gap)``, ``converged`` (``r <= tol max |theta|``), the
    products with the block and the restarts it went through."""

    values: np.ndarray
    residuals: np.ndarray
    bounds: np.ndarray
    converged: np.ndarray
    matvecs: int
    restarts: int


class BlockThickRestart(BlockLanczos):
    """One thick-restarted recurrence per block in ``blocks``, on a basis of ``m + 1`` flat vectors."""

    def __init__(
        self,
        op: ProblemOperator,
        partition: BlockPartition,
        v0: Tensor,
        m: int,
        blocks: tuple[int, ...],
        *,
        k: int,
        tol: float,
        restricted: bool = False,
        columns: int | None = None,
        sizes: tuple[int, ...] | None = None,
    ):
        """``v0`` (P, 1): the start (nonzero on every block of ``blocks``); the other blocks are not run."""
        skip = tuple(b for b in range(partition.num_blocks) if b not in blocks)
        super().__init__(op, partition, v0, m, columns=columns, skip=skip, restricted=restricted, sizes=sizes)
        self.m, self.k, self.tol = m, k, tol
        self.M = np.zeros((self.B, m, m))  # per block, the projected matrix Q_b^T H_bb Q_b of the current basis
        self.beta = np.zeros(self.B)  # per block, the coupling of the last basis vector to the next
        self.size = 0
        self.restarts = 0
        self.steps_taken = 0
        self.results: dict[int, BlockRitz] = {}
        self.latest: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}  # each block's last Ritz check

    def step(self) -> None:
        """One product per unconverged block, CGS2 against its basis, then its convergence check (and the
        restart when the basis is full)."""
        j = self.size
        W = self._products(self.Q[:, j])
        c = self._orthogonalise(W, self.Q[:, : j + 1])[0].double().cpu().numpy().T  # (B, j + 1)
        act = self.active[:, 0]
        self.M[act, : j + 1, j] = c[act]
        self.M[act, j, : j + 1] = c[act]
        beta = self._norms(W)[0]
        self.anorm = np.maximum.reduce([self.anorm[:, 0], np.abs(c).max(axis=1), beta])[:, None]
        # A residual at rounding level (or a block spanned whole) is an invariant subspace: its Ritz values are
        # eigenvalues of H_bb and the block is done at the check below.
        tiny = (beta <= 10.0 * np.sqrt(self.sizes) * self.eps * self.anorm[:, 0]) | (j + 1 >= self.sizes)
        self.beta = np.where(act, np.where(tiny, 0.0, beta), self.beta)
        self._scale(W, np.where(act & ~tiny, 1.0 / np.where(beta > 0, beta, 1.0), 0.0)[None, :])
        self.Q[:, j + 1] = W
        self.size = self.j = j + 1
        restart = self.size == self.m
        keep = kept_after_restart(self.k, self.m)
        for b in np.flatnonzero(act):
            theta, Y = np.linalg.eigh(self.M[b, : self.size, : self.size])
            order = np.argsort(theta)[::-1]
            wanted = order[: self.k]
            residuals = np.abs(self.beta[b] * Y[self.size - 1, wanted])
            self.latest[int(b)] = (theta, wanted, residuals)
            scale = float(np.abs(theta).max()) or 1.0
            if wanted.size == self.k and (self.beta[b] == 0.0 or bool(np.all(residuals <= self.tol * scale))):
                self.finish(b)
            elif restart:
                self._restart(b, theta, Y, order[:keep])
        if restart:
            self.size = self.j = keep
            self.restarts += 1

    def finish(self, b: int) -> None:
        """Record block ``b``'s top-``k`` pairs of its last check and stop its recurrence."""
        theta, wanted, residuals = self.latest[int(b)]
        scale = float(np.abs(theta).max()) or 1.0
        self.results[int(b)] = BlockRitz(
            values=theta[wanted].copy(),
            residuals=residuals,
            bounds=error_bounds(theta, wanted, residuals),
            converged=residuals <= self.tol * scale,
            matvecs=int(self.matvecs[b]),
            restarts=self.restarts,
        )
        self.active[b] = False
        del self.latest[int(b)]

    def _restart(self, b: int, theta: np.ndarray, Y: np.ndarray, keep: np.ndarray) -> None:
        """Block ``b``'s basis ``<- [Q_b Y_keep, q_{m+1}]`` on its own entries, and its arrowhead matrix."""
        s, ell = self.size, keep.size
        Yk = torch.as_tensor(Y[:, keep], dtype=self.Q.dtype, device=self.Q.device)
        Q = self.Q[0]
        for start, end in self.segs[b]:
            # In place a slice of columns at a time: each slice reads only its own columns.
            for c in range(start, end, COLUMN_CHUNK):
                cols = slice(c, min(c + COLUMN_CHUNK, end))
                Q[:ell, cols] = Yk.T @ Q[:s, cols]
            Q[ell, start:end] = Q[s, start:end]
            Q[ell + 1 :, start:end] = 0
        arrow = self.beta[b] * Y[s - 1, keep]
        self.M[b] = 0.0
        self.M[b, :ell, :ell] = np.diag(theta[keep])
        self.M[b, :ell, ell] = arrow
        self.M[b, ell, :ell] = arrow

    @property
    def done(self) -> bool:
        return not self.active.any()

    def run(self, max_steps: int) -> dict[int, BlockRitz]:
        """Step until every block has converged or ``max_steps`` steps are taken; the blocks still running then
        get their current Ritz pairs, marked by ``converged``."""
        while not self.done and self.steps_taken < max_steps:
            self.step()
            self.steps_taken += 1
        for b in np.flatnonzero(self.active[:, 0]):
            self.finish(b)
        return self.results


def _basis(op: ProblemOperator, k: int, max_basis: int | None, memory_budget: int | None, columns: int) -> int:
    """Vectors of the restarted basis: ``max_basis`` (checked against the budget), else ``2 k + 4`` (at least
    :func:`min_basis` ``+ 1``) or fewer where the budget is short; :class:`MemoryBudgetError` when it does not fit."""
    smallest = min_basis(k)
    if max_basis is not None:
        if isinstance(max_basis, bool) or not isinstance(max_basis, int) or max_basis < smallest:
            raise ValueError(f"max_basis must be an int >= {smallest} (k + 3) for k={k}, got {max_basis!r}")
        m = max_basis
    else:
        m = max(2 * k + 4, smallest + 1)
    est = estimate(op.problem, "block_spectra", memory_budget=memory_budget, num_probes=1, num_steps=m, columns=columns)
    per_vector = op.shape[0] * torch.empty((), dtype=op.dtype).element_size()
    rest = est.need - est.parts["Krylov vectors"]

    def need(vectors: int) -> int:
        return rest + block_lanczos_vectors(1, vectors, columns, True) * per_vector

    while max_basis is None and m > smallest and need(m) > est.budget:
        m -= 1
    if need(m) > est.budget:
        raise MemoryBudgetError(
            f"refining the blocks' top-{k} eigenvalues on a basis of {m} vectors needs {gib(need(m))} on top of the "
            f"{gib(est.resident)} this process holds; the memory budget is {gib(est.budget)}. Lower k or max_basis "
            f"(at least {smallest}), pass refine=0, or raise memory_budget="
        )
    return m


def refine(
    op: ProblemOperator,
    partition: BlockPartition,
    spectra: dict[str, Spectrum],
    max_steps: int,
    max_basis: int | None,
    memory_budget: int | None,
    restricted: bool,
    generator: torch.Generator,
) -> tuple[dict[str, Spectrum], dict[str, Any]]:
    """The blocks of ``spectra`` (in ``partition``'s order) whose top-``k`` Ritz pairs did not reach their ``tol``
    go through :class:`BlockThickRestart` (at most ``max_steps`` steps, one data pass each; ``k``, ``tol`` and the
    blocks' sizes are the spectra's); their spectra get the restarted recurrence's eigenvalues, residuals, bounds
    and convergence flags (the density, trace and norm stay the density recurrences'), and
    ``settings["refined"]`` records the products, restarts and basis size. Returns the updated spectra and a
    summary for the analysis's settings."""
    names = list(spectra)
    todo = tuple(b for b, n in enumerate(names) if not bool(np.all(spectra[n].eigen_converged)))
    if not todo:
        return spectra, {"blocks": [], "steps": 0, "passes": 0, "max_basis": 0, "converged": []}
    first = spectra[names[todo[0]]]  # a Lanczos block's (a dense one is exact)
    k, tol = first.eigenvalues.size, first.settings["tol"]
    sizes = tuple(spectra[n].num_params for n in names)
    columns = 1 if restricted else len(todo)
    m = _basis(op, k, max_basis, memory_budget, columns)
    v0 = draw(op, 1, "rademacher", generator)
    state = BlockThickRestart(
        op, partition, v0, m, todo, k=k, tol=tol, restricted=restricted, columns=columns, sizes=sizes
    )
    results = state.run(max_steps)
    out = dict(spectra)
    for b, r in results.items():
        name = names[b]
        old = spectra[name]
        record = {"matvecs": r.matvecs, "restarts": r.restarts, "max_basis": m, "converged": bool(r.converged.all())}
        out[name] = replace(
            old,
            eigenvalues=r.values,
            eigen_residuals=r.residuals,
            eigen_error_bounds=r.bounds,
            eigen_converged=r.converged,
            num_matvecs=old.num_matvecs + r.matvecs,
            settings={**old.settings, "refined": record},
        )
    summary = {
        "blocks": [names[b] for b in todo],
        "steps": int(state.steps_taken),
        "passes": int(state.passes),
        "max_basis": m,
        "converged": [names[b] for b, r in results.items() if bool(r.converged.all())],
    }
    return out, summary
