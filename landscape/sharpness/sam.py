"""How sharp the minimum is: worst-case (SAM / ASAM), average-case and Keskar sharpness, with the Hessian's summaries.

Worst-case sharpness (Foret, Kleiner, Mobahi, Neyshabur 2021, "Sharpness-Aware Minimization"):

    S_rho = max_{||e||_p <= rho} L(w + e) - L(w).

Its first-order maximiser (maximise ``g^T e`` on the ``p``-ball, ``g = grad L(w)``, ``1/p + 1/q = 1``) is

    e = rho sign(g) |g|^{q-1} / ||g||_q^{q-1}        (p = 2: rho g / ||g||_2;  p = inf: rho sign(g)).

Adaptive sharpness (ASAM; Kwon, Kim, Park, Choi 2021) measures the ball in the normalised coordinates
``u = T_w^{-1} e`` with ``T_w = diag(|w|) + eta I``: ``max_{||T_w^{-1} e||_p <= rho} L(w + e) - L(w)``. With
``F(u) = L(w + T_w u)`` (gradient ``T_w grad L``) this is ordinary sharpness of ``F`` in ``u``, which is how it is
computed here; its first-order maximiser is ``e = rho T_w^2 g / ||T_w g||_2`` (``p = 2``) and ``rho T_w sign(g)``
(``p = inf``). For ``eta = 0`` it is exactly invariant to rescalings ``w -> S w`` (``S`` positive diagonal) that
leave the loss unchanged, such as scaling one ReLU layer by ``c`` and the next by ``1/c``.

m-sharpness (Foret et al. 2021; Andriushchenko, Croce, Mueller, Hein, Flammarion 2023, "A modern look at the
relationship between sharpness and generalization"): the data are split into disjoint random subsets ``S_j`` of
size ``m`` and the per-subset maxima are averaged, ``(1/k) sum_j max_{||e||_p <= rho} L_{S_j}(w + e) - L_{S_j}(w)``.

Worst-case sharpness beyond first order is a non-concave maximisation; Andriushchenko et al. 2023 use Auto-PGD
(Croce & Hein 2020) with about 20 steps. Here the ascent is a monotone projected steepest ascent, started from the
first-order maximiser: from the best point ``u*`` found so far, a step of length ``eta_k`` (in the ball's own norm)
along the steepest-ascent direction of that norm (``G / ||G||_2`` for ``p = 2``, ``sign(G)`` for ``p = inf``,
``G = grad F(u*)``) is projected back onto the ball. ``eta_0 = 2 rho`` (as in Auto-PGD); it halves after a step
that does not improve on the best value, the next step then leaving from the best point again, and for ``p = 2``
doubles (up to ``16 rho``) after one that does (for ``p = inf`` a clipped sign step longer than the box's diameter
``2 rho`` changes nothing). The best value over all iterates is reported, so more steps never lower it. For
``p = 2`` and a quadratic at its minimum the large steps make it the power iteration on the Hessian (the exact
answer is ``rho^2 lambda_max / 2``); for ``p = inf`` the maximum over a box is NP-hard in general and the ascent,
like Auto-PGD, finds a local maximum (a lower bound).

When the gradient is numerically zero (its first-order effect ``rho ||T_w g||_q`` is below the rounding level of
``L``, as at an exact minimum) the first-order direction is undefined: the ascent then starts from a seeded random
point on the sphere (``p = 2``) or a random corner (``p = inf``), which the result counts in ``random_starts``.

Average-case sharpness (Andriushchenko et al. 2023):

    E_{delta ~ N(0, rho^2 diag(c^2))} L(w + delta) - L(w),     c = 1, or c = |w| + eta (adaptive),

estimated from seeded antithetic pairs ``+-delta`` (the linear term ``g^T delta`` cancels in every pair) with a
standard error over draws. On ``L = 1/2 (w - w*)^T H (w - w*)`` at ``w*`` it equals ``rho^2 tr(H) / 2`` (``c = 1``).

Keskar et al. 2017 ("On Large-Batch Training for Deep Learning: Generalization Gap and Sharp Minima"),
epsilon-sharpness in the full space (``A = I``) or a random ``p``-dimensional subspace (``A`` a ``P x p`` Gaussian
matrix; its columns are normalised to unit length here, like those of ``A = I``):

    phi_{x,f}(eps, A) = 100 [max_{y in C_eps} f(x + A y) - f(x)] / (1 + f(x)),
    C_eps = {y : |y_i| <= eps (|(A^+ x)_i| + 1)},

maximised with scipy's L-BFGS-B under the box bounds (in float64) from the first-order corner (or a random point
of the box when the gradient is numerically zero).

Every evaluation is functional (``problem.loss(at=...)``, ``problem.loss_and_grad(at=...)``): the model keeps its
parameters, buffers, ``.grad`` and modes, and the global random state is never touched.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy.optimize import Bounds, minimize
from torch import Tensor

from landscape import memory
from landscape.example_pool import Examples
from landscape.linalg import frobenius_norm, top_eigen
from landscape.linalg import trace as estimate_trace
from landscape.linalg.probes import SeedLike, make_generator, sample_probes, seed_record
from landscape.linalg.results import EigenResult, Estimate, FrobeniusEstimate
from landscape.operators import hessian
from landscape.problem import Problem
from landscape.progress import progress as progress_bar

# A first-order gain rho ||T g||_q below FLAT_ULPS units of rounding of L(w) means the gradient carries no direction.
FLAT_ULPS = 64
# Auto-PGD's initial step (Croce & Hein 2020) and the largest step of the doubling rule, in units of rho.
INITIAL_STEP = 2.0
MAX_STEP = 16.0
# Dimension of the random Keskar subspace in the gathered report (capped at the number of parameters).
KESKAR_SUBSPACE_DIM = 100
# Corrections scipy's L-BFGS-B keeps (its ``maxcor`` default): its float64 workspace holds 2 maxcor + 5 vectors.
LBFGSB_MAXCOR = 10


# ---------------------------------------------------------------------------------------------------- results
@dataclass(frozen=True)
class SAMSharpness:
    """Worst-case (SAM / ASAM, optionally m-) sharpness ``max_{||T^{-1} e||_p <= rho} L(w + e) - L(w)``.

    Attributes
    ----------
    value
        The sharpness: the best value found, averaged over the data subsets for m-sharpness
        (``value = mean_j nanmax history[j]``).
    stderr
        Standard error of ``value`` across the ``k`` subsets, ``std(ddof=1) / sqrt(k)``; ``nan`` for one subset.
    loss
        ``L(w)`` (the mean of the subset losses for m-sharpness).
    perturbed_loss
        ``L(w + e*)`` at the best perturbation (mean over subsets).
    perturbation
        The best perturbation ``e*`` (flat, problem dtype/device); ``None`` for m-sharpness (one per subset).
    perturbation_norm
        ``||e*||_2`` (mean over subsets).
    constraint_norm
        ``||T^{-1} e*||_p <= rho`` (``T = I`` unless adaptive; mean over subsets).
    subset_values, subset_losses, subset_sizes
        ``(k,)`` per-subset sharpness, ``L_{S_j}(w)`` and ``|S_j|`` (one entry, the full data, without ``m``).
    history
        ``(k, steps + 1)`` sharpness ``L(w + e_t) - L(w)`` of every iterate, ``t = 0`` the start (first-order
        maximiser or random point); ``nan`` after the ascent stopped at a fixed point of the projected step.
    random_starts
        Number of (sub)problems whose gradient was numerically zero, so the ascent started at a random point.
    rho, p, adaptive, eta, m, steps
        The settings (``p`` is ``2.0`` or ``inf``).
    num_loss_evaluations, num_gradient_evaluations
        Loss-only and loss-and-gradient evaluations, each on the full data or (m-sharpness) on one subset.
    seed, wall_time
        Provenance.
    settings
        ``problem`` (the Problem's description, BatchNorm/dropout policy included), ``method``
        (``"first_order"`` or ``"projected_ascent"``), the step rule and, for m-sharpness, the subset batching.
    """

    value: float
    stderr: float
    loss: float
    perturbed_loss: float
    perturbation: Tensor | None
    perturbation_norm: float
    constraint_norm: float
    subset_values: np.ndarray
    subset_losses: np.ndarray
    subset_sizes: np.ndarray
    history: np.ndarray
    random_starts: int
    rho: float
    p: float
    adaptive: bool
    eta: float
    m: int | None
    steps: int
    num_loss_evaluations: int
    num_gradient_evaluations: int
    seed: int | None
    wall_time: float
    settings: dict[str, Any] = field(default_factory=dict)

    def __float__(self) -> float:
        return float(self.value)

    @property
    def name(self) -> str:
        kind = "ASAM" if self.adaptive else "SAM"
        norm = "inf" if math.isinf(self.p) else "2"
        order = "first-order" if self.steps == 0 else f"{self.steps}-step ascent"
        batch = f", m = {self.m}" if self.m is not None else ""
        return f"{kind} (p = {norm}, rho = {self.rho:g}, {order}{batch})"

    def summary(self) -> str:
        """A short human-readable report."""
        err = f" +- {self.stderr:.2g} over {self.subset_values.size} subsets" if self.subset_values.size > 1 else ""
        lines = [
            f"{self.name}: sharpness {self.value:.6g}{err}, L(w) = {self.loss:.6g}, ||e||_2 = "
            f"{self.perturbation_norm:.4g}",
        ]
        if self.random_starts:
            lines.append(f"gradient numerically zero on {self.random_starts} (sub)problem(s): random start")
        lines.append(
            f"({self.num_gradient_evaluations} gradient and {self.num_loss_evaluations} loss evaluations, "
            f"{self.wall_time:.2f} s, seed {self.seed}, mode {self.settings.get('problem', {}).get('mode', '?')})"
        )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready numbers (``nan`` where undefined; ``p`` as ``2`` or ``"inf"``)."""
        return {
            "value": self.value,
            "stderr": self.stderr,
            "loss": self.loss,
            "perturbed_loss": self.perturbed_loss,
            "perturbation_norm": self.perturbation_norm,
            "constraint_norm": self.constraint_norm,
            "subset_values": self.subset_values.tolist(),
            "subset_losses": self.subset_losses.tolist(),
            "subset_sizes": self.subset_sizes.tolist(),
            "history": self.history.tolist(),
            "random_starts": self.random_starts,
            "rho": self.rho,
            "p": "inf" if math.isinf(self.p) else 2,
            "adaptive": self.adaptive,
            "eta": self.eta,
            "m": self.m,
            "steps": self.steps,
            "num_loss_evaluations": self.num_loss_evaluations,
            "num_gradient_evaluations": self.num_gradient_evaluations,
            "seed": self.seed,
            "wall_time": self.wall_time,
            "settings": self.settings,
        }


@dataclass(frozen=True)
class AverageSharpness:
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
    num_loss_evaluations, seed, wall_time, settings
        Provenance (``settings["problem"]``: the Problem's description).
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
    seed: int | None
    wall_time: float
    settings: dict[str, Any] = field(default_factory=dict)

    def __float__(self) -> float:
        return float(self.value)

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
        return {
            "value": self.value,
            "stderr": self.stderr,
            "loss": self.loss,
            "samples": self.samples.tolist(),
            "rho": self.rho,
            "adaptive": self.adaptive,
            "eta": self.eta,
            "antithetic": self.antithetic,
            "num_loss_evaluations": self.num_loss_evaluations,
            "seed": self.seed,
            "wall_time": self.wall_time,
            "settings": self.settings,
        }


@dataclass(frozen=True)
class KeskarSharpness:
    """Keskar et al. 2017 epsilon-sharpness ``100 [max_{y in C_eps} f(x + A y) - f(x)] / (1 + f(x))``.

    Attributes
    ----------
    value
        The sharpness (in percent of ``1 + f(x)``) at the best point L-BFGS-B evaluated.
    loss, max_loss
        ``f(x)`` and ``f(x + A y*)``.
    perturbation
        ``A y*`` (flat, problem dtype/device).
    bounds
        ``(p,)`` half-widths ``eps (|(A^+ x)_i| + 1)`` of the box ``C_eps``.
    eps, subspace_dim
        The settings (``subspace_dim`` ``None``: the full space, ``A = I``).
    random_start
        The gradient was numerically zero, so L-BFGS-B started at a random point of the box instead of the
        first-order corner.
    iterations, converged, message
        L-BFGS-B's iteration count, success flag and message.
    num_gradient_evaluations
        Loss-and-gradient evaluations (``f(x)`` and every point L-BFGS-B asked for).
    seed, wall_time, settings
        Provenance (``settings["problem"]``: the Problem's description; ``maxiter``, ``maxfun``).
    """

    value: float
    loss: float
    max_loss: float
    perturbation: Tensor
    bounds: np.ndarray
    eps: float
    subspace_dim: int | None
    random_start: bool
    iterations: int
    converged: bool
    message: str
    num_gradient_evaluations: int
    seed: int | None
    wall_time: float
    settings: dict[str, Any] = field(default_factory=dict)

    def __float__(self) -> float:
        return float(self.value)

    def summary(self) -> str:
        """A short human-readable report."""
        space = "full space" if self.subspace_dim is None else f"random {self.subspace_dim}-dim subspace"
        return (
            f"Keskar sharpness (eps = {self.eps:g}, {space}): {self.value:.6g} %, f(x) = {self.loss:.6g}, "
            f"max f = {self.max_loss:.6g} ({self.iterations} L-BFGS-B iterations, "
            f"{self.num_gradient_evaluations} gradient evaluations, {self.wall_time:.2f} s)"
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready numbers."""
        return {
            "value": self.value,
            "loss": self.loss,
            "max_loss": self.max_loss,
            "perturbation_norm": float(self.perturbation.norm()),
            "eps": self.eps,
            "subspace_dim": self.subspace_dim,
            "random_start": self.random_start,
            "iterations": self.iterations,
            "converged": self.converged,
            "message": self.message,
            "num_gradient_evaluations": self.num_gradient_evaluations,
            "seed": self.seed,
            "wall_time": self.wall_time,
            "settings": self.settings,
        }


@dataclass(frozen=True)
class Sharpness:
    """Curvature summaries and sharpness measures of one point, gathered by :func:`sharpness`.

    A part that was skipped is ``None``. ``lambda_max`` is the top-eigenpair result (Ritz residual in
    ``.residuals``), ``trace`` and ``frobenius`` carry standard errors; the sharpness parts are the results of
    :func:`sam_sharpness` (``sam_first_order``: p = 2, no ascent; ``sam``: p = 2 with ascent; ``sam_inf``: p = inf
    with ascent; ``asam``: adaptive, p = 2, with ascent), :func:`average_sharpness` and :func:`keskar_sharpness`
    (``keskar``: full space; ``keskar_subspace``: random subspace).
    """

    loss: float
    rho: float
    lambda_max: EigenResult | None
    trace: Estimate | None
    frobenius: FrobeniusEstimate | None
    sam_first_order: SAMSharpness | None
    sam: SAMSharpness | None
    sam_inf: SAMSharpness | None
    asam: SAMSharpness | None
    average: AverageSharpness | None
    keskar: KeskarSharpness | None
    keskar_subspace: KeskarSharpness | None
    num_params: int
    seed: int | None
    wall_time: float
    settings: dict[str, Any] = field(default_factory=dict)

    def _parts(self) -> list[Any]:
        return [
            p
            for p in (
                self.sam_first_order,
                self.sam,
                self.sam_inf,
                self.asam,
                self.average,
                self.keskar,
                self.keskar_subspace,
            )
            if p is not None
        ]

    @property
    def num_matvecs(self) -> int:
        """Hessian-vector products (eigenvalue, trace and Frobenius estimates)."""
        return sum(int(r.num_matvecs) for r in (self.lambda_max, self.trace, self.frobenius) if r is not None)

    @property
    def num_loss_evaluations(self) -> int:
        return sum(getattr(r, "num_loss_evaluations", 0) for r in self._parts())

    @property
    def num_gradient_evaluations(self) -> int:
        return sum(getattr(r, "num_gradient_evaluations", 0) for r in self._parts())

    def summary(self) -> str:
        """A short human-readable report: every measure with its error bar, beside its quadratic prediction."""
        mode = self.settings.get("problem", {}).get("mode", "?")
        lines = [
            f"sharpness of {self.num_params:,} parameters at L(w) = {self.loss:.6g} (mode {mode}, seed {self.seed})"
        ]
        r2 = self.rho**2 / 2
        if self.lambda_max is not None:
            lam = float(self.lambda_max.values[0])
            lines.append(
                f"lambda_max = {lam:.6g} (Ritz residual {float(self.lambda_max.residuals[0]):.1e}); "
                f"rho^2 lambda_max / 2 = {r2 * lam:.4g}"
            )
        if self.trace is not None:
            tr = float(self.trace.value)
            err = "(exact)" if self.trace.method == "exact" else f"+- {float(self.trace.stderr):.2g}"
            lines.append(f"trace = {tr:.6g} {err}; rho^2 tr / 2 = {r2 * tr:.4g}")
        if self.frobenius is not None:
            lines.append(f"Frobenius norm = {float(self.frobenius.value):.6g} +- {float(self.frobenius.stderr):.2g}")
        for part in (self.sam_first_order, self.sam, self.sam_inf, self.asam):
            if part is not None:
                err = f" +- {part.stderr:.2g}" if part.subset_values.size > 1 else ""
                start = f" ({part.random_starts} random start(s))" if part.random_starts else ""
                lines.append(f"{part.name}: {part.value:.6g}{err}{start}")
        if self.average is not None:
            a = self.average
            lines.append(f"average-case (rho = {a.rho:g}): {a.value:.6g} +- {a.stderr:.2g}")
        for part in (self.keskar, self.keskar_subspace):
            if part is not None:
                space = "full space" if part.subspace_dim is None else f"{part.subspace_dim}-dim subspace"
                lines.append(f"Keskar (eps = {part.eps:g}, {space}): {part.value:.6g} %")
        for name, why in self.settings.get("skipped", {}).items():
            lines.append(f"{name}: skipped, {why.split('; ')[0]}")
        lines.append(
            f"({self.num_matvecs} Hessian-vector products, {self.num_gradient_evaluations} gradient and "
            f"{self.num_loss_evaluations} loss evaluations, {self.wall_time:.2f} s)"
        )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready numbers (no tensors)."""
        out: dict[str, Any] = {
            "loss": self.loss,
            "rho": self.rho,
            "num_params": self.num_params,
            "num_matvecs": self.num_matvecs,
            "num_loss_evaluations": self.num_loss_evaluations,
            "num_gradient_evaluations": self.num_gradient_evaluations,
            "seed": self.seed,
            "wall_time": self.wall_time,
            "settings": self.settings,
        }
        if self.lambda_max is not None:
            out["lambda_max"] = {
                "value": float(self.lambda_max.values[0]),
                "residual": float(self.lambda_max.residuals[0]),
                "error_bound": float(self.lambda_max.error_bounds[0]),
                "converged": bool(self.lambda_max.converged[0]),
                "num_matvecs": int(self.lambda_max.num_matvecs),
            }
        for name in ("trace", "frobenius"):
            est = getattr(self, name)
            if est is not None:
                out[name] = {
                    "value": float(est.value),
                    "stderr": float(est.stderr),
                    "num_matvecs": est.num_matvecs,
                    "method": est.method,
                }
        for name in ("sam_first_order", "sam", "sam_inf", "asam", "average", "keskar", "keskar_subspace"):
            part = getattr(self, name)
            if part is not None:
                out[name] = part.to_dict()
        return out


# ---------------------------------------------------------------------------------------------------- checks
def _check_problem(problem: object) -> None:
    if not isinstance(problem, Problem):
        raise TypeError(f"problem must be a landscape.Problem, got {type(problem).__name__}")


def _check_positive(name: str, value: object, meaning: str, *, allow_zero: bool = False) -> float:
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    ok = ok and math.isfinite(value) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {bound} ({meaning}), got {value!r}")
    return float(value)


def _check_int(name: str, value: object, minimum: int, meaning: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum} ({meaning}), got {value!r}")
    return int(value)


def _check_p(p: object) -> float:
    if isinstance(p, str) and p.lower() == "inf":
        return math.inf
    if isinstance(p, (int, float, np.integer, np.floating)) and not isinstance(p, bool) and p in (2, math.inf):
        return float(p)
    raise ValueError(f"p must be 2 or inf (the Euclidean ball or the box of the perturbation), got {p!r}")


def _check_seed(seed: object) -> None:
    if isinstance(seed, bool) or not isinstance(seed, (int, torch.Generator)):
        raise TypeError(f"seed must be an int or a torch.Generator, got {type(seed).__name__}")


# ---------------------------------------------------------------------------------------------------- helpers
def _scaling(w: Tensor, adaptive: bool, eta: float) -> Tensor:
    """Diagonal of ``T_w = diag(|w|) + eta I`` (adaptive) or of the identity."""
    return w.abs() + eta if adaptive else torch.ones_like(w)


def _direction(v: Tensor, p: float) -> Tensor:
    """Unit steepest-ascent direction of ``v`` in the ``p``-norm: ``v / ||v||_2`` or ``sign(v)`` (zero for zero)."""
    if math.isinf(p):
        return torch.sign(v)
    norm = v.norm()
    return v / norm if norm > 0 else torch.zeros_like(v)


def _dual_norm(v: Tensor, p: float) -> float:
    return float(v.abs().sum()) if math.isinf(p) else float(v.norm())


def _norm(v: Tensor, p: float) -> float:
    return float(v.abs().max()) if math.isinf(p) else float(v.norm())


def _project(u: Tensor, rho: float, p: float) -> Tensor:
    """Euclidean projection onto the ``p``-ball of radius ``rho``."""
    if math.isinf(p):
        return u.clamp(-rho, rho)
    norm = float(u.norm())
    return u * (rho / norm) if norm > rho else u


def _gradient_is_zero(gain: float, loss: float, dtype: torch.dtype) -> bool:
    """A first-order gain at the rounding level of the loss carries no direction."""
    return not gain > FLAT_ULPS * torch.finfo(dtype).eps * max(abs(loss), torch.finfo(torch.float64).tiny)


def _random_unit(n: int, p: float, gen: torch.Generator, like: Tensor) -> Tensor:
    """A seeded random point of the unit ``p``-sphere: Gaussian direction (p = 2) or random corner (p = inf)."""
    if math.isinf(p):
        z = sample_probes(n, 1, distribution="rademacher", seed=gen, dtype=like.dtype, device=like.device)
    else:
        z = sample_probes(n, 1, distribution="gaussian", seed=gen, dtype=like.dtype, device=like.device, normalize=True)
    return z[:, 0]


@dataclass(frozen=True)
class _Ascent:
    """Outcome of the maximisation on one (sub)problem."""

    loss: float
    best_loss: float
    perturbation: Tensor | None
    perturbation_norm: float
    constraint_norm: float
    history: np.ndarray
    random_start: bool
    num_loss: int
    num_grad: int


def _maximise(
    problem: Problem, w: Tensor, t: Tensor, rho: float, p: float, steps: int, gen: torch.Generator, keep: bool
) -> _Ascent:
    """``max_{||u||_p <= rho} L(w + t u)``: first-order point, then ``steps`` projected ascent steps (module doc).

    The best perturbation itself is returned only with ``keep`` (m-sharpness keeps one number per subset).
    """
    loss0, g = problem.loss_and_grad()
    num_loss, num_grad = 0, 1
    G = t * g
    random_start = _gradient_is_zero(rho * _dual_norm(G, p), loss0, problem.dtype)
    u = rho * (_random_unit(w.numel(), p, gen, w) if random_start else _direction(G, p))
    history = np.full(steps + 1, np.nan)
    if steps == 0:
        best = problem.loss(at=w + t * u)
        num_loss += 1
    else:
        best, G = problem.loss_and_grad(at=w + t * u)
        G = t * G
        num_grad += 1
    history[0] = best - loss0
    step = INITIAL_STEP * rho
    # Beyond the box's diameter 2 rho a clipped sign step no longer changes: p = inf only ever halves.
    max_step = INITIAL_STEP * rho if math.isinf(p) else MAX_STEP * rho
    tiny = 16 * torch.finfo(problem.dtype).eps * rho
    for k in range(1, steps + 1):
        candidate = _project(u + step * _direction(G, p), rho, p)
        if float((candidate - u).abs().max()) <= tiny:
            break  # a fixed point of the projected step for every step length: a KKT point of the ball
        if k == steps:
            value = problem.loss(at=w + t * candidate)
            num_loss += 1
            grad = None
        else:
            value, grad = problem.loss_and_grad(at=w + t * candidate)
            num_grad += 1
        history[k] = value - loss0
        if value > best:
            best, u = value, candidate
            if grad is not None:
                G = t * grad
            step = min(2 * step, max_step)
        else:
            step /= 2
    return _Ascent(
        loss=loss0,
        best_loss=best,
        perturbation=t * u if keep else None,
        perturbation_norm=float((t * u).norm()),
        constraint_norm=_norm(u, p),
        history=history,
        random_start=random_start,
        num_loss=num_loss,
        num_grad=num_grad,
    )


def _subset_problems(problem: Problem, m: int, gen: torch.Generator) -> tuple[list[Problem], dict[str, Any]]:
    """Disjoint random subsets of ``m`` samples (a seeded permutation of the data), each as a Problem."""
    n = problem.num_samples
    if m > n:
        raise ValueError(f"m = {m} exceeds the number of samples N = {n}: use 1 <= m <= N")
    if n % m:
        divisors = [d for d in range(1, n + 1) if n % d == 0]
        near = sorted(divisors, key=lambda d: abs(d - m))[:4]
        raise ValueError(
            f"m = {m} does not divide the number of samples N = {n} into disjoint subsets of equal size "
            f"(it would leave {n % m} samples out); choose a divisor of N, e.g. {sorted(near)}"
        )
    examples = Examples(problem)  # data-parallel: each subset is gathered whole onto every rank
    order = torch.randperm(n, generator=gen)
    # BatchNorm in train mode normalises over each m-subset, as in SAM training; in eval mode only memory matters.
    largest = max((b.size for b in problem.batches()), default=0)
    if problem.dist is not None:
        largest = int(max(problem.dist.all_gather_object(largest, "all_gather of the largest batch size")))
    batch_size = m if problem.mode == "train" else min(m, largest)
    parts = [examples.problem_of(order[j * m : (j + 1) * m], batch_size=batch_size) for j in range(n // m)]
    return parts, {"num_subsets": n // m, "subset_batch_size": batch_size, "partition": "seeded permutation"}


# ---------------------------------------------------------------------------------------------------- analyses
def sam_sharpness(
    problem: Problem,
    rho: float = 0.05,
    *,
    p: float | str = 2,
    adaptive: bool = False,
    eta: float = 0.01,
    m: int | None = None,
    steps: int = 20,
    seed: SeedLike = 0,
) -> SAMSharpness:
    """Worst-case sharpness ``max_{||e||_p <= rho} L(w + e) - L(w)`` (Foret et al. 2021), adaptive (Kwon et al.
    2021) and m-sharpness.

    ``steps = 0`` evaluates the first-order maximiser ``e = rho g / ||g||_2`` (``p = 2``) or ``rho sign(g)``
    (``p = inf``); ``adaptive=True`` measures the ball in ``u = T_w^{-1} e``, ``T_w = diag(|w|) + eta I``
    (first-order ``e = rho T_w^2 g / ||T_w g||_2``). ``steps > 0`` continues with a monotone projected steepest
    ascent on the ball from that point (module docstring) and reports the best value found (Andriushchenko et al.
    2023 use Auto-PGD with ~20 steps). At a numerically zero gradient the start is a seeded random point of the
    sphere (p = 2) or a random corner (p = inf).

    Parameters
    ----------
    problem : Problem
    rho : float
        Radius ``rho > 0`` of the ball.
    p : 2 or inf
        Norm of the ball (``"inf"`` is accepted).
    adaptive : bool
        ASAM: the ball ``||T_w^{-1} e||_p <= rho``.
    eta : float
        ``eta >= 0`` of ``T_w`` (only with ``adaptive``); ``eta = 0`` gives exact invariance to loss-preserving
        rescalings but never perturbs zero weights.
    m : int, optional
        m-sharpness: average the maxima over the ``N / m`` disjoint subsets of ``m`` samples of a seeded random
        permutation of the data (``m`` must divide ``N``; BatchNorm in train mode normalises over each subset).
        Costs the same number of data passes as the full-batch value. With a sum-reduced loss every subset's loss
        is the sum over its own samples.
    steps : int
        Projected-ascent steps after the start (``0``: first order only). Each costs one loss-and-gradient
        evaluation (the last one a loss evaluation).
    seed : int or torch.Generator
        For the data partition (``m``) and random starts; the global RNG is never touched.

    Returns
    -------
    SAMSharpness
        ``.value`` with its per-subset values, the best perturbation and its norm, ``L(w)``, the ascent history,
        evaluation counts, seed and settings.

    Raises
    ------
    ValueError
        ``rho <= 0``, ``p`` not 2 or inf, ``eta < 0``, ``steps < 0``, or ``m`` outside ``1..N`` or not dividing ``N``.
    """
    start = time.perf_counter()
    _check_problem(problem)
    rho = _check_positive("rho", rho, "radius of the perturbation ball")
    p = _check_p(p)
    eta = _check_positive("eta", eta, "the ASAM offset of T_w = diag(|w|) + eta I", allow_zero=True)
    steps = _check_int("steps", steps, 0, "projected ascent steps; 0 for the first-order maximiser")
    if m is not None:
        m = _check_int("m", m, 1, "samples per subset of m-sharpness")
    _check_seed(seed)
    adaptive = bool(adaptive)
    gen = make_generator(seed)

    w = problem.params_vector()
    t = _scaling(w, adaptive, eta)
    settings: dict[str, Any] = {
        "problem": problem.describe(),
        "method": "first_order" if steps == 0 else "projected_ascent",
        "step_rule": {
            "initial": INITIAL_STEP,
            "max": INITIAL_STEP if math.isinf(p) else MAX_STEP,
            "grow": 1.0 if math.isinf(p) else 2.0,
            "shrink": 0.5,
            "unit": "rho",
        },
    }
    if m is None:
        subsets = [problem]
    else:
        subsets, info = _subset_problems(problem, m, gen)
        settings.update(info)
    results = [_maximise(sub, w, t, rho, p, steps, gen, keep=m is None) for sub in subsets]
    if steps == 0 and any(r.random_start for r in results):
        warnings.warn(
            "the gradient is numerically zero, so the first-order maximiser is undefined: the value is the loss "
            "increase at a random point of the sphere (a lower bound); use steps > 0",
            stacklevel=2,
        )

    values = np.array([r.best_loss - r.loss for r in results])
    losses = np.array([r.loss for r in results])
    k = values.size
    return SAMSharpness(
        value=float(values.mean()),
        stderr=float(values.std(ddof=1) / math.sqrt(k)) if k > 1 else math.nan,
        loss=float(losses.mean()),
        perturbed_loss=float(np.mean([r.best_loss for r in results])),
        perturbation=results[0].perturbation,
        perturbation_norm=float(np.mean([r.perturbation_norm for r in results])),
        constraint_norm=float(np.mean([r.constraint_norm for r in results])),
        subset_values=values,
        subset_losses=losses,
        subset_sizes=np.array([sub.num_samples for sub in subsets]),
        history=np.stack([r.history for r in results]),
        random_starts=sum(r.random_start for r in results),
        rho=rho,
        p=p,
        adaptive=adaptive,
        eta=eta,
        m=m,
        steps=steps,
        num_loss_evaluations=sum(r.num_loss for r in results),
        num_gradient_evaluations=sum(r.num_grad for r in results),
        seed=seed_record(seed),
        wall_time=time.perf_counter() - start,
        settings=settings,
    )


def average_sharpness(
    problem: Problem,
    rho: float = 0.05,
    *,
    num_samples: int = 20,
    adaptive: bool = False,
    eta: float = 0.01,
    antithetic: bool = True,
    seed: SeedLike = 0,
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
    _check_problem(problem)
    rho = _check_positive("rho", rho, "standard deviation of the perturbation")
    num_samples = _check_int("num_samples", num_samples, 2, "draws; the standard error needs two")
    eta = _check_positive("eta", eta, "the offset of c = |w| + eta", allow_zero=True)
    _check_seed(seed)
    gen = make_generator(seed)
    adaptive, antithetic = bool(adaptive), bool(antithetic)

    w = problem.params_vector()
    scale = rho * _scaling(w, adaptive, eta)
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


def keskar_memory(problem: Problem, subspace_dim: int | None) -> tuple[int, str]:
    """``(bytes, what)`` Keskar sharpness holds beyond the problem: the full space runs scipy's L-BFGS-B on ``P``
    float64 coordinates (``2 maxcor + 5`` workspace vectors, ``maxcor = 10``, and about five more for the start,
    the box, the gradient handed over and the best point), plus four parameter-sized tensors; a ``p``-dim subspace
    holds the ``P x p`` basis and its float64 copy for the least-squares coordinates (twice: the solver's own)."""
    n, size = problem.num_params, torch.empty((), dtype=problem.dtype).element_size()
    if subspace_dim is None:
        vectors = 2 * LBFGSB_MAXCOR + 5 + 5
        return vectors * n * 8 + 4 * n * size, f"L-BFGS-B on all {n:,} coordinates ({vectors} float64 vectors)"
    return n * subspace_dim * (size + 16), f"a {n:,} x {subspace_dim} random basis and its float64 least squares"


def _keskar_fits(problem: Problem, subspace_dim: int | None, memory_budget: int | None) -> str | None:
    """``None`` when Keskar sharpness fits ``memory_budget`` (default :func:`landscape.memory.default_budget`),
    else the message of the :class:`~landscape.memory.MemoryBudgetError` it would raise."""
    need, what = keskar_memory(problem, subspace_dim)
    budget = memory.default_budget(problem.device) if memory_budget is None else int(memory_budget)
    if need <= budget:
        return None
    return (
        f"Keskar sharpness ({'full space' if subspace_dim is None else f'{subspace_dim}-dim subspace'}) needs "
        f"{memory.gib(need)} for {what}; the memory budget is {memory.gib(budget)}. Use a smaller subspace_dim "
        "(its basis is P x subspace_dim numbers), keskar=False in sharpness(), or a larger memory_budget="
    )


def keskar_sharpness(
    problem: Problem,
    eps: float = 1e-3,
    *,
    subspace_dim: int | None = None,
    maxiter: int = 10,
    maxfun: int | None = None,
    seed: SeedLike = 0,
    memory_budget: int | None = None,
) -> KeskarSharpness:
    """Keskar et al. 2017 epsilon-sharpness ``100 [max_{y in C_eps} f(x + A y) - f(x)] / (1 + f(x))``.

    ``C_eps = {|y_i| <= eps (|(A^+ x)_i| + 1)}``; ``A = I`` (full space) or a seeded ``P x p`` Gaussian matrix with
    unit columns (``subspace_dim = p``; ``A^+ x`` by least squares). The box maximum is found by scipy's L-BFGS-B
    (a small fixed budget of iterations, 10 by default) on the box rescaled to ``[-1, 1]^p``, with loss and
    gradient ``A^T grad f`` handed over in float64, starting from the first-order corner ``sign(A^T g)`` or, when
    the gradient is numerically zero, from a seeded uniform point of the box. The best value evaluated is reported.

    Parameters
    ----------
    problem : Problem
    eps : float
        Box size ``eps > 0``.
    subspace_dim : int, optional
        ``p`` with ``1 <= p <= P``; ``None`` for the full space. ``A`` takes ``P p`` numbers of the problem's dtype.
    maxiter : int
        L-BFGS-B iterations (``>= 1``).
    maxfun : int, optional
        Budget of loss-and-gradient evaluations inside L-BFGS-B (default ``5 maxiter + 5``).
    seed : int or torch.Generator
        For ``A`` and the random start.
    memory_budget : int, optional
        Bytes it may hold (:func:`keskar_memory`; default :func:`landscape.memory.default_budget`):
        :class:`~landscape.memory.MemoryBudgetError` before anything runs when it does not fit (the full space on
        GPT-2 small needs 32 GB, a 100-dim subspace 250 GB).

    Returns
    -------
    KeskarSharpness
    """
    start = time.perf_counter()
    _check_problem(problem)
    eps = _check_positive("eps", eps, "half-width scale of the box C_eps")
    maxiter = _check_int("maxiter", maxiter, 1, "L-BFGS-B iterations")
    maxfun = 5 * maxiter + 5 if maxfun is None else _check_int("maxfun", maxfun, 1, "L-BFGS-B evaluations")
    n = problem.num_params
    if subspace_dim is not None:
        subspace_dim = _check_int("subspace_dim", subspace_dim, 1, "dimension of the random subspace")
        if subspace_dim > n:
            raise ValueError(f"subspace_dim = {subspace_dim} exceeds the number of parameters P = {n}")
    _check_seed(seed)
    refused = _keskar_fits(problem, subspace_dim, memory_budget)
    if refused is not None:
        raise memory.MemoryBudgetError(refused)
    gen = make_generator(seed)

    x = problem.params_vector()
    if subspace_dim is None:
        A = None
        coords = x
    else:
        A = sample_probes(
            n, subspace_dim, distribution="gaussian", seed=gen, dtype=x.dtype, device=x.device, normalize=True
        )
        coords = torch.linalg.lstsq(A.double(), x.double().unsqueeze(1)).solution[:, 0].to(x.dtype)
    bounds = eps * (coords.abs() + 1)

    def lift(z: np.ndarray) -> Tensor:
        y = torch.from_numpy(np.clip(z, -1.0, 1.0)).to(dtype=x.dtype, device=x.device) * bounds
        return y if A is None else A @ y

    f0, g0 = problem.loss_and_grad()
    scale = 100.0 / (1.0 + f0)
    best = {"loss": f0, "z": np.zeros(bounds.numel())}
    count = {"grad": 1}

    def objective(z: np.ndarray) -> tuple[float, np.ndarray]:
        f, g = problem.loss_and_grad(at=x + lift(z))
        count["grad"] += 1
        if f > best["loss"]:
            best["loss"], best["z"] = f, z.copy()
        reduced = g if A is None else A.T @ g
        grad = (-scale * bounds * reduced).to(torch.float64).cpu().numpy()
        return -scale * (f - f0), grad

    reduced0 = g0 if A is None else A.T @ g0
    random_start = _gradient_is_zero(float((bounds * reduced0).abs().sum()), f0, problem.dtype)
    if random_start:
        z0 = (2 * torch.rand(bounds.numel(), generator=gen, dtype=torch.float64) - 1).numpy()
    else:
        z0 = torch.sign(reduced0).to(torch.float64).cpu().numpy()
    res = minimize(
        objective,
        z0,
        jac=True,
        method="L-BFGS-B",
        bounds=Bounds(-np.ones(z0.size), np.ones(z0.size)),
        options={"maxiter": maxiter, "maxfun": maxfun, "gtol": 0.0},
    )
    return KeskarSharpness(
        value=scale * (best["loss"] - f0),
        loss=float(f0),
        max_loss=float(best["loss"]),
        perturbation=lift(best["z"]),
        bounds=bounds.to(torch.float64).cpu().numpy(),
        eps=eps,
        subspace_dim=subspace_dim,
        random_start=random_start,
        iterations=int(res.nit),
        converged=bool(res.success),
        message=str(res.message),
        num_gradient_evaluations=count["grad"],
        seed=seed_record(seed),
        wall_time=time.perf_counter() - start,
        settings={
            "problem": problem.describe(),
            "maxiter": maxiter,
            "maxfun": maxfun,
            "subspace": "full (A = I)" if A is None else "Gaussian, unit columns",
        },
    )


def sharpness(
    problem: Problem,
    rho: float = 0.05,
    *,
    seed: SeedLike = 0,
    steps: int = 20,
    m: int | None = None,
    eta: float = 0.01,
    num_samples: int = 20,
    eps: float = 1e-3,
    subspace_dim: int | None = KESKAR_SUBSPACE_DIM,
    maxiter: int = 10,
    num_matvecs: int = 100,
    trace_method: str = "auto",
    eigen: bool = True,
    trace: bool = True,
    frobenius: bool = True,
    sam: bool = True,
    asam: bool = True,
    average: bool = True,
    keskar: bool | str = "auto",
    engine: str = "double_backward",
    progress: bool = False,
    memory_budget: int | None = None,
) -> Sharpness:
    """Curvature summaries and every sharpness measure of the current point, in one report.

    Gathers ``lambda_max`` (:func:`landscape.top_eigen` on :func:`landscape.hessian`, with its Ritz residual), the
    trace (:func:`landscape.trace`: exact where BackPACK supports the model, else Hutch++) and Frobenius norm
    (:func:`landscape.frobenius_norm`) with standard errors, SAM sharpness (p = 2 first order and with ``steps`` of
    ascent, p = inf with ascent), ASAM (p = 2, with ascent), average-case sharpness and Keskar sharpness (full space
    and a random subspace). On a quadratic at its minimum ``SAM = rho^2 lambda_max / 2`` and
    ``average = rho^2 tr(H) / 2``; :meth:`Sharpness.summary` prints
    these predictions beside the measured values.

    Parameters
    ----------
    problem : Problem
    rho : float
        Radius of SAM/ASAM and scale of the average-case noise.
    seed : int or torch.Generator
        Handed to every part (a generator is advanced through them in order).
    steps, m, eta
        Ascent steps, m-sharpness subset size and ASAM offset (:func:`sam_sharpness`); ``m`` applies to the SAM and
        ASAM parts.
    num_samples
        Draws of the average-case sharpness.
    eps, subspace_dim, maxiter
        Keskar sharpness; the subspace part uses ``min(subspace_dim, P)`` dimensions and is skipped for ``None``.
    num_matvecs
        Budget of the trace and of the Frobenius estimate (each).
    trace_method
        :func:`landscape.trace`'s ``method``: ``"auto"`` (default) is exact when every layer and the loss are
        supported by BackPACK's second-order backpropagation and Hutch++ otherwise (``trace.settings["note"]`` says
        which ran and why).
    eigen, trace, frobenius, sam, asam, average, keskar
        Set to ``False`` to skip that (expensive) part; it is then ``None`` in the result. ``keskar="auto"``
        (default) runs each Keskar part that fits ``memory_budget`` and records why the others were skipped in
        ``settings["skipped"]`` (at 10^7-10^8 parameters neither L-BFGS-B on every coordinate nor a 100-column
        random basis fits); ``True`` runs both or raises :class:`~landscape.memory.MemoryBudgetError`.
    engine
        Hessian-vector product engine; fixed by default (with column-by-column blocks) so the same seed gives
        bit-identical results, ``"auto"`` picks the fastest by timing.
    progress : bool
        Show a progress bar over the parts (eigenvalue, trace, ..., each SAM ascent, the average-case draws) on stderr.
    memory_budget : int, optional
        Bytes the Keskar parts may hold (default :func:`landscape.memory.default_budget`).

    Returns
    -------
    Sharpness
    """
    start = time.perf_counter()
    _check_problem(problem)
    rho = _check_positive("rho", rho, "radius of the perturbation ball")
    _check_seed(seed)
    if subspace_dim is not None:
        subspace_dim = min(
            _check_int("subspace_dim", subspace_dim, 1, "dimension of the random subspace"), problem.num_params
        )
    lam = tr = fro = None
    settings: dict[str, Any] = {"problem": problem.describe()}
    parts = [eigen, trace, frobenius, sam, sam, sam, asam, average, keskar, keskar and subspace_dim is not None]
    bar = progress_bar(sum(bool(p) for p in parts), "sharpness", progress, unit="part")

    def done(name: str) -> None:
        bar.set_postfix_str(name)
        bar.update(1)

    if eigen or trace or frobenius:
        op = hessian(problem, engine=engine, block="loop" if engine != "auto" else "auto")
        if eigen:
            lam = top_eigen(op, 1, seed=seed, vectors=False)  # the value alone: two vectors of memory
            done("lambda_max")
        if trace:
            tr = estimate_trace(op, method=trace_method, num_matvecs=num_matvecs, seed=seed)
            done("trace")
        if frobenius:
            fro = frobenius_norm(op, num_matvecs=num_matvecs, seed=seed)
            done("Frobenius")
        settings["hessian"] = {"engine": op.engine, "block": op.block, "chosen": dict(op.chosen)}
    sam1 = sam2 = saminf = asam_r = None
    if sam:
        sam1 = sam_sharpness(problem, rho, p=2, m=m, steps=0, seed=seed)
        done("SAM first order")
        sam2 = sam_sharpness(problem, rho, p=2, m=m, steps=steps, seed=seed)
        done("SAM")
        saminf = sam_sharpness(problem, rho, p=math.inf, m=m, steps=steps, seed=seed)
        done("SAM p=inf")
    if asam:
        asam_r = sam_sharpness(problem, rho, p=2, adaptive=True, eta=eta, m=m, steps=steps, seed=seed)
        done("ASAM")
    avg = None
    if average:
        avg = average_sharpness(problem, rho, num_samples=num_samples, seed=seed)
        done("average")
    kes = kes_sub = None
    if keskar not in (True, False, "auto"):
        raise ValueError(f"keskar must be True, False or 'auto', got {keskar!r}")
    skipped: dict[str, str] = {}
    if keskar:
        for dim, name in ((None, "Keskar"), (subspace_dim, "Keskar subspace")):
            if name == "Keskar subspace" and dim is None:
                continue
            refused = _keskar_fits(problem, dim, memory_budget) if keskar == "auto" else None
            if refused is not None:
                skipped[name] = refused
            else:
                part = keskar_sharpness(
                    problem, eps, subspace_dim=dim, maxiter=maxiter, seed=seed, memory_budget=memory_budget
                )
                kes, kes_sub = (part, kes_sub) if dim is None else (kes, part)
            done(name)
    if skipped:
        settings["skipped"] = skipped
    bar.close()
    settings.update(
        {
            "steps": steps,
            "m": m,
            "eta": eta,
            "num_samples": num_samples,
            "eps": eps,
            "subspace_dim": subspace_dim,
            "maxiter": maxiter,
            "num_matvecs": num_matvecs,
            "trace_method": trace_method,
        }
    )
    return Sharpness(
        loss=problem.loss(),
        rho=rho,
        lambda_max=lam,
        trace=tr,
        frobenius=fro,
        sam_first_order=sam1,
        sam=sam2,
        sam_inf=saminf,
        asam=asam_r,
        average=avg,
        keskar=kes,
        keskar_subspace=kes_sub,
        num_params=problem.num_params,
        seed=seed_record(seed),
        wall_time=time.perf_counter() - start,
        settings=settings,
    )


__all__ = [
    "AverageSharpness",
    "KeskarSharpness",
    "SAMSharpness",
    "Sharpness",
    "average_sharpness",
    "keskar_memory",
    "keskar_sharpness",
    "sam_sharpness",
    "sharpness",
]
