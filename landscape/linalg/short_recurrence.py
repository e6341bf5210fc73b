"""The extreme eigenvalue by the Lanczos three-term recurrence: two or three vectors, whatever the step count.

``beta_j q_{j+1} = H q_j - alpha_j q_j - beta_{j-1} q_{j-1}`` (Lanczos 1950) needs only ``q_{j-1}`` and ``q_j``: the
product is added into the buffer holding ``-beta_{j-1} q_{j-1}`` (:meth:`CurvatureOperator.add_product_`), which
becomes ``q_{j+1}``. The tridiagonal ``T_m`` it builds gives the Ritz values. Without reorthogonalisation the
basis loses orthogonality once a Ritz value converges, which makes copies of converged eigenvalues appear later
("ghosts") but leaves the extreme Ritz value and its residual bound ``beta_m |y_m|`` valid (Paige 1976; Parlett
1998, ch. 13): for one extreme eigenvalue the recurrence converges as fast as fully reorthogonalised Lanczos and
stops before ghosts matter. The Ritz vector ``sum_j y_j q_j`` needs the basis; without it, a second run of the same
recurrence regenerates ``q_j`` from the stored ``alpha, beta`` and accumulates the vector (Cullum & Willoughby
1985): twice the products, four vectors of memory (the start vector, two for the recurrence, the Ritz vector).

Those guarantees are for rounding errors of order ``eps ||H||`` per step. Formed in float32,
``H q - alpha q - beta q_{j-1}`` cancels to a vector far shorter than its terms and keeps their rounding: the
largest Ritz value then creeps above the spectrum as the steps go (a diagonal operator with eigenvalues up to
491.3: 491.36 after 600 float32 steps; GPT-2 small: from 483.55 at step 40 to 491.25 at step 800 without
converging). Below float64 the product therefore gets its own vector and the combination is formed in float64 a
chunk at a time, only its result stored in the operator's dtype: 491.29998 on the same operator after 600 steps,
as in float64, for one vector more (three in all; the float64 recurrence adds the product into its buffer).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.linalg
import torch
from torch import Tensor

from landscape.linalg._common import COLUMN_CHUNK
from landscape.linalg._ritz import tridiagonal_eigh
from landscape.memory import THREE_TERM_VECTORS as VECTORS
from landscape.memory import THREE_TERM_VECTORS_WITH_RITZ as VECTORS_WITH_RITZ
from landscape.operators.base import CurvatureOperator
from landscape.progress import progress as progress_bar

# VECTORS, VECTORS_WITH_RITZ: the vectors the recurrence holds at once without and with the Ritz vector; defined in
# landscape.memory, whose estimate counts them.
__all__ = ["VECTORS", "VECTORS_WITH_RITZ", "ShortRecurrence", "genuine", "ritz_vector", "three_term_extreme"]


@dataclass
class ShortRecurrence:
    """The tridiagonal coefficients of a three-term Lanczos run and its extreme Ritz pair's data."""

    alphas: list[float]
    betas: list[float]
    parts: list[tuple[float, float]]  # (a, correction) of every step, alpha = a + correction: for the replay
    theta: float
    y: np.ndarray
    residual: float
    scale: float
    converged: bool
    values: np.ndarray  # every Ritz value of the last check, ascending


def _ritz(alphas: list[float], betas: list[float], pick) -> tuple[float, np.ndarray, float, float, np.ndarray]:
    """The picked Ritz value, its vector in the Krylov basis, its residual bound, ``max |theta|`` and every Ritz
    value (ascending)."""
    m = len(alphas)
    theta, Y = tridiagonal_eigh(np.asarray(alphas), np.asarray(betas[: m - 1]))
    i = pick(theta)
    return float(theta[i]), Y[:, i], abs(betas[m - 1] * Y[-1, i]), float(np.max(np.abs(theta))), theta


def _product_buffer(q: Tensor) -> Tensor | None:
    """The product's own vector for a recurrence below float64 (see :func:`_step`); ``None`` in float64."""
    return None if q.dtype == torch.float64 else torch.empty_like(q)


