"""Estimators over a :class:`~landscape.operators.base.CurvatureOperator`: eigenpairs, traces, diagonals, norms and
spectral densities, each returning a frozen dataclass with its own diagnostics (standard errors or residuals, seed,
matvec count, wall time, settings).

``trace`` and ``diagonal`` default to ``method="auto"``: exact (second-order backpropagation with BackPACK, the
optional extra ``exact``) for Hessian and GGN operators of a Problem whose layers and loss it supports, an estimator
otherwise, with ``settings["note"]`` saying which ran and why. BackPACK is imported lazily, only on that path.

Every stochastic routine takes ``seed: int | torch.Generator`` and draws from a private generator
(:mod:`landscape.linalg.probes`); the global torch / numpy / ``random`` state is never touched.

Performance notes
-----------------
- The operator is the expensive part (a Hessian-vector product is a data pass), so estimators feed it blocks
  ``op @ V`` wherever the algorithm allows: all Hutchinson / Hutch++ / XTrace / diagonal / Frobenius probes of a
  block at once, and all SLQ probes in lock step (``p`` Lanczos recurrences, one ``(n, p)`` product per step).
  Lanczos for eigenpairs is inherently one vector per step.
- All vector work (reorthogonalisation, QR, projections) stays in torch on the operator's device and dtype; nothing
  round-trips through numpy inside a loop. Only the small ``m x m`` tridiagonal (and per-step scalars alpha, beta)
  go to float64 numpy/scipy, and the eigenvalue check runs every step early on and then every ~m/10 steps.
- Full reorthogonalisation costs ``O(n m^2)`` flops and keeps ``p * m * n`` numbers (the bases); for ``n = 10^6``,
  ``m = 80`` and ``p = 10`` that is 3.2 GB in float32, so lower ``num_probes`` (one probe suffices for large ``n``,
  Chen, Trogdon, Ubaru 2021) or ``num_steps`` on big models.
"""

from landscape.linalg._ritz import tridiagonal_eigh
from landscape.linalg.diagonal import diagonal
from landscape.linalg.eigen import top_eigen
from landscape.linalg.frobenius import frobenius_norm
from landscape.linalg.lanczos import LanczosDecomposition, lanczos
from landscape.linalg.power import power_iteration
from landscape.linalg.probes import make_generator, sample_probes
from landscape.linalg.results import ConvergenceWarning, EigenResult, Estimate, FrobeniusEstimate
from landscape.linalg.slq import LLACriteria, SpectralDensity, spectral_density
from landscape.linalg.trace import hutchinson, hutchpp, trace, xtrace

__all__ = [
    "ConvergenceWarning",
    "EigenResult",
    "Estimate",
    "FrobeniusEstimate",
    "LLACriteria",
    "LanczosDecomposition",
    "SpectralDensity",
    "diagonal",
    "frobenius_norm",
    "hutchinson",
    "hutchpp",
    "lanczos",
    "make_generator",
    "power_iteration",
    "sample_probes",
    "spectral_density",
    "top_eigen",
    "trace",
    "tridiagonal_eigh",
    "xtrace",
]
