"""Loss and accuracy on a grid of points ``w + a_1 d_1 + ... + a_k d_k`` and along a line between two models.

The surface (Li, Xu, Taylor, Studer, Goldstein 2018) is the exact full-data loss

    S[i_1, ..., i_k] = L(w + c_{i_1} d_1 + ... + c_{i_k} d_k),    c = linspace(span[0], span[1], resolution),

with axis ``j`` of the array belonging to direction ``j``. A grid value within rounding of 0 is snapped to exactly 0,
so an odd resolution over a symmetric span contains the trained point and gives exactly ``problem.loss()`` there.
Linear interpolation (Goodfellow, Vinyals, Saxe 2015) is ``L((1 - a) w_a + a w_b)`` with the floating-point buffers
(BatchNorm running statistics) interpolated alike. Every evaluation is functional: the model is never modified.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import math
import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from landscape.cache import Cache, CacheError, opened
from landscape.losses import Criterion
from landscape.problem import ParamDict, Problem
from landscape.progress import progress as progress_bar
from landscape.surface.directions import Directions


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
        The directions (for :func:`interpolate`, the single direction ``w_b - w_a`` of the selected parameters).
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


def _are_labels(targets: Tensor) -> bool:
    """Integer class labels, one per sample."""
    return (
        not targets.is_floating_point()
        and not targets.is_complex()
        and targets.dtype != torch.bool
        and targets.ndim == 1
    )


def _is_classification(outputs: Tensor, targets: Tensor) -> bool:
    return _are_labels(targets) and outputs.ndim == 2 and outputs.shape[0] == targets.shape[0]


class _Predictions:
    """Predicted classes (``argmax`` over the last dimension) of every local sample, written batch by batch into one
    preallocated buffer, and their targets: the correct count of a grid point is then one comparison.

    Outputs in host memory with a dtype numpy has go through numpy's ``argmax`` and ``count_nonzero``: the same
    indices (the first maximum; a NaN counts as the maximum in both), ~25% faster on small outputs (36 vs 47 us
    per W1 grid point) and ~370 KB less library code paged in than torch's argmax, eq and count_nonzero, which a
    forward pass never runs (see the memory section of BENCHMARKS.md). Anything else uses torch on its device.
    """

    _NUMPY_DTYPES = (torch.float16, torch.float32, torch.float64)

    def __init__(self, size: int, device: torch.device) -> None:
        self.predicted = torch.empty(size, dtype=torch.int64, device=device)
        self.targets = torch.empty(size, dtype=torch.int64, device=device)
        on_host = self.predicted.device.type == "cpu"
        self._predicted = self.predicted.numpy() if on_host else None  # views of the same memory
        self._targets = self.targets.numpy() if on_host else None

    def set_targets(self, start: int, targets: Tensor) -> None:
        self.targets[start : start + targets.shape[0]] = targets

    def record(self, start: int, outputs: Tensor) -> None:
        stop = start + outputs.shape[0]
        if self._predicted is not None and outputs.device.type == "cpu" and outputs.dtype in self._NUMPY_DTYPES:
            np.argmax(outputs.numpy(), axis=-1, out=self._predicted[start:stop])
        else:
            torch.argmax(outputs, dim=-1, out=self.predicted[start:stop])

    def correct(self) -> int | Tensor:
        if self._predicted is not None:
            return int(np.count_nonzero(self._predicted == self._targets))
        return torch.count_nonzero(torch.eq(self.predicted, self.targets))


# Points per chunk: the granularity at which results are handed over (and committed by a cached surface).
DEFAULT_CHUNK = 64
AUTO_CANDIDATES = (1, 4, 16)
# A batched candidate must be this much faster per point than the previous choice to be picked.
AUTO_MARGIN = 1.1
# Default cap on what a group of points evaluated together through vmap may hold (stacked parameters + activations).
DEFAULT_MEMORY_BUDGET = 1 << 30


class VmapUnsupportedError(RuntimeError):
    """``torch.vmap`` cannot run the model's forward pass, so grid points cannot be stacked (``batch_points > 1``)."""