def _step(
    op: CurvatureOperator,
    q: Tensor,
    r: Tensor,
    beta_prev: float,
    replay: tuple[float, float] | None,
    hq: Tensor | None,
) -> tuple[float, float, float]:
    """Turn ``r`` (holding ``q_{j-1}``, or anything when ``beta_prev == 0``) into ``beta_j q_{j+1}`` in place.

    ``hq`` (vectors below float64): a buffer for the product, and ``r = H q - a q - beta q_{j-1}`` formed in
    float64 a chunk at a time, only its result rounded (see the module notes), with the inner products it needs
    taken in the same pass; ``None`` (float64 vectors): the product is added straight into ``-beta r``.
    ``replay = (a, correction)`` (a second run) repeats the first run's arithmetic to the bit; else ``a`` is
    measured, then one local reorthogonalisation against ``q_j`` (its ``correction``). Returns
    ``(a, correction, beta_j)``: ``alpha_j = a + correction``."""
    space = op.space
    if hq is None:
        if beta_prev == 0.0:
            r.zero_()
        else:
            r.mul_(-beta_prev)
        op.add_product_(q, r)
        a = replay[0] if replay is not None else space.dot(q, r)
        r.sub_(q, alpha=a)
        correction = replay[1] if replay is not None else space.dot(q, r)  # keeps alpha accurate in float32
        r.sub_(q, alpha=correction)
        return a, correction, space.norm(r) if replay is None else float("nan")
    hq.zero_()
    op.add_product_(q, hq)  # accumulated into zeros: the product exactly as the operator computes it
    if beta_prev == 0.0:
        r.zero_()
    if replay is None:
        # A first guess at alpha: q_j^T H q_j in the operator's dtype (q_j is orthogonal to q_{j-1} to rounding, so
        # the beta term is left out); the correction below measures what it misses, in float64.
        a = float(space.reduce_(torch.dot(q, hq).double().reshape(1))[0])
    else:
        a = replay[0]
    sums = []
    for h, x, y in zip(hq.split(COLUMN_CHUNK), q.split(COLUMN_CHUNK), r.split(COLUMN_CHUNK), strict=True):
        x = x.double()
        rd = h.double().sub_(x, alpha=a).sub_(y, alpha=beta_prev)
        y.copy_(rd)
        sums.append(torch.stack((torch.dot(x, rd), torch.dot(rd, rd))))
    qr, rr = space.reduce_(torch.stack(sums).sum(dim=0)).tolist()
    correction = replay[1] if replay is not None else qr  # what the first guess missed: alpha = a + correction
    r.sub_(q, alpha=correction)
    # |r - c q|^2 = rr - 2 c qr + c^2 |q|^2 from the same pass (|q| = 1 to rounding).
    return a, correction, math.sqrt(max(rr - 2.0 * correction * qr + correction * correction, 0.0))


