"""How the curvature is distributed over the layers: per-layer (per-parameter-group) traces and diagonals in one call.

For a partition of the parameters into groups ``g`` (the layers, the individual parameter tensors, or any named
groups), the trace of each diagonal block of the Hessian (or GGN) is

    tr(H_gg) = sum_{i in g} H_ii,

so all of them, the diagonal itself and the total trace come from one diagonal. Where BackPACK supports every layer
and the loss (:mod:`landscape.operators.exact`) that diagonal is exact (Dangel, Kunstner, Hennig 2020, "BackPACK:
Packing more into backprop", ICLR): one backward pass per batch. Elsewhere one set of Rademacher probes ``z_j``
estimates all of them at once (Hutchinson 1989; Bekas, Kokiopoulou, Saad 2007):

    tr(H_gg) ~ (1/s) sum_j t_jg,    t_jg = sum_{i in g} z_ji (H z_j)_i,    D_i ~ (1/s) sum_j z_ji (H z_j)_i,

unbiased because ``E[z z^T] = I``, with the standard error of each group's trace from the spread of its ``t_jg``
(the per-layer traces of PyHessian, Yao et al. 2020, with error bars).

:meth:`LayerwiseCurvature.adahessian` turns the diagonal into AdaHessian's preconditioner (Yao, Gholami, Shen,
Mustafa, Keutzer, Mahoney 2021, "ADAHESSIAN: An adaptive second order optimizer for machine learning", AAAI): the
diagonal averaged over each convolution kernel's spatial positions, in absolute value, to a power ``k``.
"""

from __future__ import annotations

import fnmatch
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from landscape.linalg.probes import SeedLike, make_generator, sample_probes, seed_record
from landscape.linalg.results import Estimate
from landscape.memory import MemoryBudgetError, default_budget, gib
from landscape.operators import hessian
from landscape.operators.base import CurvatureOperator
from landscape.operators.exact import ExactDiagonalUnavailable, exact_diagonal
from landscape.operators.ggn import GGNOperator
from landscape.operators.hessian import HessianOperator
from landscape.operators.problem_operator import ProblemOperator
from landscape.problem import Problem

LAYERWISE_METHODS = ("auto", "exact", "hutchinson")
GROUPINGS = ("module", "parameter")
BLOCK = 50


