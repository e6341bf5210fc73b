"""The full-data loss (and accuracy) at a set of points in parameter space: how a surface's points are evaluated.

A run's points are :class:`_Points` (parameter sets written in place into preallocated tensors); :func:`_plan`
decides how many go through one forward pass (``torch.vmap`` over stacked parameter sets when more than one) and how
many make a chunk, and :func:`_evaluate` computes

    L(w_i) = sum_b w_b L_b(w_i)    (batch weights ``w_b``, in data order, exactly as :meth:`Problem.loss`)

for every point ``i`` not yet done, handing results over one chunk at a time (a resumable cache commits each one).
Data-parallel, every rank evaluates the points on its shard and the chunk's sums are all-reduced; with replicated
data the points are dealt out to the ranks.
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from landscape.losses import Criterion
from landscape.problem import ParamDict, Problem
from landscape.progress import progress as progress_bar
from landscape.surface.per_module import OutsideModuleError, placeholders, written_per_module


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
# How one point's tensors are written (``point_memory``); "auto" writes per module from this many bytes on, where a
# whole point is worth keeping out of the peak and the hooks' cost is lost in the forward pass (1% on ResNet-18).
POINT_MEMORY = ("auto", "whole", "per_module")
PER_MODULE_BYTES = 16 << 20


class VmapUnsupportedError(RuntimeError):
    """``torch.vmap`` cannot run the model's forward pass, so grid points cannot be stacked (``batch_points > 1``)."""


@dataclass(frozen=True)
class GridOptions:
    """The settings of a grid run, as :func:`landscape.surface.surface` takes them.

    Attributes
    ----------
    span
        Coordinate range ``(low, high)`` along every direction.
    resolution
        Points per direction.
    batch_points
        Points per forward pass (``vmap`` over stacked parameter sets when > 1), or ``"auto"``.
    chunk
        Points per chunk handed over (committed by a cache); ``None``: ``max(DEFAULT_CHUNK, batch_points)``.
    memory_budget
        Bytes a group of stacked points may hold; ``None``: no cap.
    point_memory
        ``"whole"``: one point's parameter set written whole before its forward pass; ``"per_module"``: each
        module's tensors written right before it runs and dropped after (:mod:`landscape.surface.per_module`);
        ``"auto"``: per module for parameter sets of ``PER_MODULE_BYTES`` or more. The values are the same bit for bit.
    """

    span: Sequence[float]
    resolution: int
    batch_points: int | str = 1
    chunk: int | None = None
    memory_budget: int | None = DEFAULT_MEMORY_BUDGET
    point_memory: str = "auto"


