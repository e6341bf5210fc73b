"""How sharp the minimum is: worst-case (SAM / ASAM), average-case and Keskar sharpness, with the Hessian's summaries.

One module per measure:

- :mod:`~landscape.sharpness.sam`: worst-case sharpness ``max_{||e||_p <= rho} L(w + e) - L(w)`` (Foret et al.
  2021), adaptive (ASAM, Kwon et al. 2021) and m-sharpness (Andriushchenko et al. 2023), by projected ascent;
- :mod:`~landscape.sharpness.average`: average-case sharpness ``E L(w + delta) - L(w)`` under Gaussian noise
  (Andriushchenko et al. 2023);
- :mod:`~landscape.sharpness.keskar`: Keskar et al. 2017 epsilon-sharpness in a box, by L-BFGS-B, and the memory
  it needs;
- :mod:`~landscape.sharpness.summary`: :func:`sharpness`, the Hessian's ``lambda_max``, trace and Frobenius norm
  beside all of these in one report.

Every evaluation is functional: the model keeps its parameters, buffers, ``.grad`` and modes, and the global random
state is never touched.
"""

from __future__ import annotations

from landscape.sharpness.average import AverageSharpness, average_sharpness
from landscape.sharpness.keskar import KeskarSharpness, keskar_memory, keskar_sharpness
from landscape.sharpness.sam import SAMSharpness, sam_sharpness
from landscape.sharpness.summary import Sharpness, sharpness

__all__ = [
    "AverageSharpness",
    "KeskarSharpness",
    "SAMSharpness",
    "Sharpness",
    "average_sharpness",
    "keskar_memory",
    "keskar_sharpness",
    "sam_sharpness",
    "sharpness",
]
