"""What Lanczos from a random start guarantees about the largest eigenvalue, whatever the gaps.

A Ritz residual ``||H v - theta v||`` certifies that ``theta`` is close to *an* eigenvalue, not to the largest: when
the start vector happens to hold little of the top eigenvector, the largest Ritz value can settle on the one below
and pass every residual test (tests/linalg/test_random_start.py: eigenvalues 1.0 and 0.99, a 1-in-50 start
settles on 0.99). Kuczynski & Wozniakowski (1992, "Estimating the largest eigenvalue
by the power and Lanczos algorithms with a random start", SIAM J. Matrix Anal. Appl. 13(4), Theorem 4.2) bound the
chance of that for a start drawn uniformly from the sphere (a normalised Gaussian), for any symmetric ``H`` of
order ``n`` and any ``eps`` in (0, 1):

    P[ (lambda_max - theta_k) / (lambda_max - lambda_min) >= eps ] <= 1.648 sqrt(n) exp(-sqrt(eps) (2k - 1)),

``theta_k`` the largest Ritz value from the Krylov space of ``k`` products (their theorem is for positive definite
matrices and error relative to ``lambda_max``; Lanczos is shift-invariant, so applied to ``H - lambda_min I`` it
gives the error relative to the spread). Counting ``k`` as one less than the steps taken (the last product only
measures the residual) keeps the bound on the safe side. No gap enters: ``k ~ ln(sqrt(n) / delta) / (2 sqrt(eps))``
steps suffice, 230 for ``eps = 1e-3`` at ``1 - delta = 0.99`` on GPT-2 small's 1.24e8 parameters.

An error relative to the eigenvalue itself (what "to 1e-3" usually means) needs the spread, which the Ritz values
bound from below as they go: :func:`relative_steps_for` and :func:`relative_error_at` (GPT-2 small's Hessian spans
-460.5 to 483.5, so 1e-3 of the eigenvalue is 5.1e-4 of the spread: 336 steps with both ends bounded). The bounds
are for exact arithmetic; a float32 recurrence of hundreds of steps stays close to it only with accurate norms
(torch's float32 norm made GPT-2's creep above the spectrum: :mod:`landscape.reductions`).
"""

from __future__ import annotations

import math

#: The constant of Kuczynski & Wozniakowski's Theorem 4.2.
KW_CONSTANT = 1.648


def _check(n: int, confidence: float) -> None:
    if n < 1:
        raise ValueError(f"the operator's order must be positive, got {n}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")


def failure_probability(n: int, steps: int, eps: float) -> float:
    """Upper bound on ``P[(lambda_max - theta) / spread >= eps]`` after ``steps`` Lanczos steps from a random start."""
    if not 0.0 < eps < 1.0:
        raise ValueError(f"eps must be in (0, 1), got {eps!r}")
    k = steps - 1
    if k < 1:
        return 1.0
    return min(1.0, KW_CONSTANT * math.sqrt(n) * math.exp(-math.sqrt(eps) * (2 * k - 1)))


def steps_for(n: int, eps: float, confidence: float = 0.99) -> int:
    """Lanczos steps after which, with probability at least ``confidence`` over the random start, the largest Ritz
    value is within ``eps * (lambda_max - lambda_min)`` of ``lambda_max``: the least ``m`` with
    :func:`failure_probability` ``<= 1 - confidence``; never more than ``n`` (the space is then exhausted: exact)."""
    _check(n, confidence)
    if not 0.0 < eps < 1.0:
        raise ValueError(f"eps must be in (0, 1), got {eps!r}")
    k = math.ceil((math.log(KW_CONSTANT * math.sqrt(n) / (1.0 - confidence)) / math.sqrt(eps) + 1.0) / 2.0)
    return min(n, max(k, 1) + 1)


def error_at(n: int, steps: int, confidence: float = 0.99) -> float:
    """The ``eps`` that ``steps`` Lanczos steps guarantee with probability ``confidence``: the largest Ritz value is
    then within ``eps * (lambda_max - lambda_min)`` of ``lambda_max`` (1.0: no guarantee yet; 0.0: ``steps >= n``,
    the space is exhausted)."""
    _check(n, confidence)
    if steps >= n:
        return 0.0
    k = steps - 1
    if k < 1:
        return 1.0
    root = math.log(KW_CONSTANT * math.sqrt(n) / (1.0 - confidence)) / (2 * k - 1)
    return min(1.0, root * root)


def _each_end(confidence: float) -> float:
    """The confidence for each end of the spectrum so that both bounds hold together with ``confidence``."""
    return 1.0 - (1.0 - confidence) / 2.0


def relative_steps_for(n: int, eps: float, theta: float, spread: float, confidence: float = 0.99) -> int:
    """Lanczos steps after which, with probability at least ``confidence``, the extreme Ritz value ``theta`` is
    within ``eps |theta|`` of the extreme eigenvalue, judged from the Ritz values seen so far.

    The spread is not known: the Ritz values' ``spread = theta_max - theta_min`` stands for it. After ``m`` steps
    both ends are within ``e_m (lambda_max - lambda_min)`` of their eigenvalues (each with probability
    ``1 - (1 - confidence) / 2``), so ``lambda_max - lambda_min <= spread / (1 - 2 e_m)`` and the error is below
    ``e_m spread / (1 - 2 e_m)``; that is at most ``eps |theta|`` once ``e_m <= c / (1 + 2 c)``,
    ``c = eps |theta| / spread``. Re-evaluate as ``theta`` and ``spread`` move (they only grow). ``n`` for
    ``theta = 0`` (no relative error can be certified)."""
    _check(n, confidence)
    if not 0.0 < eps < 1.0:
        raise ValueError(f"eps must be in (0, 1), got {eps!r}")
    if theta == 0.0:
        return n
    c = eps * abs(theta) / spread if spread > 0.0 else math.inf
    return steps_for(n, 0.5 if math.isinf(c) else c / (1.0 + 2.0 * c), _each_end(confidence))


def relative_error_at(n: int, steps: int, theta: float, spread: float, confidence: float = 0.99) -> float:
    """The relative error ``|lambda - theta| / |theta|`` that ``steps`` steps guarantee with probability
    ``confidence``, from the Ritz values' ``spread`` (see :func:`relative_steps_for`); ``inf`` before any."""
    e = error_at(n, steps, _each_end(confidence))
    if e >= 0.5 or theta == 0.0:
        return math.inf
    return e * spread / ((1.0 - 2.0 * e) * abs(theta))