@dataclass(frozen=True)
class _Points:
    """The grid points of one run, written into preallocated tensors rather than built anew.

    ``fill_one(i, name, out)`` writes tensor ``name`` of flat grid point ``i`` (C order of the grid) into ``out``
    (shape of ``template[name]``) in place; entries that are not selected parameters (interpolated buffers)
    override the model's own state in the forward pass.
    """

    template: ParamDict
    fill_one: Callable[[int, str, Tensor], None]

    def fill(self, i: int, out: ParamDict) -> None:
        """Write every tensor of point ``i`` into ``out``."""
        for n, t in out.items():
            self.fill_one(i, n, t)

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
    ``chunk`` points per pass over the data, the timings an ``"auto"`` choice was based on, the memory estimate
    behind a cap on ``batch_points``, and whether one point is written per module (``per_module``; a failure to do
    so is recorded in ``memory["per_module_failed"]``)."""

    batch_points: int
    chunk: int
    timings: dict[int, float] = field(default_factory=dict)
    memory: dict[str, Any] = field(default_factory=dict)
    per_module: bool = False


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


def _plan(problem: Problem, points: _Points, num_points: int, options: GridOptions) -> _Plan:
    """:func:`_local_plan`, data-parallel the same on every rank: rank 0's (the ranks all-reduce per chunk, so
    their chunks must agree, and their timings and memory estimates from their own shards may not)."""
    plan = _local_plan(problem, points, num_points, options)
    group = problem.ranks
    if group is None:
        return plan
    return group.broadcast_object(plan, "broadcast of the surface plan")


def _local_plan(problem: Problem, points: _Points, num_points: int, options: GridOptions) -> _Plan:
    """Resolve ``batch_points``: cap it to what fits ``memory_budget``; ``"auto"`` times each candidate per point on
    the first batch and keeps the fastest."""
    batch_points, chunk, memory_budget = options.batch_points, options.chunk, options.memory_budget
    auto = batch_points == "auto"
    if not auto and (isinstance(batch_points, bool) or not isinstance(batch_points, int) or batch_points < 1):
        raise ValueError(f"batch_points must be a positive int or 'auto', got {batch_points!r}")
    if memory_budget is not None and (isinstance(memory_budget, bool) or memory_budget <= 0):
        raise ValueError(f"memory_budget must be a positive number of bytes or None, got {memory_budget!r}")
    _check_point_memory(problem, options)
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
        per_module = _per_module(problem, points, batch_points, options.point_memory)
        return _Plan(batch_points, chunk or max(DEFAULT_CHUNK, batch_points), memory=memory, per_module=per_module)
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
    per_module = _per_module(problem, points, best, options.point_memory)
    return _Plan(best, chunk or max(DEFAULT_CHUNK, best), timings, memory, per_module)


def _check_point_memory(problem: Problem, options: GridOptions) -> None:
    """``point_memory`` checked against the other options: per module needs one point at a time, unsharded."""
    point_memory = options.point_memory
    if point_memory not in POINT_MEMORY:
        raise ValueError(f"point_memory must be one of {POINT_MEMORY}, got {point_memory!r}")
    if point_memory == "per_module" and (options.batch_points != 1 or problem.space is not None):
        raise ValueError(
            "point_memory='per_module' writes one point at a time into the modules of an unsharded model: use "
            "batch_points=1, or point_memory='auto' (sharded models and stacked points keep whole points)"
        )


def _per_module(problem: Problem, points: _Points, batch_points: int, point_memory: str) -> bool:
    """Whether one point's tensors are written per module: ``point_memory`` resolved for this run."""
    if batch_points != 1 or problem.space is not None or point_memory == "whole":
        return False
    return point_memory == "per_module" or points.nbytes() >= PER_MODULE_BYTES


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
    there is no allocation and no re-parametrisation, only the forward passes. With ``plan.per_module`` the
    parameter set is not held: each module's tensors of the point are written right before it runs
    (:mod:`landscape.surface.per_module`); should the model use a point's tensor outside its own module, the run is
    evaluated again with whole points and ``plan.memory["per_module_failed"]`` says why. Groups of points go through
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
        with contextlib.closing(progress_bar(int(todo.size), "grid points", progress, unit="point")) as bar:
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

    def point_by_point(module: nn.Module, prepare: Callable[[int], None]) -> None:
        """Every point through ``module`` (re-parametrised for the run), ``prepare(i)`` writing point ``i``."""
        # Predictions of every local sample and their targets, so the correct count is one comparison per point
        # instead of three small operations per batch (they cost ~8% of a 3.5 ms forward pass).
        local = problem.num_local_samples if accuracy and criterion else 0
        predicted = _Predictions(local, problem.device)
        if held is not None and accuracy and criterion:  # in memory: the targets never change, copy them once
            start = 0
            for b in held:
                if _are_labels(b.targets):
                    predicted.set_targets(start, b.targets)
                start += b.size

        def one(sub: np.ndarray, slot: slice) -> None:
            # The stacked path's arithmetic without its stacking: per batch the forward pass, its weighted loss and
            # predictions; the point's totals go into the chunk once.
            prepare(int(sub[0]))
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

    def one_at_a_time(forward: Any, per_module: bool) -> None:
        # The tensors the module is re-parametrised with for the run: the one parameter set every point is written
        # into, or the placeholders that the per-module hooks replace while each module runs.
        slots = placeholders(points.template) if per_module else points.buffers()

        def in_place(module: nn.Module) -> None:
            if not per_module:
                point_by_point(module, lambda i: points.fill(i, slots))
                return
            with written_per_module(module, slots, points.template, points.fill_one) as current:
                point_by_point(module, lambda i: current.__setitem__(0, i))

        forward.within(slots, in_place)

    def stacked(forward: Any) -> None:
        def group(sub: np.ndarray, slot: slice) -> None:
            params = points.stacked(sub)  # built once per group of points, reused for every batch
            total = hits = None
            for b in data():
                total, hits = tally(_forward_stacked(problem, forward, params, b.data), b, total, hits)
            chunk_loss[slot] = total
            if flags["accuracy"]:
                chunk_correct[slot] = hits

        run(group)

    def evaluate(per_module: bool) -> None:
        with torch.no_grad(), problem.evaluation(order=0) as forward:
            one_at_a_time(forward, per_module) if plan.batch_points == 1 else stacked(forward)

    try:
        evaluate(plan.per_module)
    except OutsideModuleError as err:  # the model uses a tensor outside its own module: whole points then
        plan.memory["per_module_failed"] = str(err)
        evaluate(False)
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


def _run_settings(options: GridOptions, plan: _Plan, directions: dict, problem: Problem) -> dict:
    """What a surface's ``settings`` record: the options as resolved by ``plan``, the directions and the Problem."""
    return {
        "span": (float(options.span[0]), float(options.span[1])),
        "resolution": options.resolution,
        "batch_points": plan.batch_points,
        "chunk": plan.chunk,
        "auto_timings": {str(k): v for k, v in plan.timings.items()},
        "memory": plan.memory,
        "point_memory": "per_module" if plan.per_module and "per_module_failed" not in plan.memory else "whole",
        "directions": directions,
        "problem": problem.describe(),
    }