@dataclass(frozen=True)
class _Points:
    """The grid points of one run, written into preallocated tensors rather than built anew.

    ``fill(i, out)`` writes the parameter set of flat grid point ``i`` (C order of the grid) into the tensors of
    ``out`` (shapes of ``template``) in place; entries that are not selected parameters (interpolated buffers)
    override the model's own state in the forward pass.
    """

    template: ParamDict
    fill: Callable[[int, ParamDict], None]

    def buffers(self, k: int | None = None) -> ParamDict:
        """Tensors for one point (``k=None``) or ``k`` stacked points (leading dimension ``k``)."""
        if k is None:
            return {n: torch.empty_like(t) for n, t in self.template.items()}
        return {n: t.new_empty((k, *t.shape)) for n, t in self.template.items()}

    def stacked(self, idx: np.ndarray) -> ParamDict:
        out = self.buffers(len(idx))
        for j, i in enumerate(idx):
            self.fill(int(i), {n: t[j] for n, t in out.items()})
        return out

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.template.values())


@dataclass(frozen=True)
class _Plan:
    """How grid points are evaluated: ``batch_points`` per forward (``vmap`` over stacked parameters when > 1),
    ``chunk`` points per pass over the data, the timings an ``"auto"`` choice was based on, and the memory estimate
    behind a cap on ``batch_points``."""

    batch_points: int
    chunk: int
    timings: dict[int, float] = field(default_factory=dict)
    memory: dict[str, Any] = field(default_factory=dict)


def _forward_stacked(problem: Problem, forward: Callable, params: ParamDict, data: Any) -> Tensor:
    """Outputs ``(P, ...)`` of the stacked points in ``params`` through ``vmap`` over the leading dimension.

    In train mode dropout draws independent masks per point (``randomness="different"``).
    """
    randomness = "different" if problem.mode == "train" else "error"
    try:
        outputs = problem.objective.outputs
        return torch.vmap(lambda p: outputs(problem.model_fn(forward, p), data), randomness=randomness)(params)
    except RuntimeError as err:  # e.g. a forward that calls autograd.grad or requires_grad_ on its inputs
        raise VmapUnsupportedError(
            f"batch_points > 1 evaluates grid points through torch.vmap, which cannot run this model's forward "
            f"({type(err).__name__}: {str(err).splitlines()[0][:200]}); use batch_points=1"
        ) from err


def _activation_bytes(problem: Problem, points: _Points) -> int:
    """Bytes of every module's output in one forward pass of one point on the first batch: an upper bound of the
    activation memory a point adds to a ``vmap`` group (outputs are freed as the forward pass goes on)."""
    first = next(iter(problem.batches()))
    seen = [0]

    def count(_module: nn.Module, _args: Any, output: Any) -> None:
        for t in output if isinstance(output, (tuple, list)) else (output,):
            if isinstance(t, Tensor):
                seen[0] += t.numel() * t.element_size()

    buffers = points.buffers()
    points.fill(0, buffers)
    with torch.no_grad(), problem.evaluation(order=0) as forward:

        def once(module: nn.Module) -> None:
            hooks = [m.register_forward_hook(count) for m in module.modules()]
            try:
                problem.objective.outputs(module, first.data)
            finally:
                for h in hooks:
                    h.remove()

        forward.within(buffers, once)
    return seen[0]


def _plan(
    problem: Problem,
    points: _Points,
    num_points: int,
    batch_points: int | str,
    chunk: int | None,
    memory_budget: int | None,
) -> _Plan:
    """:func:`_local_plan`, data-parallel the same on every rank: rank 0's (the ranks all-reduce per chunk, so
    their chunks must agree, and their timings and memory estimates from their own shards may not)."""
    plan = _local_plan(problem, points, num_points, batch_points, chunk, memory_budget)
    group = problem.ranks
    if group is None:
        return plan
    return group.broadcast_object(plan, "broadcast of the surface plan")