@dataclass(frozen=True)
class LayerwiseCurvature:
    """Traces of the diagonal blocks of a curvature matrix, one per parameter group, and its diagonal.

    Attributes
    ----------
    names
        Group names (module names for ``by="module"``; ``"(model)"`` for parameters of the root module).
    members
        The parameter names of each group, in ``problem.param_names`` order.
    sizes
        ``(G,)`` parameters per group.
    traces
        ``(G,)`` float64 ``tr(H_gg)``.
    stderrs
        ``(G,)`` standard errors (0 for the exact method).
    diagonal
        The full diagonal as an :class:`~landscape.linalg.results.Estimate` (``value``/``stderr`` float64 ``(n,)``).
    param_names, param_shapes
        The problem's parameters (to reshape the diagonal, see :meth:`per_parameter`).
    curvature
        ``"hessian"``, ``"ggn"`` or the operator's class name.
    method
        ``"exact"`` or ``"hutchinson"``: what ran.
    num_matvecs, seed, wall_time
        Operator products used (0 when exact), the seed (``None`` when exact or a generator), seconds.
    settings
        ``requested`` (the method asked for), ``note`` (which method ran and why), grouping, probes, problem.
    """

    names: tuple[str, ...]
    members: tuple[tuple[str, ...], ...]
    sizes: np.ndarray
    traces: np.ndarray
    stderrs: np.ndarray
    diagonal: Estimate
    param_names: tuple[str, ...]
    param_shapes: tuple[tuple[int, ...], ...]
    curvature: str
    method: str
    num_matvecs: int
    seed: int | None
    wall_time: float
    total_stderr: float = 0.0
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def total(self) -> float:
        """``tr(H)`` over all selected parameters (its error bar is ``total_stderr``)."""
        return float(self.traces.sum())

    @property
    def mean_curvature(self) -> np.ndarray:
        """``tr(H_gg) / |g|``: the average diagonal entry of each group (comparable across group sizes)."""
        return self.traces / np.maximum(self.sizes, 1)

    @property
    def shares(self) -> np.ndarray:
        """Each group's fraction of the total trace (``nan`` when the total is 0)."""
        total = self.total
        return self.traces / total if total != 0 else np.full_like(self.traces, math.nan)

    def per_parameter(self) -> dict[str, Tensor]:
        """The diagonal as a dict of tensors shaped like the parameters."""
        pieces = torch.split(self.diagonal.value, [math.prod(s) for s in self.param_shapes])
        return {n: p.reshape(s) for n, p, s in zip(self.param_names, pieces, self.param_shapes, strict=True)}

    def adahessian(self, *, power: float = 1.0, spatial_average: bool = True) -> Tensor:
        """AdaHessian's diagonal curvature ``|D_s|^k`` as a flat float64 vector (Yao et al. 2021, Sec. 3).

        ``D_s`` is the diagonal with, for every parameter of 3 or more dimensions (a convolution kernel
        ``(C_out, C_in, k_1, ...)``), each kernel's entries replaced by their mean over the spatial positions
        ``k_1, ...`` (the paper's spatial averaging); ``k = power`` is the Hessian power (1 in the paper's
        experiments). At a fixed point AdaHessian's second moment is ``D_s^2``, so ``|D_s|^k + eps`` is its frozen
        preconditioner: pass it as ``preconditioner=`` to :func:`landscape.stability` with ``optimizer="adam"`` for
        AdaHessian's stability threshold (same momentum recurrence as Adam).
        """
        parts = []
        for d in self.per_parameter().values():
            if spatial_average and d.ndim >= 3:
                d = d.mean(dim=tuple(range(2, d.ndim)), keepdim=True).expand_as(d)
            parts.append(d.reshape(-1))
        return torch.cat(parts).abs().pow(power)

    def table(self) -> str:
        """A plain-text table: group, parameters, trace with its error, trace per parameter and share."""
        exact = self.method == "exact"
        width = max([len("group"), *(len(n) for n in self.names)])
        head = f"{'group':<{width}}  {'params':>9}  {'trace':>12}  {'stderr':>9}  {'trace/param':>11}  {'share':>6}"
        lines = [head, "-" * len(head)]
        for name, size, tr, se, mean, share in zip(
            self.names, self.sizes, self.traces, self.stderrs, self.mean_curvature, self.shares, strict=True
        ):
            err = "exact" if exact else f"{se:.2g}"
            lines.append(f"{name:<{width}}  {size:>9,}  {tr:>12.6g}  {err:>9}  {mean:>11.4g}  {share:>6.1%}")
        total_err = "exact" if exact else f"{self.total_stderr:.2g}"
        lines.append("-" * len(head))
        lines.append(
            f"{'total':<{width}}  {int(self.sizes.sum()):>9,}  {self.total:>12.6g}  {total_err:>9}  "
            f"{self.total / max(int(self.sizes.sum()), 1):>11.4g}  {1:>6.0%}"
        )
        lines.append(f"({self.curvature}, {self.settings.get('note', self.method)}; {self.wall_time:.2f} s)")
        return "\n".join(lines)

    def plot(self, ax: Any = None, *, per_parameter: bool = False, log: bool = False, color: str | None = None) -> Any:
        """Bar plot of the traces per group (or of ``trace / #params`` with ``per_parameter=True``), with +-2
        standard-error bars for estimates; returns the matplotlib axes (see
        :func:`landscape.plot.layerwise.layerwise_plot`)."""
        from landscape.plot.layerwise import layerwise_plot

        return layerwise_plot(self, ax, per_parameter=per_parameter, log=log, color=color)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready numbers (the diagonal itself is left out: use :meth:`per_parameter`)."""
        return {
            "names": list(self.names),
            "members": [list(m) for m in self.members],
            "sizes": self.sizes.tolist(),
            "traces": self.traces.tolist(),
            "stderrs": self.stderrs.tolist(),
            "total": self.total,
            "total_stderr": self.total_stderr,
            "curvature": self.curvature,
            "method": self.method,
            "num_matvecs": self.num_matvecs,
            "seed": self.seed,
            "wall_time": self.wall_time,
            "settings": {k: v for k, v in self.settings.items() if k != "problem"},
        }


def parameter_groups(names: Sequence[str], by: str | Mapping[str, Sequence[str] | str]) -> list[tuple[str, list[str]]]:
    """``(group name, member parameter names)`` in order of first appearance; every parameter in exactly one.

    ``by``: ``"module"`` (the module owning each parameter, ``"(model)"`` for the root's), ``"parameter"`` (one
    group per tensor) or ``{group name: glob or list of globs}`` (first match wins, unmatched parameters form
    ``"(other)"``; a group matching nothing, or an empty mapping, is an error).
    """
    if isinstance(by, Mapping) and not by:
        raise ValueError(
            "by={} names no group: give {group name: glob(s)} over parameter names, e.g. "
            "{'attention': '*attn*', 'mlp': '*mlp*'}, or by='module' / by='parameter'"
        )
    if isinstance(by, str):
        if by not in GROUPINGS:
            raise ValueError(f"by must be one of {GROUPINGS} or a mapping of group names to globs, got {by!r}")
        keyed = [(n if by == "parameter" else (n.rsplit(".", 1)[0] if "." in n else "(model)"), n) for n in names]
    else:
        patterns = {g: [pats] if isinstance(pats, str) else list(pats) for g, pats in by.items()}
        keyed = []
        for n in names:
            hit = next((g for g, pats in patterns.items() if any(fnmatch.fnmatchcase(n, p) for p in pats)), "(other)")
            keyed.append((hit, n))
        for g, pats in by.items():
            if not any(k == g for k, _ in keyed):
                raise ValueError(f"group {g!r} ({pats!r}) matches none of the selected parameters")
    groups: dict[str, list[str]] = {}
    for g, n in keyed:
        groups.setdefault(g, []).append(n)
    return list(groups.items())


def _as_problem_operator(op: CurvatureOperator | Problem) -> ProblemOperator:
    if isinstance(op, Problem):
        return hessian(op)
    if not isinstance(op, ProblemOperator):
        raise TypeError(
            "layerwise_curvature needs a Problem or an operator built from one (hessian(problem), ggn(problem), "
            f"empirical_fisher(problem)) to know the parameter groups; got {type(op).__name__}"
        )
    return op


def layerwise_curvature(
    op: CurvatureOperator | Problem,
    *,
    by: str | Mapping[str, Sequence[str] | str] = "module",
    method: str = "auto",
    num_matvecs: int = 100,
    seed: SeedLike = 0,
) -> LayerwiseCurvature:
    """Per-group traces ``tr(H_gg)`` and the diagonal of a curvature matrix in one call (see the module docstring).

    Parameters
    ----------
    op
        A :class:`~landscape.problem.Problem` (its Hessian) or an operator built from one (``hessian``, ``ggn``,
        ``empirical_fisher``).
    by
        ``"module"`` (default: one group per module owning parameters, e.g. ``"layer1.conv1"`` for
        ``layer1.conv1.weight`` and ``.bias``), ``"parameter"`` (one group per parameter tensor) or a mapping
        ``{group name: glob or list of globs}`` over parameter names (first match wins; unmatched parameters form
        ``"(other)"``).
    method
        ``"auto"`` (exact when BackPACK supports the operator, model and loss; else Hutchinson, with the reason in
        ``settings["note"]``), ``"exact"`` (or an ``ExactDiagonalUnavailable`` error saying why not) or
        ``"hutchinson"``.
    num_matvecs
        Rademacher probes of the estimate (unused when exact).
    seed
        Seed or generator of the probes.

    Returns
    -------
    LayerwiseCurvature
        ``.traces``, ``.stderrs``, ``.diagonal``, ``.table()``, ``.plot()``, ``.per_parameter()``,
        ``.adahessian()``.
    """
    start = time.perf_counter()
    pop = _as_problem_operator(op)
    if method not in LAYERWISE_METHODS:
        raise ValueError(f"method must be one of {LAYERWISE_METHODS}, got {method!r}")
    if method != "exact" and (not isinstance(num_matvecs, int) or num_matvecs < 2):
        raise ValueError(f"num_matvecs must be an int >= 2 (a standard error needs two probes), got {num_matvecs!r}")
    problem = pop.problem
    groups = parameter_groups(problem.param_names, by)
    index = {n: i for i, (_, members) in enumerate(groups) for n in members}
    numels = dict(zip(problem.param_names, problem.param_numels, strict=True))
    segments = _segments(problem, index)
    num_groups = len(groups)
    curvature = (
        "hessian" if isinstance(pop, HessianOperator) else "ggn" if isinstance(pop, GGNOperator) else type(pop).__name__
    )
    settings: dict[str, Any] = {"requested": method, "by": by if isinstance(by, str) else dict(by)}
    reason = ""
    exact = None
    if method in ("auto", "exact"):
        try:
            exact = exact_diagonal(pop)
        except ExactDiagonalUnavailable as err:
            if method == "exact":
                raise ExactDiagonalUnavailable(f"method='exact' is not available: {err.reason}") from None
            reason = err.reason
    if exact is not None:
        value = exact.value.to(pop.device)
        traces = _group_sums(value, segments, num_groups)
        stderrs = np.zeros(num_groups)
        settings["note"] = (
            f"{method}: exact diagonal by second-order backpropagation ({exact.backend}, {exact.extension})"
        )
        diag = Estimate(
            value, torch.zeros_like(value), 0, "exact", seed=None, wall_time=exact.wall_time, settings=dict(settings)
        )
        total_stderr, used, ran, seed_out = 0.0, 0, "exact", None
    else:
        value, diag_stderr, samples, used = _hutchinson_groups(pop, segments, num_groups, num_matvecs, seed)
        traces = torch.as_tensor(samples.mean(axis=0))
        s = samples.shape[0]
        stderrs = samples.std(axis=0, ddof=1) / math.sqrt(s)
        total_stderr = float(samples.sum(axis=1).std(ddof=1) / math.sqrt(s))
        why = f"exact not available: {reason}" if method == "auto" else "as requested"
        settings["note"] = f"{method}: estimated with Rademacher Hutchinson, {used} matvecs ({why})"
        settings["distribution"] = "rademacher"
        elapsed = time.perf_counter() - start
        diag = Estimate(
            value, diag_stderr, used, "hutchinson", seed=seed_record(seed), wall_time=elapsed, settings=dict(settings)
        )
        ran, seed_out = "hutchinson", seed_record(seed)
    settings["problem"] = problem.describe()
    return LayerwiseCurvature(
        names=tuple(g for g, _ in groups),
        members=tuple(tuple(m) for _, m in groups),
        sizes=np.array([sum(numels[n] for n in m) for _, m in groups]),
        traces=traces.cpu().numpy().astype(np.float64),
        stderrs=np.asarray(stderrs, dtype=np.float64),
        diagonal=diag,
        param_names=tuple(problem.param_names),
        param_shapes=tuple(tuple(s) for s in problem.param_shapes),
        curvature=curvature,
        method=ran,
        num_matvecs=used,
        seed=seed_out,
        wall_time=time.perf_counter() - start,
        total_stderr=total_stderr,
        settings=settings,
    )


def _probe_block(n: int, num_probes: int, dtype: torch.dtype, device: torch.device) -> int:
    """The most probes per block (at most ``BLOCK``) that fit :func:`default_budget`; ``MemoryBudgetError`` before
    any product when not even one does.

    A block holds the probes, their products, the products' entrywise product and it in float64 (``3 b`` vectors of
    the operator's dtype and ``b`` of float64), beside two float64 accumulators. The rows are drawn one after
    another from one generator, so the probes are the same whatever the block size (and the same as
    :func:`landscape.linalg.diagonal`'s).
    """
    itemsize = torch.empty((), dtype=dtype).element_size()
    per_probe = n * (3 * itemsize + 8)
    fixed = n * 2 * 8
    budget = default_budget(device)
    fits = max(0, (budget - fixed) // per_probe)
    if fits < 1:
        raise MemoryBudgetError(
            f"layerwise_curvature's Hutchinson estimate needs {gib(fixed + per_probe)} for one probe of {n:,} "
            f"parameters, over the budget {gib(budget)} (80% of the free memory). Fix: method='exact' where it is "
            "supported, a Problem on fewer parameters (params=[...]), or a machine with more memory"
        )
    return int(min(BLOCK, num_probes, fits))


def _segments(problem: Problem, index: dict[str, int]) -> list[tuple[int, int, int]]:
    """``(start, stop, group)`` ranges of the flat vector, one per parameter: group sums without an index vector of
    the full length (an int64 index is 1 GB on GPT-2 small)."""
    out, start = [], 0
    for name, numel in zip(problem.param_names, problem.param_numels, strict=True):
        out.append((start, start + numel, index[name]))
        start += numel
    return out


def _group_sums(P: Tensor, segments: list[tuple[int, int, int]], num_groups: int) -> Tensor:
    """``(G, *rest)`` float64 sums of the rows of ``P`` over each group's segments."""
    out = torch.zeros(num_groups, *P.shape[1:], dtype=torch.float64, device=P.device)
    for s, e, g in segments:
        out[g] += P[s:e].double().sum(dim=0)
    return out


def _hutchinson_groups(
    op: CurvatureOperator, segments: list[tuple[int, int, int]], num_groups: int, num_probes: int, seed: SeedLike
) -> tuple[Tensor, Tensor, np.ndarray, int]:
    """Rademacher probes in blocks bounded by the memory budget: the diagonal estimate and its stderr per entry, and
    the per-probe group sums ``t_jg`` as an ``(s, G)`` array. Probes are drawn as :func:`landscape.linalg.diagonal`
    draws them (same seed, same diagonal)."""
    n = op.shape[0]
    block = _probe_block(n, num_probes, op.dtype, op.device)
    gen = make_generator(seed)
    before = op.num_matvecs
    total = torch.zeros(n, dtype=torch.float64, device=op.device)
    total_sq = torch.zeros_like(total)
    sums = []
    taken = 0
    while taken < num_probes:
        b = min(block, num_probes - taken)
        Z = sample_probes(n, b, distribution="rademacher", seed=gen, dtype=op.dtype, device=op.device)
        P = (Z * (op @ Z)).double()
        del Z
        total += P.sum(dim=1)
        total_sq += (P * P).sum(dim=1)
        sums.append(_group_sums(P, segments, num_groups).T)
        del P
        taken += b
    s = num_probes
    mean = total / s
    var = ((total_sq - s * mean * mean) / (s - 1)).clamp_min(0.0)
    return mean, torch.sqrt(var / s), torch.cat(sums).cpu().numpy(), op.num_matvecs - before


__all__ = ["LayerwiseCurvature", "layerwise_curvature"]
