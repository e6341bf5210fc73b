"""Loss and accuracy on a grid of points ``w + a_1 d_1 + ... + a_k d_k`` around a model (Li et al. 2018).

The surface (Li, Xu, Taylor, Studer, Goldstein 2018) is the exact full-data loss

    S[i_1, ..., i_k] = L(w + c_{i_1} d_1 + ... + c_{i_k} d_k),    c = linspace(span[0], span[1], resolution),

with axis ``j`` of the array belonging to direction ``j``. A grid value within rounding of 0 is snapped to exactly 0,
so an odd resolution over a symmetric span contains the trained point and gives exactly ``problem.loss()`` there.
Every evaluation is functional: the model is never modified. The points are evaluated by
:mod:`landscape.surface.evaluate`, through a resumable cache entry by :mod:`landscape.surface.resume`; the line
between two models is :mod:`landscape.surface.interpolation`'s.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from landscape.cache import Cache
from landscape.problem import ParamDict, Problem
from landscape.surface.directions import Directions
from landscape.surface.evaluate import DEFAULT_MEMORY_BUDGET, GridOptions, _evaluate, _plan, _Points, _run_settings
from landscape.surface.resume import _cached_surface


@dataclass(frozen=True)
class Surface:
    """Loss (and accuracy) over a grid of coordinates along some directions.

    Attributes
    ----------
    coords
        One 1D array per direction: the grid coordinates along it.
    loss
        Array of shape ``(resolution,) * num``; axis ``j`` indexes ``coords[j]`` (``indexing="ij"``).
    accuracy
        Size-weighted fraction of ``argmax(output) == target`` at every grid point, same shape as ``loss``; ``None``
        when the targets are not integer class labels.
    directions
        The directions (for :func:`~landscape.surface.interpolation.interpolate`, the single direction
        ``w_b - w_a`` of the selected parameters).
    settings
        Span, resolution, the Problem's description (BatchNorm/dropout policy among them) and how the directions
        were made.
    wall_time
        Seconds spent.
    """

    coords: tuple[np.ndarray, ...]
    loss: np.ndarray
    accuracy: np.ndarray | None
    directions: Directions
    settings: dict[str, Any] = field(default_factory=dict)
    wall_time: float = 0.0

    @property
    def ndim(self) -> int:
        return len(self.coords)

    def plot(
        self,
        kind: str | None = None,
        ax: Any = None,
        *,
        quantity: str = "loss",
        log_levels: bool = False,
        levels: int = 30,
        trajectory: Any = None,
        title: str | None = None,
    ) -> Any:
        """Matplotlib figure (paper-ready PDF/PNG via :func:`landscape.plot.save`); see
        :func:`landscape.plot.surface_plot`. Kinds: ``"line"`` (1D); ``"contour"``, ``"filled"``, ``"heatmap"``,
        ``"3d"`` (2D). Returns the axes."""
        from landscape.plot import surface_plot

        return surface_plot(
            self,
            kind,
            ax,
            quantity=quantity,
            log_levels=log_levels,
            levels=levels,
            trajectory=trajectory,
            title=title,
        )

    def plot_interactive(self, *, quantity: str = "loss", log: bool = False, trajectory: Any = None) -> Any:
        """Plotly figure: a 3D surface with contours on the floor and hover values (2D), or a line (1D)."""
        from landscape.plot import surface_figure

        return surface_figure(self, quantity=quantity, log=log, trajectory=trajectory)

    def to_html(
        self, path: str | os.PathLike[str] | None = None, *, quantity: str = "loss", log: bool = False, trajectory=None
    ) -> str:
        """Self-contained interactive HTML of :meth:`plot_interactive` (written to ``path`` when given)."""
        from landscape.plot import to_html

        return to_html(self.plot_interactive(quantity=quantity, log=log, trajectory=trajectory), path)

    def to_vtk(self, path: str | os.PathLike[str], *, quantity: str = "loss", log: bool = False) -> Any:
        """Legacy VTK structured grid of a 2D surface, for ParaView; see :func:`landscape.plot.to_vtk`."""
        from landscape.plot import to_vtk

        return to_vtk(self, path, quantity=quantity, log=log)


def _grid(span: Sequence[float], resolution: int, exact: Sequence[float]) -> np.ndarray:
    """``linspace(span[0], span[1], resolution)`` with values within rounding of ``exact`` snapped onto them."""
    if len(span) != 2 or not span[0] < span[1]:
        raise ValueError(f"span must be a pair (low, high) with low < high, got {span!r}")
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 2:
        raise ValueError(f"resolution must be an int >= 2, got {resolution!r}")
    low, high = float(span[0]), float(span[1])
    # np.linspace's arithmetic (i * step + low, the last point exactly high), bit for bit, and the snap, in Python
    # floats: ``resolution`` values cost nothing, while numpy's kernels for them would page in library code that
    # nothing else of a surface runs (a cold surface's peak RSS on a small model is mostly such code; BENCHMARKS.md).
    step = (high - low) / (resolution - 1)
    values = [i * step + low for i in range(resolution - 1)] + [high]
    tol = 1e-9 * (high - low) / (resolution - 1)
    for i, c in enumerate(values):
        for value in exact:
            if abs(c - value) <= tol:
                values[i] = value
    return np.array(values, dtype=np.float64)


def _check_directions(problem: Problem, directions: Directions) -> Tensor:
    if not isinstance(directions, Directions):
        raise TypeError(f"directions must be a Directions (see landscape.surface.directions), got {type(directions)}")
    vectors = directions.vectors
    # Directions stored narrower than the problem (bfloat16 on float32) are added as they are, without a wider copy.
    narrower = vectors.is_floating_point() and vectors.element_size() < problem.dtype.itemsize
    vectors = vectors.to(device=problem.device, dtype=vectors.dtype if narrower else problem.dtype)
    if vectors.ndim != 2 or vectors.shape[1] != problem.num_params:
        raise ValueError(
            f"directions have shape {tuple(vectors.shape)}; the problem needs (num, {problem.num_params}): "
            "were they made for another Problem (other params selection)?"
        )
    return vectors


def _param_views(problem: Problem, vector: Tensor) -> ParamDict:
    """Views of a flat vector's slice of each selected parameter: :meth:`Problem.unflatten` by plain slicing,
    which in a cold process pages in less library code than ``split_with_sizes`` (190 KB less RSS on W1)."""
    views: ParamDict = {}
    start = 0
    for n, numel, shape in zip(problem.param_names, problem.param_numels, problem.param_shapes, strict=True):
        views[n] = vector[start : start + numel].view(shape)
        start += numel
    return views


def _surface_points(problem: Problem, vectors: Tensor, coords: np.ndarray) -> _Points:
    """Points ``w + a_1 d_1 + ... + a_k d_k`` of a surface, written per parameter straight from the model's own
    tensors (no flat copy of ``w``) with one fused ``w_p + a_j d_jp`` per direction on contiguous slices (no
    temporary; every direction through the same ``out=`` form of the add, whose in-place twin ``add_`` is the same
    kernel behind more code to page in). At ``a = 0`` every offset is exactly zero, so the origin reproduces
    ``problem.loss()`` bit for bit. ``coords`` holds the grid's coordinates, one row per flat grid point."""
    named = dict(problem.model.named_parameters())
    origin = {n: named[n].detach().to(device=problem.device, dtype=problem.dtype) for n in problem.param_names}
    pieces = [_param_views(problem, vectors[j]) for j in range(vectors.shape[0])]

    def fill_one(i: int, n: str, out: Tensor) -> None:
        a = coords[i]
        torch.add(origin[n], pieces[0][n], alpha=float(a[0]), out=out)
        for j in range(1, len(a)):
            torch.add(out, pieces[j][n], alpha=float(a[j]), out=out)

    return _Points(origin, fill_one)


