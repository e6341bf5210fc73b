"""The ``k`` extreme eigenpairs of a symmetric operator: :func:`top_eigen`, by Lanczos or by power iteration.

Lanczos (default) runs in one of three shapes, chosen by the memory budget and the request
(:func:`landscape.memory.uses_three_term`): a full basis with every vector reorthogonalised
(:mod:`landscape.linalg.lanczos`), a bounded basis restarted thickly (:mod:`landscape.linalg.thick_restart`, Wu &
Simon 2000), or, for the top eigenvalue alone, the two-vector three-term recurrence
(:mod:`landscape.linalg.short_recurrence`). Power iteration (:mod:`landscape.linalg.power`) is the simple
cross-check. Every shape reports Ritz residuals, error bounds and a converged flag (:mod:`landscape.linalg._ritz`).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from torch import Tensor

from landscape.linalg import random_start
from landscape.linalg._common import Meter, start_block
from landscape.linalg._ritz import (
    Which,
    check_top_eigen_args,
    eigen_result,
    lanczos_result,
    select_wanted,
    thick_restart_result,
    tridiagonal_eigh,
)
from landscape.linalg.lanczos import BatchedLanczos
from landscape.linalg.power import power_iteration
from landscape.linalg.probes import SeedLike, make_generator
from landscape.linalg.results import EigenResult
from landscape.linalg.short_recurrence import VECTORS, VECTORS_WITH_RITZ, ritz_vector, three_term_extreme
from landscape.memory import (
    KRYLOV_SHARE,
    MemoryBudgetError,
    gib,
    krylov_vectors,
    lean_basis,
    min_basis,
    require,
    uses_three_term,
)
from landscape.operators.base import CurvatureOperator
from landscape.progress import progress as progress_bar

GuaranteeScale = Literal["spread", "eigenvalue"]


def guarantee_scale_checked(scale: str) -> GuaranteeScale:
    """``scale`` if it is a :data:`GuaranteeScale`, else a ``ValueError`` naming the choices."""
    if scale not in ("spread", "eigenvalue"):
        raise ValueError(f"guarantee_scale must be 'spread' or 'eigenvalue', got {scale!r}")
    return scale  # type: ignore[return-value]


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
    guarantee_scale: GuaranteeScale = "spread",
) -> EigenResult:
    """Top-1 by the three-term recurrence (:mod:`landscape.linalg.short_recurrence`), the vector by a second run;
    with ``guarantee``, for at least the steps after which a random start is within ``guarantee`` of the spread
    (or of the eigenvalue, judged from the Ritz values as they come) with probability ``confidence``
    (:mod:`landscape.linalg.random_start`)."""
    pick = lambda theta: select_wanted(theta, 1, which)[0]  # noqa: E731
    n = op.space.size(op.shape[0])
    min_steps, needed = 1, None
    if guarantee is not None and guarantee_scale == "spread":
        min_steps = random_start.steps_for(n, guarantee, confidence)
    elif guarantee is not None:
        min_steps = 2

        def needed(theta: np.ndarray) -> int:
            return random_start.relative_steps_for(n, guarantee, theta[pick(theta)], theta[-1] - theta[0], confidence)

    run = three_term_extreme(
        op, v0, pick, tol, budget, progress, keep_start=vectors, min_steps=min_steps, steps_needed=needed
    )
    first = prov.num_matvecs
    vector = ritz_vector(op, v0, run)[:, None] if vectors else None
    residuals = np.array([run.residual])
    theta = np.array([run.theta])
    steps = len(run.alphas)
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
            "guarantee_scale": None if guarantee is None else guarantee_scale,
            # Kuczynski & Wozniakowski's gap-free bound for these steps (a random start, an end of the spectrum).
            "random_start": None
            if warm or which == "LM"
            else {
                "confidence": confidence,
                "error_vs_spread": random_start.error_at(n, steps, confidence),
                "error_vs_eigenvalue": random_start.relative_error_at(
                    n, steps, run.theta, float(run.values[-1] - run.values[0]), confidence
                ),
                "steps": steps,
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
    scale: GuaranteeScale = "spread",
) -> int:
    """The step budget for ``guarantee``: at least :func:`random_start.steps_for`; errors for what it cannot bound.

    Relative to the eigenvalue the steps are known only as the Ritz values come: ``max_matvecs``, else ten times
    the steps for ``guarantee`` of the spread (enough while ``|lambda| >= spread / 100``; beyond, the result is
    flagged unconverged)."""
    if k != 1 or which not in ("LA", "SA") or v0 is not None:
        raise ValueError(
            "guarantee= bounds the error of the extreme eigenvalue from a random start: it needs k=1, which='LA' or "
            f"'SA' and no v0 (got k={k}, which={which!r}, v0 {'given' if v0 is not None else 'None'})"
        )
    if scale == "eigenvalue":
        return budget if max_matvecs is not None else min(n, max(budget, 10 * random_start.steps_for(n, guarantee)))
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
    progress: bool,
    max_basis: int | None,
    memory_budget: int | None,
    vectors: bool,
    guarantee: float | None,
    confidence: float,
    guarantee_scale: GuaranteeScale = "spread",
) -> EigenResult:
    """Lanczos for :func:`top_eigen` (its arguments, checked, and their defaults there)."""
    prov = Meter(op, seed)
    n = op.space.size(op.shape[0])
    budget = min(n, max(20 * k, 100)) if max_matvecs is None else min(int(max_matvecs), n)
    if budget < k:
        raise ValueError(f"Lanczos needs max_matvecs >= k={k} to produce k Ritz pairs, got {max_matvecs}")
    if guarantee is not None:
        budget = _guaranteed_budget(n, k, which, v0, guarantee, confidence, max_matvecs, budget, guarantee_scale)
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
        v0 = start_block(op, v0, 1, gen, "gaussian").sum(dim=1, keepdim=True)
    V0 = start_block(op, v0, 1, gen, "gaussian")
    if short:
        return _short_top(
            prov,
            op,
            which,
            tol,
            budget,
            V0[:, 0],
            vectors,
            v0 is not None,
            progress,
            guarantee,
            confidence,
            guarantee_scale,
        )
    if basis <= budget:
        return thick_restart_result(prov, op, k, which, tol, budget, V0[:, 0], basis - 1, gen, v0, progress)
    state = BatchedLanczos(op, V0, budget, generator=gen, restart=True, distribution="gaussian")
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
    guarantee_scale: GuaranteeScale = "spread",
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
    guarantee_scale
        ``"spread"`` (default): ``guarantee`` is a fraction of ``lambda_max - lambda_min``, and the steps are known
        before the run. ``"eigenvalue"``: a fraction of ``|lambda|`` itself ("the top eigenvalue to 1e-3"); the
        spread is then bounded from the Ritz values as they come (both ends together with probability
        ``confidence``; :func:`landscape.linalg.random_start.relative_steps_for`), so the run stops at the first
        step that guarantees it: 336 steps for ``1e-3`` on GPT-2 small, whose spectrum spans -460.5 to 483.5.

    Returns
    -------
    EigenResult
        ``settings["restart"]``, ``["basis_vectors"]`` and ``["basis_bytes"]`` say how the basis was bounded.
    """
    check_top_eigen_args(op, k, which, tol, max_matvecs)
    guarantee_scale_checked(guarantee_scale)
    if method == "lanczos":
        settings = {
            "k": k,
            "vectors": vectors,
            "max_basis": max_basis,
            "max_matvecs": max_matvecs,
            "guarantee": guarantee,
        }
        if guarantee is not None:
            settings["guarantee_scale"] = guarantee_scale
        fix = "Lower k, pass vectors=False (the top eigenvalue on two vectors), lower max_basis= or use smaller batches"
        require(op, "top_eigen", memory_budget, fix, **settings)
        return _lanczos_top(
            op,
            k,
            which,
            tol,
            max_matvecs,
            v0,
            seed,
            progress,
            max_basis,
            memory_budget,
            vectors,
            guarantee,
            confidence,
            guarantee_scale,
        )
    if guarantee is not None:
        raise ValueError("guarantee= is a bound for Lanczos (method='lanczos'), not for power iteration")
    if method == "power":
        return power_iteration(op, k, which=which, tol=tol, max_matvecs=max_matvecs, v0=v0, seed=seed)
    raise ValueError(f"method must be 'lanczos' or 'power', got {method!r}")
