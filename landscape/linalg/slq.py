"""Spectral density by stochastic Lanczos quadrature (SLQ), and the LLA criteria read from it.

Target: ``phi(t) = (1/P) sum_i delta(t - lambda_i)`` and its smoothing ``phi_sigma = phi * g_sigma``. For each of
``n_v`` unit probes ``v_l``, ``m`` Lanczos steps with full reorthogonalisation give ``T_m = Y diag(theta) Y^T`` and
the Gauss rule ``v^T f(H) v ~ sum_k tau_k f(theta_k)`` with ``tau_k = Y_{1k}^2`` (exact for polynomials of degree
``<= 2m - 1``). Since ``E[v^T f(H) v] = tr f(H) / P`` for unit isotropic probes,

    phi_sigma(t) ~ (1/n_v) sum_l sum_k tau_lk g_sigma(t - theta_lk)
    tr f(H)      ~ (P/n_v) sum_l sum_k tau_lk f(theta_lk)

(Lin, Saad, Yang 2016; Ubaru, Chen, Saad 2017; Ghorbani, Krishnan, Xiao 2019; Papyan 2020). The resolution is about
``(lambda_max - lambda_min) / m``, which sets the default ``sigma``. Outliers must be counted from Ritz values, never
from weights (an outlier's weight per probe is ``~1/P`` with O(1) relative noise).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from landscape.linalg._common import draw
from landscape.linalg.lanczos import LanczosDecomposition, lanczos
from landscape.linalg.probes import Distribution, SeedLike, check_distribution, make_generator, seed_record
from landscape.linalg.results import Diagnostics, Estimate
from landscape.operators.base import CurvatureOperator


@dataclass(frozen=True)
class LLACriteria:
    """Criteria of Gabdullin et al. 2024 for trusting a Laplace/quadratic local approximation.

    ``re = |lambda_min / lambda_max|`` (from the extreme Ritz values) and
    ``Kh_n = sum_{theta<0} |theta_i w_i|^n / sum_{theta>0} (theta_i w_i)^n`` over all quadrature nodes of all
    probes (the ``1/n_v`` weight normalisation cancels in the ratio). Both are 0 for a positive semi-definite ``H``
    restricted to nonnegative nodes and grow with the weight of negative curvature.
    """

    re: float
    kh: float
    n: float
    lambda_min: float
    lambda_max: float


@dataclass(frozen=True)
class SpectralDensity(Diagnostics):
    """SLQ quadrature of the spectral density of a symmetric operator.

    Attributes
    ----------
    nodes, weights
        ``(num_probes, num_steps)`` float64 Ritz values and Gauss weights ``tau = (first eigenvector components)^2``;
        each row of ``weights`` sums to 1. A recurrence that broke down early (invariant subspace: its quadrature is
        then exact) is padded with zero nodes and zero weights beyond ``steps[l]``.
    num_params
        ``P``, the operator dimension.
    sigma
        Default Gaussian smoothing width: ``(max theta - min theta) / num_steps``, the Lanczos resolution, unless
        given explicitly.
    steps
        ``(num_probes,)`` Lanczos steps taken per probe.
    num_matvecs, method
        Operator applications; ``"slq"``.
    seed, wall_time, settings
        From :class:`~landscape.linalg.results.Diagnostics`; ``settings`` holds ``num_steps``, ``num_probes``,
        ``distribution`` and whether ``sigma`` was derived.
    """

    nodes: np.ndarray
    weights: np.ndarray
    num_params: int
    sigma: float
    steps: np.ndarray
    num_matvecs: int
    method: str = "slq"

    @classmethod
    def from_lanczos(
        cls, decomposition: LanczosDecomposition, num_params: int, *, sigma: float | None = None
    ) -> SpectralDensity:
        """Build the density from an existing Lanczos pass (unit-normalised starts; no restarts inside)."""
        nodes, weights = decomposition.quadrature()
        steps = decomposition.steps.copy()
        mask = np.arange(nodes.shape[1])[None, :] < steps[:, None]
        lo, hi = float(nodes[mask].min()), float(nodes[mask].max())
        num_steps = int(decomposition.settings.get("num_steps", nodes.shape[1]))
        derived = sigma is None
        if derived:
            sigma = (hi - lo) / num_steps
            if sigma <= 0.0:
                # A single point spectrum: any width works; keep it small relative to the eigenvalue's scale.
                sigma = 1e-3 * max(abs(hi), 1.0)
        if not sigma > 0:
            raise ValueError(f"sigma must be > 0, got {sigma}")
        settings = dict(decomposition.settings)
        settings.update(num_probes=nodes.shape[0], sigma_derived=derived)
        return cls(
            nodes=nodes,
            weights=weights,
            num_params=int(num_params),
            sigma=float(sigma),
            steps=steps,
            num_matvecs=decomposition.num_matvecs,
            seed=decomposition.seed,
            wall_time=decomposition.wall_time,
            settings=settings,
        )

    @property
    def num_probes(self) -> int:
        return self.nodes.shape[0]

    @property
    def mask(self) -> np.ndarray:
        """``(num_probes, num_steps)`` bool: which entries are real quadrature nodes (not padding)."""
        return np.arange(self.nodes.shape[1])[None, :] < self.steps[:, None]

    @property
    def lambda_min(self) -> float:
        return float(self.nodes[self.mask].min())

    @property
    def lambda_max(self) -> float:
        return float(self.nodes[self.mask].max())

    def density(self, grid: np.ndarray, sigma: float | None = None) -> np.ndarray:
        """``phi_sigma(t) = (1/n_v) sum_l sum_k tau_lk exp(-(t - theta_lk)^2 / (2 sigma^2)) / (sigma sqrt(2 pi))``.

        Integrates to 1 over the real line (every row of weights sums to 1); ``sigma`` defaults to
        :attr:`sigma`.
        """
        sigma = self.sigma if sigma is None else float(sigma)
        if not sigma > 0:
            raise ValueError(f"sigma must be > 0, got {sigma}")
        t = np.asarray(grid, dtype=np.float64)
        theta = self.nodes[self.mask]
        tau = self.weights[self.mask] / self.num_probes
        out = np.empty(t.size)
        flat = t.ravel()
        # Chunk the grid so the (grid x nodes) kernel matrix stays small.
        for i in range(0, flat.size, 4096):
            d = (flat[i : i + 4096, None] - theta[None, :]) / sigma
            out[i : i + 4096] = np.exp(-0.5 * d * d) @ tau
        return (out / (sigma * math.sqrt(2.0 * math.pi))).reshape(t.shape)

    def _probe_moments(self, k: int) -> np.ndarray:
        powers = np.arange(1, k + 1)
        return np.einsum("lm,lmj->lj", self.weights, self.nodes[:, :, None] ** powers)

    def moments(self, k: int) -> Estimate:
        """Normalised moments ``(1/P) tr H^j`` for ``j = 1..k`` (exact per probe for ``j <= 2m - 1``).

        Returns an :class:`Estimate` whose ``value``/``stderr`` are ``(k,)`` arrays, the stderr being the spread
        across probes ``std / sqrt(n_v)`` (``nan`` for one probe); ``samples`` is the ``(n_v, k)`` per-probe matrix.
        """
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        per_probe = self._probe_moments(k)
        p = self.num_probes
        stderr = per_probe.std(axis=0, ddof=1) / math.sqrt(p) if p > 1 else np.full(k, np.nan)
        return self._estimate(per_probe.mean(axis=0), stderr, per_probe, {"normalised": "(1/P) tr H^j"})

    def trace(self) -> Estimate:
        """``tr H ~ P * (1/n_v) sum_l v_l^T H v_l`` with stderr across probes."""
        m = self.moments(1)
        P = self.num_params
        return self._estimate(float(P * m.value[0]), float(P * m.stderr[0]), P * m.samples[:, 0], {})

    def _estimate(self, value: Any, stderr: Any, samples: np.ndarray, settings: dict[str, Any]) -> Estimate:
        """An :class:`Estimate` carrying this density's provenance."""
        return Estimate(
            value=value,
            stderr=stderr,
            num_matvecs=self.num_matvecs,
            seed=self.seed,
            method="slq",
            wall_time=self.wall_time,
            samples=samples,
            settings=settings,
        )

    def lla_criteria(self, n: float = 0.5) -> LLACriteria:
        """Gabdullin et al. 2024: ``re = |lambda_min / lambda_max|`` and
        ``Kh_n = sum_{theta<0} |theta w|^n / sum_{theta>0} (theta w)^n`` from the quadrature (see :class:`LLACriteria`).
        """
        if not n > 0:
            raise ValueError(f"n must be > 0, got {n}")
        mask = self.mask
        theta, w = self.nodes[mask], self.weights[mask]
        lo, hi = float(theta.min()), float(theta.max())
        re = abs(lo / hi) if hi != 0.0 else math.inf
        neg = float(np.sum(np.abs(theta[theta < 0] * w[theta < 0]) ** n))
        pos = float(np.sum((theta[theta > 0] * w[theta > 0]) ** n))
        kh = neg / pos if pos > 0 else (math.inf if neg > 0 else 0.0)
        return LLACriteria(re=re, kh=kh, n=float(n), lambda_min=lo, lambda_max=hi)

    def plot(
        self,
        ax=None,
        log: bool = False,
        *,
        grid: np.ndarray | None = None,
        sigma: float | None = None,
        num_points: int | None = None,
        **line_kwargs,
    ):
        """Plot the smoothed density (linear or log y scale); see :func:`landscape.plot.density_plot`."""
        from landscape.plot import density_plot

        return density_plot(self, ax, log=log, sigma=sigma, grid=grid, num_points=num_points, **line_kwargs)