def surface(
    problem: Problem,
    directions: Directions,
    span: Sequence[float] = (-1.0, 1.0),
    resolution: int = 21,
    *,
    accuracy: bool = True,
    batch_points: int | str = 1,
    chunk: int | None = None,
    memory_budget: int | None = DEFAULT_MEMORY_BUDGET,
    point_memory: str = "auto",
    cache: Cache | str | os.PathLike[str] | None = None,
    progress: bool = False,
) -> Surface:
    """Loss over the grid ``w + c_{i_1} d_1 + ... + c_{i_k} d_k`` around the Problem's current parameters.

    ``c = linspace(span[0], span[1], resolution)`` along every direction (Li et al. 2018); the loss is the exact
    size-weighted full-data mean under the Problem's BatchNorm/dropout policy. On a data-parallel Problem every rank
    evaluates every point on its own shard and the per-point sums are all-reduced once per chunk (the data are
    sharded, so no rank could evaluate a point alone). Cost: ``resolution ** num`` forward
    passes over the data (``/ batch_points`` passes with ``vmap``).

    Parameters
    ----------
    problem : Problem
        The model is evaluated functionally and never modified.
    directions : Directions
        From :mod:`landscape.surface.directions`; ``num`` directions give a ``num``-dimensional array.
    span : (float, float)
        Coordinate range along every direction.
    resolution : int
        Points per direction; odd with a symmetric span puts the trained point (exactly) on the grid.
    accuracy : bool
        Also compute the accuracy when the targets are integer class labels.
    batch_points : int or "auto"
        Grid points per forward pass: 1 (default) costs one plain forward per point and no extra memory; ``k > 1``
        stacks ``k`` perturbed parameter sets and runs ``torch.vmap`` over them (activation memory ``k`` times a
        forward's; it pays on small models whose forward does not keep the cores busy); ``"auto"`` times 1, 4 and 16
        on the first batch and keeps the fastest. Values agree with one-by-one evaluation to rounding.
    memory_budget : int or None
        Bytes a group of ``batch_points > 1`` points may hold: stacked parameter sets plus activations (every
        module's output bytes in one forward pass of the first batch, an upper bound), measured once. A larger
        ``batch_points`` is lowered to what fits (``settings["memory"]`` records the estimate and the request);
        ``None``: no cap.
    point_memory : {"auto", "whole", "per_module"}
        How one point at a time is held: ``"whole"`` writes the point's parameter set (one more copy of the selected
        parameters) before each forward pass; ``"per_module"`` writes each module's tensors of the point by a
        forward pre-hook right before the module runs and drops them after (:mod:`landscape.surface.per_module`:
        beyond the model and the directions, only the tensors of the modules being run); ``"auto"`` (default):
        per module for parameter sets of 16 MiB or more. Same values bit for bit; ``settings["point_memory"]``
        says which ran (a model that reads a parameter outside its own module falls back to whole points, and
        ``settings["memory"]["per_module_failed"]`` says why).
    chunk : int, optional
        Grid points per committed chunk (default ``max(64, batch_points)``): the resume granularity with ``cache``.
    cache : Cache or path, optional
        HDF5 cache (:class:`landscape.cache.Cache`). The surface is stored under a content key of the parameters,
        data, BatchNorm/dropout policy, directions and every setting above; each finished chunk is committed
        atomically, so an interrupted run (even SIGKILL) resumes at the first unfinished chunk and ends bit-identical
        to an uninterrupted one, and a finished surface is read back without any forward pass. Data-parallel
        (:mod:`landscape.distributed`), rank 0's ``cache`` decides and rank 0 alone opens and writes it; the other
        ranks' is ignored.
    progress : bool
        Show a progress bar over the grid points on stderr (advanced once per chunk).

    Returns
    -------
    Surface
        ``.loss[i, j, ...]`` is the loss at ``coords[0][i], coords[1][j], ...``.
    """
    start = time.perf_counter()
    vectors = _check_directions(problem, directions)
    num = vectors.shape[0]
    coords = _grid(span, resolution, exact=(0.0,))
    shape = (resolution,) * num
    grid = np.stack(np.meshgrid(*([coords] * num), indexing="ij"), axis=-1).reshape(-1, num)
    points = _surface_points(problem, vectors, grid)
    dir_settings = {"kind": directions.kind, "seed": directions.seed, **directions.settings}
    options = GridOptions(span, resolution, batch_points, chunk, memory_budget, point_memory)
    if cache is None and problem.ranks is None:
        plan = _plan(problem, points, grid.shape[0], options)
        loss, acc = _evaluate(problem, points, shape, accuracy, plan, progress=progress)
        settings = _run_settings(options, plan, dir_settings, problem)
    else:
        loss, acc, settings = _cached_surface(
            problem, points, vectors, coords, shape, accuracy, options, dir_settings, cache, progress
        )
    return Surface(
        tuple(coords.copy() for _ in range(num)), loss, acc, directions, settings, time.perf_counter() - start
    )
