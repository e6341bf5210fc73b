"""Paper-ready matplotlib figures of loss surfaces, 1D curves, trajectories and spectral densities.

Every function draws into a given axes or a new figure and returns the axes; nothing touches global state (no
``plt.show()``, no change to ``rcParams``). :func:`save` writes vector PDF/SVG or a 300 dpi PNG with a tight bounding
box. Surfaces follow Li, Xu, Taylor, Studer, Goldstein 2018 (contours around the trained point, optionally on
log-spaced levels); interpolation curves follow Goodfellow, Vinyals, Saxe 2015 (model A at α = 0, model B at α = 1).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path as FilePath
from typing import Any

import numpy as np

from landscape.plot import _common as c

KINDS_1D = ("line",)
KINDS_2D = ("contour", "filled", "heatmap", "3d")
SUFFIXES = (".pdf", ".png", ".svg")
CMAP = "viridis"
ORIGIN_STYLE = {"marker": "*", "color": "tab:red", "markersize": 11, "markeredgecolor": "white", "linestyle": "none"}
PATH_COLOR = "tab:red"
MAX_ARROWS = 8
MAX_POINT_LABELS = 12


def _new_axes(three_d: bool = False) -> Any:
    import matplotlib.pyplot as plt

    # Constrained layout: long tick labels (a log axis), axis labels and colour bars stay inside the figure.
    fig = plt.figure(figsize=(6.4, 4.8), layout=None if three_d else "tight")
    return fig.add_subplot(projection="3d") if three_d else fig.add_subplot()


def _is_3d(ax: Any) -> bool:
    return getattr(ax, "name", "") == "3d"


def _levels(v: np.ndarray, levels: int | Sequence[float], log: bool) -> np.ndarray:
    """Explicit contour levels: ``levels`` linearly (or geometrically) spaced over the value range."""
    if not isinstance(levels, (int, np.integer)) or isinstance(levels, bool):
        lv = np.asarray(levels, dtype=np.float64).ravel()
        if lv.size < 2 or not np.all(np.diff(lv) > 0):
            raise ValueError("levels must be an int >= 2 or a strictly increasing sequence of at least 2 values")
        if log and not np.all(lv > 0):
            raise ValueError("log-spaced levels must be positive")
        return lv
    if levels < 2:
        raise ValueError(f"levels must be an int >= 2, got {levels}")
    lo, hi = float(np.nanmin(v)), float(np.nanmax(v))
    if log:
        if hi <= lo:
            lo, hi = lo / 1.01, hi * 1.01
        return np.geomspace(lo, hi, int(levels))
    if hi <= lo:
        pad = 0.01 * max(abs(lo), 1.0)
        lo, hi = lo - pad, hi + pad
    return np.linspace(lo, hi, int(levels))


def _colorbar(ax: Any, mappable: Any, label: str, log: bool, v: np.ndarray, **kwargs: Any) -> Any:
    """A labelled colour bar with round ticks (1-2-5 per decade on a log scale spanning more than a decade)."""
    from matplotlib.ticker import LogLocator, MaxNLocator

    wide = log and float(v.max()) >= 10 * float(v.min())
    ticks = LogLocator(subs=(1.0, 2.0, 5.0)) if wide else MaxNLocator(nbins=7)
    return ax.figure.colorbar(mappable, ax=ax, label=label, ticks=ticks, format="%.3g", **kwargs)


def _mark_models(ax: Any, curves: Sequence[tuple[np.ndarray, np.ndarray]]) -> None:
    """Dotted vertical lines, labels and dots at α = 0 (model A) and α = 1 (model B) within the curves' range.

    Each label goes under the top edge or over the bottom edge, whichever is farther from the curves near it (an
    accuracy curve that reaches 1.0 at model B would run through a label at the top). Call it once the curves are
    drawn and the axis scales are set: the choice is made in axes coordinates.
    """
    lo = min(float(x.min()) for x, _ in curves)
    hi = max(float(x.max()) for x, _ in curves)
    box = {"boxstyle": "round,pad=0.2", "facecolor": "white", "edgecolor": "none", "alpha": 0.8}
    ax.autoscale_view()
    to_axes = ax.transData + ax.transAxes.inverted()
    for a, name in ((0.0, "model A"), (1.0, "model B")):
        if not lo <= a <= hi:
            continue
        ax.axvline(a, color="0.4", linestyle=":", linewidth=1.0, zorder=1)
        # Heights (axes fraction) of the curves under the label, a half width of 0.06 either side of the line: the
        # grid points there and the curves interpolated at its edges and centre (a sparse grid may have no point).
        centre = to_axes.transform([[a, ax.get_ylim()[1]]])[0, 0]
        span = np.array([centre - 0.06, centre, centre + 0.06])
        near: list[float] = []
        for x, y in curves:
            ok = np.isfinite(y)
            if ax.get_yscale() == "log":
                ok &= y > 0
            if ok.any():
                px, py = to_axes.transform(np.column_stack([x[ok], y[ok]])).T
                inside = (px >= span[0]) & (px <= span[-1])
                edges = span[(span >= px.min()) & (span <= px.max())]
                near.extend([*py[inside], *np.interp(edges, px, py)])
        top = not near or min(abs(0.95 - h) for h in near) >= min(abs(h - 0.05) for h in near)
        # Inside the axes: above the top edge the label would collide with the title.
        y0, va = (0.98, "top") if top else (0.02, "bottom")
        ax.text(a, y0, name, transform=ax.get_xaxis_transform(), ha="center", va=va, fontsize=9, bbox=box)
        for x, y in curves:
            if x.min() <= a <= x.max():
                ax.plot([a], [np.interp(a, x, y)], "o", color="black", markersize=4, zorder=3)


def surface_plot(
    surface: Any,
    kind: str | None = None,
    ax: Any = None,
    *,
    quantity: str = "loss",
    log_levels: bool = False,
    levels: int | Sequence[float] = 30,
    trajectory: Any = None,
    title: str | None = None,
) -> Any:
    """Draw a 1D or 2D surface with matplotlib and return the axes.

    2D kinds: ``"contour"`` (labelled contour lines), ``"filled"`` (filled contours), ``"heatmap"`` (cell colours),
    ``"3d"`` (surface over the plane); each has a colour bar. The origin (the weights the directions start from) is
    marked with a star when it lies in the grid. Axis labels name the directions (``"filter-normalised direction
    1"``, ``"PC1 (87.3%)"`` when the trajectory or the direction settings give the PCA explained variance).

    Parameters
    ----------
    surface : Surface
        ``.coords``, ``.loss``, ``.accuracy``, ``.directions.kind``, ``.settings``.
    kind : {"line"} for 1D; {"contour", "filled", "heatmap", "3d"} for 2D; None picks "line" / "contour".
    ax : matplotlib axes, optional
        Drawn into when given (a 3D axes for ``kind="3d"``); otherwise a new figure is made.
    quantity : {"loss", "accuracy"}
    log_levels : bool
        Log-spaced contour levels and a log colour scale (log y axis in 1D; ``log10`` heights in 3D). Needs positive
        values.
    levels : int or sequence of float
        Number of contour levels, or the levels themselves.
    trajectory : (T, 2) array or object with ``.coords``, optional
        A path drawn over a 2D surface (see :func:`trajectory_overlay`); in 3D it is lifted onto the surface.
    title : str, optional
        ``None`` writes a title that says what is shown; ``""`` writes none.

    Returns
    -------
    matplotlib axes
    """
    v = c.values(surface, quantity)
    ndim = c.check_ndim(surface, (1, 2))
    allowed = KINDS_1D if ndim == 1 else KINDS_2D
    kind = allowed[0] if kind is None else kind
    if kind not in allowed:
        raise ValueError(f"a {ndim}D surface can be drawn as one of {allowed}, got kind={kind!r}")
    if log_levels:
        c.check_positive(v, quantity)
    path = None if trajectory is None else c.as_path(trajectory)
    if path is not None and ndim != 2:
        raise ValueError("a trajectory can only be drawn over a 2D surface")
    if ax is None:
        ax = _new_axes(kind == "3d")
    elif kind == "3d" and not _is_3d(ax):
        raise ValueError("kind='3d' needs a 3D axes: fig.add_subplot(projection='3d')")
    elif kind != "3d" and _is_3d(ax):
        raise ValueError(f"kind={kind!r} needs a 2D axes, got a 3D one")
    labels = c.axis_labels(surface, path)
    x = np.asarray(surface.coords[0], dtype=np.float64)

    if ndim == 1:
        ax.plot(x, v, "-", color="tab:blue", linewidth=1.6, label=quantity)
        if log_levels:
            ax.set_yscale("log")
        if c.is_interpolation(surface):
            _mark_models(ax, [(x, v)])
        elif c.contains(x, 0.0):
            ax.plot([0.0], [np.interp(0.0, x, v)], **ORIGIN_STYLE, label="origin (trained weights)", zorder=3)
            ax.legend(loc="best", fontsize=9)
        ax.set_xlabel(labels[0])
        ax.set_ylabel(quantity)
        ax.grid(True, alpha=0.3)
    else:
        y = np.asarray(surface.coords[1], dtype=np.float64)
        X, Y = np.meshgrid(x, y, indexing="ij")
        cbar_label = f"{quantity} (log scale)" if log_levels else quantity
        heights = np.log10(v) if log_levels else v  # the z of the 3D kind
        if kind in ("contour", "filled"):
            from matplotlib.colors import LogNorm

            lv = _levels(v, levels, log_levels)
            norm = LogNorm(vmin=lv[0], vmax=lv[-1]) if log_levels else None
            if kind == "contour":
                cs = ax.contour(X, Y, v, levels=lv, norm=norm, cmap=CMAP, linewidths=1.0)
                # Labels on every one of 30 levels would cover the plot (most crowd round the minimum); about six
                # stay legible, and the colour bar gives the rest.
                ax.clabel(cs, cs.levels[:: max(1, len(cs.levels) // 6)], inline=True, fontsize=7, fmt="%.3g")
            else:
                cs = ax.contourf(X, Y, v, levels=lv, norm=norm, cmap=CMAP, extend="neither")
                ax.contour(X, Y, v, levels=lv, colors="k", linewidths=0.3, alpha=0.4)
            _colorbar(ax, cs, cbar_label, log_levels, v)
        elif kind == "heatmap":
            from matplotlib.colors import LogNorm

            mesh = ax.pcolormesh(X, Y, v, shading="nearest", cmap=CMAP, norm=LogNorm() if log_levels else None)
            _colorbar(ax, mesh, cbar_label, log_levels, v)
        else:
            zlabel = c.quantity_label(quantity, log_levels)
            surf = ax.plot_surface(X, Y, heights, cmap=CMAP, linewidth=0, antialiased=True, rcount=200, ccount=200)
            ax.set_zlabel(zlabel)
            # pad: far enough right that the colour bar's label does not run into the z axis label.
            _colorbar(ax, surf, zlabel, False, heights, shrink=0.6, pad=0.16)
            # Drawn in zorder, so the origin and the path stay visible over the surface (mplot3d's depth sort of
            # separate artists would hide them behind it).
            ax.computed_zorder = False
        if c.contains(x, 0.0) and c.contains(y, 0.0):
            if kind == "3d":
                z0 = c.lift(heights, (x, y), np.zeros((1, 2)))
                ax.plot([0.0], [0.0], z0, **ORIGIN_STYLE, label="origin (trained weights)", zorder=5)
            else:
                ax.plot([0.0], [0.0], **ORIGIN_STYLE, label="origin (trained weights)", zorder=4)
        if path is not None:
            z = c.lift(heights, (x, y), path.coords) if kind == "3d" else None
            trajectory_overlay(ax, path, z=z)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="best", fontsize=8, framealpha=0.8)
        ax.set_xlabel(labels[0])
        ax.set_ylabel(labels[1])
    if title is None:
        title = c.default_title(surface, quantity, path)
    if title:
        ax.set_title(title)
    return ax


def curves(
    surfaces: Sequence[Any] | Mapping[str, Any],
    labels: Sequence[str] | None = None,
    ax: Any = None,
    *,
    quantity: str = "loss",
    log: bool = False,
) -> Any:
    """Several 1D surfaces (directions, interpolations, models) on one axes with a legend; returns the axes.

    When every curve is an interpolation, α = 0 and α = 1 are marked as model A and model B. A curve with
    non-finite values (where the model diverged, e.g. extrapolated BatchNorm variances below zero) is drawn with
    gaps there, and its legend entry says at how many points.

    Parameters
    ----------
    surfaces : sequence of 1D Surface, or a mapping ``{label: surface}``
    labels : sequence of str, optional
        One per surface; default the mapping's keys, or ``"curve 1"``, ``"curve 2"``, ...
    ax : matplotlib axes, optional
    quantity : {"loss", "accuracy"}
    log : bool
        Log y axis; needs positive values.
    """
    if isinstance(surfaces, Mapping):
        if labels is None:
            labels = [str(k) for k in surfaces]
        surfaces = list(surfaces.values())
    elif hasattr(surfaces, "coords"):
        surfaces = [surfaces]
    else:
        surfaces = list(surfaces)
    if not surfaces:
        raise ValueError("surfaces is empty: give at least one 1D surface")
    labels = [f"curve {i + 1}" for i in range(len(surfaces))] if labels is None else [str(s) for s in labels]
    if len(labels) != len(surfaces):
        raise ValueError(f"got {len(surfaces)} surfaces but {len(labels)} labels")
    data = []
    for i, s in enumerate(surfaces):
        if len(s.coords) != 1:
            raise ValueError(f"curves draws 1D surfaces; surface {i} ({labels[i]!r}) is {len(s.coords)}D")
        v = c.values(s, quantity)
        if log:
            c.check_positive(v, quantity)
        data.append((np.asarray(s.coords[0], dtype=np.float64), v))
    if ax is None:
        ax = _new_axes()
    for (x, v), label in zip(data, labels, strict=True):
        gaps = int(np.count_nonzero(~np.isfinite(v)))
        if gaps:  # a curve that just stops would look cut off by mistake: say where the model diverged
            label = f"{label} (gap: {gaps} points not finite)"
        ax.plot(x, v, "-", linewidth=1.6, label=label)
    if log:
        ax.set_yscale("log")
    interpolation = all(c.is_interpolation(s) for s in surfaces)
    if interpolation:
        _mark_models(ax, data)
        ax.set_xlabel(c.INTERPOLATION_LABEL)
    else:
        names = {tuple(c.axis_labels(s)) for s in surfaces}
        ax.set_xlabel(next(iter(names))[0] if len(names) == 1 else "coordinate along the direction")
    ax.set_ylabel(quantity)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize=9)
    return ax


def trajectory_overlay(ax: Any, trajectory: Any, *, labels: bool = True, z: Sequence[float] | None = None) -> Any:
    """Draw an optimisation path with markers and direction arrows; start and end are marked and labelled.

    Parameters
    ----------
    ax : matplotlib axes
        2D axes (coordinates in the surface's plane), or a 3D axes together with ``z``.
    trajectory : (T, 2) array or object with ``.coords`` and optional ``.labels`` (one per point)
    labels : bool
        Write "start" / "end" next to the end points, with the points' own labels when the trajectory has them
        (every point's label on 2D axes for paths of at most 12 points).
    z : sequence of float, optional
        Heights of the points on a 3D axes (e.g. the surface values there).

    Returns
    -------
    matplotlib axes
    """
    path = trajectory if isinstance(trajectory, c.Path) else c.as_path(trajectory)
    xy = path.coords
    three_d = _is_3d(ax)
    if three_d and z is None:
        raise ValueError("a 3D axes needs the heights z of the trajectory points")
    if z is not None:
        z = np.asarray(z, dtype=np.float64).ravel()
        if z.shape != (xy.shape[0],):
            raise ValueError(f"z must have one value per trajectory point ({xy.shape[0]}), got shape {z.shape}")
        if not three_d:
            raise ValueError("z is for 3D axes; a 2D axes draws the path in the plane")
    pos = (xy[:, 0], xy[:, 1]) if z is None else (xy[:, 0], xy[:, 1], z)
    ax.plot(*pos, "-", color=PATH_COLOR, linewidth=1.4, marker=".", markersize=5, label="trajectory", zorder=6)
    first = tuple(p[0] for p in pos)
    last = tuple(p[-1] for p in pos)
    ax.plot(*([p] for p in first), "o", color="white", markeredgecolor=PATH_COLOR, markersize=7, zorder=7)
    ax.plot(*([p] for p in last), "s", color=PATH_COLOR, markeredgecolor="white", markersize=7, zorder=7)
    T = xy.shape[0]
    if not three_d and T > 1:
        # Arrows on a few evenly spaced segments show the direction without hiding the path.
        for i in np.unique(np.linspace(0, T - 2, min(MAX_ARROWS, T - 1)).round().astype(int)):
            if np.allclose(xy[i], xy[i + 1]):
                continue
            ax.annotate(
                "",
                xy=tuple(xy[i + 1]),
                xytext=tuple(xy[i]),
                arrowprops={"arrowstyle": "-|>", "color": PATH_COLOR, "lw": 1.2, "shrinkA": 0, "shrinkB": 3},
                zorder=6,
            )
    if labels:
        text = [""] * T if path.labels is None else list(path.labels)
        if three_d or T > MAX_POINT_LABELS:
            # Labels of every point overlap in a 3D projection or on a long path; start and end suffice there.
            text[1:-1] = [""] * max(0, T - 2)
        text[0] = "start" if not text[0] else f"start ({text[0]})"
        if T > 1:
            text[-1] = "end" if not text[-1] else f"end ({text[-1]})"
        box = {"boxstyle": "round,pad=0.2", "facecolor": "white", "edgecolor": "none", "alpha": 0.75}
        for i, t in enumerate(text):
            if not t:
                continue
            p = tuple(q[i] for q in pos)
            if three_d:
                ax.text(*p, " " + t, fontsize=8, zorder=8)
            else:
                # Text points away from the nearer side edge so it stays inside the axes (a colour bar sits right).
                right = p[0] > 0.5 * sum(ax.get_xlim())
                ax.annotate(
                    t,
                    p,
                    xytext=(-6 if right else 6, 5),
                    textcoords="offset points",
                    ha="right" if right else "left",
                    fontsize=8,
                    bbox=box,
                    zorder=8,
                )
    return ax


def density_plot(
    density: Any,
    ax: Any = None,
    *,
    log: bool = False,
    sigma: float | None = None,
    grid: np.ndarray | None = None,
    num_points: int | None = None,
    title: str | None = None,
    **line_kwargs: Any,
) -> Any:
    """Plot the Gaussian-smoothed SLQ spectral density ``phi_sigma`` and return the axes.

    On a linear scale the curve integrates to 1. ``log=True`` uses a log y axis with the values floored at ``1e-12``
    of the peak: the usual view of Hessian spectra, whose bulk near zero hides the outliers (Ghorbani, Krishnan,
    Xiao 2019; Papyan 2020).

    Parameters
    ----------
    density : SpectralDensity
        Has ``.density(grid, sigma)``, ``.sigma``, ``.lambda_min``, ``.lambda_max``.
    ax : matplotlib axes, optional
    log : bool
        Log-scaled y axis.
    sigma : float, optional
        Smoothing width; default ``density.sigma``.
    grid : 1D array, optional
        Eigenvalue grid; default the Ritz-value range padded by ``5 sigma``, spacing below ``sigma / 5``.
    num_points : int, optional
        Points of the default grid.
    title : str, optional
        ``None`` writes the SLQ settings; ``""`` writes none.
    **line_kwargs
        Passed to ``ax.plot``.
    """
    t, phi, sigma = c.density_curve(density, sigma=sigma, grid=grid, num_points=num_points)
    if ax is None:
        ax = _new_axes()
    if log:
        phi = c.log_floor(phi)
        ax.set_yscale("log")
    style = {"color": "tab:blue", "linewidth": 1.4, **line_kwargs}
    (line,) = ax.plot(t, phi, **style)
    if not log:
        ax.fill_between(t, phi, color=line.get_color(), alpha=0.15, linewidth=0)
        ax.set_ylim(bottom=0.0)
    ax.set_xlabel("eigenvalue λ")
    ax.set_ylabel("density (log scale)" if log else "density")
    ax.grid(True, alpha=0.3)
    if title is None:
        title = c.density_title(density, sigma)
    if title:
        ax.set_title(title)
    return ax


def save(fig: Any, path: str | os.PathLike[str], *, dpi: int = 300) -> FilePath:
    """Write ``fig`` (a Figure, or any artist with ``.figure``) to ``.pdf``, ``.png`` or ``.svg`` by suffix.

    Tight bounding box; PDF and SVG are vector, PNG is rasterised at ``dpi``. Creation dates are left out so the
    same figure gives the same PDF/SVG bytes. Parent folders are created. Returns the path written.
    """
    figure = fig if hasattr(fig, "savefig") else getattr(fig, "figure", None)
    if figure is None or not hasattr(figure, "savefig"):
        raise TypeError(f"fig must be a matplotlib Figure or Axes, got {type(fig).__name__}")
    out = FilePath(path)
    suffix = out.suffix.lower()
    if suffix not in SUFFIXES:
        raise ValueError(f"cannot tell the format from {str(out)!r}: the suffix must be one of {SUFFIXES}")
    metadata = {".pdf": {"CreationDate": None}, ".svg": {"Date": None}, ".png": {}}[suffix]
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, format=suffix[1:], dpi=dpi, bbox_inches="tight", metadata=metadata)
    return out