def spectral_density(
    op: CurvatureOperator,
    *,
    num_probes: int = 10,
    num_steps: int = 80,
    seed: SeedLike = 0,
    distribution: Distribution = "rademacher",
    sigma: float | None = None,
    progress: bool = False,
    memory_budget: int | None = None,
) -> SpectralDensity:
    """Stochastic Lanczos quadrature of the spectral density (see the module docstring).

    Parameters
    ----------
    op
        Symmetric operator of size ``P``.
    num_probes
        ``n_v`` unit probes (normalised ``distribution`` draws). They run as one block: each step is one
        ``op @ V`` with ``V`` of shape ``(P, n_v)``; memory is ``n_v * num_steps * P`` numbers for the bases.
    num_steps
        Lanczos steps per probe (capped at ``P``); fewer are taken by a probe whose Krylov space becomes invariant.
    seed
        Seed or generator for the probes.
    distribution
        ``"rademacher"`` (default), ``"gaussian"`` or ``"sphere"`` before normalisation.
    sigma
        Smoothing width to record; default the resolution ``(theta_max - theta_min) / num_steps``.
    progress
        Show a progress bar over the Lanczos steps (all probes advance together) on stderr.
    memory_budget
        Bytes the analysis may use (default: 80% of the memory available now). When the bases do not fit half of it,
        each probe keeps two vectors (the three-term recurrence, :func:`landscape.linalg.lanczos.lanczos`); the
        quadrature stays accurate, ghost copies of converged outliers share their weight
        (``settings["reorthogonalisation"]`` says which ran).

    Returns
    -------
    SpectralDensity
    """
    check_distribution(distribution)
    n = op.space.size(op.shape[0])
    gen = make_generator(seed)
    V0 = draw(op, num_probes, distribution, gen, normalize=True)
    decomposition = lanczos(
        op,
        num_steps,
        v0=V0,
        seed=gen,
        distribution=distribution,
        restart_on_breakdown=False,
        keep_basis=False,
        progress=progress,
        memory_budget=memory_budget,
    )
    # The inner call saw a generator; record the caller's seed instead.
    decomposition = replace(decomposition, seed=seed_record(seed))
    return SpectralDensity.from_lanczos(decomposition, n, sigma=sigma)
