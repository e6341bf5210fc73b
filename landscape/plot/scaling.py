"""Figures of the batch-size scaling of curvature and learning rate (:func:`landscape.lr_batch_scaling`).

The measured ``2 / lambda_max(H_B)`` against the batch size ``B`` with the fits of Granziol, Zohren, Roberts (JMLR
2022; ``a + b x(B)`` for an outlier, ``a + b sqrt(x(B))`` for the bulk edge), the linear rule of Goyal et al. 2017
(SGD) or the square-root rule of Malladi et al. 2022 (Adam), and the optimal step ``eps_opt(B)`` of McCandlish et al.
2018 with its critical batch size ``B_noise``.

The report is duck-typed (a :class:`landscape.scaling.ScalingReport` or anything with its attributes), so drawing
needs nothing from the analysis module.
"""

from __future__ import annotations

from typing import Any

import numpy as np

KINDS = ("lr", "sharpness")


def scaling_plot(report: Any, ax: Any = None, *, kind: str = "lr") -> Any:
    """Log-log plot of a batch-size scaling report against the batch size; returns the matplotlib axes.

    Parameters
    ----------
    report : ScalingReport
        Has ``.batch_sizes``, ``.lambda_mean``, ``.lambda_stderr``, ``.lambda_full``, ``.fit``, ``.fit_bulk``,
        ``.spectral_lr``, ``.spectral_lr_stderr``, ``.worst_batch_lr``, ``.fitted_lr(B)``, ``.linear_rule(B)``,
        ``.sqrt_rule(B)``, ``.optimizer`` and ``.noise`` (a ``NoiseScale`` or ``None``).
    ax : matplotlib axes, optional
        Drawn into; default a new 6.4 x 4.8 inch figure.
    kind : {"lr", "sharpness"}
        ``"lr"``: ``2 / lambda_max(H_B)`` with error bars, the sharpest sampled batch's ``2 / lambda_max``,
        ``2 / lambda'(B)`` from the fit, the linear (SGD) or square-root (Adam) rule, and ``eps_opt(B)`` with the
        critical batch size ``B_noise``. ``"sharpness"``: ``lambda_max(H_B)`` with error bars, both fits and
        ``lambda_max(H)``.

    Returns
    -------
    matplotlib axes
        Log-log axes with a legend.

    Raises
    ------
    ValueError
        Unknown ``kind``.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be 'lr' or 'sharpness', got {kind!r}")
    if ax is None:
        import matplotlib.pyplot as plt

        ax = plt.figure(figsize=(6.4, 4.8)).add_subplot()
    B = report.batch_sizes.astype(np.float64)
    grid = np.geomspace(B[0], B[-1], 200)
    # The measured points with their standard errors, first in the legend: lambda_max(H_B), or the lr 2 / lambda_max.
    if kind == "sharpness":
        y, yerr, label = report.lambda_mean, report.lambda_stderr, r"$\lambda_{\max}(H_B)$, mean $\pm$ s.e."
    else:
        y, yerr, label = report.spectral_lr, report.spectral_lr_stderr, r"$2/\lambda_{\max}(H_B)$ (measured spectra)"
    ax.errorbar(B, y, yerr=yerr, fmt="o", capsize=3, label=label)
    if kind == "sharpness":
        ax.plot(grid, report.fit.predict(grid), "-", label=f"fit {report.fit.formula()}")
        ax.plot(grid, report.fit_bulk.predict(grid), ":", label=f"fit {report.fit_bulk.formula()}")
        ax.axhline(report.lambda_full, color="gray", lw=0.8, ls="--", label=r"$\lambda_{\max}(H)$")
        ax.set_ylabel(r"$\lambda_{\max}$ of the batch Hessian")
    else:
        ax.plot(B, report.worst_batch_lr, "v", mfc="none", label=r"$2/\max_S \lambda_{\max}(H_S)$ (sharpest batch)")
        ax.plot(grid, report.fitted_lr(grid), "-", label=r"$2/\lambda'(B)$, fit $a + b\,x(B)$")
        if report.optimizer == "adam":
            ax.plot(grid, report.sqrt_rule(grid), "--", label=r"square-root rule $\propto\sqrt{B}$")
        else:
            ax.plot(grid, report.linear_rule(grid), "--", label=r"linear rule $\propto B$")
        if report.noise is not None and np.isfinite(report.noise.eps_max):
            ax.plot(grid, report.noise.eps_opt(grid), "-.", label=r"$\epsilon_{opt}(B)$ (McCandlish et al.)")
            if np.isfinite(report.noise.b_noise) and B[0] <= report.noise.b_noise <= B[-1]:
                ax.axvline(report.noise.b_noise, color="gray", lw=0.8, ls=":", label=r"$B_{noise}$")
        ax.set_ylabel("learning rate")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("batch size B")
    ax.legend(fontsize="small")
    return ax
