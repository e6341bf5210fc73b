"""What Lanczos from a random start guarantees about the largest eigenvalue, whatever the gaps.

A Ritz residual ``||H v - theta v||`` certifies that ``theta`` is close to *an* eigenvalue, not to the largest: when
the start vector happens to hold little of the top eigenvector, the largest Ritz value can settle on the one below
and pass every residual test (GPT-2 small, experiments/ritz_trajectory.py: a plateau at 483.55 with relative
residual 2e-4 after 40 steps, 485.35 after 300). Kuczynski & Wozniakowski (1992, "Estimating the largest eigenvalue
by the power and Lanczos algorithms with a random start", SIAM J. Matrix Anal. Appl. 13(4), Theorem 4.2) bound the
chance of that for a start drawn uniformly from the sphere (a normalised Gaussian), for any symmetric ``H`` of
order ``n`` and any ``eps`` in (0, 1):

    P[ (lambda_max - theta_k) / (lambda_max - lambda_min) >= eps ] <= 1.648 sqrt(n) exp(-sqrt(eps) (2k - 1)),

``theta_k`` the largest Ritz value from the Krylov space of ``k`` products (their theorem is for positive definite
matrices and error relative to ``lambda_max``; Lanczos is shift-invariant, so applied to ``H - lambda_min I`` it
gives the error relative to the spread). Counting ``k`` as one less than the steps taken (the last product only
measures the residual) keeps the bound on the safe side. No gap enters: ``k ~ ln(sqrt(n) / delta) / (2 sqrt(eps))``
steps suffice, 230 for ``eps = 1e-3`` at ``1 - delta = 0.99`` on GPT-2 small's 1.24e8 parameters.
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
