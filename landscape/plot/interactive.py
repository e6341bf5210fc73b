"""Interactive plotly figures of loss surfaces and spectral densities, and self-contained HTML.

A 2D surface becomes a rotatable 3D surface with its contours projected on the floor; hovering shows both
coordinates and the loss (and the accuracy when known). :func:`to_html` embeds plotly.js itself, so the file opens
offline with no external script. Plotly's global defaults (templates, renderers) are never changed.
"""

from __future__ import annotations

import hashlib
import os
from html import escape
from pathlib import Path as FilePath
from typing import Any

import numpy as np

from landscape.plot import _common as c

COLORSCALE = "Viridis"
TEMPLATE = "plotly_white"


def _hover(names: list[str], quantities: list[str], ndim: int) -> str:
    """Hover template: coordinates, then every known quantity from ``customdata`` (true values, even on log axes)."""
    coords = [f"{names[0]}: %{{x:.4g}}"] + ([f"{names[1]}: %{{y:.4g}}"] if ndim == 2 else [])
    values = [f"{q}: %{{customdata[{i}]:.6g}}" for i, q in enumerate(quantities)]
    return "<br>".join(coords + values) + "<extra></extra>"


def surface_figure(surface: Any, *, quantity: str = "loss", log: bool = False, trajectory: Any = None) -> Any:
    """A plotly Figure of a 1D (line) or 2D (3D surface with floor contours) surface.

    Parameters
    ----------
    surface : Surface
        ``.coords``, ``.loss``, ``.accuracy``, ``.directions.kind``, ``.settings``.
    quantity : {"loss", "accuracy"}
        What the height (2D) or the y axis (1D) shows; the hover text shows every quantity the surface has.
    log : bool
        Heights ``log10(value)`` (2D) or a log y axis (1D); needs positive values.
    trajectory : (T, 2) array or object with ``.coords``, optional
        A path over a 2D surface, drawn on it (heights interpolated bilinearly).

    Returns
    -------
    plotly.graph_objects.Figure
    """
    import plotly.graph_objects as go

    v = c.values(surface, quantity)
    ndim = c.check_ndim(surface, (1, 2))
    if log:
        c.check_positive(v, quantity)
    path = None if trajectory is None else c.as_path(trajectory)
    if path is not None and ndim != 2:
        raise ValueError("a trajectory can only be drawn over a 2D surface")
    names = c.axis_labels(surface, path)
    shown = [q for q in c.QUANTITIES if q == "loss" or getattr(surface, "accuracy", None) is not None]
    stack = np.stack([c.values(surface, q) for q in shown], axis=-1)
    x = np.asarray(surface.coords[0], dtype=np.float64)
    title = c.default_title(surface, quantity) + (" (log10 heights)" if log and ndim == 2 else "")
    fig = go.Figure()

    if ndim == 1:
        fig.add_trace(
            go.Scatter(
                x=x.tolist(),
                y=v.tolist(),
                mode="lines",
                name=quantity,
                customdata=stack.tolist(),
                hovertemplate=_hover(names, shown, 1),
            )
        )
        if c.is_interpolation(surface):
            for a, name in ((0.0, "model A"), (1.0, "model B")):
                if c.contains(x, a):
                    fig.add_vline(x=a, line_dash="dot", line_color="gray", annotation_text=name)
        fig.update_layout(
            xaxis_title=names[0], yaxis_title=quantity, yaxis_type="log" if log else "linear", hovermode="closest"
        )
    else:
        y = np.asarray(surface.coords[1], dtype=np.float64)
        z = np.log10(v) if log else v
        zlabel = c.quantity_label(quantity, log)
        # plotly indexes z[row = y][column = x]; the surface's arrays are [x, y] (indexing="ij").
        fig.add_trace(
            go.Surface(
                x=x.tolist(),
                y=y.tolist(),
                z=z.T.tolist(),
                customdata=np.transpose(stack, (1, 0, 2)).tolist(),
                hovertemplate=_hover(names, shown, 2),
                colorscale=COLORSCALE,
                colorbar={"title": {"text": zlabel}},
                contours={"z": {"show": True, "usecolormap": True, "project": {"z": True}, "width": 1}},
                name=quantity,
            )
        )
        if c.contains(x, 0.0) and c.contains(y, 0.0):
            z0 = float(c.lift(z, (x, y), np.zeros((1, 2)))[0])
            fig.add_trace(
                go.Scatter3d(
                    x=[0.0],
                    y=[0.0],
                    z=[z0],
                    mode="markers",
                    marker={"symbol": "diamond", "size": 5, "color": "red"},
                    name="origin (trained weights)",
                    hovertemplate="origin (trained weights)<extra></extra>",
                )
            )
        if path is not None:
            pz = c.lift(z, (x, y), path.coords)
            text = [""] * len(pz) if path.labels is None else list(path.labels)
            text[0] = f"start {text[0]}".strip()
            if len(text) > 1:
                text[-1] = f"end {text[-1]}".strip()
            fig.add_trace(
                go.Scatter3d(
                    x=path.coords[:, 0].tolist(),
                    y=path.coords[:, 1].tolist(),
                    z=[None if not np.isfinite(h) else float(h) for h in pz],
                    mode="lines+markers+text",
                    text=text,
                    line={"color": "crimson", "width": 5},
                    marker={"size": 3, "color": "crimson"},
                    name="trajectory",
                )
            )
        fig.update_layout(
            # The camera farther out than plotly's (1.25, 1.25, 1.25): the axis titles, drawn inside the scene, then
            # stay in it on a half-width report card too.
            scene={
                "xaxis_title": names[0],
                "yaxis_title": names[1],
                "zaxis_title": zlabel,
                "camera": {"eye": {"x": 2.0, "y": 2.0, "z": 1.25}},
            },
            legend={"x": 0.0, "y": 1.0},
        )
    fig.update_layout(title={"text": title}, template=TEMPLATE, margin={"l": 10, "r": 10, "t": 50, "b": 10})
    return fig


