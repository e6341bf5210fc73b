"""Bar charts of the curvature per layer (:func:`landscape.layerwise_curvature`).

One bar per parameter group: the trace of its diagonal Hessian (or GGN) block ``tr(H_gg) = sum_{i in g} H_ii``, or
the mean diagonal entry ``tr(H_gg) / |g|``, with +-2 standard-error bars where the traces are Hutchinson estimates
(Hutchinson 1989; Bekas, Kokiopoulou, Saad 2007) and none where BackPACK's diagonal is exact (Dangel, Kunstner, Hennig
2020): the per-layer traces of PyHessian (Yao et al. 2020) with their error bars.

The result is duck-typed (a :class:`landscape.layerwise.LayerwiseCurvature` or anything with its attributes), so
drawing needs nothing from the analysis module.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def layerwise_plot(
    result: Any, ax: Any = None, *, per_parameter: bool = False, log: bool = False, color: str | None = None
) -> Any:
    """Bar plot of the traces per group, with +-2 standard-error bars for estimates; returns the matplotlib axes.

    Parameters
    ----------
    result : LayerwiseCurvature
        Has ``.names``, ``.traces``, ``.stderrs``, ``.sizes``, ``.mean_curvature``, ``.total``, ``.method`` and
        ``.curvature``.
    ax : matplotlib axes, optional
        Drawn into; default a new figure wide enough for the group names.
    per_parameter : bool
        Plot ``trace / #params`` (the mean diagonal entry of each block) instead of the trace.
    log : bool
        Log-scaled y axis, when every value is positive.
    color : str, optional
        Bar colour (default ``"tab:blue"``).

    Returns
    -------
    matplotlib axes
    """
    if ax is None:
        import matplotlib.pyplot as plt

        ax = plt.figure(figsize=(max(4.0, 0.45 * len(result.names) + 1.5), 3.6)).add_subplot()
    values = result.mean_curvature if per_parameter else result.traces
    errors = result.stderrs / (np.maximum(result.sizes, 1) if per_parameter else 1)
    x = np.arange(len(result.names))
    ax.bar(x, values, color=color or "tab:blue", yerr=None if result.method == "exact" else 2 * errors)
    slanted = len(result.names) > 4
    ax.set_xticks(x, result.names, rotation=45 if slanted else 0, ha="right" if slanted else "center")
    what = "diagonal mean  tr(H_gg)/|g|" if per_parameter else "trace  tr(H_gg)"
    ax.set_ylabel(what if result.curvature != "ggn" else what.replace("H", "G"))
    if log and bool(np.all(values > 0)):
        ax.set_yscale("log")
    how = "exact" if result.method == "exact" else f"{result.method}, ±2 s.e."
    ax.set_title(f"{result.curvature} per group ({how}); total {result.total:.4g}", fontsize=10)
    ax.axhline(0.0, color="0.5", lw=0.6)
    return ax