def _local_plan(
    problem: Problem,
    points: _Points,
    num_points: int,
    batch_points: int | str,
    chunk: int | None,
    memory_budget: int | None,
) -> _Plan:
    """Resolve ``batch_points``: cap it to what fits ``memory_budget``; ``"auto"`` times each candidate per point on
    the first batch and keeps the fastest."""
    auto = batch_points == "auto"
    if not auto and (isinstance(batch_points, bool) or not isinstance(batch_points, int) or batch_points < 1):
        raise ValueError(f"batch_points must be a positive int or 'auto', got {batch_points!r}")
    if memory_budget is not None and (isinstance(memory_budget, bool) or memory_budget <= 0):
        raise ValueError(f"memory_budget must be a positive number of bytes or None, got {memory_budget!r}")
    largest = max(AUTO_CANDIDATES) if auto else batch_points
    memory: dict[str, Any] = {}
    if largest > 1 and memory_budget is not None:
        per_point = points.nbytes() + _activation_bytes(problem, points)
        fits = max(1, int(memory_budget // per_point))
        memory = {"budget_bytes": int(memory_budget), "bytes_per_point": int(per_point), "points_that_fit": fits}
        if not auto and batch_points > fits:
            memory["batch_points_requested"] = batch_points
            batch_points = fits
    if not auto:
        return _Plan(batch_points, chunk or max(DEFAULT_CHUNK, batch_points), memory=memory)
    limit = memory.get("points_that_fit", max(AUTO_CANDIDATES))
    timings: dict[int, float] = {}
    first = next(iter(problem.batches()))
    best = 1
    with torch.no_grad(), problem.evaluation(order=0) as forward:
        for p in AUTO_CANDIDATES:
            if p > max(1, num_points) or p > limit:
                break
            idx = np.arange(p) % max(num_points, 1)
            reps = max(1, 16 // p)
            if p == 1:
                buffers = points.buffers()
                points.fill(0, buffers)
                run = functools.partial(forward.within, buffers, lambda m: problem.objective.outputs(m, first.data))
            else:
                run = functools.partial(_forward_stacked, problem, forward, points.stacked(idx), first.data)
            try:
                run()  # warm-up
            except VmapUnsupportedError as err:  # one point at a time still works: keep it, say why
                memory = {**memory, "vmap_unsupported": str(err)}
                break
            t0 = time.perf_counter()
            for _ in range(reps):
                run()
            timings[p] = (time.perf_counter() - t0) / (reps * p)
            if timings[p] * AUTO_MARGIN < timings[best]:
                best = p
    return _Plan(best, chunk or max(DEFAULT_CHUNK, best), timings, memory)


def _evaluate(
    problem: Problem,
    points: _Points,
    shape: tuple[int, ...],
    accuracy: bool,
    plan: _Plan,
    *,
    done: np.ndarray | None = None,
    on_chunk: Callable[[np.ndarray, np.ndarray, np.ndarray | None], None] | None = None,
    initial: tuple[np.ndarray, np.ndarray | None] | None = None,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Full-data loss (and accuracy) at every grid point not yet ``done``.

    One point at a time (``plan.batch_points == 1``), the module is re-parametrised once for the whole run with a
    single preallocated parameter set that every point is written into in place, and called directly: per point
    there is no allocation and no re-parametrisation, only the forward passes. Groups of points go through
    ``vmap`` over stacked parameter sets, built once per group and reused for every batch. The loss of a point sums
    ``w_b L_b`` over batches in data order exactly as :meth:`Problem.loss` does, so one point at a time a point equal
    to the current parameters reproduces ``problem.loss()`` bit for bit. Results are handed over ``plan.chunk``
    points at a time: ``on_chunk(idx, loss, accuracy)`` is called after every chunk (a cache stores it there);
    ``initial`` holds values already computed. ``progress`` shows a bar advanced once per chunk.
    """
    num_points = int(np.prod(shape))
    losses = np.full(num_points, np.nan)
    accs = np.full(num_points, np.nan)
    if initial is not None:
        losses[:] = initial[0].reshape(-1)
        if initial[1] is not None:
            accs[:] = initial[1].reshape(-1)
    todo = np.arange(num_points) if done is None else np.flatnonzero(~done.reshape(-1))
    flags = {"accuracy": accuracy}
    total_samples = problem.num_counted  # examples, or counted tokens (token accuracy)
    objective = problem.objective
    # A criterion on (inputs, targets) keeps the fast path of class predictions written into one buffer; any other
    # loss adapter counts its own correct predictions per batch.
    criterion = isinstance(objective, Criterion)
    # In-memory data are the Problem's own tensors (no copy), prepared once; a loader is read pass by pass.
    held = list(problem.batches()) if problem.in_memory else None

    def data():
        return held if held is not None else problem.batches()

    # Per-chunk results are written into two tensors allocated once: nothing small outlives a point, which keeps
    # the allocator from fragmenting (on CPU, per-point result tensors kept for a chunk grew the RSS by ~25 MB).
    chunk_loss = torch.empty(plan.chunk, dtype=problem.dtype, device=problem.device)
    chunk_correct = chunk_loss.new_zeros(plan.chunk, dtype=torch.int64)
    # The correct counts are count_nonzero of a comparison, not its sum: the same exact count, slightly faster, and
    # a bool sum is one more reduction kernel to page in (the peak RSS of a surface on a small model is mostly
    # library code run for the first time: a cold W1 surface paged in ~450 KB of libtorch for ``sum`` alone).

    def tally(outputs: Tensor, b, total: Tensor | None, hits: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """Add batch ``b``'s weighted loss (and correct count) of ``outputs`` (leading point dimension)."""
        loss = torch.stack([b.weight * objective.from_outputs(o, b.data) for o in outputs])
        total = loss if total is None else total + loss
        if flags["accuracy"]:
            if criterion and _is_classification(outputs[0], b.targets):
                correct = torch.count_nonzero(outputs.argmax(dim=-1) == b.targets, dim=-1)
            elif not criterion and (counts := [objective.correct(o, b.data) for o in outputs])[0] is not None:
                correct = torch.stack(counts)
            else:
                flags["accuracy"] = False
                return total, hits
            hits = correct if hits is None else hits + correct
        return total, hits

    ranks = problem.ranks
    split = problem.replicas

    def run(group: Callable[[np.ndarray, slice], None]) -> None:
        bp = plan.batch_points
        bar = progress_bar(int(todo.size), "grid points", progress, unit="point")
        for start in range(0, todo.size, plan.chunk):
            idx = todo[start : start + plan.chunk]
            if split is not None:  # the points this rank does not evaluate add exact zeros to the sums
                chunk_loss.zero_()
                chunk_correct.zero_()
            for k, g in enumerate(range(0, idx.size, bp)):
                if split is None or k % split.world_size == split.rank:
                    group(idx[g : g + bp], slice(g, min(g + bp, idx.size)))
            if split is not None:
                # Replicated data: each point was evaluated whole on one rank. A rank may have had no point in this
                # chunk, so whether the targets are class labels is agreed on first (every rank must make the
                # same collectives); then one sum per chunk hands every rank every value, bit for bit.
                agreed = torch.tensor([int(flags["accuracy"])], dtype=torch.int64, device=problem.device)
                split.all_reduce_(agreed, "all_reduce of the accuracy flag")
                flags["accuracy"] = int(agreed) == split.world_size
            if ranks is not None:
                # Data-parallel: every rank evaluated the chunk's points on its shard (batch weights over the global
                # sample count); one sum per chunk, not per point, gives every rank the full-data values.
                ranks.all_reduce_(chunk_loss[: idx.size], "all_reduce of a chunk of surface losses")
                if flags["accuracy"]:
                    ranks.all_reduce_(chunk_correct[: idx.size], "all_reduce of a chunk of correct counts")
            losses[idx] = chunk_loss[: idx.size].double().cpu().numpy()
            if flags["accuracy"]:
                # Where the loss is NaN/inf the outputs are too: their argmax is meaningless, so no accuracy either.
                # Per chunk, in Python floats: the same IEEE divisions as numpy's, without its kernels' code.
                correct = chunk_correct[: idx.size].tolist()
                accs[idx] = [
                    c / total_samples if math.isfinite(v) else math.nan
                    for c, v in zip(correct, losses[idx].tolist(), strict=True)
                ]
            if on_chunk is not None:
                on_chunk(idx, losses[idx], accs[idx] if flags["accuracy"] else None)
            bar.update(idx.size)
        bar.close()

    with torch.no_grad(), problem.evaluation(order=0) as forward:
        if plan.batch_points == 1:
            buffers = points.buffers()

            def in_place(module: nn.Module) -> None:
                # Predictions of every local sample and their targets, so the correct count is one comparison per
                # point instead of three small operations per batch (they cost ~8% of a 3.5 ms forward pass).
                local = problem.num_local_samples if accuracy and criterion else 0
                predicted = _Predictions(local, problem.device)
                if held is not None and accuracy and criterion:  # in memory: the targets never change, copy them once
                    start = 0
                    for b in held:
                        if _are_labels(b.targets):
                            predicted.set_targets(start, b.targets)
                        start += b.size

                def one(sub: np.ndarray, slot: slice) -> None:
                    # The stacked path's arithmetic without its stacking: per batch the forward pass, its weighted
                    # loss and predictions; the point's totals go into the chunk once.
                    points.fill(int(sub[0]), buffers)
                    total = None
                    start = 0
                    hits = 0
                    for b in data():
                        outputs = objective.outputs(module, b.data)
                        loss = b.weight * objective.from_outputs(outputs, b.data)
                        total = loss if total is None else total + loss
                        if flags["accuracy"] and not criterion:
                            correct = objective.correct(outputs, b.data)
                            if correct is None:
                                flags["accuracy"] = False
                            else:
                                hits = hits + correct
                        elif flags["accuracy"]:
                            if _is_classification(outputs, b.targets):
                                predicted.record(start, outputs)
                                if held is None:  # a loader may reorder between passes
                                    predicted.set_targets(start, b.targets)
                            else:
                                flags["accuracy"] = False
                        start += b.size
                    chunk_loss[slot.start] = total
                    if flags["accuracy"]:
                        chunk_correct[slot.start] = predicted.correct() if criterion else hits

                run(one)

            forward.within(buffers, in_place)
        else:

            def stacked(sub: np.ndarray, slot: slice) -> None:
                params = points.stacked(sub)  # built once per group of points, reused for every batch
                total = hits = None
                for b in data():
                    total, hits = tally(_forward_stacked(problem, forward, params, b.data), b, total, hits)
                chunk_loss[slot] = total
                if flags["accuracy"]:
                    chunk_correct[slot] = hits

            run(stacked)
    _warn_non_finite(losses, shape)
    return losses.reshape(shape), (accs.reshape(shape) if flags["accuracy"] else None)


def _warn_non_finite(losses: np.ndarray, shape: tuple[int, ...]) -> None:
    """A grid may reach where the model diverges (or, when interpolating, where extrapolated BatchNorm running
    variances turn negative): those points keep their NaN/inf loss, are gaps in the plots, and are reported."""
    bad = [i for i, v in enumerate(losses.tolist()) if not math.isfinite(v)]  # no numpy kernel to page in
    if bad:
        first = tuple(int(i) for i in np.unravel_index(bad[0], shape))
        warnings.warn(
            f"{len(bad)} of {losses.size} grid points have a non-finite loss (first at index {first})"
            ": they are kept as NaN/inf and left as gaps in plots. Narrow the span to avoid them",
            RuntimeWarning,
            stacklevel=3,
        )


def _check_directions(problem: Problem, directions: Directions) -> Tensor:
    if not isinstance(directions, Directions):
        raise TypeError(f"directions must be a Directions (see landscape.surface.directions), got {type(directions)}")
    vectors = directions.vectors.to(device=problem.device, dtype=problem.dtype)
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

    def fill(i: int, out: ParamDict) -> None:
        a = [float(x) for x in coords[i]]
        for n, t in out.items():
            torch.add(origin[n], pieces[0][n], alpha=a[0], out=t)
            for j in range(1, len(a)):
                torch.add(t, pieces[j][n], alpha=a[j], out=t)

    return _Points(origin, fill)


def _run_settings(span: Sequence[float], resolution: int, plan: _Plan, directions: dict, problem: Problem) -> dict:
    return {
        "span": (float(span[0]), float(span[1])),
        "resolution": resolution,
        "batch_points": plan.batch_points,
        "chunk": plan.chunk,
        "auto_timings": {str(k): v for k, v in plan.timings.items()},
        "memory": plan.memory,
        "directions": directions,
        "problem": problem.describe(),
    }


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
        ``None``: no cap. One point at a time needs a single parameter set beyond the model's own.
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
    if cache is None and problem.ranks is None:
        plan = _plan(problem, points, grid.shape[0], batch_points, chunk, memory_budget)
        loss, acc = _evaluate(problem, points, shape, accuracy, plan, progress=progress)
        settings = _run_settings(span, resolution, plan, dir_settings, problem)
    else:
        loss, acc, settings = _cached_surface(
            problem,
            points,
            vectors,
            coords,
            shape,
            accuracy,
            (span, resolution, batch_points, chunk, memory_budget),
            dir_settings,
            cache,
            progress,
        )
    return Surface(
        tuple(coords.copy() for _ in range(num)), loss, acc, directions, settings, time.perf_counter() - start
    )


def _cached_surface(
    problem: Problem,
    points: _Points,
    vectors: Tensor,
    coords: np.ndarray,
    shape: tuple[int, ...],
    accuracy: bool,
    options: tuple,
    dir_settings: dict,
    cache: Cache | str | os.PathLike[str],
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """:func:`surface` through a resumable cache entry: evaluate only the points not yet done, commit per chunk."""
    span, resolution, batch_points, chunk, memory_budget = options
    directions_array = vectors.detach().cpu().numpy()
    config = {
        "span": [float(span[0]), float(span[1])],
        "resolution": resolution,
        "accuracy": accuracy,
        "batch_points": batch_points,
        "chunk": chunk,
        "directions_sha256": hashlib.sha256(directions_array.tobytes()).hexdigest(),
        "directions": dir_settings,
    }
    if problem.ranks is not None:
        return _cached_surface_data_parallel(
            problem, points, coords, shape, accuracy, options, dir_settings, cache, progress, config, directions_array
        )
    with opened(cache) as store:
        key = store.key_for(problem, "surface", config, order_free=True)
        entry = store.grid(
            key,
            shape=shape,
            fields=("loss", "accuracy"),
            arrays={"coords": np.stack([coords] * len(shape)), "directions": directions_array},
            attrs={"config": config, "problem": problem.describe()},
        )
        done = entry.done
        resumed = int(done.sum())
        if entry.complete:  # answered from the cache: no forward pass, not even auto's timing
            loss, acc = entry.values("loss"), entry.values("accuracy")
            settings = dict(entry.attrs["settings"])
        else:

            def store_chunk(idx: np.ndarray, losses: np.ndarray, accs: np.ndarray | None) -> None:
                entry.write(idx, loss=losses, accuracy=np.full(idx.size, np.nan) if accs is None else accs)

            plan = _plan(problem, points, int(np.prod(shape)), batch_points, chunk, memory_budget)
            initial = (entry.values("loss"), entry.values("accuracy"))
            loss, acc = _evaluate(
                problem,
                points,
                shape,
                accuracy,
                plan,
                done=done,
                on_chunk=store_chunk,
                initial=initial,
                progress=progress,
            )
            settings = _run_settings(span, resolution, plan, dir_settings, problem)
            entry.finish({"settings": settings})
        if acc is not None and np.isnan(acc).all():
            acc = None
        settings["cache"] = {"path": str(store.path), "key": key, "points_from_cache": resumed}
    return loss, acc, settings


def _cached_surface_data_parallel(
    problem: Problem,
    points: _Points,
    coords: np.ndarray,
    shape: tuple[int, ...],
    accuracy: bool,
    options: tuple,
    dir_settings: dict,
    cache: Cache | str | os.PathLike[str],
    progress: bool,
    config: dict,
    directions_array: np.ndarray,
) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """:func:`_cached_surface` on a data-parallel Problem: rank 0 alone opens and writes the cache.

    Rank 0 reads the entry's progress (done mask and values so far) and broadcasts it; every rank then evaluates the
    points not yet done on its shard, the chunk sums are all-reduced in :func:`_evaluate`, and rank 0 commits each
    chunk atomically. The key does not depend on the number of ranks, so a run interrupted with one number of ranks
    resumes with any other. Rank 0's ``cache`` decides (``None``: no cache); the others' is ignored.
    """
    dp = problem.ranks
    span, resolution, batch_points, chunk, memory_budget = options
    with contextlib.ExitStack() as stack:
        entry = None
        state: dict[str, Any] | None = None
        error: Exception | None = None
        if dp.rank == 0 and cache is None:
            state = {"path": None, "key": None, "done": np.zeros(shape, dtype=bool), "settings": None}
            state["loss"] = state["accuracy"] = np.full(shape, np.nan)
        elif dp.rank == 0:
            try:
                store = stack.enter_context(opened(cache))
                key = store.key_for(problem, "surface", config, order_free=True)
                entry = store.grid(
                    key,
                    shape=shape,
                    fields=("loss", "accuracy"),
                    arrays={"coords": np.stack([coords] * len(shape)), "directions": directions_array},
                    attrs={"config": config, "problem": problem.describe()},
                )
                state = {
                    "path": str(store.path),
                    "key": key,
                    "done": entry.done,
                    "loss": entry.values("loss"),
                    "accuracy": entry.values("accuracy"),
                    "settings": dict(entry.attrs["settings"]) if entry.complete else None,
                }
            except Exception as err:  # every rank must hear of it, or the others wait for rank 0 forever
                error = err
                state = {"error": f"{type(err).__name__}: {err}"}
        state = dp.broadcast_object(state, "broadcast of the cache's progress")
        if error is not None:
            raise error
        if "error" in state:
            raise CacheError(f"rank {dp.rank}: rank 0 could not open the cache: {state['error']}")
        done = state["done"]
        if state["settings"] is not None:  # answered from the cache on every rank: no forward pass
            loss, acc, settings = state["loss"], state["accuracy"], state["settings"]
        else:

            def store_chunk(idx: np.ndarray, losses: np.ndarray, accs: np.ndarray | None) -> None:
                entry.write(idx, loss=losses, accuracy=np.full(idx.size, np.nan) if accs is None else accs)

            plan = _plan(problem, points, int(np.prod(shape)), batch_points, chunk, memory_budget)
            loss, acc = _evaluate(
                problem,
                points,
                shape,
                accuracy,
                plan,
                done=done,
                on_chunk=store_chunk if entry is not None else None,
                initial=(state["loss"], state["accuracy"]),
                progress=progress and dp.rank == 0,
            )
            settings = _run_settings(span, resolution, plan, dir_settings, problem)
            if entry is not None:
                entry.finish({"settings": settings})
        if acc is not None and np.isnan(acc).all():
            acc = None
        if state["key"] is not None:
            settings["cache"] = {"path": state["path"], "key": state["key"], "points_from_cache": int(done.sum())}
    return loss, acc, settings


def _floating_state(problem: Problem, model: nn.Module, which: str) -> ParamDict:
    """Every floating-point parameter and buffer of ``model`` on the problem's device/dtype, detached."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"{which} must be a torch.nn.Module, got {type(model).__name__}")
    named = list(model.named_parameters()) + list(model.named_buffers())
    return {n: t.detach().to(device=problem.device, dtype=problem.dtype) for n, t in named if t.is_floating_point()}


def _check_same_architecture(problem: Problem, state_a: ParamDict, state_b: ParamDict) -> None:
    reference = _floating_state(problem, problem.model, "problem.model")
    for which, state in (("model_a", state_a), ("model_b", state_b)):
        for n, t in reference.items():
            if n not in state:
                raise ValueError(f"{which} has no {n!r}: it must have the architecture of problem.model")
            if state[n].shape != t.shape:
                raise ValueError(f"{which}'s {n!r} has shape {tuple(state[n].shape)}, problem.model's {tuple(t.shape)}")
        extra = sorted(state.keys() - reference.keys())
        if extra:
            raise ValueError(f"{which} has entries problem.model lacks ({extra[:5]}): not the same architecture")


def interpolate(
    problem: Problem,
    model_a: nn.Module,
    model_b: nn.Module,
    span: Sequence[float] = (-0.5, 1.5),
    resolution: int = 41,
    *,
    accuracy: bool = True,
    batch_points: int | str = 1,
    memory_budget: int | None = DEFAULT_MEMORY_BUDGET,
    progress: bool = False,
) -> Surface:
    """Loss along the line ``(1 - a) w_a + a w_b`` between two models (Goodfellow, Vinyals, Saxe 2015).

    The Problem supplies the architecture (its model's forward), the data, the loss and the BatchNorm/dropout
    policy; ``model_a`` and ``model_b`` supply the end points. Every floating-point parameter *and buffer*
    (BatchNorm running statistics) is interpolated alike, ``(1 - a) x_a + a x_b``, as in Li et al. 2018, and passed
    to the functional forward; integer buffers stay those of the Problem's model. So ``a = 0`` and ``a = 1``
    reproduce each model's own loss exactly (grid values within rounding of 0 and 1 are snapped onto them).

    Parameters
    ----------
    problem : Problem
    model_a, model_b : nn.Module
        Same architecture as ``problem.model`` (either may be ``problem.model`` itself); never modified.
    span : (float, float)
        Range of ``a``.
    resolution : int
        Number of points.
    accuracy : bool
        Also compute the accuracy when the targets are integer class labels.
    batch_points : int or "auto"
        As for :func:`surface`.
    memory_budget : int or None
        As for :func:`surface`.
    progress : bool
        Show a progress bar over the points on stderr.

    Returns
    -------
    Surface
        1D; ``.directions`` holds ``w_b - w_a`` over the Problem's selected parameters.
    """
    start = time.perf_counter()
    state_a = _floating_state(problem, model_a, "model_a")
    state_b = _floating_state(problem, model_b, "model_b")
    _check_same_architecture(problem, state_a, state_b)
    coords = _grid(span, resolution, exact=(0.0, 1.0))

    def fill(i: int, out: ParamDict) -> None:
        # (1 - a) x + a y rather than x + a (y - x): exact at both a = 0 and a = 1.
        a = float(coords[i])
        for n, t in out.items():
            torch.mul(state_a[n], 1.0 - a, out=t).add_(state_b[n], alpha=a)

    points = _Points(state_a, fill)
    plan = _plan(problem, points, resolution, batch_points, None, memory_budget)
    loss, acc = _evaluate(problem, points, (resolution,), accuracy, plan, progress=progress)
    delta = (problem.flatten(state_b) - problem.flatten(state_a)).unsqueeze(0)
    buffers = sorted(n for n, _ in problem.model.named_buffers() if n in state_a)
    dir_settings = {"params": list(problem.param_names), "buffers_interpolated": buffers}
    directions = Directions(delta, "interpolation", None, dir_settings)
    settings = _run_settings(span, resolution, plan, {"kind": "interpolation", "seed": None, **dir_settings}, problem)
    return Surface((coords,), loss, acc, directions, settings, time.perf_counter() - start)
