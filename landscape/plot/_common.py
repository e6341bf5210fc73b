"""What every backend of :mod:`landscape.plot` needs: checked values, axis labels, trajectories, density curves.

Objects are duck-typed: a surface has ``.coords`` (one 1D array per direction), ``.loss`` (shape ``(res,) * ndim``),
``.accuracy`` (same shape or ``None``), ``.directions.kind`` and ``.settings``; a spectral density has
``.density(grid, sigma)``, ``.sigma``, ``.lambda_min`` and ``.lambda_max``; a trajectory has ``.coords`` ``(T, 2)``
and optionally ``.labels`` and ``.explained_variance``, or is a plain ``(T, 2)`` array.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

QUANTITIES = ("loss", "accuracy")

# Plain text (no TeX): the same labels serve matplotlib, plotly and file headers.
DIRECTION_NAMES = {
    "random": "random direction",
    "filter_normalized": "filter-normalised direction",
    "layer_normalized": "layer-normalised direction",
    "model_normalized": "model-normalised direction",
    "user": "direction",
    "hessian": "Hessian eigenvector",
    "hessian_axes": "Hessian eigenvector",
    "pca": "PC",
}
INTERPOLATION_LABEL = "interpolation coefficient α  ((1 − α)·model A + α·model B)"


@dataclass(frozen=True)
class Path:
    """A checked trajectory: ``coords`` ``(T, 2)`` float64, per-point ``labels`` and PCA ``explained_variance``."""

    coords: np.ndarray
    labels: list[str] | None
    explained_variance: list[float] | None


def values(surface: Any, quantity: str) -> np.ndarray:
    """The surface's ``quantity`` array as float64, with errors that name the problem."""
    if quantity not in QUANTITIES:
        raise ValueError(f"quantity must be one of {QUANTITIES}, got {quantity!r}")
    out = surface.loss if quantity == "loss" else surface.accuracy
    if out is None:
        raise ValueError("this surface has no accuracy (its targets are not integer class labels): use quantity='loss'")
    out = np.asarray(out, dtype=np.float64)
    expected = tuple(len(c) for c in surface.coords)
    if out.shape != expected:
        raise ValueError(f"surface.{quantity} has shape {out.shape}, its coords need {expected}")
    return out


def check_ndim(surface: Any, allowed: Sequence[int]) -> int:
    """``surface``'s dimension, or a ValueError that says to take a slice."""
    ndim = len(surface.coords)
    if ndim not in allowed:
        if ndim > 2:
            raise ValueError(
                f"cannot draw a {ndim}D surface directly: take a 1D or 2D slice of it (index surface.loss along the "
                "extra axes and keep the matching coords)"
            )
        names = " or ".join(f"{d}D" for d in allowed)
        raise ValueError(f"this plot needs a {names} surface, got a {ndim}D one")
    return ndim


def check_positive(v: np.ndarray, what: str) -> None:
    """Log scales need positive values; non-finite points (a diverged loss far out on a grid) are gaps, not errors."""
    finite = v[np.isfinite(v)]
    if finite.size == 0:
        raise ValueError(f"the {what} values are all NaN or inf: nothing to plot")
    if not np.all(finite > 0):
        raise ValueError(f"a log scale needs positive {what} values everywhere; min is {float(np.min(finite)):.3g}")


def quantity_label(quantity: str, log: bool = False) -> str:
    return f"log10 {quantity}" if log else quantity


def kind(surface: Any) -> str:
    directions = getattr(surface, "directions", None)
    found = getattr(directions, "kind", None)
    if found is None:
        found = (getattr(surface, "settings", None) or {}).get("directions", {}).get("kind")
    return str(found) if found is not None else "user"


def is_interpolation(surface: Any) -> bool:
    return kind(surface) == "interpolation"


def _setting(surface: Any, key: str) -> Any:
    own = getattr(getattr(surface, "directions", None), "settings", None) or {}
    if key in own:
        return own[key]
    return ((getattr(surface, "settings", None) or {}).get("directions") or {}).get(key)


def explained_variance(surface: Any, path: Path | None) -> list[float] | None:
    """PCA explained-variance fractions: the trajectory's first, else the directions' settings."""
    ev = path.explained_variance if path is not None else None
    if ev is None:
        for key in ("explained_variance", "explained_variance_ratio"):
            ev = _setting(surface, key)
            if ev is not None:
                break
    if ev is None:
        return None
    ev = [float(e) for e in np.asarray(ev, dtype=np.float64).ravel()]
    if not all(0.0 <= e <= 1.0 for e in ev):
        raise ValueError(f"explained_variance must be fractions in [0, 1] (0.873 for 87.3%), got {ev}")
    return ev


def axis_labels(surface: Any, path: Path | None = None) -> list[str]:
    """One label per surface axis: ``"filter-normalised direction 1"``, ``"PC1 (87.3%)"``, the interpolation α."""
    ndim = len(surface.coords)
    if is_interpolation(surface):
        return [INTERPOLATION_LABEL] * ndim
    k = kind(surface)
    ev = explained_variance(surface, path)
    if ev is not None or k == "pca":
        return [
            f"PC{i + 1} ({100 * ev[i]:.1f}%)" if ev is not None and i < len(ev) else f"PC{i + 1}" for i in range(ndim)
        ]
    name = DIRECTION_NAMES.get(k, f"{k.replace('_', ' ')} direction")
    labels = [f"{name} {i + 1}" for i in range(ndim)]
    eig = _setting(surface, "eigenvalues") if name == "Hessian eigenvector" else None
    if eig is not None:
        eig = np.asarray(eig, dtype=np.float64).ravel()
        labels = [f"{lab} (λ = {eig[i]:.3g})" if i < eig.size else lab for i, lab in enumerate(labels)]
    return labels


