"""The HTML report's own figures: a 2D surface's contour map, learning rate against batch size, and every figure
sized to fill a report card.

Objects are duck-typed like :mod:`landscape.plot._common`'s; a scaling report has ``.batch_sizes``, ``.spectral_lr``
(with ``_stderr``), ``.worst_batch_lr``, ``.fitted_lr(B)``, ``.linear_rule(B)``/``.sqrt_rule(B)``, ``.optimizer``
and ``.noise`` (``None`` or with ``.b_noise``, ``.eps_max``, ``.eps_opt(B)``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from landscape.plot import _common as c
from landscape.plot.blocks import COLORBAR_LABEL, MAX_ANNOTATED, RIDGE_FLOOR, floored
from landscape.plot.interactive import TEMPLATE, to_html

__all__ = ["block_density_figure", "block_heatmap_figure", "card_html", "contour_figure", "scaling_figure"]


def card_html(fig: Any, height: int = 420, *, include_plotlyjs: bool = False) -> str:
    """``fig`` as an HTML fragment that takes its card's width (no fixed width) at ``height`` pixels.

    Flat figures keep margins that hold their titles: axis margins grow with the tick labels and axis titles
    (``automargin``). ``include_plotlyjs=True`` embeds plotly.js (once per page, with the first figure).
    """
    fig.update_layout(height=height, width=None, autosize=True)
    if not any(t.type in ("surface", "scatter3d") for t in fig.data):
        # The top margin holds a two-line title (the density's); plotly centres the title in it.
        fig.update_layout(margin={"l": 70, "r": 30, "t": 100, "b": 60})
        fig.update_xaxes(automargin=True)
        fig.update_yaxes(automargin=True)
    return to_html(fig, include_plotlyjs=include_plotlyjs, full_html=False)


def contour_figure(surface: Any) -> Any:
    """Contour map of a 2D surface's loss (the interactive 3D view's companion), trained weights marked."""
    import plotly.graph_objects as go

    x, y = (np.asarray(v, dtype=np.float64) for v in surface.coords[:2])
    names = c.axis_labels(surface)
    fig = go.Figure(
        go.Contour(
            x=x.tolist(),
            y=y.tolist(),
            z=np.asarray(surface.loss, dtype=np.float64).T.tolist(),
            colorscale="Viridis",
            ncontours=30,
            colorbar={"title": {"text": "loss"}},
            hovertemplate=f"{names[0]}: %{{x:.4g}}<br>{names[1]}: %{{y:.4g}}<br>loss: %{{z:.6g}}<extra></extra>",
        )
    )
    if c.contains(x, 0.0) and c.contains(y, 0.0):
        fig.add_trace(
            go.Scatter(
                x=[0.0], y=[0.0], mode="markers", marker={"symbol": "x", "size": 10, "color": "red"}, name="trained"
            )
        )
    fig.update_layout(
        title={"text": "loss contours"},
        xaxis_title=names[0],
        yaxis_title=names[1],
        template=TEMPLATE,
        showlegend=False,
        yaxis={"scaleanchor": "x"},
    )
    return fig


def scaling_figure(scaling: Any) -> Any:
    """Learning rates against batch size (log-log): measured ``2/lambda_max(H_B)``, fit, scaling rule, ``eps_opt``."""
    import plotly.graph_objects as go

    B = np.asarray(scaling.batch_sizes, dtype=np.float64)
    grid = np.geomspace(B[0], B[-1], 100)
    fig = go.Figure()
    fig.add_trace(
        go.Scatter(
            x=B.tolist(),
            y=np.asarray(scaling.spectral_lr).tolist(),
            error_y={"type": "data", "array": np.asarray(scaling.spectral_lr_stderr).tolist()},
            mode="markers",
            name="2/λmax(H_B), measured",
        )
    )
    fig.add_trace(
        go.Scatter(
            x=B.tolist(),
            y=np.asarray(scaling.worst_batch_lr).tolist(),
            mode="markers",
            marker={"symbol": "triangle-down-open", "size": 9},
            name="2/max λmax (sharpest batch)",
        )
    )
    fig.add_trace(go.Scatter(x=grid.tolist(), y=scaling.fitted_lr(grid).tolist(), mode="lines", name="2/λ'(B), fit"))
    rule = scaling.sqrt_rule(grid) if scaling.optimizer == "adam" else scaling.linear_rule(grid)
    name = "square-root rule" if scaling.optimizer == "adam" else "linear rule"
    fig.add_trace(
        go.Scatter(x=grid.tolist(), y=np.asarray(rule).tolist(), mode="lines", line={"dash": "dash"}, name=name)
    )
    noise = scaling.noise
    if noise is not None and np.isfinite(noise.eps_max):
        eps = np.asarray(noise.eps_opt(grid), dtype=np.float64)
        fig.add_trace(
            go.Scatter(x=grid.tolist(), y=eps.tolist(), mode="lines", line={"dash": "dashdot"}, name="ε_opt(B)")
        )
        if np.isfinite(noise.b_noise) and B[0] <= noise.b_noise <= B[-1]:
            # A vertical trace rather than a shape: shapes on log axes mix data and log10 coordinates.
            ys = np.concatenate([np.asarray(scaling.worst_batch_lr), np.asarray(scaling.spectral_lr), eps, rule])
            ys = ys[np.isfinite(ys) & (ys > 0)]
            fig.add_trace(
                go.Scatter(
                    x=[float(noise.b_noise)] * 2,
                    y=[float(ys.min()), float(ys.max())],
                    mode="lines",
                    line={"dash": "dot", "color": "gray"},
                    name=f"B_noise = {float(noise.b_noise):.3g} (critical batch size)",
                )
            )
    fig.update_layout(
        title={"text": f"maximal stable learning rate vs batch size ({scaling.optimizer})"},
        xaxis={"type": "log", "title": "batch size B"},
        yaxis={"type": "log", "title": "learning rate"},
        template=TEMPLATE,
    )
    return fig


def block_density_figure(result: Any) -> Any:
    """The diagonal blocks' densities overlaid (log axis, each floored at :data:`RIDGE_FLOOR` of its peak, on the
    heterogeneity's common grid and width), each block's top eigenvalue dotted in its colour; a legend entry per
    block hides or shows it."""
    import plotly.graph_objects as go
    from plotly.colors import qualitative

    h = result.heterogeneity
    grid = np.asarray(h.grid, dtype=np.float64).tolist()
    fig = go.Figure()
    for b, (name, top) in enumerate(zip(result.names, result.lambda_max, strict=True)):
        shown, low = floored(h.densities[b])
        color = qualitative.Plotly[b % len(qualitative.Plotly)]
        fig.add_trace(
            go.Scatter(
                x=grid,
                y=shown.tolist(),
                mode="lines",
                name=name,
                legendgroup=name,
                line={"color": color},
                hovertemplate=f"{name}<br>eigenvalue: %{{x:.5g}}<br>density: %{{y:.4g}}<extra></extra>",
            )
        )
        fig.add_trace(
            go.Scatter(
                x=[float(top)] * 2,
                y=[low, float(shown.max())],
                mode="lines",
                line={"color": color, "dash": "dot"},
                legendgroup=name,
                showlegend=False,
                hovertemplate=f"{name}: λ_max = {float(top):.5g}<extra></extra>",
            )
        )
    fig.update_layout(
        title={
            "text": f"block densities (σ = {h.sigma:.3g}, floored at {RIDGE_FLOOR:g} of each peak)<br>"
            "top eigenvalues dotted"
        },
        xaxis_title="eigenvalue λ",
        yaxis={"type": "log", "title": "density (log scale)"},
        template=TEMPLATE,
    )
    return fig


def block_heatmap_figure(result: Any) -> Any:
    """The Jensen-Shannon distances between the blocks' densities on ``[0, 1]``, each value written in its cell when
    there are at most :data:`~landscape.plot.blocks.MAX_ANNOTATED` blocks."""
    import plotly.graph_objects as go

    h = result.heterogeneity
    names = list(result.names)
    annotated = len(names) <= MAX_ANNOTATED
    fig = go.Figure(
        go.Heatmap(
            z=np.asarray(h.distances, dtype=np.float64).tolist(),
            x=names,
            y=names,
            zmin=0.0,
            zmax=1.0,
            colorscale="Viridis",
            colorbar={"title": {"text": COLORBAR_LABEL.replace("\n", "<br>"), "side": "right"}},
            texttemplate="%{z:.2f}" if annotated else None,
            hovertemplate="%{y} vs %{x}: %{z:.3f}<extra></extra>",
        )
    )
    summary = "" if len(names) < 2 else f": mean {h.mean:.3g}, max {h.max:.3g}"
    fig.update_layout(
        title={"text": f"block heterogeneity (Jensen-Shannon distance){summary}"},
        xaxis={"type": "category"},
        yaxis={"type": "category", "autorange": "reversed", "scaleanchor": "x"},
        template=TEMPLATE,
    )
    return fig
