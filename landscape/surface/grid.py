"""Loss and accuracy on a grid of points ``w + a_1 d_1 + ... + a_k d_k`` and along a line between two models.

The surface (Li, Xu, Taylor, Studer, Goldstein 2018) is the exact full-data loss

    S[i_1, ..., i_k] = L(w + c_{i_1} d_1 + ... + c_{i_k} d_k),    c = linspace(span[0], span[1], resolution),

with axis ``j`` of the array belonging to direction ``j``. A grid value within rounding of 0 is snapped to exactly 0,
so an odd resolution over a symmetric span contains the trained point and gives exactly ``problem.loss()`` there.
Linear interpolation (Goodfellow, Vinyals, Saxe 2015) is ``L((1 - a) w_a + a w_b)`` with the floating-point buffers
(BatchNorm running statistics) interpolated alike. Every evaluation is functional: the model is never modified.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from landscape.problem import ParamDict, Problem, check_finite
from landscape.surface.directions import Directions

KINDS_2D = ("contour", "filled", "heatmap", "3d")
KINDS_1D = ("line",)


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
        log_levels: bool = False,
        *,
        quantity: str = "loss",
        levels: int = 30,
    ) -> Any:
        """Draw the surface with matplotlib and return the axes.

        Parameters
        ----------
        kind : {"line"} for 1D; {"contour", "filled", "heatmap", "3d"} for 2D; None picks "line" / "contour".
        ax : matplotlib axes, optional
            Drawn into when given (a 3D axes for ``kind="3d"``); otherwise a new figure is made.
        log_levels : bool
            Log-spaced contour levels / log colour scale / log y-axis; needs positive values.
        quantity : {"loss", "accuracy"}
        levels : int
            Number of contour levels.
        """
        import matplotlib.pyplot as plt
        from matplotlib.colors import LogNorm

        if quantity not in ("loss", "accuracy"):
            raise ValueError(f"quantity must be 'loss' or 'accuracy', got {quantity!r}")
        values = self.loss if quantity == "loss" else self.accuracy
        if values is None:
            raise ValueError("this surface has no accuracy (targets are not integer class labels)")
        if self.ndim > 2:
            raise ValueError(f"cannot plot a {self.ndim}D surface directly: plot a 1D or 2D slice of it")
        allowed = KINDS_1D if self.ndim == 1 else KINDS_2D
        kind = allowed[0] if kind is None else kind
        if kind not in allowed:
            raise ValueError(f"a {self.ndim}D surface can be plotted as one of {allowed}, got kind={kind!r}")
        if log_levels and not np.all(values > 0):
            raise ValueError("log_levels needs positive values everywhere")
        interpolation = self.directions.kind == "interpolation"
        label = quantity

        if ax is None:
            fig = plt.figure()
            ax = fig.add_subplot(projection="3d") if kind == "3d" else fig.add_subplot()
        elif kind == "3d" and getattr(ax, "name", "") != "3d":
            raise ValueError("kind='3d' needs a 3D axes: fig.add_subplot(projection='3d')")
        fig = ax.figure

        if self.ndim == 1:
            ax.plot(self.coords[0], values, "-", label=label)
            ax.set_xlabel(r"$\alpha$ ($(1-\alpha) w_a + \alpha w_b$)" if interpolation else r"$\alpha$ (direction 1)")
            ax.set_ylabel(label)
            if log_levels:
                ax.set_yscale("log")
            return ax

        X, Y = np.meshgrid(self.coords[0], self.coords[1], indexing="ij")
        if kind in ("contour", "filled"):
            if log_levels:
                lv = np.geomspace(values.min(), values.max(), levels) if values.max() > values.min() else levels
                norm = LogNorm()
            else:
                lv, norm = levels, None
            if kind == "contour":
                cs = ax.contour(X, Y, values, levels=lv, norm=norm, cmap="viridis")
                ax.clabel(cs, inline=True, fontsize=7, fmt="%.3g")
            else:
                cs = ax.contourf(X, Y, values, levels=lv, norm=norm, cmap="viridis")
                fig.colorbar(cs, ax=ax, label=label)
        elif kind == "heatmap":
            norm = LogNorm() if log_levels else None
            mesh = ax.pcolormesh(X, Y, values, shading="nearest", cmap="viridis", norm=norm)
            fig.colorbar(mesh, ax=ax, label=label)
        else:
            Z = np.log10(values) if log_levels else values
            surf = ax.plot_surface(X, Y, Z, cmap="viridis", linewidth=0, antialiased=True)
            ax.set_zlabel(f"log10 {label}" if log_levels else label)
            fig.colorbar(surf, ax=ax, shrink=0.6, label=f"log10 {label}" if log_levels else label)
        if kind != "3d" and _contains(self.coords[0], 0.0) and _contains(self.coords[1], 0.0):
            ax.plot([0.0], [0.0], "r*", markersize=8)
        ax.set_xlabel("direction 1")
        ax.set_ylabel("direction 2")
        return ax


def _contains(coords: np.ndarray, value: float) -> bool:
    return bool(coords.min() <= value <= coords.max())


def _grid(span: Sequence[float], resolution: int, exact: Sequence[float]) -> np.ndarray:
    """``linspace(span[0], span[1], resolution)`` with values within rounding of ``exact`` snapped onto them."""
    if len(span) != 2 or not span[0] < span[1]:
        raise ValueError(f"span must be a pair (low, high) with low < high, got {span!r}")
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 2:
        raise ValueError(f"resolution must be an int >= 2, got {resolution!r}")
    coords = np.linspace(float(span[0]), float(span[1]), resolution)
    tol = 1e-9 * (span[1] - span[0]) / (resolution - 1)
    for value in exact:
        coords[np.abs(coords - value) <= tol] = value
    return coords


def _is_classification(outputs: Tensor, targets: Tensor) -> bool:
    return (
        not targets.is_floating_point()
        and not targets.is_complex()
        and targets.dtype != torch.bool
        and targets.ndim == 1
        and outputs.ndim == 2
        and outputs.shape[0] == targets.shape[0]
    )


def _evaluate(
    problem: Problem,
    points: Sequence[Callable[[], ParamDict]],
    shape: tuple[int, ...],
    accuracy: bool,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Full-data loss (and accuracy) at every point, under one ``problem.evaluation()`` context.

    ``points[k]()`` builds the parameter dict of grid point ``k`` (C order of ``shape``); entries that are not
    selected parameters (interpolated buffers) override the model's own state in the forward pass.
    """
    losses = np.empty(len(points), dtype=np.float64)
    accs = np.empty(len(points), dtype=np.float64)
    classification = accuracy
    total_samples = problem.num_samples
    with torch.no_grad(), problem.evaluation() as forward:
        for k, make in enumerate(points):
            params = make()
            total = torch.zeros((), dtype=problem.dtype, device=problem.device)
            correct = 0
            # One pass over the data per point, as problem.loss() does: the data set is never held on the device.
            for i, b in enumerate(problem.batches()):
                outputs = forward(params, b.inputs)
                loss = b.weight * problem.loss_fn(outputs, b.targets)
                total = total + check_finite(loss, "loss", i)
                if classification:
                    if _is_classification(outputs, b.targets):
                        correct += int((outputs.argmax(dim=1) == b.targets).sum())
                    else:
                        classification = False
            losses[k] = float(total)
            accs[k] = correct / total_samples
    return losses.reshape(shape), (accs.reshape(shape) if classification else None)