def default_title(surface: Any, quantity: str, path: Path | None = None) -> str:
    """``"Loss surface over two filter-normalised directions"``, ``"Accuracy along PC1"``, ..."""
    name = quantity.capitalize()
    if is_interpolation(surface):
        return f"{name} along the linear interpolation from model A to model B"
    k = kind(surface)
    one = len(surface.coords) == 1
    if k == "pca" or explained_variance(surface, path) is not None:
        return f"{name} along PC1" if one else f"{name} surface in the plane of PC1 and PC2"
    direction = DIRECTION_NAMES.get(k, f"{k.replace('_', ' ')} direction")
    article = "an" if direction[0].lower() in "aeiou" else "a"
    return f"{name} along {article} {direction}" if one else f"{name} surface over two {direction}s"


def as_path(trajectory: Any) -> Path:
    """A trajectory object (``.coords`` and optional ``.labels`` / ``.explained_variance``) or a ``(T, 2)`` array."""
    raw = getattr(trajectory, "coords", trajectory)
    try:
        coords = np.asarray(raw, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise TypeError(f"trajectory must be a (T, 2) array or have .coords of shape (T, 2); got {raw!r}") from err
    if coords.ndim != 2 or coords.shape[1] != 2 or coords.shape[0] < 1:
        raise ValueError(f"trajectory coords must have shape (T, 2) with T >= 1, got {coords.shape}")
    if not np.all(np.isfinite(coords)):
        raise ValueError("trajectory coords contain NaN or inf")
    labels = getattr(trajectory, "labels", None)
    if labels is not None:
        labels = [str(s) for s in labels]
        if len(labels) != coords.shape[0]:
            raise ValueError(f"trajectory has {coords.shape[0]} points but {len(labels)} labels")
    ev = getattr(trajectory, "explained_variance", None)
    ev = None if ev is None else [float(e) for e in np.asarray(ev, dtype=np.float64).ravel()]
    return Path(coords, labels, ev)


def lift(surface_values: np.ndarray, coords: Sequence[np.ndarray], xy: np.ndarray) -> np.ndarray:
    """Bilinear interpolation of a 2D grid at the points ``xy`` ``(T, 2)``; NaN outside the grid."""
    from scipy.interpolate import RegularGridInterpolator

    interp = RegularGridInterpolator(
        (np.asarray(coords[0], dtype=np.float64), np.asarray(coords[1], dtype=np.float64)),
        surface_values,
        bounds_error=False,
        fill_value=np.nan,
    )
    return interp(xy)


def contains(coords: np.ndarray, value: float) -> bool:
    return bool(np.min(coords) <= value <= np.max(coords))


def density_curve(
    density: Any, *, sigma: float | None = None, grid: np.ndarray | None = None, num_points: int | None = None
) -> tuple[np.ndarray, np.ndarray, float]:
    """``(grid, phi_sigma(grid), sigma)``; the default grid spans the Ritz values padded by ``5 sigma``.

    The default number of points keeps the spacing below ``sigma / 5`` (at least 1000, at most 20000), so the
    trapezoidal integral of the curve is 1 to plotting accuracy.
    """
    sigma = float(density.sigma) if sigma is None else float(sigma)
    if not sigma > 0 or not math.isfinite(sigma):
        raise ValueError(f"sigma must be a positive number, got {sigma}")
    if grid is None:
        lo, hi = float(density.lambda_min) - 5 * sigma, float(density.lambda_max) + 5 * sigma
        if num_points is None:
            num_points = int(min(20000, max(1000, math.ceil(5 * (hi - lo) / sigma) + 1)))
        elif isinstance(num_points, bool) or not isinstance(num_points, int) or num_points < 2:
            raise ValueError(f"num_points must be an int >= 2, got {num_points!r}")
        grid = np.linspace(lo, hi, num_points)
    else:
        grid = np.asarray(grid, dtype=np.float64)
        if grid.ndim != 1 or grid.size < 2 or not np.all(np.diff(grid) > 0):
            raise ValueError("grid must be a strictly increasing 1D array of at least 2 points")
    return grid, np.asarray(density.density(grid, sigma), dtype=np.float64), sigma


def log_floor(v: np.ndarray) -> np.ndarray:
    """Values floored at ``1e-12`` of the peak, so a log axis shows the bulk and the outliers, not underflow."""
    peak = float(np.max(v)) if v.size else 0.0
    return np.maximum(v, 1e-12 * peak) if peak > 0 else v


def density_title(density: Any, sigma: float, newline: str = "\n") -> str:
    """``"Spectral density (SLQ)"``, then on a second line the probes, Lanczos steps and smoothing width.

    Two lines because one, at about 60 characters, is wider than a panel of a two-panel figure (the command line's
    ``density.png``) or a narrow report card, and was clipped there. ``newline`` is ``"<br>"`` for plotly.
    """
    nodes = getattr(density, "nodes", None)
    steps = nodes.shape[1] if nodes is not None and np.ndim(nodes) == 2 else None
    probes = getattr(density, "num_probes", None)
    parts = [f"{probes} probes" if probes is not None else None, f"{steps} Lanczos steps" if steps else None]
    parts.append(f"σ = {sigma:.3g}")
    return "Spectral density (SLQ)" + newline + ", ".join(p for p in parts if p)
