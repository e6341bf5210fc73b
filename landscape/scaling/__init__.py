"""How curvature and gradient noise change with the batch size, and what that says about the learning rate.

- :mod:`landscape.scaling.minibatch`: ``lambda_max`` of random minibatch Hessians (:func:`batch_sharpness`) and the
  finite-population factor ``x(B) = (n - B) / (B (n - 1))`` of drawing without replacement (Granziol, Zohren,
  Roberts, JMLR 2022).
- :mod:`landscape.scaling.noise_scale`: the gradient noise scales ``B_simple`` and ``B_noise``
  (:func:`gradient_noise_scale`; McCandlish, Kaplan, Amodei 2018).
- :mod:`landscape.scaling.lr_batch`: the predicted maximal stable learning rate across batch sizes, fits of the
  batch sharpness and the linear / square-root rules (:func:`lr_batch_scaling`, :class:`ScalingReport`).
"""

from landscape.scaling.lr_batch import ScalingFit, ScalingReport, fit_batch_sharpness, lr_batch_scaling
from landscape.scaling.minibatch import BatchSharpness, batch_sharpness, finite_population_factor
from landscape.scaling.noise_scale import NoiseScale, gradient_noise_scale

__all__ = [
    "BatchSharpness",
    "NoiseScale",
    "ScalingFit",
    "ScalingReport",
    "batch_sharpness",
    "finite_population_factor",
    "fit_batch_sharpness",
    "gradient_noise_scale",
    "lr_batch_scaling",
]