def surface(
    problem: Problem,
    directions: Directions,
    span: Sequence[float] = (-1.0, 1.0),
    resolution: int = 21,
    *,
    accuracy: bool = True,
) -> Surface:
    """Loss over the grid ``w + c_{i_1} d_1 + ... + c_{i_k} d_k`` around the Problem's current parameters.

    ``c = linspace(span[0], span[1], resolution)`` along every direction (Li et al. 2018); the loss is the exact
    size-weighted full-data mean under the Problem's BatchNorm/dropout policy. Cost: ``resolution ** num`` passes
    over the data.

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

    Returns
    -------
    Surface
        ``.loss[i, j, ...]`` is the loss at ``coords[0][i], coords[1][j], ...``.
    """
    start = time.perf_counter()
    if not isinstance(directions, Directions):
        raise TypeError(f"directions must be a Directions (see landscape.surface.directions), got {type(directions)}")
    vectors = directions.vectors.to(device=problem.device, dtype=problem.dtype)
    if vectors.ndim != 2 or vectors.shape[1] != problem.num_params:
        raise ValueError(
            f"directions have shape {tuple(vectors.shape)}; the problem needs (num, {problem.num_params}): "
            "were they made for another Problem (other params selection)?"
        )
    num = vectors.shape[0]
    coords = _grid(span, resolution, exact=(0.0,))
    shape = (resolution,) * num
    w = problem.params_vector()
    grid = torch.as_tensor(
        np.stack(np.meshgrid(*([coords] * num), indexing="ij"), axis=-1).reshape(-1, num),
        dtype=problem.dtype,
        device=problem.device,
    )

    def point(a: Tensor) -> Callable[[], ParamDict]:
        # w + (a @ D): at a = 0 the offset is exactly zero, so the origin reproduces problem.loss() bit for bit.
        return lambda: problem.unflatten(w + a @ vectors)

    loss, acc = _evaluate(problem, [point(a) for a in grid], shape, accuracy)
    settings = {
        "span": (float(span[0]), float(span[1])),
        "resolution": resolution,
        "directions": {"kind": directions.kind, "seed": directions.seed, **directions.settings},
        "problem": problem.describe(),
    }
    return Surface(
        tuple(coords.copy() for _ in range(num)), loss, acc, directions, settings, time.perf_counter() - start
    )


