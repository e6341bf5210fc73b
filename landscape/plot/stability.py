"""Figures of the stability analysis: sharpness against the optimizer's threshold over training (matplotlib).

Draws the history an :class:`landscape.stability.EdgeOfStabilityTracker` records (its ``.history``, or the arrays
:meth:`~landscape.stability.EdgeOfStabilityTracker.load` reads back), in the form of Cohen et al. (ICLR 2021): the
sharpness rises to the threshold and hovers there.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["THRESHOLD_LABELS", "edge_of_stability_plot"]

# The threshold each rule's sharpness is compared with, as a legend entry.
THRESHOLD_LABELS = {
    "gd": "2/lr",
    "heavy_ball": "(2+2β)/lr",
    "nesterov": "(2+2β)/((1+2β) lr)",
    "adam": "(2+2β₁)/((1−β₁) lr)",
    "adamw": "(1+β₁)(2−lr·wd)/((1−β₁) lr)",
}


def edge_of_stability_plot(
    history: Mapping[str, np.ndarray],
    rule: str | None,
    ax: Any = None,
    *,
    color: str | None = None,
    label: str | None = None,
) -> Any:
    """Sharpness (solid) against the optimizer's threshold (dashed) over the steps; returns the axes.

    For Adam the preconditioned sharpness ``lambda_max(P^-1 H)`` is drawn against its threshold, with
    ``lambda_max(H)`` faint; eigenvalues ``2..k`` are drawn faint too.

    Parameters
    ----------
    history : mapping of str to array
        ``step``, ``sharpness`` ``(m, k)``, ``threshold`` and ``preconditioned_sharpness`` over ``m`` records (see
        :attr:`landscape.stability.EdgeOfStabilityTracker.history`).
    rule : str or None
        The update rule tracked (``"gd"``, ``"heavy_ball"``, ``"nesterov"``, ``"adam"``, ``"adamw"``); ``None``
        draws it as gradient descent.
    ax : matplotlib axes, optional
        Where to draw (default: a new 6.4 x 3.6 inch figure).
    color, label : str, optional
        The runs' colour and a prefix of their legend entries, which tell several runs apart on one axes.
    """
    if ax is None:
        import matplotlib.pyplot as plt

        ax = plt.figure(figsize=(6.4, 3.6)).add_subplot()
    steps = history["step"]
    sharpness = history["sharpness"]
    kind = rule or "gd"
    color = color or "tab:blue"
    prefix = f"{label}: " if label else ""
    if kind in ("adam", "adamw"):
        ax.plot(steps, history["preconditioned_sharpness"], color=color, label=f"{prefix}λ_max(P⁻¹H)")
        ax.plot(steps, sharpness[:, 0], color=color, alpha=0.35, lw=1, label=f"{prefix}λ_max(H)")
    else:
        ax.plot(steps, sharpness[:, 0], color=color, label=f"{prefix}λ_max(H)")
        for j in range(1, sharpness.shape[1]):
            ax.plot(steps, sharpness[:, j], color=color, alpha=0.35, lw=1, label=f"{prefix}λ_{j + 1}(H)")
    threshold = THRESHOLD_LABELS.get(kind, "threshold")
    ax.plot(steps, history["threshold"], color=color, linestyle="--", lw=1.2, label=f"{prefix}{threshold}")
    ax.set_xlabel("step")
    ax.set_ylabel("sharpness")
    ax.legend(loc="best", frameon=False)
    return ax
