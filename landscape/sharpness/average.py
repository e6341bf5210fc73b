"""Average-case sharpness: the expected loss increase under Gaussian weight noise, plain or adaptive.

Average-case sharpness (Andriushchenko, Croce, Mueller, Hein, Flammarion 2023, "A modern look at the relationship
between sharpness and generalization"):

    E_{delta ~ N(0, rho^2 diag(c^2))} L(w + delta) - L(w),     c = 1, or c = |w| + eta (adaptive),

estimated from seeded antithetic pairs ``+-delta`` (the linear term ``g^T delta`` cancels in every pair) with a
standard error over draws. On ``L = 1/2 (w - w*)^T H (w - w*)`` at ``w*`` it equals ``rho^2 tr(H) / 2`` (``c = 1``).

Every evaluation is functional (``problem.loss(at=...)``): the model keeps its parameters, buffers, ``.grad`` and
modes, and the global random state is never touched.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from landscape._checks import Seed, check_int, check_positive, check_seed, generator
from landscape._json import field_dict
from landscape.linalg.probes import sample_probes, seed_record
from landscape.linalg.results import Diagnostics
from landscape.problem import Problem, check_problem
from landscape.sharpness._common import ScalarResult, perturbation_scale


@dataclass(frozen=True)
class AverageSharpness(ScalarResult, Diagnostics):
    """Average-case sharpness ``E_{delta ~ N(0, rho^2 diag(c^2))} L(w + delta) - L(w)``.

    Attributes
    ----------
    value, stderr
        Sample mean over draws and its standard error ``std(ddof=1) / sqrt(num_samples)``.
    loss
        ``L(w)``.
    samples
        ``(num_samples,)`` per-draw values: ``(L(w + delta) + L(w - delta)) / 2 - L(w)`` (antithetic) or
        ``L(w + delta) - L(w)``.
    rho, adaptive, eta, antithetic
        The settings (``c = |w| + eta`` when adaptive, else 1).
    num_loss_evaluations
        Loss evaluations spent.
    seed, wall_time, settings
        From :class:`~landscape.linalg.results.Diagnostics` (``settings["problem"]``: the Problem's description).
    """

    value: float
    stderr: float
    loss: float
    samples: np.ndarray
    rho: float
    adaptive: bool
    eta: float
    antithetic: bool
    num_loss_evaluations: int

    @property
    def num_samples(self) -> int:
        return int(self.samples.size)

    def summary(self) -> str:
        """A short human-readable report."""
        kind = "adaptive " if self.adaptive else ""
        return (
            f"{kind}average-case sharpness (rho = {self.rho:g}): {self.value:.6g} +- {self.stderr:.2g} over "
            f"{self.num_samples} {'antithetic ' if self.antithetic else ''}draws, L(w) = {self.loss:.6g} "
            f"({self.num_loss_evaluations} loss evaluations, {self.wall_time:.2f} s, seed {self.seed})"
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready numbers."""
        return {**field_dict(self), "samples": self.samples.tolist()}


def average_sharpness(
    problem: Problem,
    rho: float = 0.05,
    *,
    num_samples: int = 20,
    adaptive: bool = False,
    eta: float = 0.01,
    antithetic: bool = True,
    seed: Seed = 0,
) -> AverageSharpness:
    """Average-case sharpness ``E_{delta ~ N(0, rho^2 diag(c^2))} L(w + delta) - L(w)`` (Andriushchenko et al. 2023).

    ``c = 1``, or ``c = |w| + eta`` with ``adaptive=True``. Each of the ``num_samples`` seeded draws
    ``delta = rho c z`` (``z ~ N(0, I)``) contributes ``(L(w + delta) + L(w - delta)) / 2 - L(w)`` (antithetic:
    same expectation, the linear term ``g^T delta`` cancels exactly, 2 loss evaluations) or ``L(w + delta) - L(w)``.
    On a quadratic at its minimum the expectation is ``rho^2 tr(diag(c) H diag(c)) / 2``.

    Parameters
    ----------
    problem : Problem
    rho : float
        Standard deviation scale ``rho > 0``.
    num_samples : int
        Number of draws ``>= 2`` (the standard error needs two).
    adaptive : bool
        Scale the noise by ``|w| + eta``.
    eta : float
        ``eta >= 0`` (only with ``adaptive``).
    antithetic : bool
        Evaluate every draw at ``+-delta``.
    seed : int or torch.Generator
        Seed of the local generator of the draws.

    Returns
    -------
    AverageSharpness
        ``.value``, ``.stderr`` and the per-draw ``.samples``, with ``L(w)`` and provenance.
    """
    start = time.perf_counter()
    check_problem(problem)
    rho = check_positive("rho", rho, "standard deviation of the perturbation")
    num_samples = check_int("num_samples", num_samples, 2, "draws; the standard error needs two")
    eta = check_positive("eta", eta, "the offset of c = |w| + eta", allow_zero=True)
    seed = check_seed(seed)
    gen = generator(seed)
    adaptive, antithetic = bool(adaptive), bool(antithetic)

    w = problem.params_vector()
    scale = rho * perturbation_scale(w, adaptive, eta)
    loss0 = problem.loss()
    samples = np.empty(num_samples)
    for i in range(num_samples):
        z = sample_probes(w.numel(), 1, distribution="gaussian", seed=gen, dtype=w.dtype, device=w.device)[:, 0]
        delta = scale * z
        if antithetic:
            samples[i] = 0.5 * (problem.loss(at=w + delta) + problem.loss(at=w - delta)) - loss0
        else:
            samples[i] = problem.loss(at=w + delta) - loss0
    return AverageSharpness(
        value=float(samples.mean()),
        stderr=float(samples.std(ddof=1) / math.sqrt(num_samples)),
        loss=float(loss0),
        samples=samples,
        rho=rho,
        adaptive=adaptive,
        eta=eta,
        antithetic=antithetic,
        num_loss_evaluations=1 + num_samples * (2 if antithetic else 1),
        seed=seed_record(seed),
        wall_time=time.perf_counter() - start,
        settings={"problem": problem.describe(), "distribution": "gaussian"},
    )


__all__ = ["AverageSharpness", "average_sharpness"]
