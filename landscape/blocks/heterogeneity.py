"""How different the diagonal blocks' spectra are: Jensen-Shannon distances between their densities.

Zhang, Chen, Ding, Li, Sun, Luo 2024 ("Why Transformers Need Adam: A Hessian Perspective") measure *block
heterogeneity* by the Jensen-Shannon divergence between the blocks' SLQ densities,

    JS(rho_i || rho_j) = KL(rho_i || m) / 2 + KL(rho_j || m) / 2,    m = (rho_i + rho_j) / 2,

and find it large across a transformer's blocks and small across a CNN's. Here every block's Gauss-smoothed SLQ
density is evaluated on one common grid with one common width, by default theirs, ``sigma = sqrt(1e-5)`` (the
``sigma`` of their code, a fixed width in the eigenvalues' own units), on a grid fine enough for it (a spacing of
``sigma / 2``, at most ``MAX_POINTS`` points), normalised to a discrete distribution over the grid; the reported
number is the Jensen-Shannon *distance* ``sqrt(JS)`` with base-2 logarithms: a metric on distributions, 0 between
identical densities and 1 between densities with disjoint supports (Endres & Schindelin 2003).

``sigma="resolution"`` smooths instead at the Lanczos resolution of the widest support, ``(max lambda - min
lambda) / m``: scale-free, but one block with a wide spectrum then blurs every other block into one bump at zero
(measured: a trained ViT's patch embedding, ``lambda_max ~ 500``, makes its 19 other blocks look alike, and the
transformer comes out *less* heterogeneous than a CNN; ``experiments/block_heterogeneity.py``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from landscape.linalg.slq import SpectralDensity

DEFINITION = (
    "Jensen-Shannon distance sqrt(JS(p||q)), base-2 logarithms (0 = identical, 1 = disjoint), between the blocks' "
    "Gauss-smoothed SLQ densities evaluated on one common grid with one common width and normalised to sum 1 "
    "(Zhang et al. 2024 use the divergence JS = distance^2)"
)
#: Zhang et al.'s smoothing width (``sigma = 1e-5 ** 0.5`` in their code).
ZHANG_SIGMA = 1e-5**0.5
#: Grid points at most (the spacing is ``sigma / 2`` below that).
MAX_POINTS = 200_000


def js_distance(p: np.ndarray, q: np.ndarray) -> float:
    """``sqrt(KL(p||m)/2 + KL(q||m)/2)``, ``m = (p + q)/2``, base 2, for nonnegative weights (normalised here)."""
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    if p.shape != q.shape or p.ndim != 1:
        raise ValueError(f"js_distance needs two 1-d arrays of one length, got shapes {p.shape} and {q.shape}")
    if np.any(p < 0) or np.any(q < 0) or not p.sum() > 0 or not q.sum() > 0:
        raise ValueError("js_distance needs nonnegative weights with a positive sum")
    p = p / p.sum()
    q = q / q.sum()
    m = 0.5 * (p + q)

    def kl(a: np.ndarray) -> float:
        nz = (a > 0) & (m > 0)  # m >= a/2 > 0, barring underflow of subnormal weights
        return float(np.sum(a[nz] * np.log2(a[nz] / m[nz])))

    return float(np.sqrt(max(0.5 * kl(p) + 0.5 * kl(q), 0.0)))


@dataclass(frozen=True)
class Heterogeneity:
    """Pairwise Jensen-Shannon distances between block densities (see the module docstring).

    ``np.asarray(h)`` is the ``(B, B)`` distance matrix.

    Attributes
    ----------
    names
        Block names (rows and columns of :attr:`distances`).
    distances
        ``(B, B)`` symmetric, zero diagonal.
    grid, densities
        The common grid ``(G,)`` and each block's smoothed density on it ``(B, G)`` (each integrates to about 1).
    sigma
        The common smoothing width.
    definition
        What the numbers are, in words.
    """

    names: tuple[str, ...]
    distances: np.ndarray
    grid: np.ndarray
    densities: np.ndarray
    sigma: float
    definition: str = DEFINITION

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        return self.distances if dtype is None else self.distances.astype(dtype)

    def _upper(self) -> np.ndarray:
        return self.distances[np.triu_indices(len(self.names), k=1)]

    @property
    def mean(self) -> float:
        """Mean distance over distinct pairs (``nan`` with one block)."""
        upper = self._upper()
        return float(upper.mean()) if upper.size else float("nan")

    @property
    def max(self) -> float:
        upper = self._upper()
        return float(upper.max()) if upper.size else float("nan")

    @property
    def most_different(self) -> tuple[str, str, float] | None:
        """The pair of blocks farthest apart and their distance (``None`` with one block)."""
        if len(self.names) < 2:
            return None
        d = np.where(np.eye(len(self.names), dtype=bool), -np.inf, self.distances)
        i, j = np.unravel_index(int(np.argmax(d)), d.shape)
        return self.names[min(i, j)], self.names[max(i, j)], float(self.distances[i, j])

    def to_dict(self) -> dict[str, Any]:
        pair = self.most_different
        return {
            "names": list(self.names),
            "distances": self.distances.tolist(),
            "mean": self.mean,
            "max": self.max,
            "most_different": None if pair is None else {"blocks": [pair[0], pair[1]], "distance": pair[2]},
            "sigma": self.sigma,
            "grid": {"min": float(self.grid[0]), "max": float(self.grid[-1]), "points": int(self.grid.size)},
            "definition": self.definition,
        }


def heterogeneity(
    names: Sequence[str],
    densities: Sequence[SpectralDensity],
    *,
    sigma: float | str | None = None,
    points: int | None = None,
) -> Heterogeneity:
    """Jensen-Shannon distances between ``densities`` on a common grid (see the module docstring).

    ``sigma``: the common width, ``None`` for Zhang et al.'s ``sqrt(1e-5)``, or ``"resolution"``; ``points``: grid
    points (default: a spacing of ``sigma / 2``, between 1,000 and ``MAX_POINTS``).
    """
    if len(names) != len(densities) or not densities:
        raise ValueError("heterogeneity needs one density per block name, and at least one")
    lo = min(d.lambda_min for d in densities)
    hi = max(d.lambda_max for d in densities)
    if sigma is None:
        sigma = ZHANG_SIGMA
    elif sigma == "resolution":
        steps = max(int(d.settings.get("num_steps", d.nodes.shape[1])) for d in densities)
        sigma = (hi - lo) / steps if hi > lo else 1e-3 * max(abs(hi), 1.0)
    if isinstance(sigma, str) or not sigma > 0:
        raise ValueError(f"sigma must be a width > 0, None (Zhang et al.'s) or 'resolution', got {sigma!r}")
    if points is None:
        points = int(min(max(math.ceil((hi - lo + 8 * sigma) / (sigma / 2)) + 1, 1000), MAX_POINTS))
    grid = np.linspace(lo - 4 * sigma, hi + 4 * sigma, int(points))
    dens = np.stack([d.density(grid, sigma) for d in densities])
    B = len(names)
    dist = np.zeros((B, B))
    for i in range(B):
        for j in range(i + 1, B):
            dist[i, j] = dist[j, i] = js_distance(dens[i], dens[j])
    return Heterogeneity(tuple(names), dist, grid, dens, float(sigma))
