"""Loss surfaces: directions in parameter space, the loss on grids along them (Li et al. 2018), trajectories."""

from landscape.surface import directions
from landscape.surface.directions import (
    Directions,
    filter_normalized,
    from_vectors,
    hessian_axes,
    layer_normalized,
    model_normalized,
    pca,
    random,
)
from landscape.surface.grid import Surface, surface
from landscape.surface.interpolation import interpolate
from landscape.surface.trajectory import Trajectory, project, trajectory

__all__ = [
    "Directions",
    "Surface",
    "Trajectory",
    "directions",
    "filter_normalized",
    "from_vectors",
    "hessian_axes",
    "interpolate",
    "layer_normalized",
    "model_normalized",
    "pca",
    "project",
    "random",
    "surface",
    "trajectory",
]
