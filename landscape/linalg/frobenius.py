"""Stochastic Frobenius norm of a symmetric operator.

``||H||_F^2 = tr(H^T H) = E ||H z||^2`` for any probe with ``E[z z^T] = I`` (the Hutchinson identity applied to
``H^2``; e.g. Avron & Toledo 2011). The squared norm is a sample mean with stderr ``std(||Hz||^2) / sqrt(s)``; the
norm's stderr follows by the delta method, ``se(sqrt(X)) ~ se(X) / (2 sqrt(X))``.
"""

from __future__ import annotations

import math
import time

import torch

from landscape.linalg.probes import (
    Distribution,
    SeedLike,
    check_distribution,
    make_generator,
    sample_probes,
    seed_record,
)
from landscape.linalg.results import FrobeniusEstimate
from landscape.linalg.trace import mean_and_stderr
from landscape.operators.base import CurvatureOperator


def frobenius_norm(
    op: CurvatureOperator,
    *,
    num_matvecs: int = 100,
    seed: SeedLike = 0,
    distribution: Distribution = "rademacher",
    block_size: int | None = None,
) -> FrobeniusEstimate:
    """Estimate ``||H||_F`` and ``||H||_F^2`` from ``num_matvecs`` probes.

    Parameters
    ----------
    op
        Symmetric operator.
    num_matvecs
        Number of probes ``s`` (one matvec each).
    seed
        Seed or generator.
    distribution
        Probe distribution (``"rademacher"``, ``"gaussian"``, ``"sphere"``).
    block_size
        Probes per operator application (default ``min(s, 50)``).

    Returns
    -------
    FrobeniusEstimate
        ``value``/``stderr`` for the norm, ``squared``/``squared_stderr`` for its square, ``samples`` the
        ``||H z_j||^2``.
    """
    t0 = time.perf_counter()
    check_distribution(distribution)
    if not isinstance(num_matvecs, int) or num_matvecs < 1:
        raise ValueError(f"frobenius_norm needs num_matvecs >= 1, got {num_matvecs!r}")
    n = op.shape[0]
    gen = make_generator(seed)
    bs = block_size or min(num_matvecs, 50)
    before = op.num_matvecs
    chunks = []
    taken = 0
    while taken < num_matvecs:
        b = min(bs, num_matvecs - taken)
        Z = sample_probes(n, b, distribution=distribution, seed=gen, dtype=op.dtype, device=op.device)
        HZ = op @ Z
        chunks.append((HZ * HZ).sum(dim=0).double())
        taken += b
    samples = torch.cat(chunks).cpu().numpy()
    squared, squared_stderr = mean_and_stderr(samples)
    norm = math.sqrt(max(squared, 0.0))
    stderr = squared_stderr / (2.0 * norm) if norm > 0 else float("nan")
    return FrobeniusEstimate(
        value=norm,
        stderr=stderr,
        num_matvecs=op.num_matvecs - before,
        seed=seed_record(seed),
        method="hutchinson",
        wall_time=time.perf_counter() - t0,
        samples=samples,
        settings={"distribution": distribution, "block_size": bs},
        squared=squared,
        squared_stderr=squared_stderr,
    )
