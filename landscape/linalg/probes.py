"""Seeded random probe vectors for the stochastic estimators.

Every probe block is drawn from a *local* ``torch.Generator`` (CPU, float64) and only then cast and moved to the
operator's dtype and device, so

- the same ``seed`` gives bit-identical probes on every device and (up to the final rounding) every dtype;
- the global random state of torch, numpy and :mod:`random` is never read or advanced;
- probe ``j`` does not depend on how the probes are blocked: rows of a ``(k, n)`` draw are consumed in order and
  transposed, so drawing ``10`` then ``20`` columns gives the same 30 vectors as drawing 30 at once.

Distributions (all isotropic, ``E[z z^T] = I``, which every unbiased estimator here relies on):

``"rademacher"``
    independent entries ``+-1`` with probability 1/2 (lowest-variance Hutchinson probe for real matrices).
``"gaussian"``
    independent standard normal entries.
``"sphere"``
    uniform on the sphere of radius ``sqrt(n)`` (a normalised Gaussian, rescaled).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from landscape._checks import Seed, generator

Distribution = Literal["rademacher", "gaussian", "sphere"]
DISTRIBUTIONS: tuple[str, ...] = ("rademacher", "gaussian", "sphere")

# One seed type and one generator rule for the whole package (landscape._checks): the estimators' names for them.
SeedLike = Seed
make_generator = generator


#: Entries of a Rademacher probe drawn at a time (8 MB of int64).
RADEMACHER_CHUNK = 1 << 20


def seed_record(seed: SeedLike) -> int | None:
    """The seed to store in a result: the int, or ``None`` for a caller-owned generator (its state is not a seed)."""
    return None if isinstance(seed, torch.Generator) else int(seed)


def check_distribution(distribution: str) -> None:
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"distribution must be one of {DISTRIBUTIONS}, got {distribution!r}")


def sample_probes(
    n: int,
    k: int,
    *,
    distribution: Distribution = "rademacher",
    seed: SeedLike = 0,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
    normalize: bool = False,
    out: Tensor | None = None,
) -> Tensor:
    """Draw ``k`` probe vectors of length ``n`` as the columns of an ``(n, k)`` tensor.

    Parameters
    ----------
    n, k
        Vector length and number of vectors.
    distribution
        ``"rademacher"``, ``"gaussian"`` or ``"sphere"`` (see the module docstring); all satisfy ``E[z z^T] = I``.
    seed
        An int (a fresh CPU generator is seeded with it) or a ``torch.Generator`` that is advanced.
    dtype, device
        Where the probes live; they are drawn in float64 on the generator's device first.
    normalize
        Scale every column to unit Euclidean norm (the probes of stochastic Lanczos quadrature).
    out
        An ``(n, k)`` tensor to fill (any strides: e.g. the first vectors of a Krylov basis, so that no block of
        probes is held beside it); ``dtype`` and ``device`` are then its own.

    Returns
    -------
    Tensor
        ``out``, or a new ``(n, k)`` tensor whose columns are contiguous (the transpose of ``(k, n)`` rows).
    """
    check_distribution(distribution)
    if n < 1 or k < 0:
        raise ValueError(f"need n >= 1 and k >= 0, got n={n}, k={k}")
    gen = make_generator(seed)
    gdev = gen.device
    if out is None:  # each probe contiguous (the layout of an operator's products): written and multiplied whole
        out = torch.empty(k, n, dtype=dtype, device=device).T
    elif tuple(out.shape) != (n, k):
        raise ValueError(f"out must have shape ({n}, {k}), got {tuple(out.shape)}")
    if distribution == "rademacher" and gdev.type == "cpu":
        # Column by column, RADEMACHER_CHUNK entries at a time: the CPU generator fills randint in order, so the
        # chunks continue the one stream of a (k, n) draw, and +-1 (over the norm sqrt(n), exact in float64) rounds
        # to the same numbers. Holds the block and a chunk, where a whole draw held k vectors of int64 and of
        # float64 besides the block (5 probes of GPT-2 small: 10 GB; BENCHMARKS.md, stop 24).
        # The integers are drawn straight into floating point (the same 32-bit draws whatever the dtype), in the
        # probes' own dtype unless normalised (+-1 is exact in every one): 0.45 s a GPT-2-sized probe, not 0.9 s.
        chunk_dtype = torch.float64 if normalize else out.dtype
        for j in range(k):
            for start in range(0, n, RADEMACHER_CHUNK):
                m = min(RADEMACHER_CHUNK, n - start)
                chunk = torch.randint(0, 2, (m,), generator=gen, dtype=chunk_dtype).mul_(2.0).sub_(1.0)
                out[start : start + m, j] = chunk.div_(math.sqrt(n)) if normalize else chunk
                del chunk  # before the next chunk is drawn
        return out
    if distribution == "rademacher":
        rows = torch.randint(0, 2, (k, n), generator=gen, device=gdev).to(torch.float64).mul_(2.0).sub_(1.0)
    else:
        rows = torch.randn(k, n, generator=gen, device=gdev, dtype=torch.float64)
        if distribution == "sphere":
            rows.mul_(math.sqrt(n) / rows.norm(dim=1, keepdim=True))
    if normalize:
        rows.div_(rows.norm(dim=1, keepdim=True))
    out.copy_(rows.T)
    return out
