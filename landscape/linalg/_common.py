"""Building blocks shared by the estimators: probe blocks and start vectors drawn for an operator, blocked products,
the Hutch++-style deflated sketch, sample statistics and the provenance (matvecs, seed, wall time) every result
records."""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Iterator
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from landscape.linalg.probes import Distribution, check_distribution, make_generator, sample_probes, seed_record
from landscape.linalg.results import Estimate
from landscape.operators import hessian
from landscape.operators.base import CurvatureOperator
from landscape.operators.exact import ExactDiagonal, ExactDiagonalUnavailable, exact_diagonal
from landscape.problem import Problem
from landscape.sharding import LOCAL, VectorSpace

#: Entries of each vector recombined at a time where a block operation would otherwise make a whole ``(k, n)``
#: temporary (a thick restart's new basis, Lanczos's reorthogonalisation): the temporary is ``k x COLUMN_CHUNK``.
COLUMN_CHUNK = 1 << 18


def draw(
    op: CurvatureOperator,
    k: int,
    distribution: Distribution,
    gen: torch.Generator,
    *,
    normalize: bool = False,
    out: Tensor | None = None,
) -> Tensor:
    """``k`` probes from ``gen`` as the columns of an ``(n, k)`` tensor in the operator's dtype and device (written
    into ``out`` when given: see :func:`~landscape.linalg.probes.sample_probes`).

    For a sharded operator (``op.space``), this rank's rows drawn a chunk at a time
    (:meth:`landscape.sharding.ShardedSpace.draw`: Rademacher probes are the very ones one process draws)."""
    if op.space.sharded:
        check_distribution(distribution)
        V = op.space.draw(k, distribution, gen, dtype=op.dtype, device=op.device, normalize=normalize)
        return V if out is None else out.copy_(V)
    return sample_probes(
        op.shape[0],
        k,
        distribution=distribution,
        seed=gen,
        dtype=op.dtype,
        device=op.device,
        normalize=normalize,
        out=out,
    )


def as_start_block(v0: Tensor, n: int, columns: str = "p") -> Tensor:
    """A warm start ``(n,)`` or ``(n, j)`` as an ``(n, j)`` block (``columns`` names ``j`` in the error message)."""
    if not isinstance(v0, Tensor) or v0.ndim not in (1, 2) or v0.shape[0] != n:
        raise ValueError(f"v0 must be a tensor of shape ({n},) or ({n}, {columns}), got {getattr(v0, 'shape', v0)}")
    return v0.reshape(n, -1)


def start_block(
    op: CurvatureOperator, v0: Tensor | None, num_probes: int, gen: torch.Generator, distribution: Distribution
) -> Tensor:
    """The start vectors of a Krylov run: ``v0`` as a block, or ``num_probes`` random ones drawn from ``gen``."""
    if v0 is None:
        return draw(op, num_probes, distribution, gen)
    return as_start_block(v0, op.shape[0])


def probe_blocks(
    op: CurvatureOperator, num_probes: int, block_size: int, distribution: Distribution, gen: torch.Generator
) -> Iterator[Tensor]:
    """Yield ``num_probes`` probes in blocks of at most ``block_size`` columns, each drawn only when asked for (so
    stopping early draws nothing more from ``gen``)."""
    taken = 0
    while taken < num_probes:
        b = min(block_size, num_probes - taken)
        yield draw(op, b, distribution, gen)
        taken += b


def apply_in_blocks(op: CurvatureOperator, V: Tensor, block_size: int | None) -> Tensor:
    """``op @ V`` in column blocks of at most ``block_size`` (all at once when ``None``) to bound memory."""
    if block_size is None or V.shape[1] <= block_size:
        return op @ V
    return torch.cat([op @ V[:, i : i + block_size] for i in range(0, V.shape[1], block_size)], dim=1)


def check_budget(num_matvecs: int, minimum: int, name: str) -> None:
    if not isinstance(num_matvecs, int) or num_matvecs < minimum:
        raise ValueError(f"{name} needs num_matvecs >= {minimum}, got {num_matvecs!r}")


def mean_and_stderr(samples: np.ndarray) -> tuple[float, float]:
    """Sample mean and its standard error ``std(ddof=1) / sqrt(s)`` (``nan`` for one sample)."""
    s = samples.size
    mean = float(np.mean(samples))
    stderr = float(np.std(samples, ddof=1) / math.sqrt(s)) if s > 1 else float("nan")
    return mean, stderr


def to_numpy(chunks: list[Tensor]) -> np.ndarray:
    """Concatenate per-block float64 sample tensors into one numpy vector."""
    return torch.cat(chunks).cpu().numpy()


