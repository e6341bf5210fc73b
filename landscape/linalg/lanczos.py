"""Lanczos with full reorthogonalisation: the Krylov decomposition behind eigenpairs and spectral densities.

One Krylov pass ``H Q_m = Q_m T_m + beta_m q_{m+1} e_m^T`` serves two purposes:

- eigenpairs: the Ritz pairs ``(theta_i, Q_m y_i)`` of the tridiagonal ``T_m = Y diag(theta) Y^T`` have residual
  ``||H Q_m y_i - theta_i Q_m y_i|| = beta_m |y_{m,i}|`` (Parlett, *The Symmetric Eigenvalue Problem*, 1998,
  Sec. 13.1), which costs nothing to evaluate (used by :func:`landscape.linalg.eigen.top_eigen`);
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
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from landscape.linalg._common import COLUMN_CHUNK, Meter, as_start_block, draw
from landscape.linalg._ritz import tridiagonal_eigh
from landscape.linalg.probes import Distribution, SeedLike, make_generator
from landscape.linalg.results import Diagnostics
from landscape.memory import KRYLOV_SHARE, MemoryBudgetError, gib, krylov_vectors
from landscape.operators.base import CurvatureOperator
from landscape.progress import progress as progress_bar


@dataclass(frozen=True)
class LanczosDecomposition(Diagnostics):
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
    num_matvecs
        Operator applications.
    seed, wall_time, settings
        From :class:`~landscape.linalg.results.Diagnostics`.
    """

    alphas: np.ndarray
    betas: np.ndarray
    steps: np.ndarray
    start_norms: np.ndarray
    basis: Tensor | None
    num_matvecs: int

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


