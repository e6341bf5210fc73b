"""Trace of a symmetric operator: exact where the model allows it, else Hutchinson, Hutch++ or XTrace.

- Exact (``method="exact"``, and ``"auto"`` whenever it applies): ``tr(H) = sum_i H_ii`` from the exact diagonal of a
  Hessian or GGN operator built from a Problem (second-order backpropagation with BackPACK, Dangel, Kunstner,
  Hennig 2020; :mod:`landscape.operators.exact`). One backward pass per batch, whose width is the number of
  classes: on W1 (MLP, 118k parameters, 2048 samples) it takes a few gradients' time, while a 100-probe estimate
  costs 100 Hessian-vector products and stays ~0.3% off (``experiments/bench_trace.py``).

The three estimators only multiply the operator with blocks of probe vectors (one data pass per block for a Hessian).

- Hutchinson (Girard 1989; Hutchinson 1989): ``tr(H) ~ (1/s) sum_j z_j^T H z_j`` with ``E[z z^T] = I``. Variance
  ``(2/s)(||H||_F^2 - sum_i H_ii^2)`` for Rademacher probes, ``(2/s)||H||_F^2`` for Gaussian ones: error
  ``O(1/sqrt(s))``.
- Hutch++ (Meyer, Musco, Musco, Woodruff 2021, "Hutch++: Optimal Stochastic Trace Estimation"): with ``m`` matvecs,
  ``Q = orth(H S)`` for ``S`` of ``m/3`` columns, then ``tr(Q^T H Q)`` exactly plus Hutchinson with the remaining
  ``m/3`` probes on the deflated ``(I - QQ^T) H (I - QQ^T)``. Error ``O(1/m)`` when the spectrum decays.
- XTrace (Epperly, Tropp, Webber 2023, "XTrace: making the most of every sample in stochastic trace estimation",
  SIMAX 45(1)): the exchangeable version of Hutch++. With ``Y = H Omega`` for ``m/2`` test vectors and
  ``Q_(i) = orth(Y_{-i})`` (all samples but ``i``), each
  ``t_i = tr(Q_(i)^T H Q_(i)) + w_i^T (I - Q_(i) Q_(i)^T) H (I - Q_(i) Q_(i)^T) w_i`` is unbiased; the estimate is
  their mean and ``std(t_i) / sqrt(m/2)`` is its error estimate. All ``m/2`` leave-one-out projectors come from one
  QR ``Y = Q R`` by a rank-one downdate: ``Q_(i) Q_(i)^T = Q (I - s_i s_i^T) Q^T`` with ``s_i`` the normalised
  ``i``-th column of ``R^{-T}``.
- Adaptive deflation (default for both): deflation only pays when the sketch captures most of ``||H||_F^2``. The
  sketch itself estimates the residual fraction; when deflation does not promise a clear gain, the sketch products
  are kept as Hutchinson samples and the rest of the budget goes to fresh Hutchinson probes (same probe stream), so
  the estimator is never worse than Hutchinson at equal products on flat spectra.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from landscape.linalg._common import (
    Meter,
    apply_in_blocks,
    as_operator,
    check_budget,
    deflate,
    deflation_pays,
    exact_or_reason,
    hutchpp_split,
    mean_and_stderr,
    probe_blocks,
    range_sketch,
    start_probes,
    to_numpy,
    with_note,
)
from landscape.linalg.diagonal import choose_estimator, exact_estimate
from landscape.linalg.probes import Distribution, SeedLike, check_distribution
from landscape.linalg.results import Estimate
from landscape.memory import (
    KRYLOV_SHARE,
    PRODUCT_COPIES,
    MemoryBudgetError,
    block_width,
    default_block_size,
    gib,
    krylov_vectors,
    require,
    trace_vectors,
)
from landscape.operators.base import CurvatureOperator
from landscape.problem import Problem
from landscape.progress import progress as progress_bar

TraceMethod = Literal["auto", "exact", "hutch++", "hutchinson", "xtrace"]
TRACE_METHODS: tuple[str, ...] = ("auto", "exact", "hutch++", "hutchinson", "xtrace")
TRACE_ESTIMATORS: tuple[str, ...] = ("hutch++", "hutchinson", "xtrace")
MIN_MATVECS = {"hutchinson": 1, "hutch++": 3, "xtrace": 4}


class _Counted(CurvatureOperator):
    """``op`` whose products advance a progress bar by their number of columns (one update per block product)."""

    def __init__(self, op: CurvatureOperator, bar: object):
        super().__init__(op.shape[0], op.dtype, op.device)
        self.op = op
        self.space = op.space
        self.bar = bar

    def _matmat(self, V: Tensor) -> Tensor:
        out = self.op @ V
        self.bar.update(V.shape[1])
        return out


def hutchinson(
    op: CurvatureOperator,
    *,
    num_matvecs: int = 100,
    seed: SeedLike = 0,
    distribution: Distribution = "rademacher",
    block_size: int | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    min_samples: int = 10,
) -> Estimate:
    """Hutchinson's estimator ``tr(H) ~ (1/s) sum_j z_j^T H z_j``, stderr ``std(z^T H z) / sqrt(s)``.

    With ``rtol`` or ``atol`` it stops early, after a block, once at least ``min_samples`` probes give
    ``stderr <= max(atol, rtol * |estimate|)`` (a standard-error rule; never "the running mean stopped moving").
    ``num_matvecs`` is then the maximum. Blocks default to 50 probes (``block_size``).
    """
    prov, gen = start_probes(op, seed, num_matvecs, 1, "hutchinson", distribution)
    stopping = rtol is not None or atol is not None
    bs = default_block_size(block_size, num_matvecs)
    chunks = []
    taken = 0
    stopped_early = False
    for Z in probe_blocks(op, num_matvecs, bs, distribution, gen):
        chunks.append(op.space.sums((op @ Z).mul_(Z)))  # in place: no third block
        taken += Z.shape[1]
        if stopping and taken >= min_samples and taken < num_matvecs:
            mean, stderr = mean_and_stderr(to_numpy(chunks))
            if stderr <= max(atol or 0.0, (rtol or 0.0) * abs(mean)):
                stopped_early = True
                break
    samples = to_numpy(chunks)
    value, stderr = mean_and_stderr(samples)
    return prov.estimate(
        value,
        stderr,
        method="hutchinson",
        samples=samples,
        settings={
            "distribution": distribution,
            "block_size": bs,
            "rtol": rtol,
            "atol": atol,
            "min_samples": min_samples,
            "stopped_early": stopped_early,
        },
    )


def _hutchinson_from_sketch(
    prov: Meter,
    S: Tensor,
    Y: Tensor,
    num_matvecs: int,
    distribution: Distribution,
    gen: torch.Generator,
    block_size: int | None,
    method: str,
    settings: dict,
) -> Estimate:
    """The estimate of a sketching ``method`` whose deflation does not pay: Hutchinson for a budget ``m`` that
    already paid for ``Y = H S``, from the sketch probes' own quadratic forms ``s_j^T y_j`` (isotropic probes, so
    unbiased), then fresh probes up to ``m``. Probes are drawn from the same stream in the same order as
    :func:`hutchinson` draws them."""
    op = prov.op
    chunks = [op.space.sums(Y * S)]
    rest = num_matvecs - S.shape[1]
    if rest > 0:
        bs = default_block_size(block_size, rest)
        chunks += [op.space.sums((op @ Z).mul_(Z)) for Z in probe_blocks(op, rest, bs, distribution, gen)]
    samples = to_numpy(chunks)
    value, stderr = mean_and_stderr(samples)
    return prov.estimate(value, stderr, method=method, samples=samples, settings=settings)


def _decide(
    op: CurvatureOperator, Y: Tensor, num_matvecs: int, num_residual: int, adaptive: bool, settings: dict
) -> bool:
    """Whether to deflate; records the decision and the estimated residual fraction in ``settings``."""
    if not adaptive or Y.shape[1] >= op.space.size(op.shape[0]):
        settings.update(adaptive=adaptive, deflated=True)
        return True
    pays, rho = deflation_pays(Y, num_matvecs, num_residual, op.space)
    settings.update(adaptive=True, deflated=pays, residual_fraction=rho)
    return pays


def hutchpp(
    op: CurvatureOperator,
    *,
    num_matvecs: int = 100,
    seed: SeedLike = 0,
    distribution: Distribution = "rademacher",
    block_size: int | None = None,
    adaptive: bool = True,
) -> Estimate:
    """Hutch++ (Meyer et al. 2021): ``tr(Q^T H Q) + (1/g) sum_j g_j^T (I-QQ^T) H (I-QQ^T) g_j``.

    ``k = m // 3`` sketch columns give ``Q = orth(H S)`` (``k`` matvecs); ``H [Q, (I-QQ^T) G]`` is one block of
    ``k + g`` columns with ``g = m - 2k``. The sketch part is exact, so ``stderr`` is the Hutchinson standard error
    of the deflated residual samples (``samples``).

    With ``adaptive=True`` (default) the sketch ``Y = H S`` first estimates the residual fraction
    ``rho ~ ||(I-QQ^T) H (I-QQ^T)||_F^2 / ||H||_F^2`` (:func:`landscape.linalg._common.residual_fraction`). Deflation
    only lowers the variance when ``rho m / g < 1`` (``~ rho < 1/3``); when it does not promise a
    ``DEFLATION_MARGIN`` gain, the ``k`` sketch products are kept as Hutchinson samples and the rest of the budget
    goes to fresh Hutchinson probes, so on a flat spectrum the result *is* Hutchinson's with ``m`` probes instead of
    up to 3x its variance (the adaptive idea of Persson, Cortinovis, Kressner 2022, SIMAX 43(3), with a one-sketch
    decision). ``settings`` records ``deflated`` and ``residual_fraction``.
    """
    prov, gen = start_probes(op, seed, num_matvecs, 3, "hutch++", distribution)
    k, g = hutchpp_split(num_matvecs, op.space.size(op.shape[0]))
    S, Y = range_sketch(op, k, distribution, gen, block_size)
    settings: dict = {"distribution": distribution, "block_size": block_size}
    if not _decide(op, Y, num_matvecs, g, adaptive, settings):
        return _hutchinson_from_sketch(prov, S, Y, num_matvecs, distribution, gen, block_size, "hutch++", settings)
    sk = deflate(op, Y, g, distribution, gen, block_size)
    exact = float(op.space.sums(sk.Q * sk.HQ).sum())
    samples = op.space.sums(sk.deflated * sk.HG).cpu().numpy()
    residual, stderr = mean_and_stderr(samples)
    settings.update(sk.sizes())
    return prov.estimate(exact + residual, stderr, method="hutch++", samples=samples, settings=settings)


def xtrace(
    op: CurvatureOperator,
    *,
    num_matvecs: int = 100,
    seed: SeedLike = 0,
    distribution: Distribution = "rademacher",
    block_size: int | None = None,
    adaptive: bool = True,
) -> Estimate:
    """XTrace (Epperly, Tropp, Webber 2023): the mean of the ``s = m // 2`` leave-one-out estimates ``t_i``.

    With ``Y = H Omega = Q R``, ``Z = H Q``, ``C = Q^T Z``, ``W = Q^T Omega`` and ``s_i`` the unit ``i``-th column
    of ``R^{-T}``:

    - ``tr(Q_(i)^T H Q_(i)) = tr(C) - s_i^T C s_i``;
    - ``u_i = (I - Q_(i) Q_(i)^T) w_i = r_i + c_i Q s_i`` with ``r_i = w_i - Q W_i`` and ``c_i = s_i^T W_i``, so
      ``u_i^T H u_i = r_i^T H r_i + 2 c_i s_i^T (R_i - C W_i) + c_i^2 s_i^T C s_i`` using ``H r_i = y_i - Z W_i``.

    For Gaussian and sphere test vectors ``u_i`` is rescaled to squared norm ``n - s + 1`` (the dimension of the
    space it is uniform in: the paper's normalisation, which keeps ``t_i`` unbiased and lowers its variance);
    Rademacher vectors are used as drawn (unbiased since ``E[w w^T] = I`` and ``Q_(i)`` does not depend on
    ``w_i``). ``stderr = std(t_i) / sqrt(s)`` is the paper's error estimate; the ``t_i`` are positively
    correlated, so it runs somewhat optimistic (measured ~1.2-1.4x on power-law and random spectra: +-2 stderr
    covers ~87% of runs, +-3 about 96%). If ``H Omega`` is numerically rank
    deficient, ``rank(H) < s`` and the projection onto ``range(Y)`` already carries the whole trace: that exact value
    is returned with ``stderr = 0``.

    ``adaptive=True`` (default) decides from ``Y = H Omega`` as :func:`hutchpp` does (here ``g = s``): on a flat
    spectrum the ``s`` products become Hutchinson samples and the other half of the budget fresh Hutchinson probes.
    """
    prov, gen = start_probes(op, seed, num_matvecs, 4, "xtrace", distribution)
    if op.space.sharded:
        raise NotImplementedError(
            "xtrace on a sharded operator is not implemented (its leave-one-out updates need a distributed QR with "
            "R); use method='hutch++' (the default) or 'hutchinson', which run on shards"
        )
    n = op.shape[0]
    s = min(num_matvecs // 2, n)
    Om, Y = range_sketch(op, s, distribution, gen, block_size)
    settings: dict = {"distribution": distribution, "block_size": block_size, "num_test_vectors": s}
    if not _decide(op, Y, num_matvecs, s, adaptive, settings):
        return _hutchinson_from_sketch(prov, Om, Y, num_matvecs, distribution, gen, block_size, "xtrace", settings)
    Q, R = torch.linalg.qr(Y)
    Z = apply_in_blocks(op, Q, block_size)
    C = Q.T @ Z
    C = 0.5 * (C + C.T)
    svals = torch.linalg.svdvals(R)
    rank_tol = s * torch.finfo(R.dtype).eps * float(svals[0])
    if float(svals[0]) == 0.0 or float(svals[-1]) <= rank_tol:
        U, sv, _ = torch.linalg.svd(R)
        Ur = U[:, sv > rank_tol]
        value = float((Ur * (C @ Ur)).sum().double())
        samples = np.full(s, value)
        stderr = 0.0
        settings["rank_deficient"] = True
    else:
        eye = torch.eye(s, dtype=R.dtype, device=R.device)
        Sv = torch.linalg.solve_triangular(R.T, eye, upper=False)
        Sv = Sv / Sv.norm(dim=0, keepdim=True)
        W = Q.T @ Om
        CS = C @ Sv
        sCs = (Sv * CS).sum(dim=0)
        projected = torch.trace(C) - sCs
        Rm = Om - Q @ W
        rHr = (Rm * (Y - Z @ W)).sum(dim=0)
        c = (Sv * W).sum(dim=0)
        cross = (Sv * (R - C @ W)).sum(dim=0)
        uHu = rHr + 2.0 * c * cross + c * c * sCs
        if distribution != "rademacher":
            unorm2 = (Rm * Rm).sum(dim=0) + c * c
            uHu = uHu * ((n - s + 1) / unorm2)
        samples = (projected + uHu).double().cpu().numpy()
        value, stderr = mean_and_stderr(samples)
        settings["rank_deficient"] = False
    return prov.estimate(value, stderr, method="xtrace", samples=samples, settings=settings)


def fit_memory(
    op: CurvatureOperator, estimator: str, num_matvecs: int, block_size: int | None, memory_budget: int | None
) -> tuple[str, int | None, str]:
    """``(estimator, block_size, note)`` within ``KRYLOV_SHARE`` of the memory budget: a sketching estimator whose
    vectors do not fit gives way to Hutchinson in blocks that do (same budget of products, the variance of plain
    Hutchinson); :class:`~landscape.memory.MemoryBudgetError` when not even one probe and its product fit."""
    n = op.shape[0]
    cap = krylov_vectors(memory_budget, n, op.dtype, op.device)
    per_vector = n * torch.empty((), dtype=op.dtype).element_size()
    # The estimator's own vectors and its product's output (memory.estimate counts the latter as "product"); the
    # blocks below are fitted at PRODUCT_COPIES vectors a probe, what a batched strategy holds.
    loop = bool(getattr(op, "only_loops", False))  # a Hessian that multiplies blocks column by column
    need = trace_vectors(estimator, num_matvecs, block_size, loop) + block_width(
        "trace", {"method": estimator, "num_matvecs": num_matvecs, "block_size": block_size}
    )
    if need <= cap:
        return estimator, block_size, ""
    if cap < 2:
        raise MemoryBudgetError(
            f"trace needs at least 2 vectors of {n:,} parameters ({gib(2 * per_vector)}: a probe and its product); "
            f"{KRYLOV_SHARE:.0%} of memory_budget allows {cap}. Raise memory_budget= or analyse fewer parameters"
        )
    block = max(1, min(default_block_size(block_size, num_matvecs), cap // PRODUCT_COPIES))
    note = (
        f"{estimator} with {num_matvecs} products needs {need} vectors ({gib(need * per_vector)}); "
        f"{KRYLOV_SHARE:.0%} of memory_budget allows {cap}: "
    )
    note += "Hutchinson" if estimator != "hutchinson" else "smaller blocks"
    return "hutchinson", block, note + f" in blocks of {block} probes instead"


def trace(
    op: CurvatureOperator | Problem,
    *,
    method: TraceMethod = "auto",
    fallback: Literal["hutch++", "hutchinson", "xtrace"] = "hutch++",
    num_matvecs: int = 100,
    seed: SeedLike = 0,
    distribution: Distribution = "rademacher",
    block_size: int | None = None,
    adaptive: bool = True,
    rtol: float | None = None,
    atol: float | None = None,
    progress: bool = False,
    memory_budget: int | None = None,
) -> Estimate:
    """``tr(H)``: exact from the exact diagonal where supported, else estimated from ``num_matvecs`` products.

    Parameters
    ----------
    op
        Symmetric operator, or a :class:`~landscape.problem.Problem` (then its Hessian).
    method
        ``"auto"`` (default): exact (``sum_i H_ii``, :func:`landscape.operators.exact.exact_diagonal`) when ``op``
        is a Hessian or GGN operator of a Problem whose layers and loss BackPACK supports, else ``fallback``; for any
        other operator (a dense matrix, a transformed operator) it *is* ``fallback``. ``"exact"``: exact or a
        :class:`~landscape.operators.exact.ExactDiagonalUnavailable` (``ValueError``) saying why not.
        ``"hutch++"`` (Meyer et al. 2021), ``"xtrace"`` (Epperly et al. 2023) or ``"hutchinson"``: always estimate.
        The first two exploit a decaying spectrum (error ``O(1/m)`` instead of ``O(1/sqrt(m))``: 50-90x more
        accurate at 60 products on ``lambda_i = i^-2``). On the flat bulk of a trained network's Hessian a fixed
        deflation captures little of the Frobenius mass and loses to Hutchinson (W1, 30 seeds: 1.5-2.3x larger
        median error); with ``adaptive=True`` they detect this from their sketch and spend the budget as Hutchinson
        does, so they are never worse than it at equal products. XTrace is usually the more accurate of the two on
        decaying spectra, but its error estimate runs ~1.2-1.4x optimistic; Hutch++'s is a plain standard error.
    fallback
        The estimator ``"auto"`` runs when the exact trace is not available (default ``"hutch++"``).
    num_matvecs
        Budget ``m`` of the estimator (the maximum for Hutchinson with a stopping rule); unused by the exact path.
    seed
        Seed or generator.
    distribution
        Probe distribution: ``"rademacher"``, ``"gaussian"`` or ``"sphere"``.
    block_size
        Maximum columns per operator application (memory bound); default: whole blocks (Hutchinson: 50).
    adaptive
        Hutch++/XTrace: decide from the sketch whether deflation pays (see :func:`hutchpp`); ``False`` always
        deflates (the papers' fixed split).
    rtol, atol
        Hutchinson only: stop once ``stderr <= max(atol, rtol |estimate|)``.
    progress
        Show a progress bar over the estimator's products on stderr (advanced once per block product).
    memory_budget
        Bytes the analysis may use (default: 80% of the memory available now). When the estimator's vectors
        (:func:`landscape.memory.trace_vectors`) do not fit half of it, Hutchinson runs instead, in blocks that fit
        (``settings["memory"]`` says so); :class:`~landscape.memory.MemoryBudgetError` if not even one probe fits.

    Returns
    -------
    Estimate
        ``value``, ``stderr`` (0 when exact) and the per-sample values in ``samples`` (``None`` when exact).
        ``method`` is what ran; ``settings["requested"]`` the method asked for and ``settings["note"]`` why this
        one ran; ``settings["deflated"]`` says which way an adaptive estimator went.
    """
    start = time.perf_counter()
    op = as_operator(op)
    estimator = choose_estimator(method, fallback, TRACE_METHODS, TRACE_ESTIMATORS)
    if (rtol is not None or atol is not None) and estimator != "hutchinson":
        raise ValueError(f"rtol/atol stopping is only available for method='hutchinson', not {estimator!r}")
    check_distribution(distribution)
    check_budget(num_matvecs, MIN_MATVECS[estimator], estimator)
    exact, reason = exact_or_reason(op, method)
    if exact is not None:
        return exact_estimate(exact, float(exact.value.sum()), 0.0, method, "trace", start)
    estimator, block_size, memory_note = fit_memory(op, estimator, num_matvecs, block_size, memory_budget)
    settings = {"method": estimator, "num_matvecs": num_matvecs, "block_size": block_size}
    require(op, "trace", memory_budget, "Lower num_matvecs/block_size or use smaller batches", **settings)
    bar = progress_bar(num_matvecs, f"trace ({estimator})", progress, unit="matvec")
    if progress:
        op = _Counted(op, bar)
    if estimator == "hutchinson":
        est = hutchinson(
            op,
            num_matvecs=num_matvecs,
            seed=seed,
            distribution=distribution,
            block_size=block_size,
            rtol=rtol,
            atol=atol,
        )
    else:
        fn = hutchpp if estimator == "hutch++" else xtrace
        est = fn(
            op, num_matvecs=num_matvecs, seed=seed, distribution=distribution, block_size=block_size, adaptive=adaptive
        )
    bar.close()
    est = with_note(est, method, reason, start)
    if memory_note:
        est = dataclasses.replace(est, settings={**est.settings, "note": memory_note, "memory": memory_note})
    return est