def residual_fraction(Y: Tensor, space: VectorSpace = LOCAL) -> float:
    """Estimate how much of ``||H||_F^2`` a rank-``k`` deflation leaves, from a sketch ``Y = H S`` alone.

    For ``k`` isotropic probes ``S``, ``||Y||_F^2 / k`` is an unbiased estimate of ``||H||_F^2`` and
    ``Y^T Y = S^T H^2 S = sum_i lambda_i^2 (S^T v_i)(S^T v_i)^T``: the few dominant ``lambda_i^2`` each lift one
    eigenvalue of ``Y^T Y``, while the bulk, spread over many directions, adds about its total mass
    ``sum_{i > j} lambda_i^2`` to every eigenvalue. The mean of the smaller half of the eigenvalues of ``Y^T Y`` over
    ``||Y||_F^2 / k`` therefore estimates ``||H - H_j||_F^2 / ||H||_F^2`` with ``j ~ k / 2`` (a conservative proxy
    for what the full rank-``k`` sketch removes). Near 1 for a flat spectrum, near 0 when a few eigenvalues carry the
    Frobenius mass. This is the quantity that decides whether deflation pays (Meyer et al. 2021, Thm. 1:
    Hutch++'s variance is that of Hutchinson on the deflated residual; Persson, Cortinovis, Kressner 2022, "Improved
    variants of the Hutch++ algorithm", SIMAX 43(3), adapt the split to it).
    """
    k = Y.shape[1]
    ev = torch.linalg.eigvalsh(space.inner(Y, Y).double())
    total = float(ev.sum())
    if total <= 0.0:
        return 0.0
    return min(1.0, max(0.0, float(ev[: max(1, k // 2)].mean()) * k / total))


# Deflation must promise this much lower variance before an adaptive estimator commits to it: covers the noise of
# ``residual_fraction`` from a small sketch and its optimism when the bulk has few directions.
DEFLATION_MARGIN = 1.5


def deflation_pays(Y: Tensor, num_matvecs: int, num_residual: int, space: VectorSpace = LOCAL) -> tuple[bool, float]:
    """Whether spending the rest of a budget ``m`` on deflation beats plain Hutchinson, from the sketch ``Y``.

    Hutchinson with ``m`` probes has variance ``~ 2 ||H||_F^2 / m``; a deflated estimator whose residual part gets
    ``g`` samples has ``~ 2 rho ||H||_F^2 / g`` with ``rho`` the residual fraction (:func:`residual_fraction`).
    Deflation is chosen when ``rho m / g < 1 / DEFLATION_MARGIN``. Returns the decision and the estimated ``rho``.
    """
    rho = residual_fraction(Y, space)
    return rho * num_matvecs / max(num_residual, 1) < 1.0 / DEFLATION_MARGIN, rho


class Sketch(NamedTuple):
    """``Q = orth(H S)``, the residual probes ``G`` and their deflation ``(I - QQ^T) G``, and ``H Q``,
    ``H (I - QQ^T) G``."""

    Q: Tensor
    G: Tensor
    deflated: Tensor
    HQ: Tensor
    HG: Tensor

    def sizes(self) -> dict[str, int]:
        """``sketch_size`` ``k`` and ``num_residual`` ``g`` for a result's settings."""
        return {"sketch_size": self.Q.shape[1], "num_residual": self.G.shape[1]}


def range_sketch(
    op: CurvatureOperator, k: int, distribution: Distribution, gen: torch.Generator, block_size: int | None
) -> tuple[Tensor, Tensor]:
    """``k`` probes ``S`` and the sketch ``Y = H S`` (``k`` matvecs)."""
    S = draw(op, k, distribution, gen)
    return S, apply_in_blocks(op, S, block_size)


def deflate(
    op: CurvatureOperator,
    Y: Tensor,
    num_residual: int,
    distribution: Distribution,
    gen: torch.Generator,
    block_size: int | None,
) -> Sketch:
    """Finish the Hutch++ split from a sketch ``Y = H S``: ``Q = orth(Y)``, then ``H [Q, (I - QQ^T) G]`` is one block
    of ``k + g`` columns for ``g = num_residual`` fresh probes ``G``."""
    G = draw(op, num_residual, distribution, gen)
    Q = op.space.orthonormal(Y)
    k = Q.shape[1]
    deflated = G - Q @ op.space.inner(Q, G)
    HZ = apply_in_blocks(op, torch.cat([Q, deflated], dim=1), block_size)
    return Sketch(Q, G, deflated, HZ[:, :k], HZ[:, k:])


def hutchpp_split(num_matvecs: int, n: int) -> tuple[int, int]:
    """The Hutch++ split of a budget ``m``: ``k = min(m // 3, n)`` sketch columns and ``g = m - 2k`` probes."""
    k = min(num_matvecs // 3, n)
    return k, num_matvecs - 2 * k


def deflated_sketch(
    op: CurvatureOperator,
    num_matvecs: int,
    distribution: Distribution,
    gen: torch.Generator,
    block_size: int | None,
) -> Sketch:
    """The Hutch++ split of a budget ``m`` (:func:`hutchpp_split`): ``Q = orth(H S)``, then ``H [Q, (I - QQ^T) G]``."""
    k, g = hutchpp_split(num_matvecs, op.space.size(op.shape[0]))
    _, Y = range_sketch(op, k, distribution, gen, block_size)
    return deflate(op, Y, g, distribution, gen, block_size)


class Meter:
    """Start of one estimator call: counts the operator's matvecs and the wall time from here, records the seed."""

    def __init__(self, op: CurvatureOperator, seed: Any) -> None:
        self.t0 = time.perf_counter()
        self.op = op
        self.seed = seed
        self.before = op.num_matvecs

    @property
    def num_matvecs(self) -> int:
        return self.op.num_matvecs - self.before

    def fields(self) -> dict[str, Any]:
        """``num_matvecs``, ``seed`` (``None`` for a generator) and ``wall_time`` of a result."""
        return {
            "num_matvecs": self.num_matvecs,
            "seed": seed_record(self.seed),
            "wall_time": time.perf_counter() - self.t0,
        }

    def estimate(
        self,
        value: Any,
        stderr: Any,
        *,
        method: str,
        samples: Any,
        settings: dict[str, Any],
        cls: type[Estimate] = Estimate,
        **extra: Any,
    ) -> Estimate:
        """An :class:`Estimate` (or subclass ``cls`` with ``extra`` fields) carrying this call's provenance."""
        fields = self.fields()
        return cls(value=value, stderr=stderr, method=method, samples=samples, settings=settings, **fields, **extra)


def start_probes(
    op: CurvatureOperator, seed: Any, num_matvecs: int, minimum: int, name: str, distribution: str
) -> tuple[Meter, torch.Generator]:
    """The start of every probing estimator: check the distribution, then the budget (``num_matvecs >= minimum``,
    ``name`` in the message); start counting matvecs and the wall time; return the :class:`Meter` and the probe
    generator of ``seed``."""
    prov = Meter(op, seed)
    check_distribution(distribution)
    check_budget(num_matvecs, minimum, name)
    return prov, make_generator(seed)


def as_operator(op: CurvatureOperator | Problem) -> CurvatureOperator:
    """The operator itself, or the Hessian of a :class:`~landscape.problem.Problem`."""
    return hessian(op) if isinstance(op, Problem) else op


def exact_or_reason(op: CurvatureOperator, method: str) -> tuple[ExactDiagonal | None, str]:
    """Try the exact diagonal (:func:`landscape.operators.exact.exact_diagonal`) for ``method="auto"|"exact"``.

    Returns it, or ``None`` and the reason it is not available; with ``method="exact"`` that reason is raised as
    :class:`~landscape.operators.exact.ExactDiagonalUnavailable` (a ``ValueError``) instead. Any other method names
    an estimator: ``(None, "")`` without trying.
    """
    if method not in ("auto", "exact"):
        return None, ""
    try:
        return exact_diagonal(op), ""
    except ExactDiagonalUnavailable as err:
        if method == "exact":
            raise ExactDiagonalUnavailable(f"method='exact' is not available: {err.reason}") from None
        return None, err.reason


def exact_settings(exact: ExactDiagonal, requested: str, what: str) -> dict[str, Any]:
    """Settings of a result computed from an exact diagonal: which method ran and why."""
    return {
        "requested": requested,
        "note": (
            f"{requested}: exact {what} of the {exact.curvature} by second-order backpropagation "
            f"({exact.backend}, {exact.extension}); every layer and the loss are supported"
        ),
        "curvature": exact.curvature,
        "extension": exact.extension,
        "backend": exact.backend,
        "num_batches": exact.num_batches,
    }


def with_note(est: Estimate, requested: str, reason: str, start: float) -> Estimate:
    """``est`` with ``settings["requested"]`` and ``settings["note"]`` saying which method ran and why, and the wall
    time counted from ``start`` (so a failed exact attempt is included)."""
    if requested == "auto":
        note = f"auto: estimated with {est.method} ({est.num_matvecs} matvecs): exact not available: {reason}"
    else:
        note = f"{est.method} as requested"
    settings = {**est.settings, "requested": requested, "note": note}
    return dataclasses.replace(est, settings=settings, wall_time=time.perf_counter() - start)
