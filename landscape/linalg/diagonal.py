"""The diagonal of a symmetric operator: exact by second-order backpropagation where the model allows it, estimated
otherwise.

``method="exact"`` (and ``"auto"`` whenever it applies) reads the diagonal of a Hessian or GGN operator built from a
Problem off one BackPACK backward pass per batch (:mod:`landscape.operators.exact`; Dangel, Kunstner, Hennig 2020):
exact, no probes, ``stderr = 0``. Otherwise the diagonal is estimated:

Bekas, Kokiopoulou, Saad 2007 ("An estimator for the diagonal of a matrix", Appl. Numer. Math. 57(11)):

    D = (sum_j z_j * H z_j) / (sum_j z_j * z_j)        (elementwise products and division)

Exact for a diagonal ``H`` with ``+-1`` probes; for Rademacher probes each entry is a plain mean with variance
``(1/s) sum_{k != i} H_ik^2``. The ``"diag++"`` variant deflates a randomized range sketch first (in the spirit of
Hutch++; Baston & Nakatsukasa 2022): ``diag(H) = diag(H Q Q^T) + diag(H (I - QQ^T))`` with the first term exact
from ``H Q`` and the second estimated as above, which pays off when a few directions dominate ``H``.
"""

from __future__ import annotations

import time
from typing import Any, Literal

import torch
from torch import Tensor

from landscape.linalg._common import (
    Meter,
    as_operator,
    check_budget,
    deflated_sketch,
    exact_or_reason,
    exact_settings,
    probe_blocks,
    with_note,
)
from landscape.linalg.probes import Distribution, SeedLike, check_distribution, make_generator
from landscape.linalg.results import Estimate
from landscape.memory import default_block_size
from landscape.operators.base import CurvatureOperator
from landscape.operators.exact import ExactDiagonal
from landscape.problem import Problem

DiagonalMethod = Literal["auto", "exact", "hutchinson", "diag++"]
DIAGONAL_METHODS: tuple[str, ...] = ("auto", "exact", "hutchinson", "diag++")
DIAGONAL_ESTIMATORS: tuple[str, ...] = ("hutchinson", "diag++")


def choose_estimator(method: str, fallback: str, methods: tuple[str, ...], estimators: tuple[str, ...]) -> str:
    """The estimator that runs for ``method``: ``method`` itself, or ``fallback`` for ``"auto"`` and ``"exact"``.

    ``ValueError`` when ``method`` is not one of ``methods`` or the estimator not one of ``estimators`` (the checks
    :func:`diagonal` and :func:`landscape.linalg.trace.trace` share).
    """
    if method not in methods:
        raise ValueError(f"method must be one of {methods}, got {method!r}")
    estimator = method if method in estimators else fallback
    if estimator not in estimators:
        raise ValueError(f"fallback must be one of {estimators}, got {fallback!r}")
    return estimator


def exact_estimate(exact: ExactDiagonal, value: Any, stderr: Any, requested: str, what: str, start: float) -> Estimate:
    """The :class:`Estimate` of an exact result (``value``, ``stderr``) computed from ``exact``: no products, no seed,
    no samples, the wall time since ``start``, ``settings`` by :func:`~landscape.linalg._common.exact_settings`."""
    return Estimate(
        value=value,
        stderr=stderr,
        num_matvecs=0,
        seed=None,
        method="exact",
        wall_time=time.perf_counter() - start,
        samples=None,
        settings=exact_settings(exact, requested, what),
    )


class _RatioAccumulator:
    """Streams ``a_j = z_j * (Hz)_j`` and ``b_j = z_j * z_j`` blocks into the ratio ``sum a / sum b`` and its
    standard error ``sqrt(sum_j (a_j - D b_j)^2 / (s (s - 1))) / mean(b)`` (delta method for a ratio estimator).

    Sums are kept about a pilot ``D0`` from the first block, which avoids cancellation when the spread is tiny
    (for a diagonal ``H`` and Rademacher probes it is exactly zero).
    """

    def __init__(self) -> None:
        self.count = 0
        self.D0: Tensor | None = None

    def add(self, a: Tensor, b: Tensor) -> None:
        a, b = a.double(), b.double()
        if self.D0 is None:
            self.D0 = a.sum(dim=1) / b.sum(dim=1)
            self.sa = torch.zeros_like(self.D0)
            self.sb = torch.zeros_like(self.D0)
            self.saa = torch.zeros_like(self.D0)
            self.sab = torch.zeros_like(self.D0)
            self.sbb = torch.zeros_like(self.D0)
        shifted = a - self.D0.unsqueeze(1) * b
        self.sa += shifted.sum(dim=1)
        self.sb += b.sum(dim=1)
        self.saa += (shifted * shifted).sum(dim=1)
        self.sab += (shifted * b).sum(dim=1)
        self.sbb += (b * b).sum(dim=1)
        self.count += a.shape[1]

    def result(self) -> tuple[Tensor, Tensor]:
        s = self.count
        delta = self.sa / self.sb
        value = self.D0 + delta
        if s < 2:
            return value, torch.full_like(value, float("nan"))
        ss = (self.saa - 2.0 * delta * self.sab + delta * delta * self.sbb).clamp_min(0.0)
        stderr = torch.sqrt(ss / (s * (s - 1))) / (self.sb / s)
        return value, stderr


