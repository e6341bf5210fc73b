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

Those guarantees are for rounding errors of order ``eps ||H||`` per step and unit vectors to rounding. torch's CPU
float32 norm is 1.5% low at GPT-2 small's 1.24e8 entries (:mod:`landscape.reductions`): a recurrence that divides
by it makes ``q_j`` 1.5% too long at every step, and its largest Ritz value climbed from 483.55 at step 40 to 491.25
at step 800 (the top eigenvalue is 483.52). Norms and inner products are therefore summed in float64 (the
operator's :class:`~landscape.sharding.VectorSpace`), and ``(w - alpha q_j) / beta_j`` is formed in float64 a chunk
at a time, only its result rounded; the product is still accumulated in place, so the recurrence holds two vectors
in any dtype.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.linalg
import torch
from torch import Tensor

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
    scales: list[float]  # every step's first value of beta (its divisor): the Ritz vector's replay
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


#: Entries of the vectors converted to float64 at a time: 2^16 took 0.29 s for a step's two passes at GPT-2 small's
#: size, 2^18 0.35 s, 2^20 0.40 s (cache-resident chunks).
CHUNK = 1 << 16


def _pairs(q: Tensor, r: Tensor):
    """``(q, r)`` a chunk at a time, ``q``'s chunk in float64 (no float64 copy of a long vector)."""
    for x, y in zip(q.split(CHUNK), r.split(CHUNK), strict=True):
        yield x.double(), y


def _step(
    op: CurvatureOperator, q: Tensor, r: Tensor, beta_prev: float, replay: tuple[float, float] | None
) -> tuple[float, float, float]:
    """Turn ``r`` (holding ``q_{j-1}``, or anything when ``beta_prev == 0``) into ``q_{j+1}`` in place.

    The product is added into ``-beta_{j-1} q_{j-1}``, giving ``w``. One float64 pass takes ``q^T w``, ``q^T q`` and
    ``w^T w``: ``alpha_j = q^T w / q^T q`` (the local reorthogonalisation: ``w - alpha q`` is orthogonal to the
    stored ``q_j``, not only to a unit vector) and ``beta_j^2 = w^T w - alpha_j q^T w``. A second pass forms
    ``(w - alpha_j q_j) / beta_j`` in float64, only the result rounded, and its squared norm ``nu``; where the
    subtraction for ``beta_j`` cancelled (``|nu - 1| > 1e-6``: ``beta_j`` far below ``||w||``, an invariant
    subspace) the vector is normalised once more and ``beta_j`` is ``sqrt(nu)`` times the first value. Four
    passes over the vectors with the product's, where forming, measuring, correcting and normalising took six.

    ``replay = (alpha_j, scale)`` (a second run) skips the first pass and repeats the rest to the bit. Returns
    ``(alpha_j, scale, beta_j)``, ``scale`` the first value of ``beta_j``."""
    space = op.space
    if beta_prev == 0.0:
        r.zero_()
    else:
        r.mul_(-beta_prev)
    op.add_product_(q, r)
    if replay is None:
        sums = []
        for x, y in _pairs(q, r):
            yd = y.double()
            sums.append(torch.stack((torch.dot(x, yd), torch.dot(x, x), torch.dot(yd, yd))))
        qw, qq, ww = space.reduce_(torch.stack(sums).sum(dim=0)).tolist()
        alpha = qw / qq
        scale = math.sqrt(max(ww - alpha * qw, 0.0))
    else:
        alpha, scale = replay
    divisor = scale if scale > 0.0 else 1.0
    norms = []
    for x, y in _pairs(q, r):
        rd = y.double().sub_(x, alpha=alpha).div_(divisor)
        y.copy_(rd)
        norms.append(torch.dot(rd, rd))
    nu = float(space.reduce_(torch.stack(norms).sum().reshape(1))[0])
    if abs(nu - 1.0) > 1e-6 and nu > 0.0:
        r.div_(math.sqrt(nu))
    return alpha, scale, divisor * math.sqrt(nu)


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
    alphas: list[float] = []
    betas: list[float] = []
    scales: list[float] = []
    bar = progress_bar(budget, "top eigenvalue", progress, unit="step")
    last_check = 0
    need = min_steps
    try:
        while True:
            alpha, first, beta = _step(op, q, r, betas[-1] if betas else 0.0, None)
            alphas.append(alpha)
            betas.append(beta)
            scales.append(first)
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
                    return ShortRecurrence(alphas, betas, scales, theta, y, residual, scale, bool(converged), values)
            q, r = r, q  # q_{j+1}; the buffer now holds q_j, the next step's q_{j-1}
    finally:
        bar.close()


def ritz_vector(op: CurvatureOperator, v0: Tensor, run: ShortRecurrence) -> Tensor:
    """``sum_j y_j q_j`` by regenerating the ``q_j`` with the run's own coefficients (``len(y) - 1`` products)."""
    q = v0 / op.space.norm(v0)
    r = torch.empty_like(q)
    x = q * float(run.y[0])
    for j in range(len(run.y) - 1):
        _step(op, q, r, run.betas[j - 1] if j else 0.0, (run.alphas[j], run.scales[j]))
        q, r = r, q
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