def three_term_extreme(
    op: CurvatureOperator,
    v0: Tensor,
    pick,
    tol: float,
    budget: int,
    progress: bool = False,
    keep_start: bool = True,
    min_steps: int = 1,
    on_step: Callable[[int, float, float], None] | None = None,
    steps_needed: Callable[[np.ndarray], int] | None = None,
) -> ShortRecurrence:
    """Run the recurrence from ``v0`` until the Ritz value chosen by ``pick(theta) -> index`` has relative residual
    ``<= tol`` (of ``max |theta|``) after at least ``min_steps`` steps, the space is exhausted (``beta ~ 0``:
    exact) or ``budget`` products are spent. ``keep_start=False`` normalises ``v0`` in place and uses it as the
    first vector (no copy). ``steps_needed(theta) -> int``, given the Ritz values (ascending) at a check, raises
    ``min_steps`` by what they imply (e.g. a guarantee relative to the eigenvalue, which needs the spread); the
    run is checked at that step too, and past it every step. ``on_step(m, alpha_m, beta_m)`` is called after
    every step (e.g. to record a long run as it goes)."""
    norm0 = op.space.norm(v0)
    q = v0 / norm0 if keep_start else v0.div_(norm0)
    r = torch.empty_like(q)
    hq = _product_buffer(q)
    alphas: list[float] = []
    betas: list[float] = []
    parts: list[tuple[float, float]] = []
    bar = progress_bar(budget, "top eigenvalue", progress, unit="step")
    last_check = 0
    need = min_steps
    try:
        while True:
            a, correction, beta = _step(op, q, r, betas[-1] if betas else 0.0, None, hq)
            alpha = a + correction
            alphas.append(alpha)
            betas.append(beta)
            parts.append((a, correction))
            bar.update(1)
            m = len(alphas)
            if on_step is not None:
                on_step(m, alpha, beta)
            exhausted = beta <= 1e-10 * max(abs(a) for a in alphas) or m >= min(budget, op.space.size(op.shape[0]))
            # The tridiagonal solve is O(m^2): every ~m/10 steps from min_steps (a need judged from early Ritz values
            # is too high), at the need, and past it every step (the need falls as the Ritz values grow).
            cadence = m > min_steps and m - last_check >= max(1, m // 10)
            if exhausted or m == need or cadence or (m > need and steps_needed is not None):
                last_check = m
                theta, y, residual, scale, values = _ritz(alphas, betas, pick)
                if steps_needed is not None:
                    need = max(min_steps, steps_needed(values))
                converged = beta <= 1e-10 * scale or (residual <= tol * scale and m >= need)
                if converged or exhausted:
                    return ShortRecurrence(alphas, betas, parts, theta, y, residual, scale, bool(converged), values)
            q, r = r.div_(beta), q  # q_{j+1}; the buffer now holds q_j, the next step's q_{j-1}
    finally:
        bar.close()


def ritz_vector(op: CurvatureOperator, v0: Tensor, run: ShortRecurrence) -> Tensor:
    """``sum_j y_j q_j`` by regenerating the ``q_j`` with the run's own coefficients (``len(y) - 1`` products)."""
    q = v0 / op.space.norm(v0)
    r = torch.empty_like(q)
    hq = _product_buffer(q)
    x = q * float(run.y[0])
    for j in range(len(run.y) - 1):
        _step(op, q, r, run.betas[j - 1] if j else 0.0, run.parts[j], hq)
        q, r = r.div_(run.betas[j]), q
        x.add_(q, alpha=float(run.y[j + 1]))
    return x / op.space.norm(x)


def genuine(alphas: np.ndarray, betas: np.ndarray, theta: np.ndarray, residuals: np.ndarray, eps: float) -> np.ndarray:
    """Mask of the Ritz values ``theta`` (ascending) of a recurrence run without reorthogonalisation that are
    genuine and first of their kind.

    Copies of a converged eigenvalue (within the larger of their residuals) keep one representative. A simple Ritz
    value that is also an eigenvalue of ``T_hat`` (``T_m`` without its first row and column) is spurious: it owes
    nothing to the start vector (Cullum & Willoughby 1985, Lanczos Algorithms for Large Symmetric Eigenvalue
    Computations, vol. 1, sec. 4.5). ``eps`` is the operator's unit roundoff; the match tolerance is
    ``10 m eps max|theta|``.
    """
    m = theta.size
    scale = float(np.max(np.abs(theta))) if m else 0.0
    match = 10 * m * eps * scale
    keep = np.ones(m, dtype=bool)
    if m < 2:
        return keep
    hat = scipy.linalg.eigvalsh_tridiagonal(alphas[1:m], betas[1 : m - 1]) if m > 2 else alphas[1:2].copy()
    order = np.argsort(-theta, kind="stable")
    multiple = np.zeros(m, dtype=bool)
    kept = order[0]
    for b in order[1:]:
        if abs(theta[kept] - theta[b]) <= max(residuals[kept], residuals[b]) + match:
            multiple[kept] = multiple[b] = True
            keep[b] = False  # a copy of the value last kept
        else:
            kept = b
    for i in range(m):
        if keep[i] and not multiple[i] and np.min(np.abs(hat - theta[i])) <= match:
            keep[i] = False
    return keep