class BatchedLanczos:
    """State of ``p`` Lanczos recurrences advanced in lock step, one block matvec per step."""

    def __init__(
        self,
        op: CurvatureOperator,
        V0: Tensor | int,
        max_steps: int,
        *,
        generator: torch.Generator,
        restart: bool,
        distribution: Distribution = "gaussian",
        store_basis: bool = True,
    ):
        n = op.shape[0]
        self.op = op
        self.space = op.space  # sharded: rows of Q are this rank's shards, inner products summed over ranks
        self.n = self.space.size(n)  # the global length (thresholds, the Krylov dimension)
        self.gen = generator
        self.restart = restart
        self.distribution = distribution
        self.max_steps = max_steps
        p = V0 if isinstance(V0, int) else V0.shape[1]
        # Rows are Lanczos vectors: (p, m+1, n) keeps each recurrence's basis contiguous for the batched products.
        # Without a stored basis, two slots hold q_{j-1} and q_j (the three-term recurrence; slot j % 2).
        if restart and not store_basis:
            raise ValueError("restarts after breakdown need the stored basis")
        self.store_basis = store_basis
        # The three-term recurrence forms each probe's next vector in place where the operator can add into it.
        self.adds = not store_basis and op.adds_in_place
        self.Q = torch.zeros(p, max_steps + 1 if store_basis else 2, n, dtype=op.dtype, device=op.device)
        # The start vectors: ``p`` probes drawn straight into the first slots, or a given block copied there; then
        # normalised in place (no block of start vectors beside the basis: GPT-2 small, 8 probes, 3.7 GB).
        first = self.Q[:, 0].T
        if isinstance(V0, int):
            draw(op, p, distribution, generator, out=first)
        else:
            first.copy_(V0)
        norms = self.space.norms(first)
        if not bool(torch.all(norms > 0)):
            raise ValueError("Lanczos start vectors must be nonzero")
        self.start_norms = norms.double().cpu().numpy()
        first.div_(norms)
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

    def _orthogonalise(self, W: Tensor, basis: Tensor) -> tuple[Tensor, Tensor]:
        """CGS2 of each row of ``W`` (p, n) against its recurrence's vectors in ``basis`` (p, b, n); returns the
        summed coefficients too (the diagonal coefficient corrects alpha)."""
        total = torch.zeros(W.shape[0], basis.shape[1], dtype=W.dtype, device=W.device)
        if basis.shape[1] == 1:  # one vector a probe (in place, strided rows): a batched product there takes 20x
            for _ in range(2):  # the time of row dots (GPT-2 small, 4 probes: 3.2 s against 0.15 s)
                c = self.space.reduce_(torch.stack([torch.dot(x, w) for x, w in zip(basis[:, 0], W, strict=True)]))
                W.addcmul_(basis[:, 0], c.unsqueeze(1), value=-1.0)
                total = total + c.unsqueeze(1)
            return W, total
        for _ in range(2):
            c = self.space.bmm(basis, W.unsqueeze(2)).squeeze(2)
            # W is this step's own product: subtract in place, COLUMN_CHUNK entries at a time, so the
            # temporary is p x COLUMN_CHUNK numbers instead of a (p, n) block (GPT-2 small: 6 probes, 2.8 GB).
            for start in range(0, W.shape[1], COLUMN_CHUNK):
                cols = slice(start, start + COLUMN_CHUNK)
                W[:, cols].sub_(torch.bmm(c.unsqueeze(1), basis[:, :, cols]).squeeze(1))
            total = total + c
        return W, total

    def _add_products(self, idx: np.ndarray, j: int) -> Tensor:
        """``w = H q_j - beta_{j-1} q_{j-1}`` of every active probe formed in the slot of ``q_{j-1}`` (the
        three-term recurrence on an operator that adds its product in place, ``add_product_``): no ``(p, n)``
        block of products (GPT-2 small, 8 probes: 3.7 GB), one column's backward pass at a time as the column loop
        does anyway at that size. ``q_{j-1}``'s part goes with ``beta_{j-1}`` (Paige 1972), not a projection."""
        W = self.Q[:, self._slot(j + 1)]
        prev = self.betas[:, j - 1] if j > 0 else np.zeros(W.shape[0])
        keep = np.zeros(W.shape[0])
        keep[idx] = -prev[idx]  # finished probes' rows become zero, as their products would be
        W.mul_(torch.as_tensor(keep, dtype=W.dtype, device=W.device).unsqueeze(1))
        q = self.Q[:, self._slot(j)]
        for probe in idx:
            self.op.add_product_(q[probe], W[probe])
        return W

    def step(self) -> None:
        j = self.j
        idx = np.flatnonzero(self.active)
        q = self.Q[:, self._slot(j)]
        if self.adds:
            W = self._add_products(idx, j)
            basis = q.unsqueeze(1)
        else:
            if idx.size == q.shape[0]:
                W = (self.op @ q.T).T
            else:
                sel = torch.as_tensor(idx, device=q.device)
                W = torch.zeros_like(q)
                W[sel] = (self.op @ q[sel].T).T.to(q.dtype)
            basis = self.Q[:, : j + 1] if self.store_basis else self.Q
        W, coeffs = self._orthogonalise(W, basis)
        alpha = coeffs[:, 0 if self.adds else self._slot(j)].double().cpu().numpy()
        beta = self.space.norms(W, dim=1).double().cpu().numpy()
        prev = self.betas[:, j - 1] if j > 0 else np.zeros_like(beta)
        self.anorm = np.maximum.reduce([self.anorm, np.abs(alpha), prev, beta])
        # Rounding in one product is ~ eps sqrt(n) ||H||; a residual that small means an invariant subspace.
        tiny = beta <= 10.0 * math.sqrt(self.n) * self.eps * self.anorm
        full = j + 1 >= self.n
        scale = np.where(tiny | full, 0.0, 1.0 / np.where(beta > 0, beta, 1.0))
        W.mul_(torch.as_tensor(scale, dtype=W.dtype, device=W.device).unsqueeze(1))
        if not self.adds:
            self.Q[:, self._slot(j + 1)] = W
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
        norm0 = self.space.norm(z)
        for _ in range(2):
            z = z - basis.T @ self.space.inner(basis.T, z[:, None])[:, 0]
        norm = self.space.norm(z)
        if norm <= 100.0 * self.eps * math.sqrt(self.n) * norm0:
            return False
        self.Q[probe, upto] = z / norm
        return True

    def basis_view(self, probe: int) -> Tensor:
        """``(n, m)`` basis of one recurrence (a view)."""
        return self.Q[probe, : int(self.steps[probe])].T


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
    n = op.shape[0]  # this rank's length of a vector (sharded: its shard; the memory it costs here)
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if num_probes < 1:
        raise ValueError(f"num_probes must be >= 1, got {num_probes}")
    gen = make_generator(seed)
    p = num_probes if v0 is None else as_start_block(v0, n).shape[1]
    steps = min(int(num_steps), op.space.size(n))
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
            # Random start vectors are drawn into the basis itself (BatchedLanczos).
            V0 = size if v0 is None else as_start_block(v0, n)[:, first : first + size]
            state = BatchedLanczos(
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
