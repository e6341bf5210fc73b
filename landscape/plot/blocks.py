"""Figures of the diagonal blocks' spectra (:func:`landscape.block_spectra`), paper-ready (matplotlib).

``"ridge"``: one row per block, its Gauss-smoothed density on a log axis over the eigenvalues every row shares, the
block's top eigenvalue marked with its value (the common grid and width of the heterogeneity, so the rows compare as
the Jensen-Shannon distances do); ``"bars"``: the top eigenvalue and the trace (+-2 standard errors) per block;
``"heatmap"``: the Jensen-Shannon distances between the blocks' densities (Zhang et al. 2024), annotated when small.

The result is duck-typed: ``.names``, ``.lambda_max``, ``.traces``, ``.trace_stderrs``, ``.trace_methods``,
``.curvature`` and ``.heterogeneity`` (``.distances``, ``.grid``, ``.densities``, ``.sigma``, ``.mean``,
``.max``), so drawing needs nothing from the analysis module. Every kind returns the matplotlib Figure.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["COLORBAR_LABEL", "KINDS", "MAX_ANNOTATED", "RIDGE_FLOOR", "block_spectra_plot", "floored"]

KINDS = ("ridge", "bars", "heatmap")
#: The heatmap writes each distance into its cell up to this many blocks.
MAX_ANNOTATED = 12
#: The ridge rows' densities are floored at this fraction of their peak (a finite log axis: the bulk and the outliers,
#: not the underflow of the Gaussian tails).
RIDGE_FLOOR = 1e-6
#: What the heatmap's numbers are (``Heterogeneity.definition`` says it in full), short enough for a colorbar.
COLORBAR_LABEL = "Jensen-Shannon distance, base 2\n(0 = identical, 1 = disjoint)"


def floored(density: np.ndarray, floor: float = RIDGE_FLOOR) -> tuple[np.ndarray, float]:
    """``(density floored at floor * its peak, that floor)``: finite on a log axis."""
    d = np.asarray(density, dtype=np.float64)
    if not 0 < floor < 1:
        raise ValueError(f"floor must be in (0, 1), a fraction of each density's peak; got {floor}")
    peak = float(d.max()) if d.size else 0.0
    low = floor * peak if peak > 0 else floor
    return np.maximum(d, low), low


def block_spectra_plot(result: Any, kind: str = "ridge", ax: Any = None, **kwargs: Any) -> Any:
    """Draw ``result`` as ``kind`` (``"ridge"``, ``"bars"`` or ``"heatmap"``) and return the matplotlib Figure.

    Parameters
    ----------
    result : BlockSpectra
        See the module docstring.
    kind : str
        ``"ridge"``: :func:`ridge`; ``"bars"``: :func:`bars`; ``"heatmap"``: :func:`heatmap`.
    ax : matplotlib axes, optional
        Where to draw (default: a new figure sized for the blocks); see each kind for what it takes.
    **kwargs
        Passed to the kind's function.
    """
    draw = {"ridge": ridge, "bars": bars, "heatmap": heatmap}.get(kind)
    if draw is None:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    return draw(result, ax, **kwargs)


def _figure(width: float, height: float) -> Any:
    import matplotlib.pyplot as plt

    return plt.figure(figsize=(width, height), layout="constrained")


def _curvature(result: Any) -> str:
    return {"hessian": "Hessian", "ggn": "GGN", "fisher": "empirical Fisher"}.get(result.curvature, result.curvature)


def _tick_names(ax: Any, names: Sequence[str], axis: str = "x") -> None:
    """Block names as tick labels, slanted when there are many or they are long."""
    at = np.arange(len(names))
    slanted = len(names) > 4 or max(len(n) for n in names) > 10
    if axis == "x":
        ax.set_xticks(at, names, rotation=45 if slanted else 0, ha="right" if slanted else "center")
    else:
        ax.set_yticks(at, names)


def ridge(
    result: Any,
    ax: Any = None,
    *,
    floor: float = RIDGE_FLOOR,
    color: str = "tab:blue",
    marker_color: str = "tab:red",
    title: str | None = None,
) -> Any:
    """One row per block: its smoothed density (log axis, floored at ``floor`` of its peak) and its top eigenvalue.

    The densities are the heterogeneity's, on one grid with one width. ``ax``: ``None`` (a new figure), one axes
    (split into the rows) or a sequence of one axes per block. Returns the Figure.
    """
    h = result.heterogeneity
    names = list(result.names)
    B = len(names)
    if ax is None:
        fig = _figure(6.4, 0.75 * B + 1.3)
        rows = list(fig.subplots(B, 1, sharex=True, squeeze=False)[:, 0])
        fig.get_layout_engine().set(h_pad=0.0, hspace=0.0)
    elif isinstance(ax, Sequence) or isinstance(ax, np.ndarray):
        rows = list(np.ravel(ax))
        if len(rows) != B:
            raise ValueError(f"a ridge of {B} blocks needs {B} axes, got {len(rows)}")
        fig = rows[0].figure
    else:
        fig = ax.figure
        ax.set_axis_off()
        rows = []
        for b in range(B):
            rows.append(ax.inset_axes((0.0, 1.0 - (b + 1) / B, 1.0, 1.0 / B), sharex=rows[0] if rows else None))
    grid = np.asarray(h.grid, dtype=np.float64)
    tops = np.asarray(result.lambda_max, dtype=np.float64)
    for b, (row, name) in enumerate(zip(rows, names, strict=True)):
        shown, low = floored(h.densities[b], floor)
        row.set_yscale("log")
        row.fill_between(grid, low, shown, color=color, alpha=0.25, linewidth=0)
        row.plot(grid, shown, color=color, linewidth=1.1)
        row.set_ylim(low, float(shown.max()) / floor**0.3)  # headroom for the top eigenvalue's label
        row.axvline(tops[b], color=marker_color, linewidth=0.9, linestyle="--")
        row.annotate(
            f"λ_max = {tops[b]:.4g}",
            (tops[b], 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(-3, -2),
            textcoords="offset points",
            ha="right",
            va="top",
            fontsize=7,
            color=marker_color,
            bbox={"boxstyle": "round,pad=0.15", "facecolor": "white", "edgecolor": "none", "alpha": 0.8},
        )
        row.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
        row.yaxis.tick_right()
        row.tick_params(axis="y", which="both", labelsize=6)
        row.tick_params(axis="x", which="both", bottom=b == B - 1, labelbottom=b == B - 1)
        for side in ("top", "left"):
            row.spines[side].set_visible(False)
        row.grid(True, axis="x", alpha=0.3)
    rows[-1].set_xlabel("eigenvalue λ")
    rows[-1].set_xlim(grid[0], grid[-1])
    if title is None:
        title = (
            f"{_curvature(result)} block spectra: densities (log scale, σ = {h.sigma:.3g}, floored at {floor:g} of "
            "each peak), top eigenvalues dashed"
        )
    if title:
        rows[0].set_title("\n".join(textwrap.wrap(title, 70)), fontsize=9)
    return fig


def _scale(panel: Any, values: np.ndarray, log: bool | None) -> None:
    """Log scale when asked (``True``) or, with ``None``, when the positive values span more than two decades."""
    positive = values.size > 0 and bool(np.all(values > 0))
    wide = positive and float(values.max() / values.min()) > 100.0
    if positive and (log or (log is None and wide)):
        panel.set_yscale("log")
    else:
        panel.axhline(0.0, color="0.5", linewidth=0.6)


def bars(
    result: Any, ax: Any = None, *, log: bool | None = None, colors: tuple[str, str] = ("tab:red", "tab:blue")
) -> Any:
    """The top eigenvalue and the trace per block, the trace with +-2 standard-error bars where it is an estimate.

    ``ax``: ``None`` (a new figure with two panels), a pair of axes (one panel each) or one axes (grouped bars).
    ``log``: ``True`` log axes (positive values only), ``False`` linear, ``None`` log when the values span more than
    two decades. Returns the Figure.
    """
    names = list(result.names)
    x = np.arange(len(names))
    tops = np.asarray(result.lambda_max, dtype=np.float64)
    traces = np.asarray(result.traces, dtype=np.float64)
    errors = 2 * np.asarray(result.trace_stderrs, dtype=np.float64)
    yerr = errors if np.any(errors > 0) else None
    methods = ", ".join(dict.fromkeys(result.trace_methods))
    what = _curvature(result)
    if ax is not None and not isinstance(ax, (Sequence, np.ndarray)):
        width = 0.4
        ax.bar(x - width / 2, tops, width, color=colors[0], label="λ_max(H_bb)")
        ax.bar(x + width / 2, traces, width, yerr=yerr, capsize=2, color=colors[1], label=f"tr(H_bb) ({methods})")
        _scale(ax, np.concatenate([tops, traces]), log)
        _tick_names(ax, names)
        ax.legend(frameon=False, fontsize=8)
        ax.set_title(f"{what} blocks: top eigenvalue and trace" + ("" if yerr is None else " (±2 s.e.)"), fontsize=10)
        return ax.figure
    if ax is None:
        fig = _figure(max(6.4, 0.9 * len(names) + 2.0), 3.6)
        panels = list(fig.subplots(1, 2))
    else:
        panels = list(np.ravel(ax))
        if len(panels) != 2:
            raise ValueError(f"bars draws two panels: pass one axes or two, got {len(panels)}")
        fig = panels[0].figure
    panels[0].bar(x, tops, color=colors[0])
    panels[0].set_ylabel("top eigenvalue  λ_max(H_bb)")
    panels[0].set_title(f"{what}: top eigenvalue per block", fontsize=10)
    panels[1].bar(x, traces, yerr=yerr, capsize=2, color=colors[1])
    panels[1].set_ylabel("trace  tr(H_bb)")
    shown = methods if yerr is None else f"{methods}; ±2 s.e."
    panels[1].set_title(f"{what}: trace per block\n({shown})", fontsize=10)
    for panel, values in zip(panels, (tops, traces), strict=True):
        _scale(panel, values, log)
        _tick_names(panel, names)
    return fig


def heatmap(result: Any, ax: Any = None, *, cmap: str = "viridis", annotate: bool | None = None) -> Any:
    """The Jensen-Shannon distances between the blocks' densities, on ``[0, 1]``, names on both axes.

    ``annotate``: each cell's value written in it (default: when there are at most :data:`MAX_ANNOTATED` blocks).
    Returns the Figure.
    """
    h = result.heterogeneity
    names = list(result.names)
    B = len(names)
    D = np.asarray(h.distances, dtype=np.float64)
    if ax is None:
        side = min(max(4.0, 0.45 * B + 2.5), 14.0)
        ax = _figure(side + 1.2, side).add_subplot()
    image = ax.imshow(D, vmin=0.0, vmax=1.0, cmap=cmap)
    _tick_names(ax, names, "x")
    _tick_names(ax, names, "y")
    bar = ax.figure.colorbar(image, ax=ax)
    bar.set_label(COLORBAR_LABEL, fontsize=9)
    if annotate if annotate is not None else B <= MAX_ANNOTATED:
        for i in range(B):
            for j in range(B):
                ax.text(
                    j,
                    i,
                    f"{D[i, j]:.2f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if D[i, j] < 0.6 else "black",
                )
    summary = "" if B < 2 else f": mean {h.mean:.3g}, max {h.max:.3g}"
    ax.set_title(f"block heterogeneity{summary}", fontsize=10)
    return ax.figure