def diagonal(
    op: CurvatureOperator | Problem,
    *,
    method: DiagonalMethod = "auto",
    fallback: Literal["hutchinson", "diag++"] = "hutchinson",
    num_matvecs: int = 100,
    seed: SeedLike = 0,
    distribution: Distribution = "rademacher",
    block_size: int | None = None,
) -> Estimate:
    """``diag(H)``: exact by second-order backpropagation where supported, else Bekas et al. (2007) or diag++.

    Parameters
    ----------
    op
        Symmetric operator, or a :class:`~landscape.problem.Problem` (then its Hessian).
    method
        ``"auto"`` (default): exact when ``op`` is a Hessian or GGN operator of a Problem whose layers and loss
        BackPACK supports (:func:`landscape.operators.exact.exact_support`), else ``fallback``. ``"exact"``: exact
        or a :class:`~landscape.operators.exact.ExactDiagonalUnavailable` (``ValueError``) saying why not.
        ``"hutchinson"`` (Bekas et al.) or ``"diag++"``: always estimate.
    fallback
        The estimator ``"auto"`` runs when the exact diagonal is not available.
    num_matvecs
        Budget ``m`` of the estimators (unused by the exact path). ``"diag++"`` spends ``k = m // 3`` on the sketch
        ``H S``, ``k`` on ``H Q`` and the remaining ``m - 2k`` on probes of the deflated part (one block for both).
    seed
        Seed or generator of the estimators.
    distribution
        Probe distribution (``"rademacher"`` makes the estimator exact on diagonal matrices).
    block_size
        Maximum columns per operator application; default 50 for the plain estimator, whole blocks for diag++.

    Returns
    -------
    Estimate
        ``value`` and ``stderr`` are float64 tensors of shape ``(n,)`` on the operator's device (``stderr`` zero
        for the exact diagonal). ``method`` is what ran (``"exact"``, ``"hutchinson"`` or ``"diag++"``);
        ``settings["requested"]`` the method asked for and ``settings["note"]`` why this one ran (for ``"auto"``
        falling back: the unsupported layer, loss or missing package).
    """
    start = time.perf_counter()
    op = as_operator(op)
    estimator = choose_estimator(method, fallback, DIAGONAL_METHODS, DIAGONAL_ESTIMATORS)
    check_distribution(distribution)
    check_budget(num_matvecs, 3 if estimator == "diag++" else 1, f"diagonal(method={estimator!r})")
    exact, reason = exact_or_reason(op, method)
    if exact is not None:
        value = exact.value.to(op.device)
        return exact_estimate(exact, value, torch.zeros_like(value), method, "diagonal", start)
    est = _estimate(op, estimator, num_matvecs, seed, distribution, block_size)
    return with_note(est, method, reason, start)


def _estimate(
    op: CurvatureOperator,
    method: str,
    num_matvecs: int,
    seed: SeedLike,
    distribution: Distribution,
    block_size: int | None,
) -> Estimate:
    prov = Meter(op, seed)
    gen = make_generator(seed)
    acc = _RatioAccumulator()
    settings: dict = {"distribution": distribution}
    if method == "hutchinson":
        bs = default_block_size(block_size, num_matvecs)
        for Z in probe_blocks(op, num_matvecs, bs, distribution, gen):
            acc.add((op @ Z).mul_(Z), Z.square_())  # in place: the probes are not needed again
        value, stderr = acc.result()
        settings["block_size"] = bs
    else:
        sk = deflated_sketch(op, num_matvecs, distribution, gen, block_size)
        exact = (sk.HQ * sk.Q).sum(dim=1).double()
        acc.add(sk.G * sk.HG, sk.G * sk.G)
        residual, stderr = acc.result()
        value = exact + residual
        settings.update(block_size=block_size, **sk.sizes())
    return prov.estimate(value, stderr, method=method, samples=None, settings=settings)
