"""How rough the loss is along random directions: the roughness index of Wu, Du, Chen and Zhou.

For ``M`` directions ``d`` (filter-normalised Gaussian by default, Li et al. 2018) the loss is evaluated along the
line ``f_d(a) = L(w + a d)`` on the grid ``a_j = -l + 2 l j / m``, ``j = 0..m`` (``m + 1 = points`` grid points), and
each curve is summarised by its normalised total variation (Wu, Du, Chen, Zhou, "Roughness Index for Loss
Landscapes of Neural Network Models of Partial Differential Equations")

    T_d = sum_{j<m} |f_d(a_{j+1}) - f_d(a_j)| / (2 l (max_j f_d - min_j f_d)),

    RI = std(T_d, ddof=1) / mean(T_d).

``T_d`` does not change under an affine rescaling ``L -> s L + c`` (``s > 0``), and neither does ``RI``. A curve with a
single minimum has ``1 / (2 l) <= T_d <= 1 / l`` (``1 / (2 l)`` monotone, ``1 / l`` symmetric about its minimum);
every extra oscillation adds to ``T_d``. So ``RI = 0`` for a quadratic evaluated at its minimum (every curve is an
even parabola, ``T_d = 1 / l``), and ``RI`` grows when some directions are much rougher than others. It is also 0
when every curve is monotone (``T_d = 1 / (2 l)``: far from a minimum at the scale ``l``), so read it with the
curves, not alone.

Optionally every curve is also compared with the quadratic model the Hessian predicts along it,

    q_d(a) = L(w) + a g^T d + a^2 / 2 d^T H d,     g = grad L(w), H = Hessian of L at w,

through ``max_j |f_d(a_j) - q_d(a_j)| / (max_j f_d - min_j f_d)``: the size of the Taylor remainder relative to the
curve's own range, also invariant to affine rescaling of ``L``. It is ``O(l^2)`` off a minimum (``O(l)`` at a
non-degenerate minimum) for a smooth loss, and tells whether a quadratic (Laplace, sharpness) picture of the
landscape holds at the scale ``l``.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from landscape._checks import Seed, check_int, check_positive, check_seed, seed_int
from landscape.operators import hessian
from landscape.problem import Problem, check_problem
from landscape.progress import progress as progress_bar
from landscape.surface.directions import Directions, filter_normalized, from_vectors
from landscape.surface.grid import surface

# A curve whose range is below FLAT_ULPS units of rounding of its largest value is treated as flat: its total
# variation is rounding noise and T_d = 0/0.
FLAT_ULPS = 64
# Bytes of a (num_params, chunk) block of directions and of its Hessian product, when chunk_size is not given.
CHUNK_BYTES = 256 * 1024**2
MAX_CHUNK = 16


@dataclass(frozen=True)
class RoughnessIndex:
    """The roughness index and the per-direction curves it was computed from.

    Attributes
    ----------
    value
        ``RI = std(T_d, ddof=1) / mean(T_d)`` over the non-flat directions; ``nan`` with fewer than two of them.
    stderr
        Normal-theory (delta-method) standard error of ``value``, ``RI sqrt(1 / (2 (M' - 1)) + RI^2 / M')`` with
        ``M'`` non-flat directions: an error bar for the finite number of directions, exact only for Gaussian
        ``T_d``.
    total_variations
        ``(M,)`` normalised total variations ``T_d``; ``nan`` for flat directions.
    flat
        ``(M,)`` bool: the curve's range ``max f - min f`` is at the rounding level of the problem's dtype
        (``<= 64 eps max|f|``). Such a curve has no measurable variation and ``T_d = 0/0``: it is left out of ``RI``
        (a warning says how many), and its ``quadratic_deviation`` is ``nan``.
    coords
        ``(points,)`` grid ``a_j = -l + 2 l j / (points - 1)``.
    curves
        ``(M, points)`` full-data losses ``f_d(a_j) = L(w + a_j d)``; row ``k`` belongs to direction ``k``.
    seed
        Seed of the filter-normalised directions; for user directions, theirs (``None`` when not random).
    span
        ``l``: the grid covers ``[-l, l]``.
    num_evaluations
        Full-data loss evaluations on the curves (``M * points``).
    wall_time
        Seconds spent.
    settings
        ``problem`` (the Problem's description: BatchNorm/dropout policy, dtype, parameters), ``directions`` (kind,
        seed, normalisation), ``points``, ``intervals``, ``num_directions``, ``quadratic`` and, with the quadratic
        comparison, ``hessian`` (engine and block strategy) and ``chunk_size``.
    loss
        ``L(w)`` from the gradient evaluation when ``quadratic=True``, else ``None``.
    slopes
        ``(M,)`` directional derivatives ``g^T d`` (``None`` unless ``quadratic=True``).
    curvatures
        ``(M,)`` curvatures ``d^T H d`` along the (unnormalised, filter-scaled) directions (``None`` unless
        ``quadratic=True``).
    quadratic_deviation
        ``(M,)`` ``max_j |f_d(a_j) - q_d(a_j)| / (max_j f_d - min_j f_d)`` (``None`` unless ``quadratic=True``).
    num_gradient_evaluations
        Full-data gradient evaluations (1 with the quadratic comparison, else 0).
    num_matvecs
        Hessian-vector products (``M`` with the quadratic comparison, else 0).
    """

    value: float
    stderr: float
    total_variations: np.ndarray
    flat: np.ndarray
    coords: np.ndarray
    curves: np.ndarray
    seed: int | None
    span: float
    num_evaluations: int
    wall_time: float
    settings: dict[str, Any] = field(default_factory=dict)
    loss: float | None = None
    slopes: np.ndarray | None = None
    curvatures: np.ndarray | None = None
    quadratic_deviation: np.ndarray | None = None
    num_gradient_evaluations: int = 0
    num_matvecs: int = 0

    def __float__(self) -> float:
        return float(self.value)

    @property
    def num_directions(self) -> int:
        return int(self.curves.shape[0])

    @property
    def points(self) -> int:
        return int(self.curves.shape[1])

    def summary(self) -> str:
        """A short human-readable report."""
        tv = self.total_variations[~self.flat]
        kind = self.settings.get("directions", {}).get("kind", "given")
        mode = self.settings.get("problem", {}).get("mode", "?")
        lines = [
            f"roughness index RI = {self.value:.4g} +- {self.stderr:.2g} over {self.num_directions} {kind} directions "
            f"(seed {self.seed}), a in [-{self.span:g}, {self.span:g}] on {self.points} points",
        ]
        if tv.size:
            lines.append(
                f"normalised total variation T_d: mean {tv.mean():.4g}, min {tv.min():.4g}, max {tv.max():.4g} "
                f"(1/(2l) = {0.5 / self.span:.4g} monotone, 1/l = {1 / self.span:.4g} even parabola)"
            )
        if self.flat.any():
            lines.append(f"{int(self.flat.sum())} flat direction(s) left out (no measurable variation)")
        if self.quadratic_deviation is not None and tv.size:
            dev = self.quadratic_deviation[~self.flat]
            lo, hi = self.curvatures.min(), self.curvatures.max()
            lines.append(
                f"deviation from the Hessian's quadratic (relative to each curve's range): "
                f"median {np.median(dev):.3g}, max {dev.max():.3g}; curvature d^T H d in [{lo:.4g}, {hi:.4g}]"
            )
        lines.append(
            f"({self.num_evaluations} loss evaluations, {self.num_gradient_evaluations} gradient, "
            f"{self.num_matvecs} Hessian-vector products, {self.wall_time:.2f} s, mode {mode})"
        )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready numbers (``nan`` where undefined)."""

        def listed(x: np.ndarray | None) -> list | None:
            return None if x is None else x.tolist()

        return {
            "value": self.value,
            "stderr": self.stderr,
            "total_variations": listed(self.total_variations),
            "flat": [bool(f) for f in self.flat],
            "coords": listed(self.coords),
            "curves": listed(self.curves),
            "seed": self.seed,
            "span": self.span,
            "num_evaluations": self.num_evaluations,
            "num_gradient_evaluations": self.num_gradient_evaluations,
            "num_matvecs": self.num_matvecs,
            "wall_time": self.wall_time,
            "loss": self.loss,
            "slopes": listed(self.slopes),
            "curvatures": listed(self.curvatures),
            "quadratic_deviation": listed(self.quadratic_deviation),
            "settings": self.settings,
        }


def _directions(
    problem: Problem, num_directions: int, seed: Seed, directions: Directions | Tensor | None
) -> Directions:
    if directions is None:
        check_int("num_directions", num_directions, 2, "the standard deviation of T_d needs two directions")
        return filter_normalized(problem, num_directions, seed=seed_int(seed))
    if isinstance(directions, Tensor):
        directions = from_vectors(problem, directions)
    if not isinstance(directions, Directions):
        raise TypeError(f"directions must be a Directions, a (num, num_params) tensor or None, got {type(directions)}")
    if directions.vectors.ndim != 2 or directions.vectors.shape[1] != problem.num_params:
        raise ValueError(
            f"directions have shape {tuple(directions.vectors.shape)}; the problem needs (num, {problem.num_params})"
        )
    if directions.num < 2:
        raise ValueError(f"directions has {directions.num} row(s); the roughness index needs at least 2")
    return directions


def _total_variations(coords: np.ndarray, curves: np.ndarray, dtype: torch.dtype) -> tuple[np.ndarray, np.ndarray]:
    """``T_d`` per row of ``curves`` and the flat mask (``T_d = nan`` there)."""
    ranges = curves.max(axis=1) - curves.min(axis=1)
    scale = np.maximum(np.abs(curves).max(axis=1), np.finfo(np.float64).tiny)
    flat = ranges <= FLAT_ULPS * torch.finfo(dtype).eps * scale
    variation = np.abs(np.diff(curves, axis=1)).sum(axis=1)
    width = coords[-1] - coords[0]
    with np.errstate(divide="ignore", invalid="ignore"):
        tv = np.where(flat, np.nan, variation / (width * np.where(flat, 1.0, ranges)))
    return tv, flat


def _index(tv: np.ndarray) -> tuple[float, float]:
    """``RI = std(ddof=1) / mean`` of the finite ``T_d`` and its normal-theory standard error."""
    x = tv[np.isfinite(tv)]
    if x.size < 2:
        return math.nan, math.nan
    ri = float(x.std(ddof=1) / x.mean())
    return ri, float(ri * math.sqrt(1.0 / (2 * (x.size - 1)) + ri**2 / x.size))


def _chunk_size(chunk_size: int | None, num_params: int, itemsize: int) -> int:
    if chunk_size is not None:
        return check_int("chunk_size", chunk_size, 1, "directions per Hessian block product")
    # The block and its product: two (num_params, chunk) arrays.
    return max(1, min(MAX_CHUNK, CHUNK_BYTES // max(1, 2 * num_params * itemsize)))


def roughness_index(
    problem: Problem,
    num_directions: int = 100,
    span: float = 0.1,
    points: int = 20,
    *,
    seed: Seed = 0,
    directions: Directions | Tensor | None = None,
    quadratic: bool = True,
    engine: str = "double_backward",
    chunk_size: int | None = None,
    progress: bool = False,
) -> RoughnessIndex:
    """Roughness index of the loss along random filter-normalised directions (Wu, Du, Chen, Zhou).

    ``f_d(a) = L(w + a d)`` on ``a_j = -l + 2 l j / m``, ``j = 0..m`` with ``m = points - 1`` intervals;
    ``T_d = sum_j |f_d(a_{j+1}) - f_d(a_j)| / (2 l (max f_d - min f_d))`` and ``RI = std(T_d, ddof=1) / mean(T_d)``
    (see the module docstring). The paper's main setting is ``l = 0.1``, ``m = 10..20``, ``M = 100``. Every curve is a
    1D :func:`landscape.surface.surface`, so the loss is the exact full-data loss under the Problem's
    BatchNorm/dropout policy and the model is never modified. Cost: ``M * points`` loss evaluations, plus one
    gradient and ``M`` Hessian-vector products with ``quadratic=True``.

    Parameters
    ----------
    problem : Problem
    num_directions : int
        ``M >= 2`` filter-normalised Gaussian directions (Li et al. 2018; biases and BatchNorm parameters get zero).
        Ignored when ``directions`` is given.
    span : float
        ``l > 0``: the curves cover ``[-l, l]``.
    points : int
        Number of grid points ``m + 1 >= 3`` (so ``m = points - 1`` intervals). An odd number puts the trained
        point on the grid; even or odd, a symmetric grid gives ``T_d = 1/l`` exactly for an even parabola.
    seed : int or torch.Generator
        Seed of the directions' local generator (a generator gives one ``int`` seed, which the result records); the
        global RNG is never touched.
    directions : Directions or Tensor, optional
        Use these (at least 2 rows, e.g. :func:`landscape.surface.directions.layer_normalized`) instead.
    quadratic : bool
        Also compute, per direction, the slope ``g^T d``, the curvature ``d^T H d`` and the deviation of the curve
        from the quadratic ``q_d(a) = L(w) + a g^T d + a^2 / 2 d^T H d`` relative to the curve's range.
    engine : str
        Hessian-vector product engine (:func:`landscape.hessian`). Fixed by default (with column-by-column
        products) so that the same seed gives bit-identical curvatures; ``"auto"`` picks the fastest by timing.
    chunk_size : int, optional
        Directions per Hessian block product; by default as many as keep the block under 256 MiB (at most 16).
    progress : bool
        Show a progress bar over the directions on stderr.

    Returns
    -------
    RoughnessIndex
        ``.value`` (RI), ``.total_variations``, ``.curves`` and, with ``quadratic=True``, ``.slopes``,
        ``.curvatures`` and ``.quadratic_deviation``; diagnostics and settings.

    Raises
    ------
    TypeError
        An argument of the wrong type (``points=3.0``, ``seed=1.5``, a problem that is not a Problem).
    ValueError
        ``num_directions < 2``, ``span <= 0``, ``points < 3``, or directions of the wrong shape.
    """
    start = time.perf_counter()
    check_problem(problem)
    span = check_positive("span", span, "the curves cover [-span, span]")
    points = check_int("points", points, 3, "grid points; total variation needs at least two intervals")
    seed = check_seed(seed)
    dirs = _directions(problem, num_directions, seed, directions)
    vectors = dirs.vectors.to(device=problem.device, dtype=problem.dtype)
    num = dirs.num
    if quadratic:
        # Built (and its arguments checked) before the curves, so a bad engine or chunk size fails at once.
        op = hessian(problem, engine=engine, block="loop" if engine != "auto" else "auto")
        chunk = _chunk_size(chunk_size, problem.num_params, vectors.element_size())

    coords = None
    curves = np.empty((num, points), dtype=np.float64)
    for k in progress_bar(range(num), "roughness directions", progress, unit="direction"):
        # One direction per surface: each curve is a 1D surface under the Problem's mode policy.
        row = Directions(vectors[k : k + 1], dirs.kind, dirs.seed, {**dirs.settings, "row": k})
        s = surface(problem, row, span=(-span, span), resolution=points, accuracy=False)
        coords = s.coords[0]
        curves[k] = s.loss
    tv, flat = _total_variations(coords, curves, problem.dtype)
    value, stderr = _index(tv)
    if flat.all():
        warnings.warn(
            f"all {num} curves are flat (the loss does not change along the directions: are they zero on the "
            "selected parameters, e.g. filter normalisation of biases only?); the roughness index is undefined (nan)",
            stacklevel=2,
        )
    elif flat.any():
        warnings.warn(
            f"{int(flat.sum())} of {num} curves are flat (no measurable variation) and are left out of the "
            "roughness index",
            stacklevel=2,
        )

    settings: dict[str, Any] = {
        "problem": problem.describe(),
        "directions": {"kind": dirs.kind, "seed": dirs.seed, **dirs.settings},
        "points": points,
        "intervals": points - 1,
        "num_directions": num,
        "quadratic": bool(quadratic),
    }
    extra: dict[str, Any] = {}
    if quadratic:
        loss0, grad = problem.loss_and_grad()
        curvatures = torch.empty(num, dtype=torch.float64)
        for lo in range(0, num, chunk):
            block = vectors[lo : lo + chunk].T
            curvatures[lo : lo + chunk] = (block * (op @ block)).sum(dim=0).to(torch.float64).cpu()
        slopes = (vectors @ grad).to(torch.float64).cpu().numpy()
        curvatures = curvatures.numpy()
        a = coords[None, :]
        predicted = loss0 + a * slopes[:, None] + 0.5 * a**2 * curvatures[:, None]
        ranges = curves.max(axis=1) - curves.min(axis=1)
        remainder = np.abs(curves - predicted).max(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            deviation = np.where(flat, np.nan, remainder / np.where(flat, 1.0, ranges))
        settings["hessian"] = {"engine": op.engine, "block": op.block, "chosen": dict(op.chosen)}
        settings["chunk_size"] = chunk
        extra = {
            "loss": float(loss0),
            "slopes": slopes,
            "curvatures": curvatures,
            "quadratic_deviation": deviation,
            "num_gradient_evaluations": 1,
            "num_matvecs": int(op.num_matvecs),
        }
    return RoughnessIndex(
        value=value,
        stderr=stderr,
        total_variations=tv,
        flat=flat,
        coords=np.asarray(coords, dtype=np.float64),
        curves=curves,
        seed=dirs.seed,
        span=span,
        num_evaluations=num * points,
        wall_time=time.perf_counter() - start,
        settings=settings,
        **extra,
    )


__all__ = ["RoughnessIndex", "roughness_index"]
