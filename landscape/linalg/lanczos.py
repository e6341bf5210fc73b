"""Lanczos with full reorthogonalisation, and extreme eigenpairs from it.

One Krylov pass ``H Q_m = Q_m T_m + beta_m q_{m+1} e_m^T`` serves two purposes:

- eigenpairs: the Ritz pairs ``(theta_i, Q_m y_i)`` of the tridiagonal ``T_m = Y diag(theta) Y^T`` have residual
  ``||H Q_m y_i - theta_i Q_m y_i|| = beta_m |y_{m,i}|`` (Parlett, *The Symmetric Eigenvalue Problem*, 1998,
  Sec. 13.1), which costs nothing to evaluate;
- quadrature: for a unit start vector ``v``, ``sum_k tau_k f(theta_k)`` with ``tau_k = y_{1,k}^2`` is the Gauss rule
  for ``v^T f(H) v``, exact for polynomials of degree ``<= 2m - 1`` (Golub & Meurant 2010; used by
  :mod:`landscape.linalg.slq`).

Several independent recurrences (one per probe) advance together so each step is one block product ``op @ V``,
which a Hessian operator evaluates in a single data pass. Every new vector is orthogonalised against the whole
basis by classical Gram-Schmidt applied twice ("twice is enough", Giraud et al. 2005), so converged Ritz values do
not reappear as ghost copies. All vector work stays in torch on the operator's device; only the small tridiagonal
goes to float64 scipy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import scipy.linalg
import torch
from torch import Tensor

from landscape.linalg import random_start
from landscape.linalg._common import Meter, draw
from landscape.linalg._ritz import (
    Which,
    check_top_eigen_args,
    eigen_result,
    lanczos_result,
    select_wanted,
    thick_restart_result,
)
from landscape.linalg.probes import Distribution, SeedLike, make_generator
from landscape.linalg.results import EigenResult
from landscape.linalg.short_recurrence import VECTORS, VECTORS_WITH_RITZ, ritz_vector, three_term_extreme
from landscape.linalg.thick_restart import min_basis
from landscape.memory import (
    KRYLOV_SHARE,
    MemoryBudgetError,
    gib,
    krylov_vectors,
    lean_basis,
    require,
    uses_three_term,
)
from landscape.operators.base import CurvatureOperator
from landscape.progress import progress as progress_bar


def tridiagonal_eigh(alphas: np.ndarray, betas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigen-decomposition ``T = Y diag(theta) Y^T`` of the symmetric tridiagonal with diagonal ``alphas`` and
    off-diagonal ``betas`` (length ``len(alphas) - 1``), in float64; ``theta`` ascending."""
    d = np.asarray(alphas, dtype=np.float64)
    if d.size == 1:
        return d.copy(), np.ones((1, 1))
    return scipy.linalg.eigh_tridiagonal(d, np.asarray(betas, dtype=np.float64))


