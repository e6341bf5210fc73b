"""Stochastic Frobenius norm of a symmetric operator.

``||H||_F^2 = tr(H^T H) = E ||H z||^2`` for any probe with ``E[z z^T] = I`` (the Hutchinson identity applied to
``H^2``; e.g. Avron & Toledo 2011). The squared norm is a sample mean with stderr ``std(||Hz||^2) / sqrt(s)``; the
norm's stderr follows by the delta method, ``se(sqrt(X)) ~ se(X) / (2 sqrt(X))``.
"""

from __future__ import annotations

import math

from landscape.linalg._common import mean_and_stderr, probe_blocks, start_probes, to_numpy
from landscape.linalg.probes import Distribution, SeedLike
from landscape.linalg.results import FrobeniusEstimate
from landscape.memory import PRODUCT_COPIES, default_block_size, krylov_vectors
from landscape.operators.base import CurvatureOperator


def frobenius_norm(
    op: CurvatureOperator,
    *,
    num_matvecs: int = 100,
    seed: SeedLike = 0,
    distribution: Distribution = "rademacher",
    block_size: int | None = None,
    memory_budget: int | None = None,
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
        Probes per operator application (default ``min(s, 50)``, lowered so that a block costs at most
        ``KRYLOV_SHARE`` of the memory budget at ``PRODUCT_COPIES`` vectors per probe; at least 1).
    memory_budget
        Bytes (default: from the machine's free memory, :func:`landscape.memory.default_budget`).

    Returns
    -------
    FrobeniusEstimate
        ``value``/``stderr`` for the norm, ``squared``/``squared_stderr`` for its square, ``samples`` the
        ``||H z_j||^2``.
    """
    prov, gen = start_probes(op, seed, num_matvecs, 1, "frobenius_norm", distribution)
    bs = default_block_size(block_size, num_matvecs)
    if block_size is None:
        bs = max(1, min(bs, krylov_vectors(memory_budget, op.shape[0], op.dtype, op.device) // PRODUCT_COPIES))
    chunks = []
    for Z in probe_blocks(op, num_matvecs, bs, distribution, gen):
        HZ = op @ Z
        chunks.append(op.space.sums(HZ.square_()))  # in place: no fourth block
    samples = to_numpy(chunks)
    squared, squared_stderr = mean_and_stderr(samples)
    norm = math.sqrt(max(squared, 0.0))
    stderr = squared_stderr / (2.0 * norm) if norm > 0 else float("nan")
    return prov.estimate(
        norm,
        stderr,
        method="hutchinson",
        samples=samples,
        settings={"distribution": distribution, "block_size": bs},
        cls=FrobeniusEstimate,
        squared=squared,
        squared_stderr=squared_stderr,
    )