def density_figure(
    density: Any, *, log: bool = False, sigma: float | None = None, grid: np.ndarray | None = None
) -> Any:
    """A plotly Figure of the smoothed SLQ spectral density (linear or log y axis, floored at ``1e-12`` of the peak).

    Parameters
    ----------
    density : SpectralDensity
        Has ``.density(grid, sigma)``, ``.sigma``, ``.lambda_min``, ``.lambda_max``.
    log : bool
        Log-scaled y axis.
    sigma : float, optional
        Smoothing width; default ``density.sigma``.
    grid : 1D array, optional
        Eigenvalue grid; default the Ritz-value range padded by ``5 sigma``.
    """
    import plotly.graph_objects as go

    t, phi, sigma = c.density_curve(density, sigma=sigma, grid=grid)
    if log:
        phi = c.log_floor(phi)
    fig = go.Figure(
        go.Scatter(
            x=t.tolist(),
            y=phi.tolist(),
            mode="lines",
            fill=None if log else "tozeroy",
            name="density",
            hovertemplate="eigenvalue: %{x:.5g}<br>density: %{y:.4g}<extra></extra>",
        )
    )
    fig.update_layout(
        title={"text": c.density_title(density, sigma, newline="<br>")},
        xaxis_title="eigenvalue λ",
        yaxis_title="density (log scale)" if log else "density",
        yaxis_type="log" if log else "linear",
        template=TEMPLATE,
    )
    return fig


def to_html(
    figure_or_surface: Any,
    path: str | os.PathLike[str] | None = None,
    *,
    include_plotlyjs: bool | str = True,
    full_html: bool = True,
    config: dict[str, Any] | None = None,
) -> str:
    """Self-contained HTML of a plotly Figure, a Surface or a SpectralDensity; written to ``path`` when given.

    With ``include_plotlyjs=True`` the plotly.js bundle is embedded (no ``<script src=``): the page works offline.
    ``False`` (or ``"cdn"``) gives a fragment for a page that loads plotly.js itself. The div id is a hash of the
    figure, so the same figure gives the same bytes and two figures on one page do not clash. The figure fills its
    container's width and follows the window's size (plotly's ``responsive`` config).

    Parameters
    ----------
    figure_or_surface : plotly Figure, Surface or SpectralDensity
        Surfaces go through :func:`surface_figure`, densities through :func:`density_figure` with defaults.
    path : path-like, optional
        Where to write the HTML (UTF-8); parent folders are created.
    include_plotlyjs : bool or str
        Passed to plotly: ``True`` embeds plotly.js.
    full_html : bool
        A complete document (default) or a single ``<div>``.
    config : dict, optional
        plotly.js config, merged over ``{"responsive": True, "displaylogo": False}``.

    Returns
    -------
    str
        The HTML.
    """
    fig = figure_or_surface
    if hasattr(fig, "coords") and hasattr(fig, "loss"):
        fig = surface_figure(fig)
    elif hasattr(fig, "density") and hasattr(fig, "nodes"):
        fig = density_figure(fig)
    elif not hasattr(fig, "to_html") or not hasattr(fig, "to_plotly_json"):
        raise TypeError(
            f"figure_or_surface must be a plotly Figure, a Surface or a SpectralDensity, got {type(fig).__name__}"
        )
    div_id = "landscape-" + hashlib.sha256(fig.to_json().encode()).hexdigest()[:16]
    config = {"responsive": True, "displaylogo": False, **(config or {})}
    html = fig.to_html(include_plotlyjs=include_plotlyjs, full_html=full_html, div_id=div_id, config=config)
    if full_html:
        # plotly writes no <title>; the browser tab should say what the page shows.
        title = escape(str(fig.layout.title.text or "landscape figure"))
        html = html.replace("<head>", f"<head>\n    <title>{title}</title>", 1)
    if path is not None:
        out = FilePath(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(html, encoding="utf-8")
    return html