@dataclass(frozen=True)
class LanczosDecomposition:
    """``p`` independent Lanczos recurrences ``H Q_m = Q_m T_m + beta_m q_{m+1} e_m^T``, one per start vector.

    Attributes
    ----------
    alphas, betas
        ``(p, m)`` float64, ``m = min(num_steps, n)``. Row ``l`` holds the diagonal of ``T`` and the couplings:
        ``betas[l, j]`` links ``q_j`` and ``q_{j+1}``; ``betas[l, steps[l] - 1]`` is the residual coupling
        ``beta_m`` of the last step. Entries past ``steps[l]`` are zero. A zero coupling inside the run marks a
        restart after breakdown.
    steps
        ``(p,)`` steps actually taken; fewer than asked when a recurrence stopped at an invariant subspace.
    start_norms
        ``(p,)`` norms of the start vectors (the basis starts from their normalisations).
    basis
        ``(p, n, max(steps))`` orthonormal Lanczos vectors (columns; zero past ``steps[l]``), or ``None``.
    num_matvecs, seed, wall_time, settings
        Provenance.
    """

    alphas: np.ndarray
    betas: np.ndarray
    steps: np.ndarray
    start_norms: np.ndarray
    basis: Tensor | None
    num_matvecs: int
    seed: int | None
    wall_time: float
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def num_probes(self) -> int:
        return self.alphas.shape[0]

    def tridiagonal(self, probe: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Diagonal and off-diagonal of ``T_m`` for one recurrence."""
        m = int(self.steps[probe])
        return self.alphas[probe, :m].copy(), self.betas[probe, : max(m - 1, 0)].copy()

    def ritz(self, probe: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Ritz values (ascending) and the eigenvectors ``Y`` of ``T_m`` for one recurrence."""
        return tridiagonal_eigh(*self.tridiagonal(probe))

    def ritz_residuals(self, probe: int = 0) -> np.ndarray:
        """``beta_m |y_{m,i}|``: the residual norms ``||H x_i - theta_i x_i||`` of all Ritz pairs (ascending)."""
        _, Y = self.ritz(probe)
        m = int(self.steps[probe])
        return np.abs(self.betas[probe, m - 1] * Y[-1, :])

    def quadrature(self) -> tuple[np.ndarray, np.ndarray]:
        """Gauss quadrature nodes ``theta`` and weights ``tau = y_1^2``, each ``(p, m)``, zero-padded per row.

        ``sum_k tau_k f(theta_k)`` approximates ``v^T f(H) v / ||v||^2`` for the start vector ``v``.
        """
        p, m = self.alphas.shape
        nodes = np.zeros((p, m))
        weights = np.zeros((p, m))
        for probe in range(p):
            theta, Y = self.ritz(probe)
            nodes[probe, : theta.size] = theta
            weights[probe, : theta.size] = Y[0, :] ** 2
        return nodes, weights


class _BatchedLanczos:
    """State of ``p`` Lanczos recurrences advanced in lock step, one block matvec per step."""

    def __init__(
        self,
        op: CurvatureOperator,
        V0: Tensor,
        max_steps: int,
        *,
        generator: torch.Generator,
        restart: bool,
        distribution: Distribution = "gaussian",
        store_basis: bool = True,
    ):
        n = op.shape[0]
        self.op = op
        self.n = n
        self.gen = generator
        self.restart = restart
        self.distribution = distribution
        self.max_steps = max_steps
        p = V0.shape[1]
        V0 = V0.to(device=op.device, dtype=op.dtype)
        norms = V0.norm(dim=0)
        if not bool(torch.all(norms > 0)):
            raise ValueError("Lanczos start vectors must be nonzero")
        self.start_norms = norms.double().cpu().numpy()
        # Rows are Lanczos vectors: (p, m+1, n) keeps each recurrence's basis contiguous for the batched products.
        # Without a stored basis, two slots hold q_{j-1} and q_j (the three-term recurrence; slot j % 2).
        if restart and not store_basis:
            raise ValueError("restarts after breakdown need the stored basis")
        self.store_basis = store_basis
        self.Q = torch.zeros(p, max_steps + 1 if store_basis else 2, n, dtype=op.dtype, device=op.device)
        self.Q[:, 0] = (V0 / norms).T
        self.alphas = np.zeros((p, max_steps))
        self.betas = np.zeros((p, max_steps))
        self.steps = np.zeros(p, dtype=np.int64)
        self.active = np.ones(p, dtype=bool)
        self.anorm = np.zeros(p)
        self.restarts: list[list[int]] = [[] for _ in range(p)]
        self.eps = torch.finfo(op.dtype).eps
        self.j = 0

    @property
    def done(self) -> bool:
        return self.j >= self.max_steps or not self.active.any()

    def _slot(self, j: int) -> int:
        return j if self.store_basis else j % 2

    def _orthogonalise(self, W: Tensor, upto: int) -> tuple[Tensor, Tensor]:
        """CGS2 of each row of ``W`` (p, n) against its recurrence's first ``upto`` vectors (without a stored
        basis: against ``q_{j-1}`` and ``q_j``, an unused slot being zero); returns the summed coefficients too
        (the diagonal coefficient corrects alpha)."""
        basis = self.Q[:, :upto] if self.store_basis else self.Q
        total = torch.zeros(W.shape[0], basis.shape[1], dtype=W.dtype, device=W.device)
        for _ in range(2):
            c = torch.bmm(basis, W.unsqueeze(2)).squeeze(2)
            W = W.sub_(torch.bmm(c.unsqueeze(1), basis).squeeze(1))  # W is this step's own product: in place
            total = total + c
        return W, total

    def step(self) -> None:
        j = self.j
        idx = np.flatnonzero(self.active)
        q = self.Q[:, self._slot(j)]
        if idx.size == q.shape[0]:
            W = (self.op @ q.T).T
        else:
            sel = torch.as_tensor(idx, device=q.device)
            W = torch.zeros_like(q)
            W[sel] = (self.op @ q[sel].T).T.to(q.dtype)
        W, coeffs = self._orthogonalise(W, j + 1)
        alpha = coeffs[:, self._slot(j)].double().cpu().numpy()
        beta = W.norm(dim=1).double().cpu().numpy()
        prev = self.betas[:, j - 1] if j > 0 else np.zeros_like(beta)
        self.anorm = np.maximum.reduce([self.anorm, np.abs(alpha), prev, beta])
        # Rounding in one product is ~ eps sqrt(n) ||H||; a residual that small means an invariant subspace.
        tiny = beta <= 10.0 * math.sqrt(self.n) * self.eps * self.anorm
        full = j + 1 >= self.n
        scale = np.where(tiny | full, 0.0, 1.0 / np.where(beta > 0, beta, 1.0))
        self.Q[:, self._slot(j + 1)] = W * torch.as_tensor(scale, dtype=W.dtype, device=W.device).unsqueeze(1)
        for probe in idx:
            self.alphas[probe, j] = alpha[probe]
            self.betas[probe, j] = 0.0 if full else beta[probe]
            self.steps[probe] = j + 1
            if full:
                self.active[probe] = False
            elif tiny[probe]:
                if self.restart and self._restart(probe, j + 1):
                    self.betas[probe, j] = 0.0
                    self.restarts[probe].append(j + 1)
                else:
                    self.active[probe] = False
        self.j += 1

    def _restart(self, probe: int, upto: int) -> bool:
        """Continue a broken-down recurrence from a random vector orthogonal to its basis (False: none left)."""
        z = draw(self.op, 1, self.distribution, self.gen)[:, 0]
        basis = self.Q[probe, :upto]
        norm0 = float(z.norm())
        for _ in range(2):
            z = z - basis.T @ (basis @ z)
        norm = float(z.norm())
        if norm <= 100.0 * self.eps * math.sqrt(self.n) * norm0:
            return False
        self.Q[probe, upto] = z / norm
        return True

    def basis_view(self, probe: int) -> Tensor:
        """``(n, m)`` basis of one recurrence (a view)."""
        return self.Q[probe, : int(self.steps[probe])].T


def as_start_block(v0: Tensor, n: int, columns: str = "p") -> Tensor:
    """A warm start ``(n,)`` or ``(n, j)`` as an ``(n, j)`` block (``columns`` names ``j`` in the error message)."""
    if not isinstance(v0, Tensor) or v0.ndim not in (1, 2) or v0.shape[0] != n:
        raise ValueError(f"v0 must be a tensor of shape ({n},) or ({n}, {columns}), got {getattr(v0, 'shape', v0)}")
    return v0.reshape(n, -1)


def _start_block(
    op: CurvatureOperator, v0: Tensor | None, num_probes: int, gen: torch.Generator, distribution: Distribution
) -> Tensor:
    if v0 is None:
        return draw(op, num_probes, distribution, gen)
    return as_start_block(v0, op.shape[0])


def lanczos(
    op: CurvatureOperator,
    num_steps: int,
    *,
    v0: Tensor | None = None,
    num_probes: int = 1,
    seed: SeedLike = 0,
    distribution: Distribution = "rademacher",
    restart_on_breakdown: bool = True,
    keep_basis: bool = True,
    progress: bool = False,
    memory_budget: int | None = None,
    probe_group: int | None = None,
) -> LanczosDecomposition:
    """Run ``num_steps`` Lanczos steps with full reorthogonalisation from one or several start vectors.

    ``H Q_m = Q_m T_m + beta_m q_{m+1} e_m^T`` (Lanczos 1950; Paige 1972), with every new vector reorthogonalised
    against the whole basis by classical Gram-Schmidt twice. The ``p`` recurrences advance together: each step
    costs one block product ``op @ V`` with ``V`` of shape ``(n, p)``.

    Parameters
    ----------
    op
        Symmetric operator.
    num_steps
        Steps per recurrence (capped at ``n``: the Krylov space cannot grow beyond it).
    v0
        Start vector ``(n,)`` or block ``(n, p)`` (any nonzero scale); default: ``num_probes`` random probes.
    num_probes
        Number of random start vectors when ``v0`` is ``None``.
    seed
        Seed or generator for the start vectors and restarts.
    distribution
        Distribution of the random start vectors (``"rademacher"``, ``"gaussian"``, ``"sphere"``).
    restart_on_breakdown
        At an invariant subspace (``beta ~ 0``) continue from a random vector orthogonal to the basis (a zero
        coupling in ``T``; right for eigenvalues). ``False`` stops that recurrence instead (its quadrature is then
        exact; right for SLQ) and :attr:`LanczosDecomposition.steps` records the shorter length.
    keep_basis
        Return the Lanczos vectors (``p * n * m`` numbers).
    progress
        Show a progress bar over the steps on stderr (:func:`landscape.progress.progress`).
    memory_budget
        Bytes the analysis may use (default: 80% of the memory available now, :mod:`landscape.memory`). When the
        ``p (m + 1)`` basis vectors do not fit half of it, the recurrences keep only their last two vectors and
        orthogonalise against them (the three-term recurrence, ``2 p`` vectors): the tridiagonals then lose the
        exact orthogonality of the basis, converged Ritz values may appear more than once ("ghosts"), but the
        Gauss quadrature weights of each probe stay accurate (Greenbaum 1989; Chen, Trogdon & Ubaru 2021), which
        is what a density needs. ``settings["reorthogonalisation"]`` records which ran. With ``keep_basis`` (or
        ``restart_on_breakdown``) the basis is needed: :class:`~landscape.memory.MemoryBudgetError` if it does
        not fit. When not even two vectors per probe fit for all probes together, the probes run in groups, one
        after another (the same products in all, over more data passes).
    probe_group
        At most this many probes at once (default: all that fit).

    Returns
    -------
    LanczosDecomposition
    """
    prov = Meter(op, seed)
    n = op.shape[0]
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if num_probes < 1:
        raise ValueError(f"num_probes must be >= 1, got {num_probes}")
    gen = make_generator(seed)
    p = num_probes if v0 is None else as_start_block(v0, n).shape[1]
    steps = min(int(num_steps), n)
    vectors = krylov_vectors(memory_budget, n, op.dtype, op.device)
    store = p * (steps + 1) <= vectors
    if not store and (keep_basis or restart_on_breakdown or vectors < 2):
        per_vector = n * torch.empty((), dtype=op.dtype).element_size()
        need = p * (steps + 1) if keep_basis or restart_on_breakdown else 2
        raise MemoryBudgetError(
            f"Lanczos with {p} probe(s) x {steps} steps needs {need} basis vectors of {n:,} parameters "
            f"({gib(need * per_vector)}); {KRYLOV_SHARE:.0%} of memory_budget allows {vectors} "
            f"({gib(vectors * per_vector)}). Raise memory_budget=, lower num_probes/num_steps, or drop the stored "
            "basis (keep_basis=False, restart_on_breakdown=False: the three-term recurrence)"
        )
    group = p if store else min(p, vectors // 2)
    group = min(group, probe_group) if probe_group and not keep_basis else group
    runs = []
    with progress_bar(steps * math.ceil(p / group), "Lanczos", progress, unit="step") as bar:
        for first in range(0, p, group):
            # Groups of probes one after another when their vectors do not fit together; start vectors drawn per
            # group (the same draws as all at once when there is one group).
            size = min(group, p - first)
            if v0 is None:
                V0 = draw(op, size, distribution, gen)
            else:
                V0 = as_start_block(v0, n)[:, first : first + size].to(device=op.device, dtype=op.dtype)
            state = _BatchedLanczos(
                op, V0, steps, generator=gen, restart=restart_on_breakdown, distribution=distribution, store_basis=store
            )
            del V0
            while not state.done:
                state.step()
                bar.update(1)
            m = int(state.steps.max())
            basis = state.Q[:, :m].transpose(1, 2) if keep_basis and store else None
            runs.append((state.alphas.copy(), state.betas.copy(), state.steps.copy(), state.start_norms, basis))
            del state
    return LanczosDecomposition(
        alphas=np.concatenate([r[0] for r in runs]),
        betas=np.concatenate([r[1] for r in runs]),
        steps=np.concatenate([r[2] for r in runs]),
        start_norms=np.concatenate([r[3] for r in runs]),
        basis=runs[0][4] if len(runs) == 1 else None,
        **prov.fields(),
        settings={
            "num_steps": int(num_steps),
            "distribution": distribution,
            "restart_on_breakdown": restart_on_breakdown,
            "reorthogonalisation": "full (CGS2)" if store else "local: three-term recurrence (memory budget)",
            "basis_bytes": min(group, p)
            * (steps + 1 if store else 2)
            * n
            * torch.empty((), dtype=op.dtype).element_size(),
            "probe_groups": math.ceil(p / group),
        },
    )


def _more_extreme(a: float, b: float, which: str, margin: float) -> bool:
    if which == "LA":
        return a > b + margin
    if which == "SA":
        return a < b - margin
    return abs(a) > abs(b) + margin


def _verified(alphas: np.ndarray, betas: np.ndarray, restarts: list[int], k: int, which: str, atol: float) -> bool:
    """Whether converged wanted Ritz pairs can be trusted to be the wanted eigenvalues.

    Without breakdown, yes (the usual Lanczos assumption: extreme Ritz values converge first). After a breakdown,
    the first Krylov block held one copy of each eigenvalue it touched, so the restarted blocks (Lanczos on the
    orthogonal complement, ``T`` block diagonal) must show that the complement holds nothing more extreme: stop
    once a completed block leaves the wanted set unchanged, or the running block's extreme Ritz pair has converged.
    """
    if not restarts:
        return True
    m = alphas.size
    start = restarts[-1]
    if start < m:
        theta, Y = tridiagonal_eigh(alphas[start:m], betas[start : m - 1])
        i = select_wanted(theta, 1, which)[0]
        return abs(betas[m - 1] * Y[-1, i]) <= atol
    lo = restarts[-2] if len(restarts) > 1 else 0
    if lo == 0:
        return False
    theta_block, _ = tridiagonal_eigh(alphas[lo:m], betas[lo : m - 1])
    block_best = theta_block[select_wanted(theta_block, 1, which)[0]]
    theta_before, _ = tridiagonal_eigh(alphas[:lo], betas[: lo - 1])
    if theta_before.size < k:
        return False
    kth_before = theta_before[select_wanted(theta_before, k, which)[-1]]
    return not _more_extreme(block_best, kth_before, which, atol)


def _basis_cap(op: CurvatureOperator, k: int, max_basis: int | None, memory_budget: int | None) -> int:
    """Vectors the Krylov basis may hold: ``max_basis``, else what fits the memory budget, and of that no more than
    :func:`landscape.memory.lean_basis`."""
    if max_basis is not None and (isinstance(max_basis, bool) or max_basis < 1):
        raise ValueError(f"max_basis must be a positive number of vectors, got {max_basis!r}")
    if max_basis is not None:
        return max_basis
    n = op.shape[0]
    per_vector = n * torch.empty((), dtype=op.dtype).element_size()
    return min(krylov_vectors(memory_budget, n, op.dtype, op.device), lean_basis(k, per_vector))


def _check_cap(op: CurvatureOperator, k: int, cap: int, need: int, max_basis: int | None) -> None:
    """An error naming the numbers when ``need`` vectors do not fit into ``cap``."""
    if cap >= need:
        return
    n = op.shape[0]
    per_vector = n * torch.empty((), dtype=op.dtype).element_size()
    have = f"max_basis={max_basis}" if max_basis is not None else f"{KRYLOV_SHARE:.0%} of memory_budget"
    raise MemoryBudgetError(
        f"top_eigen(k={k}) needs a Krylov basis of at least {need} vectors of {n:,} parameters "
        f"({gib(need * per_vector)}); {have} allows {cap} ({gib(cap * per_vector)}). Raise memory_budget= "
        f"(or max_basis=), lower k, or analyse fewer parameters (params=)"
    )


def _short_top(
    prov: Meter,
    op: CurvatureOperator,
    which: str,
    tol: float,
    budget: int,
    v0: Tensor,
    vectors: bool,
    warm: bool,
    progress: bool,
    guarantee: float | None = None,
    confidence: float = 0.99,
) -> EigenResult:
    """Top-1 by the three-term recurrence (:mod:`landscape.linalg.short_recurrence`), the vector by a second run;
    with ``guarantee``, for at least the steps after which a random start is within ``guarantee`` of the spread
    with probability ``confidence`` (:mod:`landscape.linalg.random_start`)."""
    pick = lambda theta: select_wanted(theta, 1, which)[0]  # noqa: E731
    n = op.shape[0]
    min_steps = random_start.steps_for(n, guarantee, confidence) if guarantee is not None else 1
    run = three_term_extreme(op, v0, pick, tol, budget, progress, keep_start=vectors, min_steps=min_steps)
    first = prov.num_matvecs
    vector = ritz_vector(op, v0, run)[:, None] if vectors else None
    residuals = np.array([run.residual])
    theta = np.array([run.theta])
    return eigen_result(
        prov,
        method="lanczos",
        k=1,
        which=which,
        tol=tol,
        values=theta,
        vectors=vector,
        residuals=residuals,
        converged=np.array([run.converged]),
        error_bounds=residuals.copy(),
        scale=run.scale,
        num_steps=len(run.alphas),
        settings={
            "max_matvecs": budget,
            "warm_start": warm,
            "reorthogonalisation": "none (three-term recurrence; local against the last vector)",
            "restart": "none",
            "basis_vectors": VECTORS_WITH_RITZ if vectors else VECTORS,
            "basis_bytes": (VECTORS_WITH_RITZ if vectors else VECTORS) * v0.numel() * v0.element_size(),
            "ritz_vector": f"second run of the recurrence ({prov.num_matvecs - first} products)" if vectors else None,
            "guarantee": guarantee,
            # Kuczynski & Wozniakowski's gap-free bound for these steps (a random start, an end of the spectrum).
            "random_start": None
            if warm or which == "LM"
            else {
                "confidence": confidence,
                "error_vs_spread": random_start.error_at(n, len(run.alphas), confidence),
                "steps": len(run.alphas),
            },
        },
        stacklevel=4,
    )


def _guaranteed_budget(
    n: int,
    k: int,
    which: str,
    v0: Tensor | None,
    guarantee: float,
    confidence: float,
    max_matvecs: int | None,
    budget: int,
) -> int:
    """The step budget for ``guarantee``: at least :func:`random_start.steps_for`; errors for what it cannot bound."""
    if k != 1 or which not in ("LA", "SA") or v0 is not None:
        raise ValueError(
            "guarantee= bounds the error of the extreme eigenvalue from a random start: it needs k=1, which='LA' or "
            f"'SA' and no v0 (got k={k}, which={which!r}, v0 {'given' if v0 is not None else 'None'})"
        )
    need = random_start.steps_for(n, guarantee, confidence)
    if max_matvecs is not None and budget < need:
        raise ValueError(
            f"guarantee={guarantee:g} at confidence {confidence:g} needs {need} Lanczos steps on {n:,} parameters "
            f"(Kuczynski & Wozniakowski 1992); max_matvecs={max_matvecs} allows {budget}. Raise max_matvecs, "
            "loosen guarantee= or lower confidence="
        )
    return max(budget, need)


def _lanczos_top(
    op: CurvatureOperator,
    k: int,
    which: str,
    tol: float,
    max_matvecs: int | None,
    v0: Tensor | None,
    seed: SeedLike,
    progress: bool = False,
    max_basis: int | None = None,
    memory_budget: int | None = None,
    vectors: bool = True,
    guarantee: float | None = None,
    confidence: float = 0.99,
) -> EigenResult:
    prov = Meter(op, seed)
    n = op.shape[0]
    budget = min(n, max(20 * k, 100)) if max_matvecs is None else min(int(max_matvecs), n)
    if budget < k:
        raise ValueError(f"Lanczos needs max_matvecs >= k={k} to produce k Ritz pairs, got {max_matvecs}")
    if guarantee is not None:
        budget = _guaranteed_budget(n, k, which, v0, guarantee, confidence, max_matvecs, budget)
    cap = _basis_cap(op, k, max_basis, memory_budget)
    short = uses_three_term(k, vectors, cap, budget, guarantee)
    if short:
        _check_cap(op, k, cap, VECTORS_WITH_RITZ if vectors else VECTORS, max_basis)
    else:
        _check_cap(op, k, cap, min(budget + 1, min_basis(k) + 1), max_basis)
    basis = min(cap, budget + 1)
    gen = make_generator(seed)
    if v0 is not None:
        # A block of guesses is merged into one start vector: the Krylov space then contains all of them.
        v0 = _start_block(op, v0, 1, gen, "gaussian").sum(dim=1, keepdim=True)
    V0 = _start_block(op, v0, 1, gen, "gaussian")
    if short:
        return _short_top(
            prov, op, which, tol, budget, V0[:, 0], vectors, v0 is not None, progress, guarantee, confidence
        )
    if basis <= budget:
        return thick_restart_result(prov, op, k, which, tol, budget, V0[:, 0], basis - 1, gen, v0, progress)
    state = _BatchedLanczos(op, V0, budget, generator=gen, restart=True, distribution="gaussian")
    last_check = 0
    result = None
    bar = progress_bar(budget, "top eigenvalues", progress, unit="step")
    while True:
        state.step()
        bar.update(1)
        m = int(state.steps[0])
        restarts = state.restarts[0]
        just_restarted = bool(restarts) and restarts[-1] == m
        # The tridiagonal solve is O(m^2): check every step early on, then every ~m/10 steps (<= 10% extra matvecs).
        if not (state.done or just_restarted or (m >= k and m - last_check >= max(1, m // 10))):
            continue
        last_check = m
        alphas, betas = state.alphas[0, :m], state.betas[0, :m]
        theta, Y = tridiagonal_eigh(alphas, betas[: m - 1])
        wanted = select_wanted(theta, k, which)
        residuals = np.abs(betas[m - 1] * Y[-1, wanted])
        scale = float(np.max(np.abs(theta))) if theta.size else 0.0
        converged = residuals <= tol * scale
        if not state.active[0]:
            converged[:] = True
        result = (theta, Y, wanted, residuals, converged, scale)
        if state.done:
            break
        if wanted.size == k and converged.all() and _verified(alphas, betas, restarts, k, which, tol * scale):
            break
    bar.close()
    m = int(state.steps[0])
    return lanczos_result(
        prov,
        k=k,
        which=which,
        tol=tol,
        ritz=result,
        basis=state.basis_view(0),
        num_steps=m,
        settings={
            "max_matvecs": budget,
            "warm_start": v0 is not None,
            "reorthogonalisation": "full (CGS2)",
            "restart": "none",
            "basis_vectors": budget + 1,
            "basis_bytes": state.Q.numel() * state.Q.element_size(),
        },
        stacklevel=5,
    )


def top_eigen(
    op: CurvatureOperator,
    k: int = 1,
    *,
    method: Literal["lanczos", "power"] = "lanczos",
    which: Which = "LA",
    tol: float = 1e-4,
    max_matvecs: int | None = None,
    v0: Tensor | None = None,
    seed: SeedLike = 0,
    progress: bool = False,
    max_basis: int | None = None,
    memory_budget: int | None = None,
    vectors: bool = True,
    guarantee: float | None = None,
    confidence: float = 0.99,
) -> EigenResult:
    """The ``k`` extreme eigenpairs of a symmetric operator.

    ``method="lanczos"`` (default): Lanczos with full reorthogonalisation from one random (or warm) start; the
    Ritz residual of pair ``i`` is ``beta_m |y_{m,i}|`` (Parlett 1998), and the run stops as soon as all ``k``
    wanted pairs satisfy ``||H v - theta v|| <= tol * max|theta|``. Relative eigenvalue error ``eps`` needs
    ``O(log n / sqrt(eps))`` steps (Kuczynski & Wozniakowski 1992). A Krylov space holds one copy of each
    eigenvalue: at an invariant subspace (``beta ~ 0``) the run restarts from a random vector orthogonal to the
    basis and continues until a restarted block shows nothing more extreme, which recovers exact multiplicities;
    a repeated eigenvalue that converges *without* breakdown is seen once (use ``v0`` with several vectors, or
    compare ``k`` with the multiplicity you expect).

    ``method="power"``: power iteration with deflation against the pairs already found (see
    :func:`landscape.linalg.power.power_iteration`); converges like ``|lambda_2 / lambda_1|^t``.

    Parameters
    ----------
    op
        Symmetric operator.
    k
        Number of eigenpairs.
    method
        ``"lanczos"`` or ``"power"``.
    which
        ``"LA"`` largest algebraic, ``"SA"`` smallest algebraic, ``"LM"`` largest magnitude.
    tol
        Relative residual tolerance: converged when ``||H v - lambda v|| <= tol * ||H||_est``. The eigenvalue
        error is then at most ``tol ||H||`` and typically ``~ (tol ||H||)^2 / gap`` (see ``error_bounds``).
    max_matvecs
        Budget; default ``min(n, max(20 k, 100))`` for Lanczos (capped at ``n``: the space is then exhausted) and
        ``100 (k + 1)`` for power iteration. A :class:`ConvergenceWarning` is emitted when it runs out.
    v0
        Warm start ``(n,)`` or ``(n, j)`` (e.g. the vectors of a previous result).
    seed
        Seed or generator for the random start.
    progress
        Show a progress bar over the Lanczos steps (the budget; a run that converges stops early) on stderr.
    max_basis
        Lanczos: the most vectors the Krylov basis may hold. When the budget of steps needs more, the run
        restarts thickly (:mod:`landscape.linalg.thick_restart`, Wu & Simon 2000) keeping the wanted Ritz vectors,
        so memory stays ``max_basis * n`` numbers. Default: what fits half of ``memory_budget``, but no more than
        1 GiB (``landscape.memory.LEAN_BASIS_BYTES``) or ``2 k + 4`` vectors, whichever is more: every step
        reorthogonalises against the whole basis, which at 10^8 parameters costs as much as a product.
    memory_budget
        Bytes the analysis may use (default :func:`landscape.memory.default_budget`: 80% of the memory available
        now). On an operator built on a problem the whole run is estimated first (:func:`landscape.memory.estimate`:
        gradient graphs, products, Krylov vectors); :class:`~landscape.memory.MemoryBudgetError` when it, or not
        even a restarted basis, fits.
    vectors
        Return the eigenvectors (default). ``k=1`` runs without a basis, on the three-term recurrence
        (:mod:`landscape.linalg.short_recurrence`: two vectors of memory, as fast as with a basis), when
        ``vectors=False`` or when the budget has no room for a restarted basis (then the vector costs a second
        run of the recurrence: twice the products, four vectors). ``vectors=False`` gives ``.vectors = None``.
    guarantee
        ``k=1``: also run at least the steps after which, with probability ``confidence`` over the random start,
        the eigenvalue is within ``guarantee * (lambda_max - lambda_min)`` of the true one, whatever the gaps
        (Kuczynski & Wozniakowski 1992; :mod:`landscape.linalg.random_start`): a Ritz residual alone certifies
        closeness to *an* eigenvalue, and a start that holds little of the top eigenvector can settle on the one
        below. ``ln(1.648 sqrt(n) / (1 - confidence)) / (2 sqrt(guarantee))`` steps: 230 for ``1e-3`` on 1.24e8
        parameters. Runs on the three-term recurrence. Without it, ``settings["random_start"]`` still reports what
        the steps taken guarantee.
    confidence
        Probability of ``guarantee`` (default 0.99).

    Returns
    -------
    EigenResult
        ``settings["restart"]``, ``["basis_vectors"]`` and ``["basis_bytes"]`` say how the basis was bounded.
    """
    check_top_eigen_args(op, k, which, tol, max_matvecs)
    if method == "lanczos":
        settings = {
            "k": k,
            "vectors": vectors,
            "max_basis": max_basis,
            "max_matvecs": max_matvecs,
            "guarantee": guarantee,
        }
        fix = "Lower k, pass vectors=False (the top eigenvalue on two vectors), lower max_basis= or use smaller batches"
        require(op, "top_eigen", memory_budget, fix, **settings)
        return _lanczos_top(
            op, k, which, tol, max_matvecs, v0, seed, progress, max_basis, memory_budget, vectors, guarantee, confidence
        )
    if guarantee is not None:
        raise ValueError("guarantee= is a bound for Lanczos (method='lanczos'), not for power iteration")
    if method == "power":
        from landscape.linalg.power import power_iteration

        return power_iteration(op, k, which=which, tol=tol, max_matvecs=max_matvecs, v0=v0, seed=seed)
    raise ValueError(f"method must be 'lanczos' or 'power', got {method!r}")
