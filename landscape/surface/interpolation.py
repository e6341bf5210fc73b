"""The loss along the line between two models (Goodfellow, Vinyals, Saxe 2015).

    L((1 - a) w_a + a w_b),    a = linspace(span[0], span[1], resolution),

with every floating-point buffer (BatchNorm running statistics) interpolated alike, as in Li et al. 2018. Grid values
within rounding of 0 and 1 are snapped onto them, so both models' own losses are reproduced exactly. Every
evaluation is functional: no model is modified.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from landscape.problem import ParamDict, Problem
from landscape.surface.directions import Directions
from landscape.surface.evaluate import DEFAULT_MEMORY_BUDGET, GridOptions, _evaluate, _plan, _Points, _run_settings
from landscape.surface.grid import Surface, _grid


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
    point_memory: str = "auto",
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
        As for :func:`~landscape.surface.grid.surface`.
    memory_budget, point_memory
        As for :func:`~landscape.surface.grid.surface` (per module, the interpolated buffers are written into their
        modules too).
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

    def fill_one(i: int, n: str, out: Tensor) -> None:
        # (1 - a) x + a y rather than x + a (y - x): exact at both a = 0 and a = 1.
        a = float(coords[i])
        torch.mul(state_a[n], 1.0 - a, out=out).add_(state_b[n], alpha=a)

    points = _Points(state_a, fill_one)
    options = GridOptions(span, resolution, batch_points, None, memory_budget, point_memory)
    plan = _plan(problem, points, resolution, options)
    loss, acc = _evaluate(problem, points, (resolution,), accuracy, plan, progress=progress)
    delta = (problem.flatten(state_b) - problem.flatten(state_a)).unsqueeze(0)
    buffers = sorted(n for n, _ in problem.model.named_buffers() if n in state_a)
    dir_settings = {"params": list(problem.param_names), "buffers_interpolated": buffers}
    directions = Directions(delta, "interpolation", None, dir_settings)
    settings = _run_settings(options, plan, {"kind": "interpolation", "seed": None, **dir_settings}, problem)
    return Surface((coords,), loss, acc, directions, settings, time.perf_counter() - start)