def _float_buffers(problem: Problem, model: nn.Module) -> ParamDict:
    return {
        n: b.detach().to(device=problem.device, dtype=problem.dtype)
        for n, b in model.named_buffers()
        if b.is_floating_point()
    }


def interpolate(
    problem: Problem,
    model_b: nn.Module,
    span: Sequence[float] = (-0.5, 1.5),
    resolution: int = 41,
    *,
    accuracy: bool = True,
) -> Surface:
    """Loss along the line ``(1 - a) w_a + a w_b`` between the Problem's model and ``model_b`` (Goodfellow et al.).

    ``w_a`` are the Problem's selected parameters, ``w_b`` the parameters of the same names in ``model_b``.
    Floating-point buffers (BatchNorm running statistics) are interpolated alike, ``(1 - a) b_a + a b_b``, as in
    Li et al. 2018: the interpolated buffers are passed to the Problem's functional forward together with the
    parameters, where they override the model's own. Unselected parameters and integer buffers stay those of the
    Problem's model, so ``a = 1`` reproduces ``model_b``'s loss exactly when every parameter is selected. Grid values
    within rounding of 0 and 1 are snapped onto them, so both end points are exact.

    Parameters
    ----------
    problem : Problem
    model_b : nn.Module
        Same architecture as ``problem.model``; never modified.
    span : (float, float)
        Range of ``a``.
    resolution : int
        Number of points.
    accuracy : bool
        Also compute the accuracy when the targets are integer class labels.

    Returns
    -------
    Surface
        1D; ``.directions`` holds ``w_b - w_a``.
    """
    start = time.perf_counter()
    if not isinstance(model_b, nn.Module):
        raise TypeError(f"model_b must be a torch.nn.Module, got {type(model_b).__name__}")
    named_b = dict(model_b.named_parameters())
    wa = problem.params_dict()
    wb: ParamDict = {}
    for n, s in zip(problem.param_names, problem.param_shapes, strict=True):
        if n not in named_b:
            raise ValueError(f"model_b has no parameter {n!r}: it must have the architecture of problem.model")
        if tuple(named_b[n].shape) != s:
            raise ValueError(f"model_b's {n!r} has shape {tuple(named_b[n].shape)}, problem.model's has {s}")
        wb[n] = named_b[n].detach().to(device=problem.device, dtype=problem.dtype).clone()
    bufs_a = _float_buffers(problem, problem.model)
    bufs_b = _float_buffers(problem, model_b)
    if bufs_a.keys() != bufs_b.keys() or any(bufs_a[n].shape != bufs_b[n].shape for n in bufs_a):
        raise ValueError("model_b's floating-point buffers differ in names or shapes from problem.model's")
    coords = _grid(span, resolution, exact=(0.0, 1.0))

    def point(a: float) -> Callable[[], ParamDict]:
        # (1 - a) x + a y rather than x + a (y - x): exact at both a = 0 and a = 1.
        def make() -> ParamDict:
            mixed = {n: (1.0 - a) * bufs_a[n] + a * bufs_b[n] for n in bufs_a}
            mixed.update({n: (1.0 - a) * wa[n] + a * wb[n] for n in wa})
            return mixed

        return make

    loss, acc = _evaluate(problem, [point(float(a)) for a in coords], (resolution,), accuracy)
    delta = (problem.flatten(wb) - problem.flatten(wa)).unsqueeze(0)
    dir_settings = {"params": list(problem.param_names), "buffers_interpolated": sorted(bufs_a)}
    directions = Directions(delta, "interpolation", None, dir_settings)
    settings = {
        "span": (float(span[0]), float(span[1])),
        "resolution": resolution,
        "directions": {"kind": "interpolation", "seed": None, **dir_settings},
        "problem": problem.describe(),
    }
    return Surface((coords,), loss, acc, directions, settings, time.perf_counter() - start)
