"""The figures the command line writes into ``--out`` (matplotlib, headless): the spectral density of ``spectrum`` and
``density``, the loss surface of ``surface`` and the loss along the line of ``interpolate``.

Each function draws one figure, saves it next to the command's JSON and returns the path of its PNG.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["density_figure", "interpolation_figure", "pyplot", "spectrum_figure", "surface_figure"]

DPI = 150


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend: files only, no display needed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, out: Path, name: str, formats: tuple[str, ...]) -> Path:
    for ext in formats:
        fig.savefig(out / f"{name}.{ext}", dpi=DPI)
    pyplot().close(fig)
    return out / f"{name}.{formats[0]}"


def spectrum_figure(spectrum: Any, out: Path) -> Path:
    """The spectral density of a :class:`landscape.spectrum.Spectrum` on a linear and a log scale, its top eigenvalues
    dashed on the log one: ``out/density.png`` and ``.pdf``."""
    fig, axes = pyplot().subplots(1, 2, figsize=(9, 3.4))
    spectrum.density.plot(ax=axes[0])
    spectrum.density.plot(ax=axes[1], log=True)
    for v in spectrum.eigenvalues:
        axes[1].axvline(v, color="C3", lw=0.6, ls="--")
    axes[1].set_title("log scale, top eigenvalues dashed")
    fig.tight_layout()
    return _save(fig, out, "density", ("png", "pdf"))


def density_figure(result: Mapping[str, Any], out: Path) -> Path:
    """The spectral density of the ``density`` command's JSON result (its quadrature nodes and weights) on a linear
    and a log scale: ``out/density.png``."""
    from landscape.linalg.slq import SpectralDensity

    dens = SpectralDensity(
        nodes=np.asarray(result["nodes"], dtype=np.float64),
        weights=np.asarray(result["weights"], dtype=np.float64),
        num_params=int(result["num_params"]),
        sigma=float(result["sigma"]),
        steps=np.asarray(result["steps"], dtype=np.int64),
        num_matvecs=int(result["num_matvecs"]),
        seed=result["seed"],
        wall_time=float(result["wall_time"]),
    )
    fig, axes = pyplot().subplots(1, 2, figsize=(9, 3.4))
    dens.plot(ax=axes[0])
    dens.plot(ax=axes[1], log=True)
    fig.tight_layout()
    return _save(fig, out, "density", ("png",))


def surface_figure(surface: Any, out: Path) -> Path:
    """A 1D surface as a line, a 2D one as contours: ``out/surface.png`` and ``.pdf``."""
    fig, ax = pyplot().subplots(figsize=(5, 4))
    surface.plot("line" if len(surface.coords) == 1 else "contour", ax)
    fig.tight_layout()
    return _save(fig, out, "surface", ("png", "pdf"))


def interpolation_figure(result: Mapping[str, Any], out: Path) -> Path:
    """Loss (and accuracy, on a second axis) along ``(1 - a) w_from + a w_to`` from the ``interpolate`` command's JSON
    result, the two models marked: ``out/interpolation.png`` and ``.pdf``."""
    a = np.asarray(result["coords"])
    fig, ax = pyplot().subplots(figsize=(5.5, 3.6))
    ax.plot(a, result["loss"], color="C0", marker=".", label="loss")
    ax.set_xlabel("a in (1 - a) w_from + a w_to")
    ax.set_ylabel("loss", color="C0")
    for x, label in ((0.0, "from"), (1.0, "to")):
        ax.axvline(x, color="0.6", lw=0.8, ls="--")
        ax.annotate(label, (x, 1.0), xycoords=("data", "axes fraction"), ha="center", va="bottom", fontsize=8)
    if result["accuracy"] is not None:
        acc = np.asarray([np.nan if v is None else v for v in result["accuracy"]], dtype=float)
        twin = ax.twinx()
        twin.plot(a, 100 * acc, color="C1", ls=":", label="accuracy")
        twin.set_ylabel("accuracy (%)", color="C1")
    fig.tight_layout()
    return _save(fig, out, "interpolation", ("png", "pdf"))
