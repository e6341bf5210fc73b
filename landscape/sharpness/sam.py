"""Worst-case sharpness: SAM and ASAM, full-batch and m-sharpness, by a monotone projected ascent.

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

Every evaluation is functional (``problem.loss(at=...)``, ``problem.loss_and_grad(at=...)``): the model keeps its
parameters, buffers, ``.grad`` and modes, and the global random state is never touched.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from landscape import reductions
from landscape._checks import Seed, check_int, check_positive, check_seed, generator
from landscape._json import field_dict
from landscape.example_pool import Examples
from landscape.linalg.probes import sample_probes, seed_record
from landscape.linalg.results import Diagnostics
from landscape.problem import Problem, check_problem
from landscape.sharpness._common import ScalarResult, gradient_is_zero, perturbation_scale

# Auto-PGD's initial step (Croce & Hein 2020) and the largest step of the doubling rule, in units of rho.
INITIAL_STEP = 2.0
MAX_STEP = 16.0


@dataclass(frozen=True)
class SAMSharpness(ScalarResult, Diagnostics):
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
    seed, wall_time, settings
        From :class:`~landscape.linalg.results.Diagnostics`; ``settings`` holds ``problem`` (the Problem's
        description, BatchNorm/dropout policy included), ``method`` (``"first_order"`` or ``"projected_ascent"``),
        the step rule and, for m-sharpness, the subset batching.
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
        arrays = ("subset_values", "subset_losses", "subset_sizes", "history")
        return {
            **field_dict(self, exclude=("perturbation",)),
            **{name: getattr(self, name).tolist() for name in arrays},
            "p": "inf" if math.isinf(self.p) else 2,
        }


def _check_p(p: object) -> float:
    """``p`` as ``2.0`` or ``inf`` (``"inf"`` accepted); ``ValueError`` for any other norm."""
    if isinstance(p, str) and p.lower() == "inf":
        return math.inf
    if isinstance(p, (int, float, np.integer, np.floating)) and not isinstance(p, bool) and p in (2, math.inf):
        return float(p)
    raise ValueError(f"p must be 2 or inf (the Euclidean ball or the box of the perturbation), got {p!r}")


def _direction(v: Tensor, p: float) -> Tensor:
    """Unit steepest-ascent direction of ``v`` in the ``p``-norm: ``v / ||v||_2`` or ``sign(v)`` (zero for zero)."""
    if math.isinf(p):
        return torch.sign(v)
    norm = reductions.norm(v)
    return v / norm if norm > 0 else torch.zeros_like(v)


def _dual_norm(v: Tensor, p: float) -> float:
    return float(v.abs().sum()) if math.isinf(p) else reductions.norm(v)


def _norm(v: Tensor, p: float) -> float:
    return float(v.abs().max()) if math.isinf(p) else reductions.norm(v)


def _project_(u: Tensor, rho: float, p: float) -> Tensor:
    """Euclidean projection onto the ``p``-ball of radius ``rho``, in place."""
    if math.isinf(p):
        return u.clamp_(-rho, rho)
    norm = reductions.norm(u)
    return u.mul_(rho / norm) if norm > rho else u


def _random_unit(n: int, p: float, gen: torch.Generator, like: Tensor) -> Tensor:
    """A seeded random point of the unit ``p``-sphere: Gaussian direction (p = 2) or random corner (p = inf)."""
    if math.isinf(p):
        z = sample_probes(n, 1, distribution="rademacher", seed=gen, dtype=like.dtype, device=like.device)
    else:
        z = sample_probes(n, 1, distribution="gaussian", seed=gen, dtype=like.dtype, device=like.device, normalize=True)
    return z[:, 0]


def _scaled(t: Tensor | None, v: Tensor) -> Tensor:
    """``T v``: ``v`` itself for the identity (``t = None``), else a new ``t * v``."""
    return v if t is None else t * v


class _Point:
    """``w + T u`` written into one reused buffer, ``w`` read from the model's own weights (no copy of them).

    SAM's ascent holds the gradient, the perturbation, the candidate and this point: four parameter-sized vectors
    besides the weights, where a copy of ``w``, ``T = I`` as a vector and a new point per evaluation held seven.
    """

    def __init__(self, problem: Problem, t: Tensor | None) -> None:
        self.weights = list(problem.params_dict(share=True).values())
        self.t = t
        self.buffer = torch.empty(problem.num_params, dtype=problem.dtype, device=problem.device)

    def __call__(self, u: Tensor) -> Tensor:
        torch.cat([w.reshape(-1) for w in self.weights], out=self.buffer)
        return self.buffer.add_(u) if self.t is None else self.buffer.addcmul_(self.t, u)


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
    problem: Problem, point: _Point, rho: float, p: float, steps: int, gen: torch.Generator, keep: bool
) -> _Ascent:
    """``max_{||u||_p <= rho} L(w + t u)``: first-order point, then ``steps`` projected ascent steps (module doc).

    The best perturbation itself is returned only with ``keep`` (m-sharpness keeps one number per subset).
    """
    t = point.t
    loss0, G = problem.loss_and_grad()
    num_loss, num_grad = 0, 1
    G = _scaled(t, G)
    random_start = gradient_is_zero(rho * _dual_norm(G, p), loss0, problem.dtype)
    u = (_random_unit(problem.num_params, p, gen, G) if random_start else _direction(G, p)).mul_(rho)
    history = np.full(steps + 1, np.nan)
    if steps == 0:
        best = problem.loss(at=point(u))
        num_loss += 1
    else:
        best, G = problem.loss_and_grad(at=point(u))
        G = _scaled(t, G)
        num_grad += 1
    history[0] = best - loss0
    step = INITIAL_STEP * rho
    # Beyond the box's diameter 2 rho a clipped sign step no longer changes: p = inf only ever halves.
    max_step = INITIAL_STEP * rho if math.isinf(p) else MAX_STEP * rho
    tiny = 16 * torch.finfo(problem.dtype).eps * rho
    for k in range(1, steps + 1):
        candidate = _project_(_direction(G, p).mul_(step).add_(u), rho, p)
        moved = torch.sub(candidate, u, out=point.buffer).abs_().max()  # the point's buffer as scratch
        if float(moved) <= tiny:
            break  # a fixed point of the projected step for every step length: a KKT point of the ball
        if k == steps:
            value = problem.loss(at=point(candidate))
            num_loss += 1
            grad = None
        else:
            value, grad = problem.loss_and_grad(at=point(candidate))
            num_grad += 1
        history[k] = value - loss0
        if value > best:
            best, u = value, candidate
            if grad is not None:
                G = _scaled(t, grad)
            step = min(2 * step, max_step)
        else:
            step /= 2
        del candidate, grad
    e = _scaled(t, u)
    return _Ascent(
        loss=loss0,
        best_loss=best,
        perturbation=e if keep else None,
        perturbation_norm=reductions.norm(e),
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


def sam_sharpness(
    problem: Problem,
    rho: float = 0.05,
    *,
    p: float | str = 2,
    adaptive: bool = False,
    eta: float = 0.01,
    m: int | None = None,
    steps: int = 20,
    seed: Seed = 0,
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
    TypeError
        An argument of the wrong type (``steps=2.0``, ``seed=1.5``, a problem that is not a Problem).
    ValueError
        ``rho <= 0``, ``p`` not 2 or inf, ``eta < 0``, ``steps < 0``, or ``m`` outside ``1..N`` or not dividing ``N``.
    """
    start = time.perf_counter()
    check_problem(problem)
    rho = check_positive("rho", rho, "radius of the perturbation ball")
    p = _check_p(p)
    eta = check_positive("eta", eta, "the ASAM offset of T_w = diag(|w|) + eta I", allow_zero=True)
    steps = check_int("steps", steps, 0, "projected ascent steps; 0 for the first-order maximiser")
    if m is not None:
        m = check_int("m", m, 1, "samples per subset of m-sharpness")
    seed = check_seed(seed)
    adaptive = bool(adaptive)
    gen = generator(seed)

    point = _Point(problem, perturbation_scale(problem.params_vector(), adaptive, eta) if adaptive else None)
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
    results = [_maximise(sub, point, rho, p, steps, gen, keep=m is None) for sub in subsets]
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


__all__ = ["SAMSharpness", "sam_sharpness"]
